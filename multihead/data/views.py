"""The eight dihedral views of an image batch (flips and 90-degree rotations): cached training views and
test-time augmentation use the same names and the same pixels."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["VIEWS", "apply_view"]

VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose")
"""The eight dihedral views; ``identity`` is the image as it is."""

_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot180": lambda x: x.rot90(2, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: x.rot90(2, (-2, -1)).transpose(-2, -1),
}


def apply_view(batch: torch.Tensor, view: str) -> torch.Tensor:
    """One dihedral view of a ``[B, C, H, W]`` batch.

    Example:
        >>> apply_view(torch.arange(4).view(1, 1, 2, 2), "hflip").flatten().tolist()
        [1, 0, 3, 2]
    """
    if view not in _OPS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    return _OPS[view](batch).contiguous()
