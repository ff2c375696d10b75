"""The frozen trunk: any torchvision or timm classifier with its final layer removed, or a timm model from the local
Hugging Face cache (``hf-hub:ORG/NAME``, :mod:`multihead.model.hub`).

The trunk never learns by itself: its parameters need no gradient and it stays in eval mode (BatchNorm
statistics never move) even inside a model put in train mode. That is what makes cached features valid.
Tuning its top stages is done from outside, explicitly (:mod:`multihead.training.tune`), and recorded
(:meth:`Trunk.mark_tuned`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..data.preprocessing import Preprocessing
from .hub import (
    WEIGHTS_FILES,
    HubCacheError,
    build_network,
    download_command,
    find_snapshot,
    preprocessing_args,
    stream_weights,
)
from .published import (
    TrunkWeights,
    WeightsUnavailableError,
    download_torchvision,
    is_file_like,
    local_weights_file,
    read_state_dict,
    resolve_torchvision_weights,
    source_of,
    torchvision_preprocessing,
    weights_mismatch,
)
from .trunk_specs import AUTO_STAGES, HUB_PREFIX, TOKENS, derived_stages, has_class_token, trunk_spec

__all__ = ["AUTO_STAGES", "TOKENS", "Trunk", "TrunkWeights", "WeightsUnavailableError", "check_hub_trunk",
           "create_trunk", "fingerprint_state_dict", "hub_trunk_from_record", "local_weights_file",
           "read_state_dict"]


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
    of a mean over maps the forward pass computes anyway (docs/accuracy.md measures what they add). For a
    transformer, ``stages=("cls+mean",)`` (:data:`TOKENS`) gives its class token and the mean of its patch tokens
    side by side instead of its pooled output.

    ``hub``: where a trunk from the Hugging Face hub came from (:func:`multihead.model.hub.check_record`), which
    checkpoints keep.
    """

    def __init__(self, network: nn.Module, *, name: str, source: str, num_features: int,
                 preprocessing: Preprocessing, weights_id: str | None = None, stages: Sequence[str] = (),
                 hub: dict[str, object] | None = None) -> None:
        super().__init__()
        self.network = network
        self.name = name
        self.source = source
        self.preprocessing = preprocessing
        self.weights_id = weights_id
        self.stages = tuple(stages)
        self.hub = hub
        self.tuned_from: str | None = None
        """The first module whose weights were tuned after the published weights were loaded (None: frozen)."""
        self.fixed_size: int | None = None
        """The only input side the network takes (a vision transformer built without ``dynamic_img_size``)."""
        self._captured = threading.local()  # per-thread: one trunk may serve several threads
        self.tokens = TOKENS in self.stages
        if self.tokens and (len(self.stages) > 1 or not has_class_token(network)):
            raise ValueError(f"trunk {name!r} cannot pool stages {list(self.stages)}: {TOKENS!r} pools the class token "
                             "and patch tokens of a transformer that has a class token, alone")
        for stage in () if self.tokens else self.stages:
            try:
                module = network.get_submodule(stage)
            except AttributeError:
                raise ValueError(f"trunk {name!r} has no module {stage!r} to pool features from") from None
            module.register_forward_hook(self._capture)
        self.num_features = 2 * num_features if self.tokens else num_features + self._stage_channels()
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
        if not self.stages or self.tokens:
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
        if self.tokens:  # [class token | mean of the patch tokens], after the final norm
            tokens = self.network.forward_features(images)
            return torch.cat([tokens[:, 0], tokens[:, self.network.num_prefix_tokens:].mean(1)], 1)
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
        if self.hub is not None:  # only from the hub: other trunks keep their headers as they were
            spec["hub"] = dict(self.hub)
        return spec

    def extra_repr(self) -> str:
        stages = f", stages={list(self.stages)}" if self.stages else ""
        tuned = f", tuned_from={self.tuned_from!r}" if self.tuned_from else ""
        return (f"name={self.name!r}, source={self.source!r}, weights_id={self.weights_id!r}, "
                f"num_features={self.num_features}{stages}{tuned}")


# --- building ---------------------------------------------------------------------------------------

def _last_linear(network: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in network.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(network).__name__} has no final linear layer to remove")
    return found[-1]


def _strict_load(network: nn.Module, state: dict[str, torch.Tensor], *, allowed_missing: tuple[str, ...],
                 what: str, ignored_unexpected: tuple[str, ...] = ()) -> None:
    own = network.state_dict()
    problem = weights_mismatch({k: tuple(v.shape) for k, v in own.items()},
                               {k: tuple(v.shape) for k, v in state.items()},
                               allowed_missing=allowed_missing, ignored_unexpected=ignored_unexpected)
    if problem:
        raise ValueError(f"weights do not fit {what}: {problem}")
    network.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def create_trunk(name: str = "resnet18", *, weights: TrunkWeights = "imagenet", stages: Sequence[str] | str = (),
                 progress: bool = False, download: bool = True) -> Trunk:
    """Build a frozen trunk by name, with its preprocessing.

    Args:
        name: a torchvision classification model (``resnet18``, ``mobilenet_v2``, ...), a timm model, or
            ``hf-hub:ORG/NAME[@REVISION]``: a timm model in the local Hugging Face cache (never downloaded;
            :mod:`multihead.model.hub`), preprocessed as its pretrained config says.
        weights: ``"imagenet"`` (torchvision's default weights enum and cache, timm's pretrained weights, or a
            hub repository's own), a torchvision weights id, a local ``.safetensors`` / ``.pth`` file, or ``None``
            for random weights.
        stages: inner modules whose average-pooled outputs join the features (see :class:`Trunk`), ``"cls+mean"``
            for a transformer's class token and mean of patch tokens, or ``"auto"``: what the trunk's spec says
            (:mod:`multihead.model.trunk_specs`; without one, the end of every stage but the last of a timm CNN,
            the tokens of a transformer with a class token).
        progress: show a download progress bar.
        download: fetch published weights that are not on this machine; with ``False`` they must be there
            already (:func:`local_weights_file`), or :class:`WeightsUnavailableError` names the file to provide.
            Loading a checkpoint never downloads; ``hf-hub:`` trunks are never downloaded.

    Example:
        >>> trunk = create_trunk("resnet18", weights=None)
        >>> trunk.num_features
        512
    """
    if isinstance(stages, str) and stages != "auto":  # one module name, or "cls+mean"
        stages = (stages,)
    if name.startswith(HUB_PREFIX):
        return _create_hub_trunk(name, weights, stages)
    source = source_of(name)
    local = None if download or weights is None or is_file_like(weights) else local_weights_file(name, weights)
    if source == "timm":
        return _create_timm_trunk(name, weights, stages, local)
    network = torchvision.models.get_model(name, weights=None)
    classifier_name, classifier = _last_linear(network)
    spec = trunk_spec(name)  # its preprocessing: what every published weights of the trunk expects (tests check)
    weights_id = None
    preprocessing = Preprocessing(**(spec.preprocessing if spec and spec.preprocessing is not None else {}))
    if weights is not None and not is_file_like(weights):
        enum = resolve_torchvision_weights(name, str(weights))
        network.load_state_dict(download_torchvision(enum, progress) if local is None else read_state_dict(local))
        weights_id = str(enum)
        if spec is None or spec.preprocessing is None:  # no spec: what the weights' own transforms say
            preprocessing = torchvision_preprocessing(enum)
    elif weights is not None:
        _strict_load(network, read_state_dict(weights), allowed_missing=(classifier_name + ".",),
                     ignored_unexpected=(classifier_name + ".",), what=f"torchvision {name!r} ({weights})")
    _replace_module(network, classifier_name, nn.Identity())
    if stages == "auto":
        if name not in AUTO_STAGES:  # the CNNs with a spec (multihead.model.trunk_specs)
            raise ValueError(f"no automatic stages for trunk {name!r} (known: {', '.join(AUTO_STAGES)}); "
                             "name the modules to pool, for example stages=('layer2', 'layer3')")
        stages = AUTO_STAGES[name]
    return Trunk(network, name=name, source="torchvision", num_features=classifier.in_features,
                 preprocessing=preprocessing, weights_id=weights_id, stages=stages)


def _replace_module(network: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    setattr(network.get_submodule(parent_name) if parent_name else network, child, new)


def _create_timm_trunk(name: str, weights: TrunkWeights, stages: Sequence[str] | str, local: Path | None) -> Trunk:
    import timm

    pretrained = weights is not None and not is_file_like(weights)
    if pretrained and weights != "imagenet":
        raise ValueError(f"timm trunk {name!r} takes weights 'imagenet', a file path, or None; got {weights!r}")
    overlay = {"file": str(local)} if local is not None else None  # timm reads that file: no hub, no network
    try:
        network = timm.create_model(name, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError) as err:
        raise WeightsUnavailableError(
            f"could not get pretrained weights for timm model {name!r} ({err}); "
            "pass trunk_weights='path/to/weights.safetensors' instead"
        ) from None
    if is_file_like(weights):
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
        spec = trunk_spec(name)
        stages = spec.stages if spec is not None else derived_stages(network, feature_info=True)
    trunk = Trunk(network, name=name, source="timm", num_features=network.num_features,
                  preprocessing=preprocessing, weights_id=weights_id, stages=stages)
    trunk.fixed_size = _fixed_size(network)
    return trunk


def _fixed_size(network: nn.Module) -> int | None:
    """The only input side a timm vision transformer takes (its patch embedding is strict about it), or None."""
    embed = getattr(network, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    return int(size[-1]) if getattr(embed, "strict_img_size", False) and size else None


# --- trunks from the Hugging Face hub cache (multihead.model.hub) ------------------------------------------

def _create_hub_trunk(name: str, weights: TrunkWeights, stages: Sequence[str] | str) -> Trunk:
    snapshot = find_snapshot(name)
    if weights is not None and not is_file_like(weights) and weights != "imagenet":
        raise ValueError(f"hub trunk {name!r} takes weights 'imagenet' (its repository's own), a file path, or None; "
                         f"got {weights!r}")
    if is_file_like(weights) and not Path(weights).is_file():
        raise ValueError(f"{os.fspath(weights)}: trunk weights file does not exist")
    with torch.device("meta"):  # an architecture timm cannot build is named before any weights are looked at
        build_network(snapshot.record())
    if weights == "imagenet" and snapshot.weights is None:
        raise HubCacheError(f"hub trunk {snapshot.repo_id} at revision {snapshot.revision} has no weights file "
                            f"({' or '.join(WEIGHTS_FILES)}) in the Hugging Face cache ({snapshot.folder}): on a "
                            f"machine with network run {download_command(snapshot.repo_id, snapshot.revision)}")
    own = snapshot.weights if weights == "imagenet" else None
    trunk = _hub_trunk(snapshot.record(own), stages, Preprocessing(**preprocessing_args(snapshot)),
                       own or (Path(weights) if weights is not None else None), referenced=own is not None)
    return trunk


def check_hub_trunk(name: str, *, weights: TrunkWeights = "imagenet", stages: Sequence[str] | str = ()) -> None:
    """Raise what :func:`create_trunk` would raise about hub trunk ``name`` (not in the cache, a revision it does not
    hold, no pretrained config, an architecture timm cannot build, stages it cannot pool), without reading weights:
    the network is built on the meta device.

    Raises:
        multihead.model.hub.HubCacheError: the repository, revision or weights file is not in the cache.
        ValueError: anything else, one sentence naming it.
    """
    snapshot = find_snapshot(name)
    if weights == "imagenet" and snapshot.weights is None:
        _create_hub_trunk(name, weights, stages)  # raises, naming the file to get
    with torch.device("meta"):
        _hub_trunk(snapshot.record(), stages, Preprocessing(**preprocessing_args(snapshot)), None, referenced=False)


def hub_trunk_from_record(record: dict[str, object], *, weights: Path | None = None, stages: Sequence[str] = (),
                          preprocessing: Preprocessing | None = None) -> Trunk:
    """A hub trunk rebuilt from a checkpoint's record of it (:func:`multihead.model.hub.check_record`): its
    architecture and arguments come from the record, so no cache is needed unless ``weights`` is given: the record's
    own weights file, found and checked by :func:`multihead.model.hub.cached_weights` (the trunk is then referenced
    again when saved). ``None``: no weights read (the caller loads embedded ones)."""
    return _hub_trunk(record, stages, preprocessing or Preprocessing(), weights, referenced=weights is not None)


def _hub_trunk(record: dict[str, object], stages: Sequence[str] | str, preprocessing: Preprocessing,
               weights: Path | None, *, referenced: bool) -> Trunk:
    """The trunk a hub record describes; ``weights`` streamed into it (``referenced``: they are the record's file)."""
    name = f"{HUB_PREFIX}{record['id']}"
    network = build_network(record)
    if weights is not None:
        stream_weights(network, weights, what=f"hub trunk {record['id']} ({Path(weights).name})")
    if stages == "auto":
        spec = trunk_spec(name)
        stages = spec.stages if spec is not None else derived_stages(network, feature_info=True)
    if TOKENS not in stages and getattr(network, "global_pool", None) == "":
        raise ValueError(f"hub trunk {record['id']} pools none of its tokens (global_pool ''), so its output is no "
                         f"feature vector: use stages='{TOKENS}' (its class token and mean of patch tokens)")
    trunk = Trunk(network, name=name, source="timm", num_features=network.num_features, preprocessing=preprocessing,
                  weights_id=f"{name}@{record['revision']}" if referenced else None, stages=stages, hub=dict(record))
    trunk.fixed_size = _fixed_size(network)
    return trunk
