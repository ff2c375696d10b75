"""Preprocessing that travels with the model: resize on the CPU in uint8, normalise on the device.

Split in two so that batches cross to the accelerator as uint8 (4x fewer bytes than float32) and the
normalisation runs where the model runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from torchvision.transforms.v2 import functional as F

from .images import ImageInput, to_rgb_tensor

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

    Example:
        >>> Preprocessing(image_size=224).describe()[:49]
        'RGB -> squash to 224x224 (bilinear, antialiased)'
    """

    image_size: int = 224
    resize_mode: Literal["squash", "crop"] = "squash"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if self.resize_mode not in ("squash", "crop"):
            raise ValueError(f"resize_mode must be 'squash' or 'crop', got {self.resize_mode!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={self.mean}, std={self.std}")

    # --- serialisation ------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as err:
            raise ValueError(f"not a valid preprocessing JSON: {err}") from err

    def with_size(self, image_size: int) -> Preprocessing:
        return replace(self, image_size=image_size)

    def describe(self) -> str:
        return (
            f"RGB -> {self.resize_mode} to {self.image_size}x{self.image_size} ({self.interpolation}, antialiased)"
            f" -> /255 -> normalise mean={self.mean} std={self.std}"
        )

    # --- the two halves -----------------------------------------------------------------------------
    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """3xHxW uint8 -> 3xSxS uint8 (CPU, per image; images come in all sizes)."""
        mode = F.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else F.InterpolationMode.BILINEAR
        size = self.image_size
        if self.resize_mode == "squash":
            return F.resize(image, [size, size], interpolation=mode, antialias=True)
        image = F.resize(image, size, interpolation=mode, antialias=True)
        return F.center_crop(image, [size, size])

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Bx3xSxS uint8 (any device) -> normalised float of ``dtype`` on the same device."""
        if batch.dtype != torch.uint8:
            raise ValueError(f"normalize expects a uint8 batch, got {batch.dtype}")
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1) * 255.0)
        return ((batch.float() - mean) * inv_std).to(dtype)

    def load(self, image: ImageInput) -> torch.Tensor:
        """Any supported input -> resized 3xSxS uint8, ready to be stacked into a batch."""
        return self.resize(to_rgb_tensor(image))

    def __call__(self, image: ImageInput) -> torch.Tensor:
        """Any supported input -> normalised 3xSxS float32 (what the trunk expects)."""
        return self.normalize(self.load(image).unsqueeze(0))[0]
