"""Models for inference, by path or object, without sharing one module between callers that may change it.

A checkpoint is loaded once per (file, version on disk, device) and kept; ``classify`` and ``explain`` use
that copy read-only. :func:`resolve_model` hands out a copy of its own to callers that may move it or
restrict its organs (the CLI, the server, users), so nothing one caller does reaches the next one's answers.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path

import torch

from ..model.checkpoint import load
from ..model.heads import MultiHeadModel
from ..model.locate import locate_model

__all__ = ["ModelInput", "resolve_model", "shared_model"]

ModelInput = MultiHeadModel | str | os.PathLike | None


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int, device: str) -> MultiHeadModel:
    return load(path, device=device)


def shared_model(model: ModelInput = None, device: str | torch.device | None = None) -> MultiHeadModel:
    """The model to run, for read-only use: never move it, restrict it or change its buffers.

    A path (or ``None``: ``$MULTIHEAD_MODEL``, then the bundled model) comes from the load cache, one copy
    per device. A model object comes back as it is, or as a moved copy when ``device`` differs from its own
    (the caller's object is never moved).
    """
    if isinstance(model, MultiHeadModel):
        if device is None or torch.device(device) == model.device:
            return model
        return copy.deepcopy(model).to(device)
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a MultiHeadModel, a checkpoint path or None, got {type(model).__name__}")
    path = Path(locate_model(model)).resolve()
    stat = path.stat()
    return _load_cached(str(path), stat.st_mtime_ns, stat.st_size, str(torch.device(device or "cpu")))


def resolve_model(model: ModelInput = None, *, device: str | torch.device | None = None) -> MultiHeadModel:
    """A model the caller owns and may change: a checkpoint path (or ``None``: ``$MULTIHEAD_MODEL``, then the
    bundled model) gives a fresh copy of the cached load; a model object comes back as it is, moved in place
    to ``device`` when one is given.

    Example:
        >>> model = resolve_model(device="cpu")  # doctest: +SKIP
        >>> model.set_available_organs(["brain"])  # no other caller sees this  # doctest: +SKIP
    """
    if isinstance(model, MultiHeadModel):
        return model if device is None else model.to(device)
    return copy.deepcopy(shared_model(model, device))
