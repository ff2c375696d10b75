"""Real images for the GPU run: where the shared sample is, its bytes in memory, decoding and resizing.

Decoding and resizing are the library's device path (:mod:`multihead.data.device_decode`):
``torchvision.io.decode_jpeg(list, device="cuda")`` (nvJPEG, batched) on a GPU, the same calls on the CPU in
smoke mode, then ``Preprocessing.resize`` batched per input shape on the device.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as F

from multihead import Preprocessing
from multihead.data.device_decode import decode_batch
from multihead.data.device_decode import resize_batch as library_resize_batch

SAMPLE = Path("data") / "multi-cancer-sample"
EXTENSIONS = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class ImageFile:
    path: Path
    subtype: str | None

    @property
    def is_jpeg(self) -> bool:
        return self.path.suffix.lower() in (".jpg", ".jpeg")


def find_data(repo: Path) -> tuple[Path | None, list[str]]:
    """``$MULTIHEAD_DATA``, then ``./shared/data/...`` (what travels to a device), then ``../shared/data/...``."""
    tried = [os.environ.get("MULTIHEAD_DATA"), repo / "shared" / SAMPLE, repo.parent / "shared" / SAMPLE]
    tried_text = [str(t) for t in tried if t]
    for candidate in tried:
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*/*/*")):
            return Path(candidate), tried_text
    return None, tried_text


def list_images(data: Path | None, repo: Path) -> tuple[list[ImageFile], str]:
    """Every image of ``data/<organ>/<subtype>/``, sorted; without the sample, the package's example JPEGs."""
    if data is not None:
        files = [ImageFile(p, p.parent.name) for p in sorted(data.glob("*/*/*")) if p.suffix.lower() in EXTENSIONS]
        return files, f"shared sample at {data}"
    examples = sorted((repo / "multihead" / "examples").glob("*.jpg"))
    return [ImageFile(p, None) for p in examples], f"no shared sample: the {len(examples)} bundled example JPEGs"


def per_subtype(files: list[ImageFile], count: int) -> list[ImageFile]:
    """The first ``count`` images of each subtype (all of a subtype with fewer)."""
    taken: dict[str | None, int] = defaultdict(int)
    chosen = []
    for f in files:
        if taken[f.subtype] < count:
            taken[f.subtype] += 1
            chosen.append(f)
    return chosen


def read_bytes(files: list[ImageFile]) -> list[torch.Tensor]:
    return [torchvision.io.read_file(str(f.path)) for f in files]


def replicate(items: list[torch.Tensor], total: int, seed: int = 0) -> list[torch.Tensor]:
    """``total`` items cycling through a shuffled copy (references, not copies: memory stays the files')."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[order[i % len(order)]] for i in range(total)]


def decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Batched JPEG decoding to RGB uint8 ``[3, H, W]`` on ``device`` (nvJPEG on a GPU): the library's path."""
    decoded = decode_batch(datas, device=device)
    broken = [item for item in decoded if isinstance(item, Exception)]
    if broken:
        raise broken[0]
    return decoded  # type: ignore[return-value]


def decode_any(datas: list[torch.Tensor], jpeg: list[bool], device: torch.device) -> list[torch.Tensor]:
    """JPEGs batched on ``device``, anything else (PNG) on the CPU and then moved (the library sorts them)."""
    return decode_jpegs(datas, device)


def resize_batch(images: list[torch.Tensor], size: int, preprocessing: Preprocessing | None = None) -> torch.Tensor:
    """Images of any sizes (one device) -> ``[B, 3, size, size]`` uint8 with the model's preprocessing at
    ``size`` (default: squash, bilinear, antialiased), one batched resize per input shape."""
    return library_resize_batch(images, (preprocessing or Preprocessing()).with_size(size))


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class JpegDataset(torch.utils.data.Dataset):
    """CPU path: JPEG bytes in memory -> decoded and resized uint8 ``[3, S, S]`` in a DataLoader worker."""

    def __init__(self, datas: list[torch.Tensor], size: int) -> None:
        self.datas, self.size = datas, size

    def __len__(self) -> int:
        return len(self.datas)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torchvision.io.decode_jpeg(self.datas[index], mode=ImageReadMode.RGB)
        return F.resize(image, [self.size, self.size], interpolation=F.InterpolationMode.BILINEAR, antialias=True)


def one_thread(_worker: int) -> None:
    torch.set_num_threads(1)
