"""Decode and resize a batch on the device: JPEG bytes in, the trunk's uint8 batch out.

On a GPU, ``torchvision.io.decode_jpeg(list, device="cuda")`` decodes a whole batch with nvJPEG and the
resize runs there too, so the CPU only reads bytes; on the CPU the same calls run, which is what the tests
and the GPU run's smoke mode (``benchmarks/gpu``) check. Other formats (PNG, ...) are decoded on the CPU and
moved. This path reads no EXIF orientation and decodes with another IDCT than Pillow's
(:mod:`multihead.data.images`), so pixels may differ by a level or two; it is the path to use when the CPU's
decoder bounds throughput, with its parity measured (``benchmarks/gpu``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from .images import ImageError
from .preprocessing import Preprocessing

__all__ = ["decode_batch", "is_jpeg", "resize_batch"]


def is_jpeg(encoded: torch.Tensor) -> bool:
    """Whether the bytes start with a JPEG's SOI marker (``FF D8 FF``)."""
    return encoded.numel() >= 3 and encoded[:3].tolist() == [0xFF, 0xD8, 0xFF]


def _decode_one(encoded: torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        if is_jpeg(encoded):
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        return decode_image(encoded, mode=ImageReadMode.RGB).to(device)
    except (RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0].rsplit(", ", 1)[-1] if str(err) else type(err).__name__
        raise ImageError(f"{name}: cannot decode ({reason})") from None


def decode_batch(encoded: Sequence[torch.Tensor], *, device: str | torch.device = "cpu",
                 names: Sequence[str] | None = None) -> list[torch.Tensor | ImageError]:
    """Encoded files (1-D uint8 tensors, e.g. ``torchvision.io.read_file``) -> RGB uint8 ``[3, H, W]`` on
    ``device``, or the :class:`~multihead.data.images.ImageError` naming why one failed; order kept.

    JPEGs are decoded in one batched call; when that call fails, each is decoded alone, so one broken file
    costs only itself.

    Example:
        >>> data = torchvision.io.read_file("multihead/examples/WBC-Benign-020.jpg")  # doctest: +SKIP
        >>> decode_batch([data], device="cuda")[0].shape  # doctest: +SKIP
        torch.Size([3, 224, 224])
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(encoded))]
    out: list[torch.Tensor | ImageError | None] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if is_jpeg(data)]
    if len(jpegs) > 1:
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpegs, decoded):
                out[i] = image
        except RuntimeError:  # a broken file fails the whole batch: find it below, one by one
            pass
    for i, data in enumerate(encoded):
        if out[i] is None:
            try:
                out[i] = _decode_one(data, device, names[i])
            except ImageError as err:
                out[i] = err
    return out  # type: ignore[return-value]


def resize_batch(images: Sequence[torch.Tensor], preprocessing: Preprocessing) -> torch.Tensor:
    """RGB uint8 images of any sizes, on one device -> ``[B, 3, S, S]`` uint8 there: one batched
    :meth:`Preprocessing.resize` per distinct input shape."""
    if not images:
        raise ValueError("resize_batch needs at least one image")
    size = preprocessing.image_size
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images[0].device)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[tuple(image.shape)].append(i)
    for index in groups.values():
        out[torch.tensor(index, device=out.device)] = preprocessing.resize(torch.stack([images[i] for i in index]))
    return out
