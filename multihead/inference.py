"""From inputs to :class:`Prediction` objects: batching, the device, precision, and ``classify``.

Images are decoded and resized on the CPU as uint8, cross to the device as uint8, and are normalised
there; the trunk may run in reduced precision, the heads always run in float32.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import torch

from .backends import BACKEND_PRECISIONS, BACKENDS, resolve_backend, runtime_for
from .images import ImageError, ImageInput, describe_input, is_path
from .model import HeadOutput, MultiHeadModel
from .trust import decide_joint, statuses, subtype_confidence

__all__ = [
    "FileResult",
    "InferenceConfig",
    "ModelInput",
    "Prediction",
    "classify",
    "classify_files",
    "default_model_path",
    "predict_batch",
    "resolve_model",
    "run_batch",
    "run_features",
]

ModelInput = MultiHeadModel | str | os.PathLike | None
MODEL_ENV = "MULTIHEAD_MODEL"


@dataclass(frozen=True)
class InferenceConfig:
    """How batches run. ``precision`` applies to the trunk only; heads stay float32.

    ``backend`` says what runs the trunk: ``"torch"``, or an exported graph on ``"onnxruntime"`` or
    ``"openvino"`` (:mod:`multihead.backends`). ``"auto"`` (the default) takes OpenVINO, then ONNX Runtime,
    when installed (``pip install 'multihead[openvino]'``) and the device is the CPU, else PyTorch: on this
    project's CPU OpenVINO fp32 gave the same answers as PyTorch fp32 eager, 1.8 to 12.9 times as fast
    (docs/benchmarks.md). ``channels_last=None`` (the default) means channels_last on the CPU, where it was
    measured faster than the contiguous layout with the same answers, and contiguous on CUDA (not yet measured
    there); it applies to the torch backend only. bf16 is faster on a CPU with AVX512-BF16 but changed the
    predicted subtype of too many images to be the default. :meth:`resolve` shows what a device gets.
    """

    batch_size: int = 64
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool | None = None
    tta: bool = False
    """Test-time augmentation: average the joint probabilities over the 8 dihedral views (8x the trunk's work)."""
    backend: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    """What runs the trunk; ``"auto"``: OpenVINO, then ONNX Runtime, when installed and on the CPU, else torch."""

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be True, False or None (per device), got {self.channels_last!r}")
        if self.tta not in (True, False):
            raise ValueError(f"tta must be True or False, got {self.tta!r}")
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend != "auto" and self.precision not in BACKEND_PRECISIONS[self.backend]:
            runs = " or ".join(BACKEND_PRECISIONS[self.backend])
            raise ValueError(f"backend {self.backend!r} runs precision {runs}, got {self.precision!r}")

    def resolve(self, device: str | torch.device) -> InferenceConfig:
        """The concrete settings on ``device``: ``channels_last=None`` and ``backend="auto"`` replaced by the
        device's defaults (the backend also depends on what is installed).

        Example:
            >>> InferenceConfig().resolve("cpu").channels_last, InferenceConfig().resolve("cuda").channels_last
            (True, False)
            >>> InferenceConfig().resolve("cuda").backend
            'torch'
        """
        on_cpu = torch.device(device).type == "cpu"
        return replace(self, channels_last=on_cpu if self.channels_last is None else self.channels_last,
                       backend=resolve_backend(self.backend, self.precision, device))


@dataclass(frozen=True)
class Prediction:
    """One image's answer. ``subtype_probability`` and ``probabilities`` are joint: P(organ) * P(subtype | organ).

    ``status`` says how much of it to trust (see :mod:`multihead.trust`): ``"organ_and_subtype"``,
    ``"organ_only"`` (P(subtype | organ) below the model's subtype threshold) or ``"uncertain"``
    (P(organ) below the router threshold, or out of distribution). Organ and subtype are always filled in.
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
    status: str = "organ_and_subtype"
    subtype_confidence: float = float("nan")
    """P(subtype | organ): the score the subtype threshold is compared with (``organ_probability`` is the router's)."""
    ood_score: float | None = None
    """Squared Mahalanobis distance of the trunk features to the nearest trained organ; ``None`` when the
    model has no fitted out-of-distribution score."""
    out_of_distribution: bool = False
    """The image looks like none of the trained organs' images (``ood_score`` above the model's threshold)."""

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
            "status": self.status,
            "subtype_confidence": self.subtype_confidence,
            "ood_score": self.ood_score,
            "out_of_distribution": self.out_of_distribution,
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


# --- models -----------------------------------------------------------------------------------------

def default_model_path() -> Path | None:
    """The model shipped inside the package, if this installation has one."""
    candidate = resources.files("multihead") / "weights" / "default.safetensors"
    return Path(str(candidate)) if candidate.is_file() else None


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> MultiHeadModel:
    from .checkpoint import load

    return load(path)


def resolve_model(model: ModelInput = None) -> MultiHeadModel:
    """A model object, a checkpoint path, or ``None``: ``$MULTIHEAD_MODEL``, then the bundled default."""
    if isinstance(model, MultiHeadModel):
        return model
    if model is None:
        model = os.environ.get(MODEL_ENV) or default_model_path()
        if model is None:
            raise ValueError(
                "no model given and no default model is installed: pass model='path/to/model.safetensors', "
                f"set {MODEL_ENV}, or train one with `multihead train DATA_DIR --out model.safetensors`"
            )
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).resolve()
        if not path.is_file():
            raise ValueError(f"{model}: model checkpoint does not exist")
        stat = path.stat()
        return _load_cached(str(path), stat.st_mtime_ns, stat.st_size)
    raise TypeError(f"model must be a MultiHeadModel, a checkpoint path or None, got {type(model).__name__}")


# --- batches ----------------------------------------------------------------------------------------

def run_features(model: MultiHeadModel, batch: torch.Tensor,
                 config: InferenceConfig = InferenceConfig()) -> torch.Tensor:
    """A uint8 batch ``[B, 3, S, S]`` (any device) -> float32 pooled trunk features, under ``inference_mode``.

    ``channels_last`` lays out the input only; the model is never changed here. Converting it too
    (``model.to(memory_format=torch.channels_last)``) is faster still, but its conv weights then need
    ``.contiguous()`` before safetensors' ``save_file`` (``multihead.checkpoint`` already does that).
    """
    if batch.ndim != 4 or batch.shape[1] != 3 or batch.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch of shape [B, 3, S, S], got {batch.dtype} {tuple(batch.shape)}")
    if batch.shape[0] == 0:
        raise ValueError("empty batch: at least one image is needed")
    device = model.device
    resolved = config.resolve(device)
    if resolved.backend != "torch":
        runtime = runtime_for(model, resolved.backend, resolved.precision, fallback=config.backend == "auto")
        if runtime is not None:
            return runtime.features(batch).to(device)
    config = resolved
    with torch.inference_mode():
        batch = batch.to(device, non_blocking=True)
        if config.channels_last:  # in uint8, before normalising: a quarter of the bytes to move
            batch = batch.contiguous(memory_format=torch.channels_last)
        images = model.preprocessing.normalize(batch)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            features = model.forward_features(images)
        return features.float()


def run_batch(model: MultiHeadModel, batch: torch.Tensor, config: InferenceConfig = InferenceConfig()) -> HeadOutput:
    """A uint8 batch ``[B, 3, S, S]`` (any device) -> :class:`HeadOutput`, under ``inference_mode``."""
    features = run_features(model, batch, config)
    with torch.inference_mode():
        return model.forward_heads(features)


def predict_batch(model: MultiHeadModel, batch: torch.Tensor, config: InferenceConfig = InferenceConfig(),
                  sources: Sequence[str | None] | None = None) -> list[Prediction]:
    """A uint8 batch -> one :class:`Prediction` per image, with its trust status and OOD score.

    With ``config.tta`` the joint probabilities are averaged over the 8 dihedral views; the OOD score
    always comes from the image as it is (the view its threshold was fitted on).
    """
    features = run_features(model, batch, config)
    with torch.inference_mode():
        output = model.forward_heads(features)
        ood = model.ood_score(features).double().cpu() if model.ood_fitted else None
        if config.tta:
            from .features import VIEWS, apply_view  # features imports this module

            joint = output.joint_probs.double()
            for view in VIEWS[1:]:
                joint += model.forward_heads(run_features(model, apply_view(batch, view), config)).joint_probs.double()
            joint = (joint / len(VIEWS)).cpu()
            organ_index, subtype_index = decide_joint(model, joint)
        else:
            joint = output.joint_probs.double().cpu()
            organ_index, subtype_index = (t.cpu() for t in model.decide(output))
    organ_probs = torch.zeros(joint.shape[0], model.taxonomy.num_organs, dtype=joint.dtype)
    organ_probs.index_add_(1, model._subtype_organ.cpu(), joint)
    _, conditional = subtype_confidence(model, joint, organ_index, subtype_index)
    flagged = ood > float(model.ood_threshold) if ood is not None else None
    status = statuses(model, organ_probs.gather(1, organ_index.unsqueeze(1)).squeeze(1), conditional, flagged)
    organs, subtypes = model.taxonomy.organ_names, model.taxonomy.subtype_names
    untrained = tuple(o for o in organs if o not in model.available_organs)
    predictions = []
    for row, (o, s) in enumerate(zip(organ_index.tolist(), subtype_index.tolist())):
        predictions.append(Prediction(
            organ=organs[o], organ_probability=float(organ_probs[row, o]),
            subtype=subtypes[s], subtype_probability=float(joint[row, s]),
            probabilities=dict(zip(subtypes, joint[row].tolist())),
            organ_probabilities=dict(zip(organs, organ_probs[row].tolist())),
            source=None if sources is None else sources[row], untrained_organs=untrained,
            status=status[row], subtype_confidence=float(conditional[row]),
            ood_score=None if ood is None else float(ood[row]),
            out_of_distribution=False if flagged is None else bool(flagged[row]),
        ))
    return predictions


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def classify(img: ImageInput | Sequence[ImageInput], model: ModelInput = None, *,
             batch_size: int | None = None, device: str | torch.device | None = None,
             config: InferenceConfig | None = None, tta: bool | None = None) -> Prediction | list[Prediction]:
    """Classify one image or a list of images in one forward pass each batch.

    Args:
        img: a path, ``PIL.Image``, numpy array (HxW or HxWxC uint8), torch tensor (CxHxW), or a list.
        model: a loaded model, a checkpoint path, or ``None`` for ``$MULTIHEAD_MODEL`` / the default model.
        batch_size: images per forward pass for lists (default from ``config``).
        device: move the model there first (default: where it is).
        tta: average over the 8 dihedral views (default from ``config``): steadier answers, 8x the time.

    Returns:
        A :class:`Prediction`, or a list of them for a list input.

    Raises:
        ImageError: an input is not a readable image (the message names it).

    Example:
        >>> prediction = multihead.classify("slide.jpg", model="model.safetensors")  # doctest: +SKIP
        >>> prediction.organ, prediction.subtype
        ('lung_colon', 'lung_aca')
    """
    resolved = resolve_model(model)
    if device is not None:
        resolved = resolved.to(device)
    config = config or InferenceConfig()
    if batch_size is not None:
        config = replace(config, batch_size=batch_size)
    if tta is not None:
        config = replace(config, tta=tta)
    single = not isinstance(img, (list, tuple))
    items = [img] if single else list(img)
    if not items:
        return []
    predictions: list[Prediction] = []
    for chunk in _chunks(items, config.batch_size):
        batch = torch.stack([resolved.preprocessing.load(item) for item in chunk])
        sources = [describe_input(item) if is_path(item) else None for item in chunk]
        predictions.extend(predict_batch(resolved, batch, config, sources))
    return predictions[0] if single else predictions


def classify_files(paths: Iterable[str | os.PathLike], model: ModelInput = None, *,
                   config: InferenceConfig | None = None) -> Iterator[FileResult]:
    """Classify files a batch at a time, in order. A file that cannot be read becomes a
    :class:`FileResult` with an ``error`` and the run goes on."""
    resolved = resolve_model(model)
    config = config or InferenceConfig()
    pending: list[tuple[str, torch.Tensor | None, str | None]] = []

    def flush() -> Iterator[FileResult]:
        good = [(name, tensor) for name, tensor, _ in pending if tensor is not None]
        predicted: Iterator[Prediction] = iter([])
        if good:  # matched back by position: two inputs may share a name
            names = [name for name, _ in good]
            predicted = iter(predict_batch(resolved, torch.stack([tensor for _, tensor in good]), config, names))
        for name, tensor, error in pending:
            yield FileResult(name, error=error) if tensor is None else FileResult(name, next(predicted))
        pending.clear()

    loaded = 0
    for path in paths:
        name = describe_input(path)
        try:
            pending.append((name, resolved.preprocessing.load(path), None))
            loaded += 1
        except ImageError as err:
            pending.append((name, None, str(err)))
        if loaded == config.batch_size:
            yield from flush()
            loaded = 0
    if pending:
        yield from flush()
