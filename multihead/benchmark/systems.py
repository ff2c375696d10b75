"""The four systems a benchmark compares, built on random weights: ``multihead``, ``eight_models``,
``cascade`` and ``trunk_only``; each is a step function from a uint8 batch to its outputs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from .._precision import PRECISIONS as PRECISION_DTYPES
from ..data.preprocessing import Preprocessing
from ..inference.config import InferenceConfig
from ..inference.engine import run_batch, run_features
from ..model.heads import MultiHeadModel, create_model
from ..taxonomy import MULTI_CANCER, Taxonomy

logger = logging.getLogger(__name__)

SYSTEMS = ("multihead", "eight_models", "cascade", "trunk_only")
BACKEND_SYSTEMS = ("multihead", "trunk_only")
"""The systems that run on every backend; the others are PyTorch modules."""
PRECISIONS = (*PRECISION_DTYPES, "int8")
"""What the benchmarks time: PyTorch's precisions, and int8 (a quantised trunk, OpenVINO only)."""
INT8_CALIBRATION = 16
"""Random images a random-weight trunk is quantised with for timing: speed does not depend on the ranges."""


@dataclass
class BenchSystem:
    """A built system: ``step(uint8_batch, precision)`` runs one batch end to end."""

    name: str
    step: Callable[[torch.Tensor, str], Any]
    num_params: int
    model: nn.Module
    channels_last_weights: bool = False


# --- the systems ------------------------------------------------------------------------------------

def _resnet18(num_classes: int) -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval().requires_grad_(False)


class _EightModels(nn.Module):
    """One classifier per organ; all run, since the organ of a new image is unknown."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.models = nn.ModuleList(_resnet18(len(organ.subtypes)) for organ in taxonomy.organs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(images) for model in self.models], dim=1)


class _Cascade(nn.Module):
    """A router network, then each image through its predicted organ's network (grouped by organ)."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.router = _resnet18(taxonomy.num_organs)
        self.organs = nn.ModuleList(_resnet18(len(organ.subtypes)) for organ in taxonomy.organs)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        organ = self.router(images).argmax(dim=1)
        subtype_logits = []
        for index in organ.unique().tolist():  # the data-dependent second pass
            rows = (organ == index).nonzero().squeeze(1)
            subtype_logits.append(self.organs[index](images[rows]))
        return organ, subtype_logits


def _normalized(batch: torch.Tensor, device: torch.device, preprocessing: Preprocessing,
                channels_last: bool) -> torch.Tensor:
    """What :func:`run_features` does before the trunk, for the baselines."""
    batch = batch.to(device, non_blocking=True)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return preprocessing.normalize(batch)


def model_system(model: MultiHeadModel, *, name: str = "multihead", backend: str = "torch",
                 channels_last: bool = False, channels_last_weights: bool = False) -> BenchSystem:
    """``multihead`` (:func:`run_batch`) or ``trunk_only`` (:func:`run_features`) around a built model, such
    as a loaded checkpoint, on ``backend``.

    Example:
        >>> system = model_system(multihead.load("model.safetensors"), backend="openvino")  # doctest: +SKIP
    """
    if name not in BACKEND_SYSTEMS:
        raise ValueError(f"model_system builds {' or '.join(BACKEND_SYSTEMS)}, got {name!r}")
    run = run_batch if name == "multihead" else run_features

    def step(batch: torch.Tensor, precision: str) -> Any:
        return run(model, batch, InferenceConfig(batch_size=batch.shape[0], precision=precision,
                                                 channels_last=channels_last, backend=backend))

    counted = model if name == "multihead" else model.trunk
    return BenchSystem(name, step, sum(p.numel() for p in counted.parameters()), model, channels_last_weights)


def prepare_int8(model: MultiHeadModel, *, seed: int = 0) -> str:
    """Make sure ``model``'s trunk has an int8 graph on this machine for timing: the cached one (from
    ``multihead tune-precision``, calibrated on real images) when there is one, else one quantised on
    :data:`INT8_CALIBRATION` random images (what the ranges are does not change the speed). Returns which."""
    from ..inference.quantize import cached_trunk, quantize_trunk

    if cached_trunk(model) is not None:
        return "cached"
    size = model.preprocessing.image_size
    images = torch.randint(0, 256, (INT8_CALIBRATION, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    quantize_trunk(model, list(images))
    return f"quantised on {INT8_CALIBRATION} random images"


def build_system(name: str, *, device: str | torch.device = "cpu", image_size: int = 224,
                 channels_last: bool = False, compiled: bool = False, channels_last_weights: bool = False,
                 taxonomy: Taxonomy = MULTI_CANCER, seed: int = 0, backend: str = "torch") -> BenchSystem:
    """Build one system with random weights, on ``device``, optionally channels_last and ``torch.compile``-d.

    ``channels_last`` lays out the input (and, for ``multihead`` and ``trunk_only``, :func:`run_features` then
    lays out the trunk's weights to match); ``channels_last_weights`` converts the networks' weights up front.
    ``backend`` runs the trunk of ``multihead`` and ``trunk_only`` (see :mod:`multihead.inference.backends`); the
    baselines need ``"torch"``.

    Example:
        >>> system = build_system("trunk_only", image_size=64)
        >>> system.step(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "fp32").shape
        torch.Size([2, 512])
    """
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; expected one of {', '.join(SYSTEMS)}")
    if backend != "torch" and name not in BACKEND_SYSTEMS:
        raise ValueError(f"system {name!r} runs in PyTorch only; backend {backend!r} runs "
                         f"{' and '.join(BACKEND_SYSTEMS)}")
    device = torch.device(device)
    torch.manual_seed(seed)
    memory_format = torch.channels_last if channels_last_weights else torch.contiguous_format
    if name in ("multihead", "trunk_only"):
        model: nn.Module = create_model("resnet18", trunk_weights=None, taxonomy=taxonomy, image_size=image_size,
                                        seed=seed).eval().to(device, memory_format=memory_format)
        if compiled:
            model.trunk.network.compile()
        return model_system(model, name=name, backend=backend, channels_last=channels_last,
                            channels_last_weights=channels_last_weights)
    network = (_EightModels if name == "eight_models" else _Cascade)(taxonomy)
    model = network.to(device, memory_format=memory_format)
    if compiled:
        for module in model.modules():
            if isinstance(module, torchvision.models.ResNet):
                module.compile()
    preprocessing = Preprocessing(image_size=image_size)

    def step(batch: torch.Tensor, precision: str) -> Any:
        dtype = PRECISION_DTYPES[precision]
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model(_normalized(batch, device, preprocessing, channels_last))

    return BenchSystem(name, step, sum(p.numel() for p in model.parameters()), model, channels_last_weights)
