"""Pooled trunk features of many files: per dihedral view, read from and written to the cache, or freshly
augmented views for the online training mode (never cached: each is drawn once)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data.augment import AugmentedViews
from ..data.images import ImageError
from ..data.loading import load_batches
from ..data.views import apply_view
from ..inference.config import InferenceConfig
from ..inference.engine import run_features
from ..model.heads import MultiHeadModel
from .cache import FeatureCache, default_cache_dir, file_digest

__all__ = ["augmented_features", "extract_features"]

Extracted = tuple[torch.Tensor, list[int], list[tuple[int, str]]]
"""``(features [N_ok, V, F], ok_indices, failures)``: rows follow the paths minus the files that failed;
``failures`` holds ``(index into paths, reason)``."""


def _default_workers(num_workers: int | None) -> int:
    return num_workers if num_workers is not None else min(2, max(0, (os.cpu_count() or 1) - 1))


def extract_features(model: MultiHeadModel, paths: Sequence[str | os.PathLike], *,
                     views: Sequence[str] = ("identity",), cache_dir: str | os.PathLike | None = None,
                     config: InferenceConfig | None = None, num_workers: int | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Extracted:
    """Pooled features of every file and view, from the cache where present.

    Returns ``(features [N_ok, V, F], ok_indices, failures)`` (:data:`Extracted`). ``progress(done, total)``
    is called after each extracted batch.
    """
    config = config or InferenceConfig()
    views = tuple(views)
    for view in views:
        apply_view(torch.zeros(1, 1, 1, 1), view)  # validates the names up front
    cache = FeatureCache(cache_dir or default_cache_dir(), model, config)
    failures: list[tuple[int, str]] = []
    digests: dict[int, str] = {}
    for index, path in enumerate(paths):
        try:
            digests[index] = file_digest(path)
        except ImageError as err:
            failures.append((index, str(err)))
    todo = [i for i, d in digests.items() if any(f"{d}/{v}" not in cache.entries for v in views)]
    if todo:
        pending: dict[str, torch.Tensor] = {}
        done = 0
        for loaded in load_batches([Path(paths[i]) for i in todo], model.preprocessing.load,
                                   batch_size=config.batch_for(model), num_workers=_default_workers(num_workers)):
            failures.extend((todo[i], reason) for i, reason in loaded.failures)
            if loaded.images is not None:
                for view in views:
                    features = run_features(model, apply_view(loaded.images, view), config).cpu()
                    for i, row in zip(loaded.indices, features):
                        pending[f"{digests[todo[i]]}/{view}"] = row.clone()
            done += loaded.inputs
            if progress:
                progress(done, len(todo))
            if len(pending) >= 4096:  # keep finished work if the run is interrupted
                cache.add(pending)
                pending = {}
        cache.add(pending)
    failed = {i for i, _ in failures}
    ok = [i for i in range(len(paths)) if i not in failed]
    if not ok:
        return torch.empty(0, len(views), model.num_features), ok, sorted(failures)
    stacked = torch.stack([torch.stack([cache.entries[f"{digests[i]}/{v}"] for v in views]) for i in ok])
    return stacked.float(), ok, sorted(failures)


def augmented_features(model: MultiHeadModel, paths: Sequence[str | os.PathLike], *, n_views: int, seed: int = 0,
                       config: InferenceConfig | None = None, num_workers: int | None = None,
                       progress: Callable[[int, int], None] | None = None) -> Extracted:
    """``n_views`` augmented views (:class:`~multihead.data.augment.AugmentedViews`, the paper's rotation,
    flips and scaling) of every file through the trunk, in the form :func:`extract_features` returns."""
    augment = AugmentedViews(model.preprocessing, n_views, seed)
    config = config or InferenceConfig()
    rows: dict[int, torch.Tensor] = {}
    failures: list[tuple[int, str]] = []
    done = 0
    for loaded in load_batches(list(enumerate(paths)), augment, batch_size=max(1, config.batch_for(model) // n_views),
                               num_workers=_default_workers(num_workers)):
        failures.extend(loaded.failures)
        if loaded.images is not None:
            features = run_features(model, loaded.images.flatten(0, 1), config).cpu().view(len(loaded.indices),
                                                                                           n_views, -1)
            rows.update({i: f.clone() for i, f in zip(loaded.indices, features)})
        done += loaded.inputs
        if progress:
            progress(done, len(paths))
    ok = sorted(rows)
    if not ok:
        return torch.empty(0, n_views, model.num_features), ok, failures
    return torch.stack([rows[i] for i in ok]), ok, sorted(failures)
