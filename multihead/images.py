"""Turn whatever a user hands us (a path, a PIL image, an array, a tensor) into an RGB uint8 tensor.

Every failure raises :class:`ImageError` (a ``ValueError``) naming the file or input and the problem, so
callers never see a traceback from deep inside Pillow or torch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageError",
    "ImageInput",
    "describe_input",
    "pil_to_rgb",
    "read_image",
    "to_rgb_tensor",
]

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit (2 x 89.5 Mpx)


class ImageError(ValueError):
    """An input could not be turned into an image; the message names the input and the problem."""


def describe_input(image: object) -> str:
    """A short name for an input, used in error messages and result tables."""
    if isinstance(image, (str, os.PathLike)):
        return os.fsdecode(image)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"{type(image).__name__}{tuple(image.shape)}"
    return type(image).__name__


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into an RGB PIL image (EXIF orientation applied, first frame of animations).

    Raises:
        ImageError: the file is missing, unreadable, not an image, truncated, or larger than ``max_pixels``.
    """
    name = os.fsdecode(path)
    if not os.path.isfile(path):
        problem = "is a broken symbolic link" if os.path.islink(path) else "does not exist or is not a file"
        raise ImageError(f"{name}: {problem}")
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageError(
                    f"{name}: {image.width}x{image.height} pixels is more than the limit of {max_pixels:,}; "
                    "raise max_pixels if the file is trusted"
                )
            image.seek(0)
            image.load()
            return pil_to_rgb(image, source=name)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: cannot decode image ({err})") from None


def pil_to_rgb(image: Image.Image, *, source: str = "image") -> Image.Image:
    """Convert any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB.

    Transparent pixels are composited on black; 16-bit and float images are rescaled from their own range.
    """
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the pixels
        pass
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{source}: image has no pixels ({image.width}x{image.height})")
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(image, dtype=np.float64), source)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _rescale_to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ImageError(f"{source}: image holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def _array_to_tensor(array: np.ndarray, source: str) -> torch.Tensor:
    """HxW or HxWxC (C in 1, 3, 4) uint8 or [0, 1] float -> 3xHxW uint8."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"{source}: expected an HxW or HxWxC array with C in (1, 3, 4), got shape {array.shape}")
    if array.dtype.kind not in "uif":
        raise ImageError(f"{source}: expected uint8 or floating point pixels, got {array.dtype}")
    return _to_uint8_chw(torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1), source)


def _to_uint8_chw(tensor: torch.Tensor, source: str) -> torch.Tensor:
    """CxHxW (C in 1, 3, 4), uint8 or float in [0, 1] -> 3xHxW uint8."""
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
        raise ImageError(f"{source}: expected a CxHxW tensor with C in (1, 3, 4), got shape {tuple(tensor.shape)}")
    if tensor.shape[1] < 1 or tensor.shape[2] < 1:
        raise ImageError(f"{source}: image has no pixels (shape {tuple(tensor.shape)})")
    if tensor.dtype == torch.uint8:
        out = tensor
    elif tensor.is_floating_point():
        tensor = tensor.detach().float()
        if not torch.isfinite(tensor).all():
            raise ImageError(f"{source}: float image holds NaN or infinite values")
        low, high = float(tensor.min()), float(tensor.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                f"{source}: float images must lie in [0, 1], got values in [{low:g}, {high:g}]; "
                "divide by 255 or pass uint8"
            )
        out = (tensor * 255.0).round_().to(torch.uint8)
    else:
        raise ImageError(f"{source}: expected uint8 or floating point pixels, got {tensor.dtype}")
    if out.shape[0] == 4:
        out = out[:3]
    elif out.shape[0] == 1:
        out = out.expand(3, -1, -1)
    return out.contiguous()


def to_rgb_tensor(image: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Any supported input -> a 3xHxW uint8 tensor on the CPU.

    Accepts a file path, a PIL image, a numpy array (HxW or HxWxC, uint8 or float in [0, 1]) or a torch
    tensor (CxHxW, uint8 or float in [0, 1]). Alpha channels are dropped, grayscale is repeated.

    Example:
        >>> to_rgb_tensor(np.zeros((4, 5), dtype=np.uint8)).shape
        torch.Size([3, 4, 5])
    """
    source = describe_input(image)
    if isinstance(image, (str, Path, os.PathLike)):
        image = read_image(image, max_pixels=max_pixels)
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
