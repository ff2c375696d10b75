"""The paper's augmentation (rotation, flips, scaling) run through the trunk: the online training mode.

With a frozen trunk, "augment and run the trunk on every batch" for E epochs is the same work as
extracting E augmented views of every training image up front, so that is what happens here: one freshly
augmented view per image and epoch, seeded, never cached (each view is drawn once). Heads then train on
those views exactly as on cached ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .images import ImageError
from .inference import InferenceConfig, run_features
from .model import MultiHeadModel

__all__ = ["augmented_features", "paper_augmentation"]


def paper_augmentation() -> v2.Compose:
    """Rotation (up to 20 degrees), horizontal and vertical flips, and scaling (0.9 to 1.1), on uint8 tensors."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=20, scale=(0.9, 1.1)),
    ])


class _AugmentedImages(Dataset):
    def __init__(self, paths: Sequence[Path], model: MultiHeadModel, n_views: int, seed: int) -> None:
        self.paths, self.preprocessing = list(paths), model.preprocessing
        self.n_views, self.seed, self.transform = n_views, seed, paper_augmentation()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = self.preprocessing.load(self.paths[index])
        except ImageError as err:
            return index, None, str(err)
        torch.manual_seed(self.seed * 1_000_003 + index)  # the same views in every run, whatever the workers
        return index, torch.stack([self.transform(image) for _ in range(self.n_views)]), None


def augmented_features(model: MultiHeadModel, paths: Sequence[str | os.PathLike], *, n_views: int, seed: int = 0,
                       config: InferenceConfig | None = None, num_workers: int | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       ) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """``n_views`` augmented views of every file through the trunk: ``(features [N_ok, n_views, F], ok, failures)``,
    in the form :func:`multihead.features.extract_features` returns."""
    if n_views < 1:
        raise ValueError(f"n_views must be at least 1, got {n_views}")
    config = config or InferenceConfig()
    workers = num_workers if num_workers is not None else min(2, max(0, (os.cpu_count() or 1) - 1))
    per_batch = max(1, config.batch_size // n_views)
    loader = DataLoader(_AugmentedImages([Path(p) for p in paths], model, n_views, seed), batch_size=per_batch,
                        num_workers=workers, collate_fn=list)
    rows: dict[int, torch.Tensor] = {}
    failures: list[tuple[int, str]] = []
    done = 0
    for items in loader:
        good = [(i, views) for i, views, _ in items if views is not None]
        failures.extend((i, err) for i, views, err in items if views is None)
        if good:
            batch = torch.cat([views for _, views in good])
            features = run_features(model, batch, config).cpu().view(len(good), n_views, -1)
            rows.update({i: f.clone() for (i, _), f in zip(good, features)})
        done += len(items)
        if progress:
            progress(done, len(paths))
    ok = sorted(rows)
    if not ok:
        return torch.empty(0, n_views, model.num_features), ok, failures
    return torch.stack([rows[i] for i in ok]), ok, sorted(failures)
