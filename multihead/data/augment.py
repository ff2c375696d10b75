"""The paper's augmentation (rotation, flips, scaling) as seeded views of an image.

With a frozen trunk, "augment and run the trunk on every batch" for E epochs is the same work as
extracting E augmented views of every training image up front, so the online training mode
(:func:`multihead.features.augmented_features`) draws E views per image here, seeded by the image's
position, so a run gives the same views whatever the number of loader workers.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from .preprocessing import Preprocessing

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = ["AugmentedViews", "paper_augmentation"]


def paper_augmentation() -> v2.Compose:
    """Rotation (up to 20 degrees), horizontal and vertical flips, and scaling (0.9 to 1.1), on uint8 tensors."""
    from torchvision.transforms import v2  # here: torchvision's transforms are slow to import

    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=20, scale=(0.9, 1.1)),
    ])


class AugmentedViews:
    """``(position, path)`` -> ``n_views`` augmented views ``[n_views, 3, S, S]`` uint8, seeded by position.

    Example:
        >>> views = AugmentedViews(Preprocessing(image_size=64), n_views=4, seed=0)
        >>> views((0, "multihead/examples/WBC-Benign-020.jpg")).shape  # doctest: +SKIP
        torch.Size([4, 3, 64, 64])
    """

    def __init__(self, preprocessing: Preprocessing, n_views: int, seed: int = 0) -> None:
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}")
        self.preprocessing, self.n_views, self.seed = preprocessing, n_views, seed
        self.transform = paper_augmentation()

    def __call__(self, item: tuple[int, str | os.PathLike]) -> torch.Tensor:
        position, path = item
        image = self.preprocessing.load(path)
        torch.manual_seed(self.seed * 1_000_003 + position)  # the same views in every run, whatever the workers
        return torch.stack([self.transform(image) for _ in range(self.n_views)])
