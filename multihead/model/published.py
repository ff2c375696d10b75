"""Published trunk weights: which library a trunk name belongs to, where its weights are on this machine (found
without any network access), reading a state dict from a file without unpickling code, a weights file's sha256, and
whether a state dict fits a network (named mismatches).

:mod:`multihead.model.trunk` builds trunks with these; :mod:`multihead.model.hub` finds ``hf-hub:`` trunks in the
Hugging Face cache.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision

from ..data.preprocessing import Preprocessing

__all__ = ["TrunkWeights", "WeightsUnavailableError", "download_torchvision", "is_file_like",
           "local_weights_file", "read_state_dict", "resolve_torchvision_weights", "source_of",
           "torchvision_preprocessing", "unwrap_state_dict", "weights_mismatch"]

TrunkWeights = Literal["imagenet"] | str | os.PathLike | None
"""``"imagenet"`` (the library's published weights), a weights id such as
``"ResNet18_Weights.IMAGENET1K_V1"``, a local ``.safetensors``/``.pth`` file, or ``None`` for random weights. For
an ``hf-hub:`` trunk ``"imagenet"`` means the weights of its repository, whatever they were trained on."""


class WeightsUnavailableError(RuntimeError):
    """Published weights could not be downloaded, or are not on this machine when downloading is not allowed; the
    message says which file to put where."""


def source_of(name: str) -> str:
    if name in torchvision.models.list_models(module=torchvision.models):
        return "torchvision"
    import timm

    if timm.is_model(name):
        return "timm"
    raise ValueError(
        f"unknown trunk {name!r}: not a torchvision classification model (for example "
        f"{', '.join(torchvision.models.list_models(module=torchvision.models)[:6])}, ...) nor a timm model"
    )


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
    unwrapped = unwrap_state_dict(state)
    if unwrapped is None:
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return unwrapped


def unwrap_state_dict(loaded: Any) -> dict[str, torch.Tensor] | None:
    """The state dict inside what ``torch.load`` returned (training scripts wrap it in ``{"state_dict": ...}`` or
    ``{"model": ...}``), or None when it is not a dict of tensors."""
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return None
    return loaded


def download_torchvision(weights: torchvision.models.WeightsEnum, progress: bool) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=progress, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise WeightsUnavailableError(
            f"could not get {weights} from {weights.url} ({err}). Without network access, copy that file to "
            f"{target}, or pass trunk_weights='path/to/weights.pth' (or .safetensors)"
        ) from None


def local_weights_file(name: str, weights: TrunkWeights = "imagenet") -> Path:
    """Where the published ``weights`` of trunk ``name`` are on this machine, found without any network access.

    torchvision's are looked for in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), timm's in the Hugging
    Face cache (or torch's, for weights timm fetches by URL); a local file must exist.

    Raises:
        WeightsUnavailableError: they are not there; the message names the file to provide and where.
        ValueError: an unknown trunk or weights id.

    Example:
        >>> local_weights_file("mobilenet_v2").name  # doctest: +SKIP
        'mobilenet_v2-b0353104.pth'
    """
    if is_file_like(weights):
        if not Path(weights).is_file():
            raise WeightsUnavailableError(f"trunk weights file {os.fspath(weights)} does not exist")
        return Path(weights)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if source_of(name) == "torchvision":
        enum = resolve_torchvision_weights(name, str(weights))
        target = hub / os.path.basename(enum.url)
        if target.is_file():
            return target
        raise WeightsUnavailableError(f"the published weights {enum} of trunk {name!r} are not on this machine: copy "
                                      f"{target.name} (from {enum.url}) to {target}")
    import timm.models

    if weights != "imagenet":
        raise ValueError(f"timm trunk {name!r} takes weights 'imagenet', a file path, or None; got {weights!r}")
    config = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(config, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [config.hf_hub_filename] if config.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return Path(found)
        raise WeightsUnavailableError(f"the published weights of timm trunk {name!r} are not on this machine: put "
                                      f"{names[0]} of the Hugging Face repository {hub_id} in its cache "
                                      f"(huggingface-cli download {hub_id} {names[0]})")
    url = getattr(config, "url", None)
    if url:
        target = hub / os.path.basename(url)
        if target.is_file():
            return target
        raise WeightsUnavailableError(f"the published weights of timm trunk {name!r} are not on this machine: copy "
                                      f"{target.name} (from {url}) to {target}")
    raise WeightsUnavailableError(f"timm trunk {name!r} has no published weights")


def torchvision_preprocessing(weights: torchvision.models.WeightsEnum) -> Preprocessing:
    """What torchvision's published ``weights`` expect, read from their transforms (crop size, mean, std)."""
    preset = weights.transforms()
    return Preprocessing(image_size=int(preset.crop_size[0]), mean=tuple(preset.mean), std=tuple(preset.std),
                         interpolation="bicubic" if "BICUBIC" in str(preset.interpolation) else "bilinear")


def is_file_like(weights: object) -> bool:
    return isinstance(weights, os.PathLike) or (
        isinstance(weights, str) and (os.sep in weights or weights.endswith((".pth", ".pt", ".safetensors")))
    )


def resolve_torchvision_weights(name: str, weights: str) -> torchvision.models.WeightsEnum:
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


def weights_mismatch(own: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], *,
                     allowed_missing: tuple[str, ...] = (), ignored_unexpected: tuple[str, ...] = ()) -> str | None:
    """What keeps a state dict (names and shapes ``found``) from fitting a network's (``own``), or ``None``."""
    missing = [k for k in own if k not in found and not k.startswith(allowed_missing)]
    unexpected = [k for k in found if k not in own and not k.startswith(ignored_unexpected)]
    wrong = [f"{k} {tuple(found[k])} != {tuple(own[k])}"
             for k in found if k in own and tuple(found[k]) != tuple(own[k])]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        parts.append(f"wrong shapes {wrong[:5]}")
    return "; ".join(parts) or None
