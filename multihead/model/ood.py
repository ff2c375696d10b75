"""Out of distribution: is the image like any image the model was trained on?

A photograph, a dermoscopy image or a cell from another Pap-smear set can still get a confident softmax, but its
pooled trunk features point elsewhere than every training image's. The score is the cosine distance to the
nearest training image, in the span of the training features' first :data:`OOD_COMPONENTS` singular vectors (the
features are neither centred nor scaled: they are non-negative pooled activations, and their direction is what
tells a kind of image apart); the threshold keeps :data:`DEFAULT_TPR` (99 %) of the validation images. The
training images' projections travel in the checkpoint (``ood.bank``, float16: 4,500 images of 512 components are
4.6 MB) and scoring is one matrix product.

Chosen by measurement on real near-out-of-distribution images (``shared/data/near-ood``, issue 35; docs/trust.md),
on the model trained on both shared folders, thresholds at 99 % of the validation images: against the
class-conditional Mahalanobis distance it replaces (64 components, one scale per organ), healthy brain MRI AUROC
0.975 against 0.905 and kidney CT with cysts or stones 0.943 against 0.611; photographs, mouth photographs,
dermoscopy, other cervical sets and synthetic unknowns all flagged (95-100 % before); 1.1 % of the test images
flagged. Standardised features flagged more healthy brain MRI (65 %) but 2.1 % of the test images and far fewer
cysts and stones (AUROC 0.73); more neighbours (3, 10, 50), fewer components (128, 256), the energy and
maximum-softmax scores and the (relative) Mahalanobis distance did no better.

``fit(..., num_read=n)`` reads only the first ``n`` features (the projection's other rows are zero, so shapes and
scoring stay the same). A tuned trunk's score reads the pooled stages below its cut, which the tuning did not
move: the tuned stages learn to tell the trained classes apart and lose what tells a scanned page from a slide.
Unfitted, the threshold is infinite: nothing is flagged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_TPR", "MAX_BANK", "OOD_COMPONENTS", "NearestNeighbourOOD"]

OOD_COMPONENTS = 512
"""Singular vectors kept (fewer when the features are narrower or the training images fewer)."""
DEFAULT_TPR = 0.99
"""Share of in-distribution validation images the threshold keeps."""
MAX_BANK = 200_000
"""Most training images a checkpoint's bank may hold (a header asking for more is refused before loading)."""


class NearestNeighbourOOD(nn.Module):
    """The out-of-distribution score's buffers, its fit and its scoring.

    Example:
        >>> ood = NearestNeighbourOOD(num_features=16)
        >>> ood.fitted, ood.bank.shape
        (False, torch.Size([0, 16]))
    """

    def __init__(self, num_features: int, components: int = OOD_COMPONENTS) -> None:
        super().__init__()
        components = min(components, num_features)
        self.register_buffer("projection", torch.zeros(num_features, components))
        self.register_buffer("bank", torch.zeros(0, components, dtype=torch.float16))
        """The training images, projected and of unit length ``[N, C]``."""
        self.register_buffer("threshold", torch.tensor(float("inf")))

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set a threshold."""
        return bool(torch.isfinite(self.threshold))

    def resize_bank(self, rows: int) -> None:
        """Make room for a bank of ``rows`` images (before a checkpoint's state is loaded into it)."""
        if not 0 <= rows <= MAX_BANK:
            raise ValueError(f"the out-of-distribution bank may hold 0 to {MAX_BANK} images, got {rows}")
        self.bank = torch.zeros(rows, self.bank.shape[1], dtype=self.bank.dtype, device=self.bank.device)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, F]`` -> projected, unit-length ``[B, C]``."""
        return F.normalize(features.to(self.projection.device, self.projection.dtype) @ self.projection, dim=1)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, F]`` -> cosine distance to the nearest training image ``[B]`` (zeros while
        unfitted)."""
        if len(self.bank) == 0:
            return torch.zeros(len(features), device=self.projection.device)
        return 1.0 - (self.embed(features) @ self.bank.to(self.projection.dtype).T).amax(dim=1)

    def flag(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores > threshold``: the images unlike every training image."""
        return scores > float(self.threshold)

    def fit(self, features: torch.Tensor, val_features: torch.Tensor | None = None, *, tpr: float = DEFAULT_TPR,
            num_read: int | None = None) -> NearestNeighbourOOD:
        """Fit the score on training features ``[N, F]`` and its threshold on validation features: the ``tpr``
        quantile of their scores. Without validation features, each training image is scored against the others
        (left one out).

        ``num_read``: only the first ``num_read`` features are read (default: all).
        """
        if not 0.0 < tpr < 1.0:
            raise ValueError(f"tpr must be in (0, 1), got {tpr!r}")
        if len(features) < 2:
            raise ValueError(f"the out-of-distribution score needs training images; got {len(features)}")
        if len(features) > MAX_BANK:
            raise ValueError(f"the out-of-distribution bank holds at most {MAX_BANK} training images, got "
                             f"{len(features)}")
        num_features = self.projection.shape[0]
        num_read = num_features if num_read is None else num_read
        if not 0 < num_read <= num_features:
            raise ValueError(f"num_read must be in [1, {num_features}], got {num_read!r}")
        x = features.detach().cpu().double()[:, :num_read]
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        basis = torch.zeros(num_features, self.projection.shape[1], dtype=torch.float64)  # rows past num_read: 0
        kept = min(basis.shape[1], vh.shape[0])
        basis[:num_read, :kept] = vh[:kept].T
        self.projection.copy_(basis.float())
        self.resize_bank(len(x))
        self.bank.copy_(F.normalize(x @ basis[:num_read], dim=1).to(self.bank.dtype))
        with torch.no_grad():
            if val_features is not None and len(val_features):
                scores = self.score(val_features).double().cpu()
            else:  # left one out: each training image's nearest other training image
                similarity = self.embed(features) @ self.bank.to(self.projection.dtype).T
                scores = 1.0 - similarity.topk(2, dim=1).values[:, 1].double().cpu()
        self.threshold.fill_(float(torch.quantile(scores, tpr)))
        return self
