"""Labelled features: the trunk's features of a scanned dataset's files with their organ and subtype, the
form training, calibration and evaluation all take."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..data.scan import DatasetScan
from ..inference.config import InferenceConfig
from ..model.heads import MultiHeadModel
from .extract import augmented_features, extract_features

__all__ = ["FeatureSet", "dataset_features"]


@dataclass
class FeatureSet:
    """Features of labelled images: ``features [N, V, F]`` (V views), organ and global subtype indices."""

    features: torch.Tensor
    organs: torch.Tensor
    subtypes: torch.Tensor
    relpaths: list[str]
    views: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.relpaths)

    def subset(self, relpaths: Sequence[str]) -> FeatureSet:
        index = {p: i for i, p in enumerate(self.relpaths)}
        rows = torch.tensor([index[p] for p in relpaths if p in index], dtype=torch.long)
        return FeatureSet(self.features[rows], self.organs[rows], self.subtypes[rows],
                          [self.relpaths[i] for i in rows.tolist()], self.views)


def dataset_features(model: MultiHeadModel, scan: DatasetScan, relpaths: list[str], *, views: tuple[str, ...],
                     cache_dir: str | os.PathLike | None, config: InferenceConfig | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     augmented_views: int = 0, seed: int = 0) -> tuple[FeatureSet, list[tuple[str, str]]]:
    """Labelled features for ``relpaths`` of a scanned dataset, and the files that failed.

    Cached dihedral ``views`` by default; with ``augmented_views > 0``, that many freshly augmented views
    per image instead (the online mode, :func:`~multihead.features.extract.augmented_features`).
    """
    by_path = {r.relpath: r for r in scan.records}
    missing = [p for p in relpaths if p not in by_path]
    if missing:
        raise ValueError(f"{len(missing)} files of the split are not in {scan.describe()} (first: {missing[0]}); "
                         "was the split made for other folders? (a split of several folders names each file by "
                         "its folder: give the same folders)")
    records = [by_path[p] for p in relpaths]
    paths = [r.path for r in records]
    if augmented_views:
        features, ok, failures = augmented_features(model, paths, n_views=augmented_views, seed=seed, config=config,
                                                    progress=progress)
        views = tuple(f"augmented{i}" for i in range(augmented_views))
    else:
        features, ok, failures = extract_features(model, paths, views=views, cache_dir=cache_dir, config=config,
                                                  progress=progress)
    tax = model.taxonomy
    kept = [records[i] for i in ok]
    data = FeatureSet(
        features,
        torch.tensor([tax.organ_index(r.organ) for r in kept], dtype=torch.long),
        torch.tensor([tax.subtype_index(r.subtype) for r in kept], dtype=torch.long),
        [r.relpath for r in kept],
        views,
    )
    return data, [(records[i].relpath, reason) for i, reason in failures]
