"""How batches run: batch size, precision, memory layout, test-time augmentation and the trunk's backend."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from .._precision import INFERENCE_PRECISIONS
from ..model.heads import MultiHeadModel
from ..model.memory import MEMORY_BUDGET, batch_for_memory
from ..model.precision import choose_precision
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
    there); it applies to the torch backend only. :meth:`resolve` shows what a device gets.

    ``precision="auto"`` (the default) runs the trunk at the fastest precision the model's recorded accuracy guard
    allows on this machine: one this CPU computes in hardware (bf16 with AVX-512 BF16 or AMX, int8 with VNNI or
    AMX), run by an installed backend, whose answers agreed with fp32 on at least 99.5 % of the model's validation
    images at no more than 0.3 points of accuracy lost (:func:`~multihead.model.precision.choose_precision`); a
    model without a guard, or no precision passing it, runs fp32. ``"int8"`` is the trunk quantised by NNCF on
    OpenVINO (:mod:`multihead.inference.quantize`; ``multihead tune-precision`` makes it and measures the guard).

    ``batch_size=None`` (the default) takes as many images per forward pass as fit in
    :data:`~multihead.model.memory.MEMORY_BUDGET` (1 GiB), at most 64 (:meth:`batch_for`): 10 for the bundled
    model at 640 px (``classify`` then peaks at about 1.8 GB on a CPU; 64 took 6.9 GB), 64 for ResNet18 at 224 px.
    """

    batch_size: int | None = None
    """Images per forward pass; ``None``: chosen from the memory budget (:meth:`batch_for`)."""
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    """The trunk's precision; ``"auto"``: the fastest the model's accuracy guard allows here, else fp32."""
    channels_last: bool | None = None
    tta: bool = False
    """Test-time augmentation: average the joint probabilities over the 8 dihedral views (8x the trunk's work)."""
    backend: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    """What runs the trunk; ``"auto"``: OpenVINO, then ONNX Runtime, when installed and on the CPU, else torch."""

    def __post_init__(self) -> None:
        if self.precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, INFERENCE_PRECISIONS))}, "
                             f"got {self.precision!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None (chosen from memory), got "
                             f"{self.batch_size!r}")
        if self.channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be True, False or None (per device), got {self.channels_last!r}")
        if self.tta not in (True, False):
            raise ValueError(f"tta must be True or False, got {self.tta!r}")
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend != "auto" and self.precision not in ("auto", *BACKEND_PRECISIONS[self.backend]):
            runs = " or ".join(BACKEND_PRECISIONS[self.backend])
            raise ValueError(f"backend {self.backend!r} runs precision {runs}, got {self.precision!r}")

    def batch_for(self, model: MultiHeadModel, *, budget: int = MEMORY_BUDGET) -> int:
        """``batch_size``, or when it is ``None`` as many of ``model``'s images as fit in ``budget`` bytes
        (:func:`~multihead.model.memory.batch_for_memory`), between 1 and 64.

        Example:
            >>> InferenceConfig(batch_size=8).batch_for(model)  # doctest: +SKIP
            8
        """
        if self.batch_size is not None:
            return self.batch_size
        return batch_for_memory(model.trunk.name, model.preprocessing.image_size, budget=budget)

    def resolve(self, device: str | torch.device, model: MultiHeadModel | None = None) -> InferenceConfig:
        """The concrete settings on ``device``: ``channels_last=None``, ``backend="auto"`` and (for ``model``)
        ``precision="auto"`` replaced by what this device and installation give; without a model ``"auto"``
        precision is fp32.

        Raises:
            ValueError: a precision no backend runs here (int8 without OpenVINO, or off the CPU).

        Example:
            >>> InferenceConfig().resolve("cpu").channels_last, InferenceConfig().resolve("cuda").channels_last
            (True, False)
            >>> InferenceConfig().resolve("cuda").backend, InferenceConfig().resolve("cuda").precision
            ('torch', 'fp32')
        """
        on_cpu = torch.device(device).type == "cpu"
        precision, backend = self.precision, self.backend
        if precision == "auto":
            precision = "fp32"
            if model is not None:
                choice = choose_precision(model.metadata, model.trunk.spec(), model.preprocessing,
                                          backend=backend, device=str(torch.device(device)))
                precision, backend = choice.precision, backend if choice.backend == "auto" else choice.backend
        backend = resolve_backend(backend, precision, device)
        if precision not in BACKEND_PRECISIONS[backend]:
            runs = " or ".join(name for name in BACKENDS if precision in BACKEND_PRECISIONS[name])
            raise ValueError(f"precision {precision!r} runs on {runs} only, which is not installed here: pip install "
                             f"'multihead[{runs}]'" if on_cpu else
                             f"precision {precision!r} runs on the CPU only ({runs}), not on {device}")
        return replace(self, channels_last=on_cpu if self.channels_last is None else self.channels_last,
                       backend=backend, precision=precision)
