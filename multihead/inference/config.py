"""How batches run: batch size, precision, memory layout, test-time augmentation and the trunk's backend."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from .._precision import PRECISIONS
from .backends import BACKEND_PRECISIONS, BACKENDS, resolve_backend

__all__ = ["InferenceConfig"]


@dataclass(frozen=True)
class InferenceConfig:
    """How batches run. ``precision`` applies to the trunk only; heads stay float32.

    ``backend`` says what runs the trunk: ``"torch"``, or an exported graph on ``"onnxruntime"`` or
    ``"openvino"`` (:mod:`multihead.inference.backends`). ``"auto"`` (the default) takes OpenVINO, then ONNX Runtime,
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
        if self.precision not in PRECISIONS:
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
