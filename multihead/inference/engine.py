"""The engine: a uint8 batch through preprocessing and the trunk on the configured device, precision and
backend, then the heads. Everything that runs the model on a batch (``classify``, feature extraction,
the server, the benchmarks) goes through :func:`run_features`.

Images are decoded and resized on the CPU as uint8, cross to the device as uint8 (a quarter of float32's
bytes), and are normalised there; the trunk may run in reduced precision, the heads always run in float32.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .._precision import PRECISIONS
from ..model.heads import HeadOutput, MultiHeadModel
from .backends import BACKEND_PRECISIONS, runtime_for
from .config import InferenceConfig
from .shared_weights import match_weight_layout, weights_in_use

__all__ = ["run_batch", "run_features"]


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
    resolved = config.resolve(device, model)
    if resolved.backend != "torch":
        # what "auto" chose may fall back: a reduced precision to fp32, the backend to PyTorch (at a precision it
        # runs); what the caller named explicitly raises instead
        by_auto = config.precision == "auto" and resolved.precision != "fp32"
        backend_may_fall = config.backend == "auto" and resolved.precision in BACKEND_PRECISIONS["torch"]
        runtime = runtime_for(model, resolved.backend, resolved.precision, fallback=by_auto or backend_may_fall)
        if runtime is None and by_auto:
            resolved = replace(resolved, precision="fp32")
            runtime = runtime_for(model, resolved.backend, "fp32", fallback=config.backend == "auto")
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
