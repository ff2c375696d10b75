"""Precision names and the torch dtypes they stand for: one map for inference, checkpoints and benchmarks; and
which precisions this machine's CPU computes in hardware."""

from __future__ import annotations

import functools

import torch

__all__ = ["CPU_INSTRUCTIONS", "INFERENCE_PRECISIONS", "PRECISIONS", "STORAGE_DTYPES", "cpu_flags", "dtype_of",
           "missing_instructions", "native_bf16", "native_cpu_precisions"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The precisions PyTorch runs (autocast dtypes), which the benchmarks also accept."""
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The same dtypes by torch's names, as checkpoints store an embedded trunk (``trunk_dtype``)."""
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
"""What ``InferenceConfig.precision`` accepts: ``int8`` is a quantised trunk on OpenVINO, ``auto`` the fastest
precision the model's recorded accuracy guard allows on this machine (:mod:`multihead.inference.precision`)."""
CPU_INSTRUCTIONS = {
    "bf16": ("avx512_bf16", "amx_bf16"),
    "fp16": ("avx512_fp16", "amx_fp16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
}
"""The x86 instructions (``/proc/cpuinfo`` flags) that compute each reduced precision in hardware; without any of
them the precision is emulated or converted, slower than fp32 or (int8 without VNNI) less exact."""
_NAMES = {"avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX-BF16", "avx512_fp16": "AVX-512 FP16", "amx_fp16": "AMX-FP16",
          "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8"}


def dtype_of(name: str) -> torch.dtype:
    """``"fp16"`` or ``"float16"`` (and the other two) -> the torch dtype; ``ValueError`` names the valid ones."""
    dtype = PRECISIONS.get(name) or STORAGE_DTYPES.get(name)
    if dtype is None:
        raise ValueError(f"unknown precision {name!r}; expected one of {sorted(PRECISIONS) + sorted(STORAGE_DTYPES)}")
    return dtype


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction flags as ``/proc/cpuinfo`` names them; without ``/proc``, those torch can probe."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported",
              "amx_int8": "_is_amx_tile_supported", "avx512_vnni": "_is_vnni_supported",
              "amx_fp16": "_is_amx_fp16_supported"}
    return frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def native_cpu_precisions(flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """The precisions this CPU (or one with ``flags``) computes in hardware: ``fp32`` and those of
    :data:`CPU_INSTRUCTIONS` it has an instruction for.

    Example:
        >>> native_cpu_precisions(frozenset({"avx2", "avx512_vnni"}))
        ('fp32', 'int8')
    """
    flags = cpu_flags() if flags is None else flags
    return ("fp32", *(name for name, needs in CPU_INSTRUCTIONS.items() if flags & set(needs)))


def missing_instructions(precision: str) -> str:
    """What a CPU lacks to run ``precision`` natively, in words: ``"AVX-512 VNNI, AVX-VNNI or AMX-INT8"``."""
    names = [_NAMES[flag] for flag in CPU_INSTRUCTIONS[precision]]
    return ", ".join(names[:-1]) + " or " + names[-1]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA card that supports it, or a CPU with AVX-512 BF16 or
    AMX. Elsewhere bf16 is emulated and slower than fp32, so mixed precision is not worth it there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(probe() for probe in probes if probe is not None)
    return False
