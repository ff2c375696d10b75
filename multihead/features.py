"""Extract the frozen trunk's pooled features once per image and view, and cache them on disk.

A cache folder belongs to one (trunk fingerprint, preprocessing, precision) triple; inside, shards are
``.safetensors`` files whose keys are ``<sha256 of the file's bytes>/<view>``. A shard's metadata is
checked before its tensors are read; a damaged shard is deleted and its entries are extracted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from ._io import atomic_path
from .images import ImageError
from .inference import InferenceConfig, run_features
from .model import MultiHeadModel

__all__ = ["VIEWS", "FeatureCache", "FeatureSet", "apply_view", "default_cache_dir", "extract_features"]

log = logging.getLogger(__name__)

VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose")
"""The eight dihedral views (flips and 90-degree rotations); ``identity`` is the image as it is."""


def apply_view(batch: torch.Tensor, view: str) -> torch.Tensor:
    """One dihedral view of a ``[B, C, H, W]`` batch."""
    ops = {
        "identity": lambda x: x,
        "hflip": lambda x: x.flip(-1),
        "vflip": lambda x: x.flip(-2),
        "rot90": lambda x: x.rot90(1, (-2, -1)),
        "rot180": lambda x: x.rot90(2, (-2, -1)),
        "rot270": lambda x: x.rot90(3, (-2, -1)),
        "transpose": lambda x: x.transpose(-2, -1),
        "antitranspose": lambda x: x.rot90(2, (-2, -1)).transpose(-2, -1),
    }
    if view not in ops:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    return ops[view](batch).contiguous()


def default_cache_dir() -> Path:
    return Path(os.environ.get("MULTIHEAD_CACHE", Path.home() / ".cache" / "multihead" / "features"))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes: the cache key, so a renamed file is still found and an edited one is not."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise ImageError(f"{os.fsdecode(path)}: cannot read file ({err.strerror or err})") from None
    return digest.hexdigest()


class FeatureCache:
    """On-disk features for one trunk, preprocessing and precision."""

    def __init__(self, directory: str | os.PathLike, model: MultiHeadModel, config: InferenceConfig) -> None:
        self.identity = {
            "trunk": model.trunk.name,
            "fingerprint": model.trunk.fingerprint,
            "preprocessing": model.preprocessing.to_json(),
            "precision": config.precision,
        }
        if model.trunk.stages:  # only when present: caches of single-stage trunks keep their keys
            self.identity["stages"] = list(model.trunk.stages)
        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.directory = Path(directory) / f"{model.trunk.name}-{key}"
        self._entries: dict[str, torch.Tensor] | None = None

    def _read(self) -> dict[str, torch.Tensor]:
        entries: dict[str, torch.Tensor] = {}
        for shard in sorted(self.directory.glob("*.safetensors")):
            try:
                with safe_open(str(shard), framework="pt") as reader:
                    metadata = reader.metadata() or {}
                    if json.loads(metadata.get("identity", "{}")) != self.identity:
                        log.warning("%s belongs to other trunk weights or preprocessing; ignored", shard)
                        continue
                    entries.update({k: reader.get_tensor(k) for k in reader.keys()})  # noqa: SIM118 (safe_open is no dict)
            except (SafetensorError, OSError, ValueError) as err:
                log.warning("damaged feature cache shard %s (%s); removed, its entries will be extracted again",
                            shard, err)
                shard.unlink(missing_ok=True)
        return entries

    @property
    def entries(self) -> dict[str, torch.Tensor]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def add(self, new: dict[str, torch.Tensor]) -> None:
        """Write ``new`` as one more shard (atomically) and remember it."""
        if not new:
            return
        name = hashlib.sha256("".join(sorted(new)).encode()).hexdigest()[:16]
        with atomic_path(self.directory / f"{name}.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in new.items()}, tmp,
                      metadata={"identity": json.dumps(self.identity, sort_keys=True)})
        self.entries.update(new)


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


class _Images(Dataset):
    def __init__(self, paths: list[Path], model: MultiHeadModel) -> None:
        self.paths, self.preprocessing = paths, model.preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        try:
            return index, self.preprocessing.load(self.paths[index]), None
        except ImageError as err:
            return index, None, str(err)


_Item = tuple[int, torch.Tensor | None, str | None]


def _collate(items: list[_Item]) -> list[_Item]:
    return items  # images differ in validity: keep them as a list


def extract_features(model: MultiHeadModel, paths: Sequence[str | os.PathLike], *,
                     views: Sequence[str] = ("identity",), cache_dir: str | os.PathLike | None = None,
                     config: InferenceConfig | None = None, num_workers: int | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     ) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Pooled features of every file and view, from the cache where present.

    Returns ``(features [N_ok, V, F], ok_indices, failures)``: rows follow ``paths`` minus the files
    that failed; ``failures`` holds ``(index into paths, reason)``. ``progress(done, total)`` is called
    after each extracted batch.
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
        workers = num_workers if num_workers is not None else min(2, max(0, (os.cpu_count() or 1) - 1))
        loader = DataLoader(_Images([Path(paths[i]) for i in todo], model), batch_size=config.batch_size,
                            num_workers=workers, collate_fn=_collate)
        pending: dict[str, torch.Tensor] = {}
        done = 0
        for items in loader:
            good = [(todo[i], t) for i, t, _ in items if t is not None]
            failures.extend((todo[i], err) for i, t, err in items if t is None)
            if good:
                batch = torch.stack([t for _, t in good])
                for view in views:
                    features = run_features(model, apply_view(batch, view), config).cpu()
                    for (index, _), row in zip(good, features):
                        pending[f"{digests[index]}/{view}"] = row.clone()
            done += len(items)
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
