"""The engine: a uint8 batch through preprocessing and the trunk on the configured device, precision and
backend, then the heads. Everything that runs the model on a batch (``classify``, feature extraction,
the server, the benchmarks) goes through :func:`run_features`.

Images are decoded and resized on the CPU as uint8, cross to the device as uint8 (a quarter of float32's
bytes), and are normalised there; the trunk may run in reduced precision, the heads always run in float32.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from .._precision import PRECISIONS
from ..model.heads import HeadOutput, MultiHeadModel
from .backends import runtime_for
from .config import InferenceConfig

__all__ = ["match_weight_layout", "run_batch", "run_features", "weights_in_use"]


class _SharedWeights:
    """Forward passes read the trunk's weights together; re-laying them out swaps the tensors' data under a
    running convolution (a segfault, not an error), so it waits until no pass runs and holds new ones back."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._passes = 0
        self._relaying = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._changed:
            while self._relaying:
                self._changed.wait()
            self._passes += 1
        try:
            yield
        finally:
            with self._changed:
                self._passes -= 1
                self._changed.notify_all()

    @contextmanager
    def relaying(self) -> Iterator[None]:
        with self._changed:
            while self._relaying or self._passes:
                self._changed.wait()
            self._relaying = True
        try:
            yield
        finally:
            with self._changed:
                self._relaying = False
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


def run_features(model: MultiHeadModel, batch: torch.Tensor,
                 config: InferenceConfig = InferenceConfig()) -> torch.Tensor:
    """A uint8 batch ``[B, 3, S, S]`` (any device) -> float32 pooled trunk features, under ``inference_mode``.

    On the torch backend the trunk's convolution weights take the memory layout of the input, as timm's
    benchmark does: with ``channels_last`` (the CPU default) they are laid out channels_last on the first
    call, and back to contiguous for a call without it (:func:`match_weight_layout`). That is the one change
    made to the model: values, dtypes, devices, the ``Parameter`` objects, the fingerprint and the files
    :func:`multihead.save` writes stay the same; only the strides of the 4-d weights differ, so code of your own
    that needs ``is_contiguous()`` weights (safetensors' ``save_file`` on a raw ``state_dict()``, ``.view``)
    should call ``.contiguous()`` or run with ``channels_last=False`` once.
    """
    if batch.ndim != 4 or batch.shape[1] != 3 or batch.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch of shape [B, 3, S, S], got {batch.dtype} {tuple(batch.shape)}")
    if batch.shape[0] == 0:
        raise ValueError("empty batch: at least one image is needed")
    device = model.device
    resolved = config.resolve(device)
    if resolved.backend != "torch":
        runtime = runtime_for(model, resolved.backend, resolved.precision, fallback=config.backend == "auto")
        if runtime is not None:
            return runtime.features(batch).to(device)
    config = resolved
    match_weight_layout(model, config.channels_last)
    with weights_in_use(), torch.inference_mode():
        batch = batch.to(device, non_blocking=True)
        if config.channels_last:  # in uint8, before normalising: a quarter of the bytes to move
            batch = batch.contiguous(memory_format=torch.channels_last)
        images = model.preprocessing.normalize(batch)
        dtype = PRECISIONS[config.precision]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            features = model.forward_features(images)
        return features.float()


def run_batch(model: MultiHeadModel, batch: torch.Tensor, config: InferenceConfig = InferenceConfig()) -> HeadOutput:
    """A uint8 batch ``[B, 3, S, S]`` (any device) -> :class:`HeadOutput`, under ``inference_mode``."""
    features = run_features(model, batch, config)
    with torch.inference_mode():
        return model.forward_heads(features)
