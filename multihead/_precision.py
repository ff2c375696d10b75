"""Precision names and the torch dtypes they stand for: one map for inference, checkpoints and benchmarks."""

from __future__ import annotations

import torch

__all__ = ["PRECISIONS", "STORAGE_DTYPES", "dtype_of", "native_bf16"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""What ``InferenceConfig.precision`` and the benchmarks accept."""
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The same dtypes by torch's names, as checkpoints store an embedded trunk (``trunk_dtype``)."""


def dtype_of(name: str) -> torch.dtype:
    """``"fp16"`` or ``"float16"`` (and the other two) -> the torch dtype; ``ValueError`` names the valid ones."""
    dtype = PRECISIONS.get(name) or STORAGE_DTYPES.get(name)
    if dtype is None:
        raise ValueError(f"unknown precision {name!r}; expected one of {sorted(PRECISIONS) + sorted(STORAGE_DTYPES)}")
    return dtype


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA card that supports it, or a CPU with AVX-512 BF16 or
    AMX. Elsewhere bf16 is emulated and slower than fp32, so mixed precision is not worth it there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(probe() for probe in probes if probe is not None)
    return False
