"""One ``.safetensors`` file per model: metadata first, tensors second, nothing ever unpickled.

The header (string -> string, structured values as JSON) is read and checked before any tensor is
touched, so an incompatible file fails with one sentence naming the mismatch. A trunk with published
weights (a torchvision weights id) is referenced by id and fingerprint; any other trunk is embedded.
Writes go to a temporary file in the same folder and are renamed into place, so an interrupted save
leaves the old file or the new one, never half of one.

Format 2 names the post-hoc buffers after the estimators that own them (``temperature.logit_scale``,
``thresholds.router``, ``ood.threshold``, ...); format 1 files, which had them flat on the model
(``logit_scale``, ``router_threshold``, ``ood_threshold``, ...), load with their keys mapped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._io import atomic_path
from .._precision import STORAGE_DTYPES
from ..data.preprocessing import Preprocessing
from ..taxonomy import Taxonomy
from .heads import MultiHeadModel
from .trunk import create_trunk, fingerprint_state_dict

__all__ = ["FORMAT_VERSION", "CheckpointError", "head_state", "load", "model_header", "read_header", "save"]

FORMAT = "multihead"
FORMAT_VERSION = 2
FORMAT_1_KEYS = {
    "logit_scale": "temperature.logit_scale",
    "router_threshold": "thresholds.router",
    "subtype_threshold": "thresholds.subtype",
    "ood_mean": "ood.mean",
    "ood_projection": "ood.projection",
    "ood_class_means": "ood.class_means",
    "ood_organ_scale": "ood.organ_scale",
    "ood_threshold": "ood.threshold",
}
"""Format 1 key -> format 2 key (the buffers moved from the model into the estimators that own them)."""
OPTIONAL_KEYS = {1: frozenset({"ood_organ_scale"})}
"""Per format: stored keys added after it was fixed; a file without them loads with their defaults."""


def head_state(model: MultiHeadModel) -> dict[str, torch.Tensor]:
    """Every tensor of the state dict but the trunk's (heads, mask, estimators), detached CPU copies."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if not k.startswith("trunk.")}


def model_header(model: MultiHeadModel, *, trunk_spec: dict[str, Any] | None = None) -> dict[str, str]:
    """What a file must say about the model it holds, as strings: taxonomy, trunk, preprocessing, joint rule
    and the heads' checksum. Checkpoints and exported ONNX graphs both carry it (and check it on reading)."""
    return {
        "taxonomy": model.taxonomy.to_json(),
        "trunk": json.dumps(model.trunk.spec() if trunk_spec is None else trunk_spec, sort_keys=True),
        "preprocessing": model.preprocessing.to_json(),
        "joint": model.joint,
        "heads_sha256": fingerprint_state_dict(head_state(model)),
    }


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit; the message names the file and the mismatch."""


def _trunk_state_as_stored(model: MultiHeadModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
            for k, v in model.trunk.network.state_dict().items()}


def save(model: MultiHeadModel, path: str | os.PathLike, *, embed_trunk: bool | None = None,
         trunk_dtype: str = "float32") -> None:
    """Write ``model`` to ``path`` atomically, as one ``.safetensors`` file.

    Example:
        >>> multihead.save(multihead.create_model(trunk_weights=None), "model.safetensors")  # doctest: +SKIP

    Args:
        embed_trunk: store the trunk's weights in the file. Default: only when the trunk has no
            published weights id (a local file, random init, ...).
        trunk_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for an embedded trunk (smaller
            files; the stored fingerprint is that of the rounded weights, which loading restores).
    """
    if trunk_dtype not in STORAGE_DTYPES:
        raise ValueError(f"trunk_dtype must be one of {sorted(STORAGE_DTYPES)}, got {trunk_dtype!r}")
    if not isinstance(model, MultiHeadModel):
        raise TypeError(f"save writes a MultiHeadModel, got {type(model).__name__}")
    trunk = model.trunk
    embed = trunk.weights_id is None if embed_trunk is None else embed_trunk
    tensors = head_state(model)
    fingerprint = trunk.fingerprint
    if embed:
        stored = _trunk_state_as_stored(model, STORAGE_DTYPES[trunk_dtype])
        fingerprint = fingerprint_state_dict(_restore_dtypes(stored, model.trunk.network.state_dict()))
        tensors.update({f"trunk.{k}": v for k, v in stored.items()})
    trunk_spec = {**trunk.spec(), "fingerprint": fingerprint, "embedded": embed, "stored_dtype": trunk_dtype}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        **model_header(model, trunk_spec=trunk_spec),
        "metadata": json.dumps(model.metadata, sort_keys=True, default=str),
    }
    _atomic_save(tensors, metadata, Path(path))


def _restore_dtypes(stored: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(reference[k].dtype) if k in reference else v for k, v in stored.items()}


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint's metadata without loading tensors.

    Returns a dict with ``taxonomy`` (:class:`Taxonomy`), ``trunk`` (dict), ``preprocessing``
    (:class:`Preprocessing`), ``metadata`` (dict), ``format_version`` (int) and ``keys`` (tensor names).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        with safe_open(str(path), framework="pt") as reader:
            raw = reader.metadata() or {}
            keys = list(reader.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a multihead checkpoint (no 'format': 'multihead' in its metadata)")
    try:
        version = int(raw.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: format_version {raw.get('format_version')!r} is not an integer") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written in checkpoint format {version}, this multihead reads up to {FORMAT_VERSION}; "
            "upgrade multihead"
        )
    try:
        header = {
            "format_version": version,
            "taxonomy": Taxonomy.from_json(raw["taxonomy"]),
            "trunk": json.loads(raw["trunk"]),
            "preprocessing": Preprocessing.from_json(raw["preprocessing"]),
            "metadata": json.loads(raw.get("metadata", "{}")),
            "joint": raw.get("joint", "hierarchical"),
            "heads_sha256": raw.get("heads_sha256"),
            "keys": keys,
        }
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: damaged metadata ({type(err).__name__}: {err})") from None
    _check_json_fields(path, header)
    return header


def _check_json_fields(path: Path, header: dict[str, Any]) -> None:
    """The JSON values ``load`` relies on have the types it expects (a damaged file may hold anything)."""
    trunk = header["trunk"]
    if not isinstance(trunk, dict) or not isinstance(header["metadata"], dict):
        raise CheckpointError(f"{path}: damaged metadata ('trunk' and 'metadata' must be JSON objects)")
    wrong = [key for key, kind in (("name", str), ("fingerprint", str), ("embedded", bool))
             if not isinstance(trunk.get(key), kind)]
    stages = trunk.get("stages", [])
    if not isinstance(stages, list) or not all(isinstance(stage, str) for stage in stages):
        wrong.append("stages")
    if wrong:
        raise CheckpointError(f"{path}: damaged trunk metadata: {', '.join(wrong)} missing or of the wrong type")


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> MultiHeadModel:
    """Load a model written by :func:`save`, checking everything before trusting it.

    Raises:
        CheckpointError: not a multihead file, a newer format, damaged metadata, tensors that do not fit
            the taxonomy, or a trunk whose weights do not match the recorded fingerprint.
    """
    path = Path(path)
    header = read_header(path)
    spec = header["trunk"]
    name, fingerprint, embedded = spec["name"], spec["fingerprint"], spec["embedded"]
    weights = None if embedded else ("imagenet" if spec.get("source") == "timm" else spec.get("weights_id"))
    try:
        trunk = create_trunk(name, weights=weights, stages=spec.get("stages", ()))
        model = MultiHeadModel(trunk, header["taxonomy"], preprocessing=header["preprocessing"], joint=header["joint"])
    except ValueError as err:  # an unknown trunk or weights id, an unknown joint rule: named in the metadata
        raise CheckpointError(f"{path}: the model its metadata describes cannot be built ({err})") from None
    stored_name = _stored_names(header["format_version"])
    heads = {stored_name.get(k, k): v for k, v in model.state_dict().items() if not k.startswith("trunk.")}
    trunk_keys = {f"trunk.{k}": v for k, v in trunk.network.state_dict().items()} if embedded else {}
    for key in OPTIONAL_KEYS.get(header["format_version"], frozenset()).difference(header["keys"]):
        del heads[key]  # older files: keep the new tensor's default
    _check_keys(path, header["keys"], {**heads, **trunk_keys})
    try:
        with safe_open(str(path), framework="pt") as reader:
            stored_heads = {k: reader.get_tensor(k) for k in heads}
            trunk_state = {k[len("trunk."):]: reader.get_tensor(k).to(v.dtype) for k, v in trunk_keys.items()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: tensors cannot be read, the file may be truncated ({err})") from None
    wrong = [f"{key} has shape {tuple(tensor.shape)}, needs {tuple(heads[key].shape)}"
             for key, tensor in stored_heads.items() if tensor.shape != heads[key].shape]
    if wrong:
        raise CheckpointError(f"{path}: tensors do not fit the taxonomy in its metadata: {'; '.join(wrong[:5])}")
    if embedded:
        try:
            trunk.load_weights(trunk_state)
        except ValueError as err:
            raise CheckpointError(f"{path}: embedded trunk weights do not fit ({err})") from None
    if trunk.fingerprint != fingerprint:
        raise CheckpointError(
            f"{path}: trunk {name!r} weights have fingerprint {trunk.fingerprint[:12]}..., the checkpoint was "
            f"trained on {fingerprint[:12]}...; its heads do not fit these trunk weights"
        )
    if header["heads_sha256"] is not None and fingerprint_state_dict(stored_heads) != header["heads_sha256"]:
        raise CheckpointError(f"{path}: head tensors do not match the checksum in the metadata; the file is damaged")
    current_name = {old: new for new, old in stored_name.items()}
    model.load_state_dict({current_name.get(k, k): v for k, v in stored_heads.items()},
                          strict=False)  # the trunk is loaded and verified above
    model.metadata = header["metadata"]
    return model.to(device).eval()


def _stored_names(version: int) -> dict[str, str]:
    """Current key -> the key a file of format ``version`` stores it under."""
    return {new: old for old, new in FORMAT_1_KEYS.items()} if version == 1 else {}


def _check_keys(path: Path, found: list[str], expected: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match its metadata: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
