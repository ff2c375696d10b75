"""Preprocessing that travels with the model: resize on the CPU in uint8, normalise on the device.

Split in two so that batches cross to the accelerator as uint8 (4x fewer bytes than float32) and the
normalisation runs where the model runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from torchvision.transforms.v2 import functional as F

from .images import ImageInput
from .tensors import to_rgb_tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the trunk's input.

    Args:
        image_size: side of the square input, in pixels.
        resize_mode: ``"squash"`` resizes the whole image to a square (nothing is cut off), ``"crop"``
            resizes the shorter side then takes the centre square (torchvision's ImageNet recipe).
        mean: per-channel mean for normalisation, from the trunk's weights.
        std: per-channel standard deviation, from the trunk's weights.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (antialiased).
        crop_pct: the share of the resized image kept, as timm's pretrained configs say it: below 1 the image is
            first resized to ``image_size / crop_pct`` (its shorter side for ``"crop"``, both sides for ``"squash"``)
            and the centre ``image_size`` square taken; from 0.5 to 1.

    Example:
        >>> Preprocessing(image_size=224).describe()[:49]
        'RGB -> squash to 224x224 (bilinear, antialiased)'
    """

    image_size: int = 224
    resize_mode: Literal["squash", "crop"] = "squash"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if self.resize_mode not in ("squash", "crop"):
            raise ValueError(f"resize_mode must be 'squash' or 'crop', got {self.resize_mode!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float)) or not (
                0.5 <= self.crop_pct <= 1.0):
            raise ValueError(f"crop_pct must be a number from 0.5 to 1, got {self.crop_pct!r}")
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={self.mean}, std={self.std}")

    # --- serialisation ------------------------------------------------------------------------------
    def to_json(self) -> str:
        fields = asdict(self)
        if self.crop_pct == 1.0:  # only when set: every file written before crop_pct existed keeps its JSON
            del fields["crop_pct"]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as err:
            raise ValueError(f"not a valid preprocessing JSON: {err}") from err

    def with_size(self, image_size: int) -> Preprocessing:
        return replace(self, image_size=image_size)

    def describe(self) -> str:
        crop = f" (the centre of {self.scale_size} px)" if self.crop_pct != 1.0 else ""
        return (
            f"RGB -> {self.resize_mode} to {self.image_size}x{self.image_size}{crop} ({self.interpolation}, "
            f"antialiased) -> /255 -> normalise mean={self.mean} std={self.std}"
        )

    @property
    def scale_size(self) -> int:
        """The side images are resized to before the centre ``image_size`` is taken (``image_size / crop_pct``)."""
        return math.floor(self.image_size / self.crop_pct) if self.crop_pct != 1.0 else self.image_size

    # --- the two halves -----------------------------------------------------------------------------
    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """3xHxW uint8 -> 3xSxS uint8 (CPU, per image; images come in all sizes)."""
        mode = F.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else F.InterpolationMode.BILINEAR
        size = self.scale_size  # image_size unless a crop_pct below 1 asks for a margin around it
        height, width = image.shape[-2:]
        if self.resize_mode == "squash":
            if height * size > 4 * (height * width + size * size):
                # A thin tall strip: the resize runs along the width first, which would hold a height x size
                # image (a 1x600,000 strip: 1.2 GB at 640 px); transposed, the long side is shrunk first.
                resized = F.resize(image.transpose(-1, -2), [size, size], interpolation=mode, antialias=True)
                return self._centre(resized.transpose(-1, -2).contiguous())
            return self._centre(F.resize(image, [size, size], interpolation=mode, antialias=True))
        short, long = min(height, width), max(height, width)
        if long > 16 * short:
            # Resized whole, a 1x65,535 strip would be 640 x 42 million pixels at 640 px; only the centre square is
            # kept, so the rest is cut off first (with a margin for the resampling kernel).
            keep = min(long, short + 2 * (2 * (short // size) + 4))
            start = (long - keep) // 2
            image = image[..., start:start + keep, :] if height > width else image[..., start:start + keep]
        image = F.resize(image, size, interpolation=mode, antialias=True)
        return F.center_crop(image, [self.image_size, self.image_size])

    def _centre(self, image: torch.Tensor) -> torch.Tensor:
        return image if self.crop_pct == 1.0 else F.center_crop(image, [self.image_size, self.image_size])

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Bx3xSxS uint8 (any device) -> normalised float of ``dtype`` on the same device."""
        if batch.dtype != torch.uint8:
            raise ValueError(f"normalize expects a uint8 batch, got {batch.dtype}")
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1) * 255.0)
        return ((batch.float() - mean) * inv_std).to(dtype)

    def load(self, image: ImageInput, *, draft: bool = False) -> torch.Tensor:
        """Any supported input -> resized 3xSxS uint8, ready to be stacked into a batch.

        With ``draft``, a JPEG file at least four times the input side is decoded at a reduced scale (Pillow's
        draft mode, then a box reduction, never below twice the side) before the resize: a fraction of the work
        for a large photograph, as the server decodes uploads. ``classify`` uses it; features for training and
        evaluation decode in full.
        """
        return self.resize(to_rgb_tensor(image, reduce_to=self.image_size if draft else None))

    def __call__(self, image: ImageInput) -> torch.Tensor:
        """Any supported input -> normalised 3xSxS float32 (what the trunk expects)."""
        return self.normalize(self.load(image).unsqueeze(0))[0]
