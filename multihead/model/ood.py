"""Out of distribution: is the image one of the trained organs' kinds at all?

An image that is none of the trained modalities (a photograph, a scanned document, noise) can still get a
confident softmax, but its pooled trunk features lie far from every organ's. The score is the squared
Mahalanobis distance to the nearest organ mean, with one shared covariance, in a whitened PCA space of
:data:`OOD_COMPONENTS` dimensions (so a checkpoint grows by a few hundred kB). Each organ's distances are
scaled so that one threshold fits every organ (:data:`SCALE_RULES`); the threshold keeps
:data:`DEFAULT_TPR` (99 %) of the validation images.

An organ with few images cannot have its spread read from its own validation images: its median distance
(validation images, and training images left one out) is put on the pooled median, and that scale is shrunk
toward the pooled one by its image count (``n / (n + MIN_SCALE_IMAGES)`` on the log scale). On the bundled
model this lets every breast and oral image of the sample pass (9 of 14 and 3 of 15 were flagged before)
while every unknown image is still flagged; a scale that put the largest leave-one-out distance on the pooled
median instead made those organs swallow unknown images (AUROC 1.00 -> 0.92), and is not used (docs/trust.md).
Unfitted, the threshold is infinite: nothing is flagged.

``fit(..., num_read=n)`` reads only the first ``n`` features (the projection's other rows are zero, so shapes
and scoring stay the same). A tuned trunk's OOD score reads the pooled stages below its cut, which the tuning
did not move: the tuned stages learn to tell the trained classes apart and lose what tells a scanned page from
a slide (issue 17: AUROC 0.99 -> 1.00 and unknowns flagged 70 % -> 100 %, docs/trust.md).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DEFAULT_TPR", "MIN_SCALE_IMAGES", "OOD_COMPONENTS", "SCALE_QUANTILE", "SCALE_RULES", "MahalanobisOOD"]

OOD_COMPONENTS = 64
"""Principal components kept (a fixed size keeps checkpoint keys and shapes fixed)."""
DEFAULT_TPR = 0.99
"""Share of in-distribution validation images the threshold keeps (0.95 until issue 19: one real image in
twenty was then flagged, and 5-7 % of a large organ's test images)."""
SCALE_QUANTILE = 0.95
"""The quantile of an organ's validation distances that its scale puts on the pooled one (``"own"`` rule)."""
MIN_SCALE_IMAGES = 20
"""Validation images an organ needs for its own distance scale from them alone; also the prior weight, in
images, of the pooled scale that a smaller organ's scale is shrunk toward."""
SCALE_RULES = {
    "own": "at least MIN_SCALE_IMAGES validation images: the SCALE_QUANTILE quantile of its validation distances "
           "put on the pooled one",
    "shrunk": "fewer: the median of its n out-of-sample distances (validation images, training images left one "
              "out) put on the pooled median, shrunk toward the pooled scale: scale ** (n / (n + MIN_SCALE_IMAGES))",
    "pooled": "no out-of-sample distance at all (no validation image, fewer than two training images): scale 1",
}
"""How each organ's distance scale was set (``MahalanobisOOD.scale_rules_``)."""
_RIDGE = 1e-4


class MahalanobisOOD(nn.Module):
    """The out-of-distribution score's buffers, its fit and its scoring.

    Example:
        >>> ood = MahalanobisOOD(num_features=16, num_organs=3)
        >>> ood.fitted
        False
    """

    def __init__(self, num_features: int, num_organs: int, components: int = OOD_COMPONENTS) -> None:
        super().__init__()
        components = min(components, num_features)
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("projection", torch.zeros(num_features, components))
        self.register_buffer("class_means", torch.zeros(num_organs, components))
        # each organ's distances times this, so one threshold flags about as many of every organ's images
        self.register_buffer("organ_scale", torch.ones(num_organs))
        self.register_buffer("threshold", torch.tensor(float("inf")))
        self.scale_rules_: dict[int, str] = {}
        """Organ index -> the :data:`SCALE_RULES` key its scale came from, for the last :meth:`fit`."""

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set a threshold."""
        return bool(torch.isfinite(self.threshold))

    def organ_distances(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, F]`` -> squared distance to every organ's mean ``[B, O]``, before scaling."""
        z = (features.to(self.projection.device, self.projection.dtype) - self.mean) @ self.projection
        return (z.unsqueeze(1) - self.class_means.unsqueeze(0)).square().sum(dim=2)

    def score(self, features: torch.Tensor, organ_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, F]`` -> scaled distance to the nearest organ the model answers ``[B]``
        (``organ_mask`` ``[O]`` bool). Zeros while unfitted."""
        distances = self.organ_distances(features) * self.organ_scale
        return distances.masked_fill(~organ_mask.to(distances.device), float("inf")).min(dim=1).values

    def flag(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores > threshold``: the images unlike every trained organ."""
        return scores > float(self.threshold)

    def fit(self, features: torch.Tensor, organs: torch.Tensor, val_features: torch.Tensor | None = None,
            val_organs: torch.Tensor | None = None, *, organ_mask: torch.Tensor,
            tpr: float = DEFAULT_TPR, num_read: int | None = None) -> MahalanobisOOD:
        """Fit the score on training features ``[N, F]`` (organ indices ``[N]``) and its threshold on
        validation features (the training ones when none are given).

        PCA of the training features, organ means and one pooled covariance in that space, folded into one
        projection, so scoring is a matrix product and a distance. Each organ's scale (:data:`SCALE_RULES`,
        recorded in ``scale_rules_``): with at least :data:`MIN_SCALE_IMAGES` validation images, the one that
        puts its :data:`SCALE_QUANTILE` quantile on the pooled one (one covariance fits the large organs, not
        one whose images spread more); with fewer, its median out-of-sample distance on the pooled median,
        shrunk toward 1 by its image count. The threshold is the ``tpr`` quantile of the validation scores.
        ``num_read``: only the first ``num_read`` features are read (default: all).
        """
        if not 0.0 < tpr < 1.0:
            raise ValueError(f"tpr must be in (0, 1), got {tpr!r}")
        if len(features) < 2:
            raise ValueError(f"the out-of-distribution score needs training images; got {len(features)}")
        num_features = self.mean.shape[0]
        num_read = num_features if num_read is None else num_read
        if not 0 < num_read <= num_features:
            raise ValueError(f"num_read must be in [1, {num_features}], got {num_read!r}")
        x = features.detach().cpu().double()[:, :num_read]
        organs = organs.cpu()
        mean = x.mean(0)
        centred = x - mean
        components = self.projection.shape[1]
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        basis = torch.zeros(num_features, components, dtype=torch.float64)  # rows past num_read stay zero
        kept = min(components, vh.shape[0])
        basis[:num_read, :kept] = vh[:kept].T
        z = centred @ basis[:num_read]
        present = sorted(set(organs.tolist()))
        means = torch.zeros(self.class_means.shape[0], components, dtype=torch.float64)
        for organ in present:
            means[organ] = z[organs == organ].mean(0)
        residual = z - means[organs]
        covariance = residual.T @ residual / max(len(z) - len(present), 1)
        covariance += _RIDGE * covariance.diagonal().mean() * torch.eye(components, dtype=torch.float64)
        values, vectors = torch.linalg.eigh(covariance)
        whiten = vectors @ torch.diag(values.clamp_min(1e-12).rsqrt()) @ vectors.T
        self.mean.zero_()[:num_read] = mean.float()
        self.projection.copy_((basis @ whiten).float())
        self.class_means.copy_((means @ whiten).float())
        separate_val = val_features is not None and len(val_features) > 0
        if not separate_val:
            val_features, val_organs = features, organs
        val_organs = val_organs.cpu()
        self.organ_scale.fill_(1.0)
        with torch.no_grad():
            own = _own(self.organ_distances(val_features), val_organs)
            train_own = _own(self.organ_distances(features), organs) if separate_val else None
        self.organ_scale.copy_(self._scales(own, val_organs, train_own, organs))
        with torch.no_grad():
            scores = self.score(val_features, organ_mask).cpu().double()
        self.threshold.fill_(float(torch.quantile(scores, tpr)))
        return self

    def _scales(self, own: torch.Tensor, val_organs: torch.Tensor, train_own: torch.Tensor | None,
                organs: torch.Tensor) -> torch.Tensor:
        """Each organ's scale from its validation distances ``own`` (and, for a small organ, its training
        distances left one out; ``train_own`` is None when the training images are the validation ones)."""
        scale = torch.ones(self.organ_scale.shape[0], dtype=torch.float64)
        pooled = torch.quantile(own, SCALE_QUANTILE)
        self.scale_rules_ = {}
        counts = torch.bincount(val_organs, minlength=len(scale))
        large = [organ for organ in range(len(scale)) if int(counts[organ]) >= MIN_SCALE_IMAGES]
        for organ in large:
            scale[organ] = pooled / torch.quantile(own[val_organs == organ], SCALE_QUANTILE).clamp_min(1e-12)
            self.scale_rules_[organ] = "own"
        reference = torch.cat([own[val_organs == organ] * scale[organ] for organ in large]) if large else own
        pooled_median = reference.median()
        for organ in sorted(set(organs.tolist()) - set(large)):  # the trained organs without their own scale
            n_train = int((organs == organ).sum())
            # leaving an image out moves its organ's mean by 1/n of its offset: its distance grows by (n/(n-1))^2
            left_out = ((train_own if train_own is not None else own)[organs == organ] * (n_train / (n_train - 1)) ** 2
                        if n_train > 1 else own.new_zeros(0))
            sample = left_out if train_own is None else torch.cat([own[val_organs == organ], left_out])
            if len(sample) == 0:
                continue
            weight = len(sample) / (len(sample) + MIN_SCALE_IMAGES)
            scale[organ] = (pooled_median / sample.median().clamp_min(1e-12)) ** weight
            self.scale_rules_[organ] = "shrunk"
        return scale.float()


def _own(distances: torch.Tensor, organs: torch.Tensor) -> torch.Tensor:
    """Each row's distance to its own organ's mean, as float64 on the CPU."""
    return distances.cpu().double().gather(1, organs.unsqueeze(1)).squeeze(1)
