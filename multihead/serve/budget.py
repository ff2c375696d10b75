"""How many pixels the server is decoding at once: one counter every request charges before it decodes.

Decoding is where an upload's cost arises (a 38 KB PNG can hold 40 million pixels, 120 MB of RGB), so a
request first reads its images' headers, then charges their pixel count here and is answered 503 with
``Retry-After`` when the server is already decoding its budget's worth; each image's pixels are given back
as soon as it is resized to the model's input.
"""

from __future__ import annotations

import threading

__all__ = ["PixelBudget"]


class PixelBudget:
    """A thread-safe count of pixels in flight, never above ``limit``.

    Example:
        >>> budget = PixelBudget(100)
        >>> budget.try_acquire(80), budget.try_acquire(30), budget.in_use
        (True, False, 80)
    """

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.refused = 0
        self._lock = threading.Lock()

    def try_acquire(self, pixels: int) -> bool:
        """Charge ``pixels`` if they fit beside what is in flight; ``False`` (and nothing charged) otherwise."""
        with self._lock:
            if self.in_use + pixels > self.limit:
                self.refused += 1
                return False
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
            return True

    def release(self, pixels: int) -> None:
        with self._lock:
            self.in_use = max(0, self.in_use - pixels)

    def to_dict(self) -> dict[str, int]:
        return {"pixels_in_flight": self.in_use, "pixel_budget": self.limit, "peak_pixels_in_flight": self.peak,
                "refused_for_pixels": self.refused}
