"""How much memory one image takes through the trunk, estimated before anything runs.

The trunk is run once on the meta device (shapes only: no memory, no arithmetic) at the model's input size, and
its largest activation is the measure. Under inference mode a layer's input and output and the backend's own
buffers are alive at once: on this project's 2-core CPU ``classify`` took about 2.3 times the largest activation
per image (MobileNetV2 at 640 px: largest activation 37.5 MB; 87 MB per image on OpenVINO, 70 MB on PyTorch), so
an image is counted as :data:`ACTIVATION_FACTOR` times it, plus its input.

Two things are chosen from it (issue 36): the default batch size of inference and feature extraction (as many
images as fit in :data:`MEMORY_BUDGET`, at most :data:`MAX_AUTO_BATCH`), and whether a checkpoint's
``image_size`` is refused at loading (one image alone must fit in the budget: a header edited to 4096 px took over
6 GB for one image).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
from torch import nn

__all__ = ["ACTIVATION_FACTOR", "MAX_AUTO_BATCH", "MEMORY_BUDGET", "batch_for_memory", "image_memory",
           "largest_activation", "machine_memory"]

MEMORY_BUDGET = 2**30
"""Bytes one forward pass may take beyond the model itself: 1 GiB. ``classify`` of the bundled model at 640 px then
runs batches of 10 and peaks at about 1.8 GB on the CPU (64, the old default, peaked at 6.9 GB)."""
ACTIVATION_FACTOR = 2.5
"""An image's memory through the trunk, in units of its largest activation (measured: 1.9 to 2.3)."""
MAX_AUTO_BATCH = 64
"""The largest batch chosen by memory: beyond it a CPU runs no more images per second."""
_FALLBACK_BYTES_PER_PIXEL = 128
"""The largest activation per input pixel assumed for a trunk that cannot run on the meta device (MobileNetV2's
is 96 bytes: 96 float32 channels at half the input side)."""
_largest: dict[tuple[str, int], int] = {}
_lock = threading.Lock()


def largest_activation(network: nn.Module, image_size: int) -> int:
    """Bytes (float32) of the largest tensor any layer of ``network`` outputs for one ``image_size`` image; the
    network must be on the meta device, so nothing is computed or allocated."""
    largest = 0

    def measure(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal largest
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor):
                largest = max(largest, tensor.numel() * 4)

    hooks = [module.register_forward_hook(measure) for module in network.modules()]
    try:
        with torch.no_grad():
            network(torch.empty(1, 3, image_size, image_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return largest


def _largest_for(trunk_name: str, image_size: int, network: nn.Module | None) -> int:
    key = (trunk_name, image_size)
    with _lock:
        if key in _largest:
            return _largest[key]
    try:
        if network is None:
            from .trunk import create_trunk  # here: only a model without a measured trunk needs it

            with torch.device("meta"):
                network = create_trunk(trunk_name, weights=None).network
        measured = largest_activation(network, image_size)
    except Exception:  # a trunk the meta device cannot build or run (RegNet): a generous guess
        measured = _FALLBACK_BYTES_PER_PIXEL * image_size * image_size
    with _lock:
        _largest[key] = measured
    return measured


def image_memory(trunk_name: str, image_size: int, *, network: nn.Module | None = None) -> int:
    """Bytes one ``image_size`` image takes through trunk ``trunk_name``: :data:`ACTIVATION_FACTOR` times the largest
    activation, plus the image as uint8 and float32. Measured once per trunk and size (``network``: the trunk's
    network on the meta device, if one is at hand; otherwise one is built there).

    Example:
        >>> round(image_memory("mobilenet_v2", 640) / 2**20)
        99
    """
    activation = _largest_for(trunk_name, image_size, network)
    return int(ACTIVATION_FACTOR * activation) + 5 * 3 * image_size * image_size


def batch_for_memory(trunk_name: str, image_size: int, *, budget: int = MEMORY_BUDGET,
                     most: int = MAX_AUTO_BATCH) -> int:
    """As many images as fit in ``budget`` bytes (:func:`image_memory`), between 1 and ``most``.

    Example:
        >>> batch_for_memory("mobilenet_v2", 640), batch_for_memory("resnet18", 224)
        (10, 64)
    """
    return max(1, min(most, budget // image_memory(trunk_name, image_size)))


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its container's limit (cgroup v2) when lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total
