"""Any image input a user hands us (a path, a PIL image, a numpy array, a tensor) as one RGB uint8 tensor.

Files are read by :mod:`multihead.data.images`; this module turns what comes out of it, or what the caller already
holds in memory, into ``3 x H x W`` uint8 on the CPU, with an :class:`~multihead.data.images.ImageError` naming the
input when it cannot be.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .images import DEFAULT_MAX_PIXELS, ImageError, ImageInput, describe_input, is_path, pil_to_rgb, read_image

__all__ = ["to_rgb_tensor"]


def _array_to_tensor(array: np.ndarray, source: str) -> torch.Tensor:
    """HxW or HxWxC (C in 1, 3, 4) uint8 or [0, 1] float -> 3xHxW uint8."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"{source}: expected an HxW or HxWxC array with C in (1, 3, 4), got shape {array.shape}")
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise ImageError(
            f"{source}: expected uint8 pixels (0-255) or floats in [0, 1], got dtype {array.dtype}; "
            "convert with array.astype(np.uint8) or divide by the maximum"
        )
    # A native-order copy torch can take: no big-endian data, no long double.
    native = np.dtype(np.float64) if array.dtype.itemsize > 8 else array.dtype.newbyteorder("=")
    return _to_uint8_chw(torch.from_numpy(np.array(array, dtype=native, copy=True)).permute(2, 0, 1), source)


def _to_uint8_chw(tensor: torch.Tensor, source: str) -> torch.Tensor:
    """CxHxW (C in 1, 3, 4), uint8 or float in [0, 1] -> 3xHxW uint8."""
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
        raise ImageError(f"{source}: expected a CxHxW tensor with C in (1, 3, 4), got shape {tuple(tensor.shape)}")
    if tensor.shape[1] < 1 or tensor.shape[2] < 1:
        raise ImageError(f"{source}: image has no pixels (a height or width of 0)")
    if tensor.dtype == torch.uint8:
        out = tensor
    elif tensor.is_floating_point():
        tensor = tensor.detach()
        if not torch.isfinite(tensor).all():
            raise ImageError(f"{source}: float image holds NaN or infinite values")
        low, high = float(tensor.min()), float(tensor.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                f"{source}: float images must lie in [0, 1], got values in [{low:g}, {high:g}]; "
                "divide by 255 or pass uint8"
            )
        out = (tensor.float() * 255.0).round_().to(torch.uint8)
    else:
        raise ImageError(f"{source}: expected uint8 pixels (0-255) or floats in [0, 1], got {tensor.dtype}")
    if out.shape[0] == 4:
        out = out[:3]
    elif out.shape[0] == 1:
        out = out.expand(3, -1, -1)
    return out.contiguous()


def to_rgb_tensor(image: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  reduce_to: int | None = None) -> torch.Tensor:
    """Any supported input -> a 3xHxW uint8 tensor on the CPU (a large JPEG file reduced while decoded with
    ``reduce_to``: :func:`read_image`).

    Accepts a file path (``str``, ``bytes`` or ``os.PathLike``), a PIL image, a numpy array (HxW or HxWxC,
    uint8 or float in [0, 1]) or a torch tensor (CxHxW, uint8 or float in [0, 1]). Alpha channels are
    dropped, grayscale is repeated.

    Raises:
        ImageError: the input is not a readable image; the message names it and says what was expected.

    Example:
        >>> to_rgb_tensor(np.zeros((4, 5), dtype=np.uint8)).shape
        torch.Size([3, 4, 5])
    """
    source = describe_input(image)
    if is_path(image):
        image = read_image(image, max_pixels=max_pixels, reduce_to=reduce_to)
    if isinstance(image, Image.Image):
        rgb = pil_to_rgb(image, source=source)
        return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        return _array_to_tensor(image, source)
    if isinstance(image, torch.Tensor):
        return _to_uint8_chw(image.cpu(), source)
    raise ImageError(
        f"{source}: unsupported input type; expected a path, PIL.Image, numpy array or torch tensor"
    )
