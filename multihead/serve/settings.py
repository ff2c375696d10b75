"""The server's limits and batching settings: one frozen dataclass, defaults everywhere, checked when built."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ServeSettings"]


@dataclass(frozen=True)
class ServeSettings:
    """Limits that keep one upload from taking the server down, and how requests are batched.

    Example:
        >>> ServeSettings(max_pixels=10_000_000).max_upload_bytes
        33554432
    """

    # limits on what a request may carry
    max_upload_bytes: int = 32 * 2**20
    """Largest request body (all files together); larger ones get 413 before they are read in full."""
    max_pixels: int = 40_000_000
    """Largest image, width x height from its header, checked before its pixels are decoded (422 above)."""
    max_files: int = 16
    """Most images in one ``/v1/classify`` request."""
    max_explain_files: int = 4
    """Most images in one ``/v1/explain`` request (Grad-CAM runs one image at a time)."""

    # batching across concurrent requests (multihead.serve.batching)
    max_batch: int | None = None
    """Most images in one forward pass; ``None``: measured when the server starts, the one of 1, 2, 4 and 8 that
    runs the most images per second (:func:`~multihead.serve.batching.fastest_batch_size`)."""
    batch_wait_ms: float = 5.0
    """How long the first image of a batch waits for others."""
    max_queue: int = 256
    """Most images waiting for the model; beyond it requests get 503 and should retry."""
    decode_threads: int = 2
    """Threads decoding and resizing uploads (and encoding Grad-CAM PNGs), beside the one model thread."""

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_files", "max_explain_files", "max_batch", "max_queue",
                     "decode_threads"):
            value = getattr(self, name)
            if name == "max_batch" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer{' or None' if name == 'max_batch' else ''}, "
                             f"got {value!r}")
        if not isinstance(self.batch_wait_ms, (int, float)) or not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be a number of milliseconds in [0, 1000], got {self.batch_wait_ms!r}")
        if self.max_queue < max(self.max_batch or 0, self.max_files):
            raise ValueError(f"max_queue ({self.max_queue}) must be at least max_batch ({self.max_batch}) and "
                             f"max_files ({self.max_files}), or some requests could never be queued")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
