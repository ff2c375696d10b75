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
    max_request_pixels: int | None = None
    """Most pixels one request may have decoded, all its images together, counted after JPEGs are set to decode
    at a reduced scale (422 above): 16 PNGs of 6300x6300 would be 635 million. ``None``: 100 million, or
    ``max_pixels`` if that is larger."""
    max_pixels_in_flight: int | None = None
    """Most pixels being decoded across the server at once; a request that would pass it gets 503 with
    ``Retry-After``. ``None``: twice ``max_request_pixels`` (600 MB of RGB by default)."""
    decode_timeout_s: float = 10.0
    """Seconds from a request's arrival within which its images must be decoded: an image still decoding then is
    422 (too slow to decode), one still waiting for a decoding thread 503. Decoding also stops when the client
    goes away."""

    # connections (uvicorn, through multihead.serve.run_server)
    header_timeout_s: float = 5.0
    """A connection must complete a request's headers within this many seconds of opening (or of the previous
    response), or it is closed."""
    body_timeout_s: float = 60.0
    """A request's body must arrive in full within this many seconds of its headers, or the connection is closed
    (32 MiB in 60 s is 0.5 MiB/s)."""
    keep_alive_timeout_s: float = 5.0
    """An idle keep-alive connection is closed after this many seconds (uvicorn's ``timeout_keep_alive``)."""
    max_header_bytes: int = 16_384
    """Largest request head, request line and headers together (uvicorn's ``h11_max_incomplete_event_size``)."""
    max_connections: int = 64
    """Most requests in progress (beyond it 503), and apart from them most connections still sending a request's
    headers: one more closes the one that has been at it longest, so clients trickling headers cannot take the
    places of real requests."""
    allowed_hosts: tuple[str, ...] | None = None
    """Host header values (without port) the server answers; others get 400 (DNS rebinding). ``None``: the
    loopback names when :func:`~multihead.serve.run_server` binds a loopback address, no check otherwise."""
    allowed_origins: tuple[str, ...] = ()
    """Origins (``https://app.example``) whose pages may POST to the server; a POST from any other site's page (its
    ``Origin`` header names another site) gets 403. Requests without ``Origin`` (curl, scripts) and from the
    server's own page are always served."""

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
        if self.max_request_pixels is None and isinstance(self.max_pixels, int):
            object.__setattr__(self, "max_request_pixels", max(100_000_000, self.max_pixels))
        if self.max_pixels_in_flight is None and isinstance(self.max_request_pixels, int):
            object.__setattr__(self, "max_pixels_in_flight", 2 * self.max_request_pixels)
        for name in ("max_upload_bytes", "max_pixels", "max_files", "max_explain_files", "max_batch", "max_queue",
                     "decode_threads", "max_request_pixels", "max_pixels_in_flight", "max_header_bytes",
                     "max_connections"):
            value = getattr(self, name)
            if name == "max_batch" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer{' or None' if name == 'max_batch' else ''}, "
                             f"got {value!r}")
        if not isinstance(self.batch_wait_ms, (int, float)) or not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be a number of milliseconds in [0, 1000], got {self.batch_wait_ms!r}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s", "decode_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise ValueError(f"{name} must be a number of seconds in (0, 3600], got {value!r}")
        if not self.max_pixels <= self.max_request_pixels <= self.max_pixels_in_flight:
            raise ValueError(f"need max_pixels ({self.max_pixels:,}) <= max_request_pixels "
                             f"({self.max_request_pixels:,}) <= max_pixels_in_flight ({self.max_pixels_in_flight:,}), "
                             "or some requests could never be decoded")
        if self.allowed_hosts is not None and (
                not isinstance(self.allowed_hosts, tuple) or not all(isinstance(h, str) for h in self.allowed_hosts)):
            raise ValueError(f"allowed_hosts must be a tuple of host names or None, got {self.allowed_hosts!r}")
        if not isinstance(self.allowed_origins, tuple) or not all(
                isinstance(o, str) and o.startswith(("http://", "https://")) for o in self.allowed_origins):
            raise ValueError("allowed_origins must be a tuple of origins such as 'https://app.example', got "
                             f"{self.allowed_origins!r}")
        object.__setattr__(self, "allowed_origins", tuple(o.rstrip("/").lower() for o in self.allowed_origins))
        if self.max_queue < max(self.max_batch or 0, self.max_files):
            raise ValueError(f"max_queue ({self.max_queue}) must be at least max_batch ({self.max_batch}) and "
                             f"max_files ({self.max_files}), or some requests could never be queued")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
