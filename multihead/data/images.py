"""Read and decode image files (or their bytes) into RGB PIL images, safely; :mod:`.tensors` makes tensors of them.

Every failure raises :class:`ImageError` (a ``ValueError``) naming the file or input and the problem, so
callers never see a traceback from deep inside Pillow or torch. Files are opened only with the decoders of
the formats in :data:`IMAGE_EXTENSIONS` (never, say, Pillow's EPS plugin, which runs Ghostscript), and an
image larger than ``max_pixels``, with a side longer than :data:`MAX_SIDE` or (a progressive JPEG) more scans than
:data:`MAX_JPEG_SCANS` is refused from its header, before any pixel is decoded. A server can also give decoding a
time limit and stop it when its client goes away (:func:`finish_decoding`).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .folders import IMAGE_EXTENSIONS  # defined there so walking folders needs no torch

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "MAX_JPEG_SCANS",
    "MAX_SIDE",
    "ImageError",
    "ImageInput",
    "check_is_file",
    "decode_image",
    "describe_input",
    "finish_decoding",
    "is_path",
    "is_progressive_jpeg",
    "open_image",
    "pil_to_rgb",
    "pixels_to_decode",
    "read_image",
]

ImageInput = str | bytes | os.PathLike | Image.Image | np.ndarray | torch.Tensor

IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP")
"""The Pillow decoders files are opened with; the JPEG one also reads multi-picture (MPO) JPEGs."""
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit (2 x 89.5 Mpx)
MAX_SIDE = 65_535
"""Longest side an image may have (JPEG's own limit). A 1x39,999,999 PNG is 78 KB and within a pixel limit, but
no slide is that thin, and resizing such a strip to a square is what blows up (issue 36)."""
MAX_JPEG_SCANS = 100
"""Most scans a progressive JPEG may have (encoders write about 10). Each scan is decoded over every block of the
whole image, so a 600 KB file repeating one tiny scan 3,000 times kept a decoder busy for minutes (issue 36)."""
_SOS = b"\xff\xda"  # a JPEG's start-of-scan marker (entropy-coded data never holds it: 0xFF is followed by 0x00)
_SCAN_BLOCK = 1 << 20


class ImageError(ValueError):
    """An input could not be turned into an image; the message names the input and the problem."""


def is_path(obj: object) -> bool:
    """Whether ``obj`` names a file: ``str``, ``bytes`` (any file name on Linux) or ``os.PathLike``."""
    return isinstance(obj, (str, bytes, os.PathLike))


def describe_input(image: object) -> str:
    """A short printable name for an input, used in error messages and result tables.

    File names that are not valid UTF-8 show their odd bytes as ``\\xNN`` escapes.
    """
    if is_path(image):
        return os.fsdecode(image).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"{type(image).__name__}{tuple(image.shape)}"
    return type(image).__name__


def check_is_file(path: str | bytes | os.PathLike, name: str | None = None) -> None:
    """Raise :class:`ImageError` unless ``path`` is a regular file, saying what it is instead (``name``: how to
    call it, by default its path). A FIFO or a device is refused before anything opens it: reading one blocks."""
    name = describe_input(path) if name is None else name
    try:
        info = os.stat(path)
        mode, size = info.st_mode, info.st_size
    except FileNotFoundError:
        problem = "is a broken symbolic link (its target does not exist)" if os.path.islink(path) else "does not exist"
    except PermissionError:
        problem = "permission denied"
    except OSError as err:
        problem = "is a symbolic link loop" if err.errno == errno.ELOOP else f"cannot be opened ({err.strerror})"
    except ValueError as err:  # an embedded NUL byte
        problem = f"is not a valid file name ({err})"
    else:
        if not stat.S_ISREG(mode):
            problem = "is a folder, not an image file" if stat.S_ISDIR(mode) else "is not a regular file"
        elif size == 0:
            problem = "is empty (0 bytes)"
        else:
            return
    raise ImageError(f"{name}: {problem}")


def read_image(path: str | bytes | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               reduce_to: int | None = None) -> Image.Image:
    """Decode an image file into an RGB PIL image (EXIF orientation applied, first frame of animations).

    Args:
        path: the file; its contents, not its extension, decide the format (JPEG, PNG, BMP, TIFF, GIF, WebP).
        max_pixels: refuse images with more pixels than this, from the header alone, before decoding.
            ``None`` lifts this limit (Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` still applies).
        reduce_to: the side the image will be resized to; when given, a JPEG at least four times that side is
            decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) and box-reduced, never below twice that side,
            as :func:`decode_image` does for uploads. Other formats, and smaller JPEGs, decode as without it.

    Raises:
        ImageError: the file is missing, unreadable, not an image, truncated, larger than ``max_pixels``, with a
            side longer than :data:`MAX_SIDE`, or a progressive JPEG of more than :data:`MAX_JPEG_SCANS` scans.

    Example:
        >>> read_image("slide.png", max_pixels=50_000_000).mode  # doctest: +SKIP
        'RGB'
    """
    name = describe_input(path)
    check_is_file(path, name)
    with _decoding_errors(name), open(path, "rb") as handle:
        return _decode(handle, name, max_pixels, reduce_to)


def decode_image(data: bytes, *, name: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 reduce_to: int | None = None) -> Image.Image:
    """:func:`read_image` for an image held in memory (an HTTP upload): same formats, limits and errors.

    Args:
        data: the encoded file's bytes.
        name: how error messages name the image (an upload's file name).
        reduce_to: the side the image will be resized to; when given, the image is downscaled while it is
            decoded (:func:`open_image`, :func:`finish_decoding`), never below twice that side.

    Raises:
        ImageError: the bytes are empty, not an image, truncated, or larger than ``max_pixels``.

    Example:
        >>> decode_image(open("slide.png", "rb").read(), name="slide.png").size  # doctest: +SKIP
        (640, 480)
    """
    return finish_decoding(open_image(data, name=name, max_pixels=max_pixels, reduce_to=reduce_to),
                           name=name, reduce_to=reduce_to)


def open_image(data: bytes, *, name: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS,
               reduce_to: int | None = None) -> Image.Image:
    """Read an encoded image's header only; its ``size`` is then what decoding will allocate.

    With ``reduce_to``, JPEGs are set to decode at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``), keeping at
    least ``2 * reduce_to`` pixels a side, so a 6300x6300 JPEG costs a 64th of its pixels; other formats
    decode at full size. A server charges :func:`pixels_to_decode` against its budget before decoding.

    Raises:
        ImageError: as :func:`decode_image`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"{name}: expected the encoded image as bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError(f"{name}: is empty (0 bytes)")
    with _decoding_errors(name), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = _open_checked(io.BytesIO(data), name, max_pixels, data)
        if reduce_to is not None and image.format == "JPEG":
            image.draft("RGB", (2 * reduce_to, 2 * reduce_to))
        return image


def finish_decoding(image: Image.Image, *, name: str = "image", reduce_to: int | None = None,
                    time_limit: float | None = None, started: float | None = None,
                    stop: threading.Event | None = None) -> Image.Image:
    """Decode an image from :func:`open_image` to RGB; with ``reduce_to``, box-reduce it by a whole factor
    (never below ``2 * reduce_to`` a side) and let the full-size pixels go at once.

    Args:
        time_limit: give up (:class:`ImageError`) when decoding is still running this many seconds after
            ``started`` (a ``time.monotonic()`` value; default: now).
        stop: once set (the client went away), decoding stops with an :class:`ImageError` nobody needs to read.

    Both are checked each time the decoder asks for more of the file; a progressive JPEG is fed one scan at a
    time, so a file of many scans cannot run on unchecked.
    """
    with _decoding_errors(name), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.seek(0)
        if time_limit is not None or stop is not None:
            _check_while_reading(image, name, time_limit, time.monotonic() if started is None else started, stop)
        image.load()
        if reduce_to is not None:
            factor = min(image.width, image.height) // (2 * reduce_to)
            if factor >= 2:
                if image.mode not in _REDUCIBLE_MODES:
                    image = pil_to_rgb(image, source=name)
                image = image.reduce(factor)  # the full-size image is released when this function returns
        return pil_to_rgb(image, source=name)


def is_progressive_jpeg(image: Image.Image) -> bool:
    """Whether ``image`` (opened, not yet decoded) is a progressive JPEG: decoded scan by scan over the whole image."""
    return image.format in ("JPEG", "MPO") and bool(image.info.get("progressive"))


def pixels_to_decode(image: Image.Image) -> int:
    """The pixels decoding ``image`` (from :func:`open_image`) holds: its size, at the reduced scale a JPEG is set
    to, except for a progressive JPEG, whose coefficients are kept at full size whatever the scale it is drawn at."""
    scale = 1
    if is_progressive_jpeg(image) and getattr(image, "decoderconfig", None):
        scale = int(image.decoderconfig[0]) or 1
    return image.width * scale * image.height * scale


def _check_while_reading(image: Image.Image, name: str, time_limit: float | None, started: float,
                         stop: threading.Event | None) -> None:
    """Make ``image.load()`` check ``stop`` and the time limit before each piece of the file it reads."""
    read = getattr(image, "load_read", None) or image.fp.read
    handle = image.fp
    data = handle.getvalue() if is_progressive_jpeg(image) and isinstance(handle, io.BytesIO) else None
    deadline = None if time_limit is None else started + time_limit

    def checked_read(size: int) -> bytes:
        if stop is not None and stop.is_set():
            raise ImageError(f"{name}: decoding stopped: the request was abandoned")
        if deadline is not None and time.monotonic() > deadline:
            raise ImageError(f"{name}: not decoded within the {time_limit:g} s allowed; the file takes too long to "
                             "decode (a progressive JPEG of many scans?)")
        if data is not None:  # up to the next scan only: each decoder call then decodes at most one scan
            position = handle.tell()
            following = data.find(_SOS, position + 2, position + size)
            if following > 0:
                size = following - position
        return read(size)

    image.load_read = checked_read  # ImageFile.load reads through load_read when an image has one


_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})


def _decode(handle: BinaryIO, name: str, max_pixels: int | None, reduce_to: int | None = None) -> Image.Image:
    # Pillow's warnings (corrupt EXIF, oversized tags, its own bomb warning: max_pixels is the limit here)
    # are silenced: the outcome is an image or one ImageError.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = _open_checked(handle, name, max_pixels)
        if reduce_to is not None and image.format == "JPEG":
            image.draft("RGB", (2 * reduce_to, 2 * reduce_to))
            return finish_decoding(image, name=name, reduce_to=reduce_to)
        image.seek(0)
        image.load()
        return pil_to_rgb(image, source=name)


def _open_checked(handle: BinaryIO, name: str, max_pixels: int | None, data: bytes | None = None) -> Image.Image:
    image = Image.open(handle, formats=IMAGE_FORMATS)
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} pixels is more than the limit of {max_pixels:,}; "
            "raise max_pixels if the file is trusted"
        )
    if max(width, height) > MAX_SIDE:
        raise ImageError(f"{name}: {width}x{height} pixels has a side longer than {MAX_SIDE:,} pixels, too thin a "
                         "strip to resize; cut it into tiles")
    if is_progressive_jpeg(image):
        scans = data.count(_SOS) if data is not None else _count_scans(handle)
        if scans > MAX_JPEG_SCANS:
            raise ImageError(f"{name}: a progressive JPEG of {scans:,} scans, more than the limit of {MAX_JPEG_SCANS} "
                             "(encoders write about 10; each scan is decoded over the whole image)")
    return image


def _count_scans(handle: BinaryIO) -> int:
    """Start-of-scan markers in a file, read a block at a time (a marker may straddle two blocks)."""
    position = handle.tell()
    handle.seek(0)
    count, previous = 0, b""
    try:
        while block := handle.read(_SCAN_BLOCK):
            count += (previous[-1:] + block).count(_SOS)
            previous = block
    finally:
        handle.seek(position)
    return count


@contextmanager
def _decoding_errors(name: str) -> Iterator[None]:
    """Whatever Pillow raises while opening or decoding becomes one :class:`ImageError` naming ``name``."""
    try:
        yield
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        formats = ", ".join(IMAGE_FORMATS)
        raise ImageError(f"{name}: not an image file in a format multihead reads ({formats}), "
                         "or its header is damaged") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: {err} Raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted") from None
    except Exception as err:  # Pillow's decoders raise many types on damaged data (OSError, SyntaxError, ...)
        raise ImageError(f"{name}: cannot decode image, the file is damaged or truncated "
                         f"({type(err).__name__}: {err})") from None


def pil_to_rgb(image: Image.Image, *, source: str = "image") -> Image.Image:
    """Convert any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB.

    Transparent pixels are composited on black; 16-bit and float images are rescaled from their own range.

    Raises:
        ImageError: the image has no pixels, holds NaN or infinity, or its pixels cannot be read or converted.
    """
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block must not lose the pixels
        pass
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{source}: image has no pixels ({image.width}x{image.height})")
    try:
        if image.mode == "RGB":
            return image
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return Image.fromarray(_rescale_to_uint8(np.asarray(image, dtype=np.float64), source)).convert("RGB")
        if image.mode in ("P", "RGBA", "LA", "PA", "RGBa", "La"):
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except ImageError:
        raise
    except (ValueError, OSError) as err:
        raise ImageError(f"{source}: cannot convert {image.mode} pixels to RGB ({err})") from None


def _rescale_to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ImageError(f"{source}: image holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)
