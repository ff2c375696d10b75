"""From inputs to :class:`Prediction` objects: ``classify`` for images in memory or on disk, and
``classify_files`` for many files, skipping the ones that cannot be read.

The data flow is the library's: image -> preprocessing (:mod:`multihead.data`) -> trunk and heads
(:mod:`multihead.inference.engine`) -> decision and trust (:mod:`multihead.model.decision`) -> Prediction.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..data.images import ImageInput, describe_input, is_path
from ..data.loading import decode_threads as decode_threads_default
from ..data.loading import load_batches
from ..data.views import VIEWS, apply_view
from ..model.decision import Status, organ_marginal
from ..model.heads import MultiHeadModel
from .config import InferenceConfig
from .engine import run_features
from .models import ModelInput, shared_model

__all__ = ["FileResult", "Prediction", "classify", "classify_files", "predict_batch"]


@dataclass(frozen=True)
class Prediction:
    """One image's answer. ``subtype_probability`` and ``probabilities`` are joint: P(organ) * P(subtype | organ).

    ``status`` (a :class:`~multihead.model.decision.Status`, which is a ``str``) says how much of it to trust:
    ``"organ_and_subtype"``, ``"organ_only"`` (P(subtype | organ) below the organ's subtype threshold) or
    ``"uncertain"`` (P(organ) below the router threshold, an organ the model does not cover, or out of
    distribution). Organ and subtype are always filled in.
    """

    organ: str
    organ_probability: float
    subtype: str
    subtype_probability: float
    probabilities: dict[str, float] = field(repr=False)
    organ_probabilities: dict[str, float] = field(repr=False)
    source: str | None = None
    untrained_organs: tuple[str, ...] = ()
    """Organs of the taxonomy the model never saw images of: never offered as answers (probability 0)."""
    covered_organs: tuple[str, ...] = ()
    """Organs the model claims (trained on enough images); an answer naming another organ is ``uncertain``."""
    status: Status = Status.ORGAN_AND_SUBTYPE
    subtype_confidence: float = float("nan")
    """P(subtype | organ): the score the subtype threshold is compared with (``organ_probability`` is the router's)."""
    ood_score: float | None = None
    """Cosine distance of the trunk features to the nearest training image's; ``None`` when the model has no
    fitted out-of-distribution score."""
    out_of_distribution: bool = False
    """The image looks like none of the trained organs' images (``ood_score`` above the model's threshold)."""
    alternatives: tuple[tuple[str, float], ...] = ()
    """The ``top_k`` most probable subtypes with their joint probabilities, when ``classify(..., top_k=k)``
    asked for them (``to_dict`` gives them as ``"top_k"``)."""

    def __str__(self) -> str:
        """One line: ``lung_colon / lung_aca  P = 0.981  organ_and_subtype``."""
        why = " (out of distribution)" if self.out_of_distribution else ""
        more = "".join(f", {s} {p:.3f}" for s, p in self.alternatives if s != self.subtype)
        return (f"{self.organ} / {self.subtype}  P = {self.subtype_probability:.3f}  {self.status}{why}"
                + (f"  (next: {more[2:]})" if more else ""))

    def top_k(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable subtypes with their joint probabilities."""
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "organ": self.organ,
            "organ_probability": self.organ_probability,
            "subtype": self.subtype,
            "subtype_probability": self.subtype_probability,
            "organ_probabilities": dict(self.organ_probabilities),
            "probabilities": dict(self.probabilities),
            "untrained_organs": list(self.untrained_organs),
            "covered_organs": list(self.covered_organs),
            "status": str(self.status),
            "subtype_confidence": self.subtype_confidence,
            "ood_score": self.ood_score,
            "out_of_distribution": self.out_of_distribution,
            **({"top_k": [list(item) for item in self.alternatives]} if self.alternatives else {}),
        }


@dataclass(frozen=True)
class FileResult:
    """A file's outcome in a folder run: a prediction, or the reason it was skipped."""

    path: str
    prediction: Prediction | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        if self.prediction is None:
            return {"source": self.path, "error": self.error}
        return {**self.prediction.to_dict(), "source": self.path, "error": None}


def predict_batch(model: MultiHeadModel, batch: torch.Tensor, config: InferenceConfig = InferenceConfig(),
                  sources: Sequence[str | None] | None = None) -> list[Prediction]:
    """A uint8 batch -> one :class:`Prediction` per image, with its trust status and OOD score.

    With ``config.tta`` the joint probabilities are averaged over the 8 dihedral views; the OOD score
    always comes from the image as it is (the view its threshold was fitted on).
    """
    features = run_features(model, batch, config)
    averaged = None
    if config.tta:
        with torch.inference_mode():
            averaged = model.forward_heads(features).joint_probs.double()
            for view in VIEWS[1:]:
                view_features = run_features(model, apply_view(batch, view), config)
                averaged += model.forward_heads(view_features).joint_probs.double()
        averaged = averaged / len(VIEWS)
    decided = model.decisions(features, joint=averaged)
    organ_probs = organ_marginal(decided.joint, model.subtype_organ.cpu(), model.taxonomy.num_organs)
    organs, subtypes = model.taxonomy.organ_names, model.taxonomy.subtype_names
    untrained = tuple(o for o in organs if o not in model.available_organs)
    covered = model.covered_organs
    flagged = decided.out_of_distribution
    predictions = []
    for row, (o, s) in enumerate(zip(decided.organ.tolist(), decided.subtype.tolist())):
        predictions.append(Prediction(
            organ=organs[o], organ_probability=float(organ_probs[row, o]),
            subtype=subtypes[s], subtype_probability=float(decided.joint[row, s]),
            probabilities=dict(zip(subtypes, decided.joint[row].tolist())),
            organ_probabilities=dict(zip(organs, organ_probs[row].tolist())),
            source=None if sources is None else sources[row], untrained_organs=untrained, covered_organs=covered,
            status=decided.status[row], subtype_confidence=float(decided.subtype_confidence[row]),
            ood_score=None if decided.ood_score is None else float(decided.ood_score[row]),
            out_of_distribution=False if flagged is None else bool(flagged[row]),
        ))
    return predictions


def classify(img: ImageInput | Sequence[ImageInput], model: ModelInput = None, *,
             batch_size: int | None = None, device: str | torch.device | None = None,
             config: InferenceConfig | None = None, tta: bool | None = None,
             top_k: int | None = None) -> Prediction | list[Prediction]:
    """Classify one image or a list of images in one forward pass each batch.

    Args:
        img: a path, ``PIL.Image``, numpy array (HxW or HxWxC uint8), torch tensor (CxHxW), a list of
            them, or a batch: a tensor ``[B, C, H, W]`` or an array ``[B, H, W, C]`` (a list comes back).
        model: a loaded model, a checkpoint path, or ``None`` for ``$MULTIHEAD_MODEL`` / the default model.
        batch_size: images per forward pass for lists (default from ``config``: as many as fit in the memory
            budget, :meth:`InferenceConfig.batch_for`).
        device: where to run (default: where the model is; the CPU for a checkpoint). A model object is
            never moved: a copy runs there instead.
        tta: average over the 8 dihedral views (default from ``config``): steadier answers, 8x the time.
        top_k: also keep the ``top_k`` most probable subtypes in :attr:`Prediction.alternatives`.

    Returns:
        A :class:`Prediction`, or a list of them for a list input.

    Raises:
        ImageError: an input is not a readable image (the message names it).

    Example:
        >>> prediction = multihead.classify("slide.jpg", model="model.safetensors")  # doctest: +SKIP
        >>> prediction.organ, prediction.subtype
        ('lung_colon', 'lung_aca')
    """
    resolved = shared_model(model, device)
    config = config or InferenceConfig()
    if batch_size is not None:
        config = replace(config, batch_size=batch_size)
    if tta is not None:
        config = replace(config, tta=tta)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    batched = (isinstance(img, torch.Tensor) and img.ndim == 4) or (
        type(img).__module__ == "numpy" and getattr(img, "ndim", 0) == 4)
    single = not isinstance(img, (list, tuple)) and not batched
    items = [img] if single else list(img)
    if not items:
        return []
    predictions: list[Prediction] = []
    batch_size = config.batch_for(resolved) if len(items) > 1 else 1
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = torch.stack([resolved.preprocessing.load(item, draft=True) for item in chunk])
        sources = [describe_input(item) if is_path(item) else None for item in chunk]
        predictions.extend(predict_batch(resolved, batch, config, sources))
    if top_k is not None:
        predictions = [replace(p, alternatives=tuple(p.top_k(top_k))) for p in predictions]
    return predictions[0] if single else predictions


def classify_files(paths: Iterable[str | os.PathLike], model: ModelInput = None, *,
                   config: InferenceConfig | None = None, decode_threads: int | None = None) -> Iterator[FileResult]:
    """Classify files a batch at a time, in order. A file that cannot be read becomes a
    :class:`FileResult` with an ``error`` and the run goes on.

    The next files are decoded and resized in ``decode_threads`` threads (default:
    :func:`~multihead.data.loading.decode_threads`; 0: one at a time, when the trunk asks) while the trunk runs, and
    a large JPEG is decoded at a reduced scale (``Preprocessing.load(..., draft=True)``), so that on a fast trunk
    (int8, bf16) decoding does not set the pace.
    """
    resolved = shared_model(model)
    config = config or InferenceConfig()
    names: list[str] = []

    def named(items: Iterable[str | os.PathLike]) -> Iterator[str | os.PathLike]:
        for path in items:
            names.append(describe_input(path))
            yield path

    load = functools.partial(resolved.preprocessing.load, draft=True)
    threads = decode_threads_default() if decode_threads is None else decode_threads
    for loaded in load_batches(named(paths), load, batch_size=config.batch_for(resolved), threads=threads):
        predicted = {} if loaded.images is None else dict(zip(loaded.indices, predict_batch(
            resolved, loaded.images, config, [names[i] for i in loaded.indices])))  # by position: names may repeat
        errors = dict(loaded.failures)
        for position in sorted([*predicted, *errors]):
            if position in predicted:
                yield FileResult(names[position], predicted[position])
            else:
                yield FileResult(names[position], error=errors[position])
