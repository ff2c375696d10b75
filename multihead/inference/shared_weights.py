"""The trunk's weights, shared by the threads that run it: forward passes read them together, and
re-laying them out in memory (channels_last for a channels_last input, as timm's benchmark does) waits until
none runs. ``module.to(memory_format=...)`` swaps the tensors' data under a running convolution: a segfault,
not an error (4 runs of 6 of ``tests/test_explain_threads.py`` on a loaded 2-core machine before the guard).

Held by every pass on a model's own PyTorch weights that may share them with another thread: the engine's
forward, Grad-CAM's forward and backward, the ONNX exporter's trace and the backends' probe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from ..model.heads import MultiHeadModel

__all__ = ["match_weight_layout", "weights_in_use"]


class _SharedWeights:
    """A readers/relayer guard: passes run together; a relayout waits until no pass runs. New passes wait
    while a relayout is asked for (else overlapping passes could hold it off for ever), except in a thread that
    already holds one: a pass nested in a pass goes on, so the outer one can end."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._passes = 0
        self._relayouts_asked = 0
        self._relaying = False
        self._held = threading.local()

    @contextmanager
    def reading(self) -> Iterator[None]:
        depth = getattr(self._held, "depth", 0)
        with self._changed:
            while self._relaying or (self._relayouts_asked and not depth):
                self._changed.wait()
            self._passes += 1
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            with self._changed:
                self._passes -= 1
                self._changed.notify_all()

    @contextmanager
    def relaying(self) -> Iterator[None]:
        with self._changed:
            self._relayouts_asked += 1
            while self._relaying or self._passes:
                self._changed.wait()
            self._relaying = True
        try:
            yield
        finally:
            with self._changed:
                self._relaying = False
                self._relayouts_asked -= 1
                self._changed.notify_all()


_WEIGHTS = _SharedWeights()


def weights_in_use() -> AbstractContextManager[None]:
    """Hold while a forward (or backward) pass on a model's own PyTorch weights runs in a thread that others
    may share: :func:`match_weight_layout` waits for it. Not re-entrant with that function."""
    return _WEIGHTS.reading()


def match_weight_layout(model: MultiHeadModel, channels_last: bool) -> bool:
    """Lay out the trunk's 4-d weights channels_last (or contiguous) unless they already are; returns whether
    anything was converted. Idempotent and thread-safe; the values do not change, nor the ``Parameter``
    objects (``module.to(memory_format=...)`` swaps their data), and the new tensors are ordinary ones even
    when called inside ``torch.inference_mode`` (so Grad-CAM and tuning still work on the model afterwards).

    Example:
        >>> model = multihead.create_model("resnet18", trunk_weights=None)  # doctest: +SKIP
        >>> match_weight_layout(model, True), match_weight_layout(model, True)  # doctest: +SKIP
        (True, False)
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = model.trunk
    if all(t.is_contiguous(memory_format=memory_format) for t in _four_d(network)):
        return False
    with _WEIGHTS.relaying(), torch.inference_mode(False), torch.no_grad():
        if all(t.is_contiguous(memory_format=memory_format) for t in _four_d(network)):
            return False
        network.to(memory_format=memory_format)
    return True


def _four_d(module: torch.nn.Module) -> list[torch.Tensor]:
    return [t for t in (*module.parameters(), *module.buffers()) if t.dim() == 4]
