"""The frozen trunk: any torchvision or timm classifier with its final layer removed.

The trunk never learns by itself: its parameters need no gradient and it stays in eval mode (BatchNorm
statistics never move) even inside a model put in train mode. That is what makes cached features valid.
Tuning its top stages is done from outside, explicitly (:mod:`multihead.training.tune`), and recorded
(:meth:`Trunk.mark_tuned`).
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn

from ..data.preprocessing import Preprocessing

__all__ = ["AUTO_STAGES", "Trunk", "TrunkWeights", "WeightsUnavailableError", "create_trunk",
           "fingerprint_state_dict"]

TrunkWeights = Literal["imagenet"] | str | os.PathLike | None
"""``"imagenet"`` (the library's published weights), a weights id such as
``"ResNet18_Weights.IMAGENET1K_V1"``, a local ``.safetensors``/``.pth`` file, or ``None`` for random weights."""


AUTO_STAGES = {
    "mobilenet_v2": ("features.3", "features.6", "features.10", "features.13", "features.16", "features.17"),
    **{name: ("layer1", "layer2", "layer3") for name in ("resnet18", "resnet34", "resnet50", "resnet101")},
}
"""``stages="auto"`` for torchvision trunks: the last block of every stage before the final one (timm
trunks take theirs from ``feature_info``)."""


class WeightsUnavailableError(RuntimeError):
    """Published weights could not be downloaded; the message says where to put the file instead."""


def fingerprint_state_dict(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: equal weights, equal fingerprint."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Trunk(nn.Module):
    """A frozen feature extractor: normalised images ``[B, 3, S, S]`` -> pooled features ``[B, num_features]``.

    Build it with :func:`create_trunk`. ``weights_id`` names published weights that anyone can fetch again
    (a checkpoint then stores only the id and fingerprint); ``None`` means the weights must travel with
    the checkpoint (a local file, random init, anything else).

    ``stages`` names inner modules (``"features.13"``, ``"layer3"``) whose outputs are average-pooled and
    put before the network's own pooled features: texture statistics from earlier stages, for the price
    of a mean over maps the forward pass computes anyway (docs/accuracy.md measures what they add).
    """

    def __init__(self, network: nn.Module, *, name: str, source: str, num_features: int,
                 preprocessing: Preprocessing, weights_id: str | None = None, stages: Sequence[str] = ()) -> None:
        super().__init__()
        self.network = network
        self.name = name
        self.source = source
        self.preprocessing = preprocessing
        self.weights_id = weights_id
        self.stages = tuple(stages)
        self.tuned_from: str | None = None
        """The first module whose weights were tuned after the published weights were loaded (None: frozen)."""
        self._captured = threading.local()  # per-thread: one trunk may serve several threads
        for stage in self.stages:
            try:
                module = network.get_submodule(stage)
            except AttributeError:
                raise ValueError(f"trunk {name!r} has no module {stage!r} to pool features from") from None
            module.register_forward_hook(self._capture)
        self.num_features = num_features + self._stage_channels()
        self._fingerprint: str | None = None
        self.requires_grad_(False)
        super().train(False)

    def __getstate__(self) -> dict[str, object]:  # threading.local cannot be copied or pickled
        state = self.__dict__.copy()
        state["_captured"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._captured = threading.local()

    def _capture(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        pooled = getattr(self._captured, "pooled", None)
        if pooled is not None:
            pooled.append(output.mean((2, 3)))

    def _stage_channels(self) -> int:
        """Channels of the pooled stages, from one small forward pass (shapes are not declared anywhere)."""
        if not self.stages:
            return 0
        with torch.no_grad():
            self._captured.pooled = []
            try:
                self.network.eval()(torch.zeros(1, 3, 64, 64))
                return sum(p.shape[1] for p in self._captured.pooled)
            except (RuntimeError, IndexError) as err:  # a stage whose output is no [B, C, H, W] feature map
                raise ValueError(f"trunk {self.name!r}: cannot pool stages {list(self.stages)}; each must output "
                                 f"feature maps [B, C, H, W] ({err})") from None
            finally:
                self._captured.pooled = None

    def train(self, mode: bool = True) -> Trunk:
        """Stay in eval mode whatever is asked: a frozen trunk's BatchNorm statistics never change."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.stages:
            return self.network(images).flatten(1)
        self._captured.pooled = []
        try:
            final = self.network(images).flatten(1)
            return torch.cat([*self._captured.pooled, final], 1)
        finally:
            self._captured.pooled = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the weights (computed once; the trunk is frozen)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_state_dict(self.network.state_dict())
        return self._fingerprint

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Strictly load a feature-extractor state dict (the form checkpoints embed)."""
        _strict_load(self.network, state, allowed_missing=(), what=f"trunk {self.name!r}")
        self._fingerprint = None

    def mark_tuned(self, tune_from: str) -> None:
        """Record that the stages from ``tune_from`` up were tuned: the weights are no longer the published ones
        (so checkpoints embed them) and the fingerprint is computed again."""
        self.tuned_from = tune_from
        self.weights_id = None
        self._fingerprint = None

    def spec(self) -> dict[str, object]:
        spec: dict[str, object] = {
            "name": self.name,
            "source": self.source,
            "weights_id": self.weights_id,
            "fingerprint": self.fingerprint,
            "num_features": self.num_features,
            "stages": list(self.stages),
        }
        if self.tuned_from is not None:  # only when tuned: frozen trunks keep their headers as they were
            spec["tuned_from"] = self.tuned_from
        return spec

    def extra_repr(self) -> str:
        stages = f", stages={list(self.stages)}" if self.stages else ""
        tuned = f", tuned_from={self.tuned_from!r}" if self.tuned_from else ""
        return (f"name={self.name!r}, source={self.source!r}, weights_id={self.weights_id!r}, "
                f"num_features={self.num_features}{stages}{tuned}")


# --- building ---------------------------------------------------------------------------------------

def _source_of(name: str) -> str:
    if name in torchvision.models.list_models(module=torchvision.models):
        return "torchvision"
    import timm

    if timm.is_model(name):
        return "timm"
    raise ValueError(
        f"unknown trunk {name!r}: not a torchvision classification model (for example "
        f"{', '.join(torchvision.models.list_models(module=torchvision.models)[:6])}, ...) nor a timm model"
    )


def _last_linear(network: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in network.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(network).__name__} has no final linear layer to remove")
    return found[-1]


def _strict_load(network: nn.Module, state: dict[str, torch.Tensor], *, allowed_missing: tuple[str, ...],
                 what: str, ignored_unexpected: tuple[str, ...] = ()) -> None:
    own = network.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(allowed_missing)]
    unexpected = [k for k in state if k not in own and not k.startswith(ignored_unexpected)]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:5]}")
        raise ValueError(f"weights do not fit {what}: " + "; ".join(parts))
    network.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt`` state dict without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: trunk weights file does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types here, pickle refusals among them
        raise ValueError(f"{path}: not a state dict torch can load with weights_only=True ({err})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return state


def _download_torchvision(weights: torchvision.models.WeightsEnum, progress: bool) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=progress, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise WeightsUnavailableError(
            f"could not get {weights} from {weights.url} ({err}). Without network access, copy that file to "
            f"{target}, or pass trunk_weights='path/to/weights.pth' (or .safetensors)"
        ) from None


def create_trunk(name: str = "resnet18", *, weights: TrunkWeights = "imagenet", stages: Sequence[str] | str = (),
                 progress: bool = False) -> Trunk:
    """Build a frozen trunk by name, with its preprocessing.

    Args:
        name: a torchvision classification model (``resnet18``, ``mobilenet_v2``, ...) or a timm model.
        weights: ``"imagenet"`` (torchvision's default weights enum and cache, or timm's pretrained
            weights), a torchvision weights id, a local ``.safetensors`` / ``.pth`` file, or ``None``
            for random weights.
        stages: inner modules whose average-pooled outputs join the features (see :class:`Trunk`), or
            ``"auto"`` for the end of every stage but the last (:data:`AUTO_STAGES`).
        progress: show a download progress bar.

    Example:
        >>> trunk = create_trunk("resnet18", weights=None)
        >>> trunk.num_features
        512
    """
    source = _source_of(name)
    if source == "timm":
        return _create_timm_trunk(name, weights, stages)
    network = torchvision.models.get_model(name, weights=None)
    classifier_name, classifier = _last_linear(network)
    weights_id, preprocessing = None, Preprocessing()
    if weights is not None and not _is_file_like(weights):
        enum = _resolve_torchvision_weights(name, str(weights))
        network.load_state_dict(_download_torchvision(enum, progress))
        weights_id = str(enum)
        preset = enum.transforms()
        preprocessing = Preprocessing(
            image_size=int(preset.crop_size[0]), mean=tuple(preset.mean), std=tuple(preset.std),
            interpolation="bicubic" if "BICUBIC" in str(preset.interpolation) else "bilinear",
        )
    elif weights is not None:
        _strict_load(network, read_state_dict(weights), allowed_missing=(classifier_name + ".",),
                     ignored_unexpected=(classifier_name + ".",), what=f"torchvision {name!r} ({weights})")
    _replace_module(network, classifier_name, nn.Identity())
    if stages == "auto":
        if name not in AUTO_STAGES:
            raise ValueError(f"no automatic stages for trunk {name!r} (known: {', '.join(AUTO_STAGES)}); "
                             "name the modules to pool, for example stages=('layer2', 'layer3')")
        stages = AUTO_STAGES[name]
    return Trunk(network, name=name, source="torchvision", num_features=classifier.in_features,
                 preprocessing=preprocessing, weights_id=weights_id, stages=stages)


def _is_file_like(weights: object) -> bool:
    return isinstance(weights, os.PathLike) or (
        isinstance(weights, str) and (os.sep in weights or weights.endswith((".pth", ".pt", ".safetensors")))
    )


def _resolve_torchvision_weights(name: str, weights: str) -> torchvision.models.WeightsEnum:
    if weights == "imagenet":
        return torchvision.models.get_model_weights(name).DEFAULT
    try:
        enum = torchvision.models.get_weight(weights)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(
            f"unknown trunk weights {weights!r}: expected 'imagenet', a weights id such as "
            f"{torchvision.models.get_model_weights(name).DEFAULT}, a file path, or None"
        ) from None
    if type(enum) is not torchvision.models.get_model_weights(name):
        raise ValueError(f"weights {weights!r} belong to another architecture than {name!r}")
    return enum


def _replace_module(network: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    setattr(network.get_submodule(parent_name) if parent_name else network, child, new)


def _create_timm_trunk(name: str, weights: TrunkWeights, stages: Sequence[str] | str) -> Trunk:
    import timm

    pretrained = weights is not None and not _is_file_like(weights)
    if pretrained and weights != "imagenet":
        raise ValueError(f"timm trunk {name!r} takes weights 'imagenet', a file path, or None; got {weights!r}")
    try:
        network = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except (OSError, RuntimeError) as err:
        raise WeightsUnavailableError(
            f"could not get pretrained weights for timm model {name!r} ({err}); "
            "pass trunk_weights='path/to/weights.safetensors' instead"
        ) from None
    if _is_file_like(weights):
        classifier = network.pretrained_cfg.get("classifier", "head")
        _strict_load(network, read_state_dict(weights), allowed_missing=(), ignored_unexpected=(classifier + ".",),
                     what=f"timm {name!r} ({weights})")
    config = timm.data.resolve_data_config({}, model=network)
    preprocessing = Preprocessing(
        image_size=int(config["input_size"][-1]), mean=tuple(config["mean"]), std=tuple(config["std"]),
        interpolation="bicubic" if config.get("interpolation") == "bicubic" else "bilinear",
    )
    weights_id = f"timm/{network.pretrained_cfg.get('hf_hub_id') or name}" if pretrained else None
    if stages == "auto":
        stages = [info["module"] for info in getattr(network, "feature_info", [])[:-1]]
    return Trunk(network, name=name, source="timm", num_features=network.num_features,
                 preprocessing=preprocessing, weights_id=weights_id, stages=stages)
