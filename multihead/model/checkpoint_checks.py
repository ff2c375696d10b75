"""What a checkpoint file must hold, checked before any of its tensors is trusted: the tensor names, shapes and dtypes
its architecture and taxonomy call for (under the names its format stores them), the bank's size, finite values.

:mod:`multihead.model.checkpoint` builds the architecture on the meta device and asks these questions of the header
before it reads a tensor; each answer that is not right is one :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._precision import STORAGE_DTYPES
from .heads import MultiHeadModel
from .ood import MAX_BANK

__all__ = ["FORMAT_1_KEYS", "LEGACY_OOD", "CheckpointError", "bank_rows", "check_against_header", "check_finite",
           "expected_tensors", "stored_names"]

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
LEGACY_OOD = ("ood.", "ood_")
"""Key prefixes of the Mahalanobis out-of-distribution buffers of formats 1 and 2 (not read)."""
_MAY_BE_INFINITE = frozenset({"thresholds.subtype", "ood.threshold"})
"""Buffers where +inf means something: an organ whose subtypes are withheld, an unfitted out-of-distribution score."""
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}



class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit; the message names the file and the mismatch."""


def check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """No NaN anywhere, and no infinity but +inf where it means something (:data:`_MAY_BE_INFINITE`)."""
    bad = []
    for key, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if key in _MAY_BE_INFINITE:
            wrong = bool(torch.isnan(tensor).any() or (tensor == float("-inf")).any())
        else:
            wrong = not bool(torch.isfinite(tensor).all())
        if wrong:
            bad.append(key)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{path}: {shown} hold{'s' if len(bad) == 1 else ''} NaN or infinite values, which no "
                              "trained model has; the file is damaged")


def bank_rows(path: Path, header: dict[str, Any]) -> int:
    """Training images in the file's out-of-distribution bank (0 for older formats and unfitted scores)."""
    if header["format_version"] < 3 or "ood.bank" not in header["tensors"]:
        return 0
    _, shape = header["tensors"]["ood.bank"]
    if len(shape) != 2 or not 0 <= shape[0] <= MAX_BANK:
        raise CheckpointError(f"{path}: ood.bank has shape {shape}, it must be [images, components] with at most "
                              f"{MAX_BANK} images")
    return shape[0]


def expected_tensors(header: dict[str, Any], skeleton: MultiHeadModel
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The head and (if embedded) trunk tensors the file must hold, under the names its format stores them."""
    version = header["format_version"]
    stored_name = stored_names(version)
    heads = {stored_name.get(k, k): v for k, v in skeleton.state_dict().items() if not k.startswith("trunk.")}
    if version < 3:  # one subtype threshold, no coverage; their out-of-distribution buffers are read as stored
        heads = {k: v for k, v in heads.items() if not k.startswith(LEGACY_OOD) and k != "organ_covered"}
        heads[stored_name.get("thresholds.subtype", "thresholds.subtype")] = torch.zeros(())
        heads.update({k: _stored_tensor(header, k) for k in header["keys"] if k.startswith(LEGACY_OOD)})
    trunk_keys = ({f"trunk.{k}": v for k, v in skeleton.trunk.network.state_dict().items()}
                  if header["trunk"]["embedded"] else {})
    return heads, trunk_keys


def _stored_tensor(header: dict[str, Any], key: str) -> torch.Tensor:
    """An empty stand-in of the shape and dtype the file says ``key`` has (a buffer of an older format that is
    read as stored and then dropped)."""
    dtype_name, shape = header["tensors"][key]
    dtype = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}.get(dtype_name, torch.float32)
    return torch.empty(shape, dtype=dtype, device="meta")


def check_against_header(path: Path, header: dict[str, Any], skeleton: MultiHeadModel,
                         expected: dict[str, torch.Tensor], max_parameters: int | None, *, why: str = "") -> None:
    """Parameter count, feature width, tensor names, shapes and dtypes: the header against the architecture; ``why``:
    where the parameter limit came from, said when it is passed."""
    spec, trunk = header["trunk"], skeleton.trunk
    parameters = sum(v.numel() for v in trunk.network.state_dict().values())
    if max_parameters is not None and parameters > max_parameters:
        raise CheckpointError(
            f"{path}: trunk {spec['name']!r} has {parameters:,} parameters ({parameters * 4 / 2**30:.1f} GiB as "
            f"float32), more than the limit of {max_parameters:,}{why}; pass max_trunk_parameters=None if the file "
            "is trusted")
    if spec["num_features"] != trunk.num_features:
        raise CheckpointError(f"{path}: trunk {spec['name']!r} gives {trunk.num_features} features, its metadata "
                              f"says {spec['num_features']}")
    _check_keys(path, header["keys"], expected)
    stored_float = STORAGE_DTYPES[spec.get("stored_dtype", "float32")]
    wrong = []
    for key, reference in expected.items():
        dtype_name, shape = header["tensors"][key]
        dtype = stored_float if key.startswith("trunk.") and reference.is_floating_point() else reference.dtype
        if shape != tuple(reference.shape):
            wrong.append(f"{key} has shape {shape}, needs {tuple(reference.shape)}")
        elif dtype_name != _SAFETENSORS_DTYPES.get(dtype):
            wrong.append(f"{key} is stored as {dtype_name}, needs {_SAFETENSORS_DTYPES.get(dtype, dtype)}")
    in_trunk = [problem for problem in wrong if problem.startswith("trunk.")]
    if in_trunk:
        raise CheckpointError(f"{path}: embedded trunk weights do not fit trunk {spec['name']!r}: "
                              f"{'; '.join(in_trunk[:5])}")
    if wrong:
        raise CheckpointError(f"{path}: tensors do not fit the taxonomy in its metadata: {'; '.join(wrong[:5])}")


def stored_names(version: int) -> dict[str, str]:
    """Current key -> the key a file of format ``version`` stores it under."""
    return {new: old for old, new in FORMAT_1_KEYS.items()} if version == 1 else {}


def _check_keys(path: Path, found: list[str], expected: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match its metadata: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
