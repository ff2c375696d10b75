"""The map cache: the frozen bottom's output at the tuning cut, once per image, read memory-mapped.

Tuning the top stages of the trunk (:mod:`multihead.training.tune`) needs, for every image, the map that
enters the first tuned stage and the pooled means of the stages below it. Both come from the frozen bottom,
so they are computed once and cached: maps as float16 ``.npy`` arrays (``C x H x W x 2`` bytes per image;
MobileNetV2 cut at ``features.14``: 96 x 28 x 28 x 2 = 150 KB at 448 px, 307 KB at 640 px), read with
``numpy.load(mmap_mode="r")`` so a set far larger than memory trains from disk.

A cache folder belongs to one (trunk, weights of the bottom, cut, pooled stages, preprocessing); inside,
every shard is ``<name>.maps.npy`` + ``<name>.pooled.npy`` and, written last, ``<name>.json`` naming its
files' sha256 digests, so a renamed image is still found, an edited one is not, and a shard interrupted
before its ``.json`` is ignored. A shard is checked before it is used (issue 36): float16 maps of the shape the
bottom gives at this input size, pooled stages of its width, every value finite; one that is not is deleted and
its maps are computed again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path, atomic_write_text
from ..data.images import ImageError
from ..data.loading import load_batches
from ..data.scan import DatasetScan
from ..inference.backends import bottom_runtime_for, resolve_backend
from ..inference.export import bottom_outputs
from ..model.heads import MultiHeadModel
from ..model.memory import batch_for_memory
from ..model.trunk import fingerprint_state_dict
from ..model.trunk_split import STEM, TrunkSplit
from .cache import MAX_FEATURE, default_cache_dir, file_digest

__all__ = ["MapCache", "MapSet", "labelled_maps"]

log = logging.getLogger(__name__)

SHARD_IMAGES = 512
"""Images per shard (at most ~160 MB of float16 maps held before a write)."""
_CHECK_ROWS = 64
"""Rows of a memory-mapped shard checked for finite values at a time (so checking never loads a whole shard)."""


class MapCache:
    """On-disk bottom maps for one trunk bottom, cut and preprocessing."""

    def __init__(self, directory: str | os.PathLike, model: MultiHeadModel, parts: TrunkSplit) -> None:
        self.identity = {
            "trunk": model.trunk.name,
            "bottom_fingerprint": fingerprint_state_dict(parts.bottom.state_dict()),
            "cut": parts.cut,
            "stages_below": list(parts.stages_below),
            "preprocessing": model.preprocessing.to_json(),
            "dtype": "float16",
        }
        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.directory = Path(directory) / f"{model.trunk.name}-maps-{key}"
        self._parts, self._image_size = parts, model.preprocessing.image_size
        self._shapes: tuple[tuple[int, ...], int] | None = None
        self._index: dict[str, tuple[int, int]] | None = None
        self._shards: list[tuple[np.ndarray, np.ndarray]] = []

    def expected_shapes(self) -> tuple[tuple[int, ...], int] | None:
        """``((C, H, W) of a map, width of the pooled stages)`` the bottom gives at this input size, from one run on
        the meta device (no arithmetic); ``None`` for a bottom the meta device cannot run."""
        if self._shapes is None:
            try:
                bottom = copy.deepcopy(self._parts.bottom).to("meta")
                with torch.no_grad():
                    cut_map, stage_maps = bottom(torch.empty(1, 3, self._image_size, self._image_size, device="meta"))
                self._shapes = (tuple(cut_map.shape[1:]), sum(m.shape[1] for m in stage_maps))
            except Exception as err:  # any trunk the meta device cannot run: the values are still checked
                log.debug("map shapes of %s cannot be worked out on the meta device (%s)", self.directory, err)
                return None
        return self._shapes

    def _check(self, maps: np.ndarray, pooled: np.ndarray, rows: int) -> None:
        """Raise ``ValueError`` unless the shard's arrays are what this bottom writes, every value finite."""
        if not len(maps) == len(pooled) == rows or maps.dtype != np.float16 or pooled.dtype != np.float32:
            raise ValueError("array lengths or dtype do not match the listing")
        shapes = self.expected_shapes()
        if shapes is not None and (tuple(maps.shape[1:]) != shapes[0] or tuple(pooled.shape[1:]) != (shapes[1],)):
            raise ValueError(f"maps of shape {tuple(maps.shape[1:])} and pooled stages of {tuple(pooled.shape[1:])}, "
                             f"this bottom gives {shapes[0]} and ({shapes[1]},)")
        for start in range(0, rows, _CHECK_ROWS):
            if not np.isfinite(maps[start:start + _CHECK_ROWS]).all():
                raise ValueError("it holds NaN or infinite map values")
        if rows and (not np.isfinite(pooled).all() or float(np.abs(pooled).max(initial=0.0)) > MAX_FEATURE):
            raise ValueError(f"its pooled stages are not finite or beyond {MAX_FEATURE:g}")

    def _read(self) -> dict[str, tuple[int, int]]:
        index: dict[str, tuple[int, int]] = {}
        for listing in sorted(self.directory.glob("*.json")):
            try:
                info = json.loads(listing.read_text())
                if info.get("identity") != self.identity:
                    log.warning("%s belongs to another trunk bottom or preprocessing; ignored", listing)
                    continue
                stem = listing.with_suffix("")
                maps = np.load(f"{stem}.maps.npy", mmap_mode="r")
                pooled = np.load(f"{stem}.pooled.npy", mmap_mode="r")
                self._check(maps, pooled, len(info["digests"]))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("damaged map cache shard %s (%s); removed, its maps will be computed again", listing, err)
                for suffix in (".json", ".maps.npy", ".pooled.npy"):
                    Path(f"{listing.with_suffix('')}{suffix}").unlink(missing_ok=True)
                continue
            self._shards.append((maps, pooled))
            index.update({digest: (len(self._shards) - 1, row) for row, digest in enumerate(info["digests"])})
        return index

    @property
    def index(self) -> dict[str, tuple[int, int]]:
        """sha256 of an image file -> (shard, row)."""
        if self._index is None:
            self._index = self._read()
        return self._index

    def add(self, digests: Sequence[str], maps: torch.Tensor, pooled: torch.Tensor) -> None:
        """Write one shard (arrays first, listing last, each atomically) and index it."""
        if not len(digests):
            return
        name = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
        stem = self.directory / name
        arrays = {"maps": maps.to(torch.float16).numpy(), "pooled": pooled.float().numpy()}
        for part, array in arrays.items():
            with atomic_path(f"{stem}.{part}.npy") as tmp, open(tmp, "wb") as handle:
                np.save(handle, array)
        atomic_write_text(f"{stem}.json", json.dumps({"identity": self.identity, "digests": list(digests)}))
        self._shards.append((np.load(f"{stem}.maps.npy", mmap_mode="r"),
                             np.load(f"{stem}.pooled.npy", mmap_mode="r")))
        self.index.update({digest: (len(self._shards) - 1, row) for row, digest in enumerate(digests)})

    def gather(self, locations: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (float32) and pooled stages of the given (shard, row) locations, in their order."""
        maps = np.stack([self._shards[shard][0][row] for shard, row in locations])
        pooled = np.stack([self._shards[shard][1][row] for shard, row in locations])
        return torch.from_numpy(maps).float(), torch.from_numpy(pooled)


@dataclass
class MapSet:
    """Labelled images for tuning: where each one's maps are (or, with no cache, its path), organ, subtype."""

    organs: torch.Tensor
    subtypes: torch.Tensor
    relpaths: list[str]
    cache: MapCache | None
    locations: list[tuple[int, int]]
    """(shard, row) in ``cache`` per image; empty for a live set."""
    paths: list[Path]
    """The image files, read again every epoch when there is no cache (the cut is the stem)."""

    def __len__(self) -> int:
        return len(self.relpaths)

    def batches(self, order: torch.Tensor, batch_size: int, parts: TrunkSplit, model: MultiHeadModel,
                num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(rows, map at the cut, pooled stages below)`` on the model's device, ``batch_size`` rows at a time
        in ``order``: gathered from the cache, or loaded and run through the frozen bottom."""
        device = model.device
        if self.cache is not None:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                maps, pooled = self.cache.gather([self.locations[i] for i in rows.tolist()])
                maps = maps.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                yield rows, maps, pooled.to(device, non_blocking=True)
            return
        ordered = order.tolist()
        for loaded in load_batches([self.paths[i] for i in ordered], model.preprocessing.load,
                                   batch_size=batch_size, num_workers=num_workers):
            if loaded.images is None:
                continue
            rows = torch.tensor([ordered[i] for i in loaded.indices])
            with torch.no_grad():
                images = model.preprocessing.normalize(loaded.images.to(device))
                maps, pooled = parts.bottom_forward(images.contiguous(memory_format=torch.channels_last))
            yield rows, maps, pooled


def labelled_maps(model: MultiHeadModel, parts: TrunkSplit, scan: DatasetScan, relpaths: list[str], *,
                  cache_dir: str | os.PathLike | None, batch_size: int = 32, num_workers: int = 0,
                  backend: str = "auto",
                  progress: Callable[[int, int], None] | None = None) -> tuple[MapSet, list[tuple[str, str]]]:
    """Maps at the cut for ``relpaths`` of a scanned dataset (computed where the cache lacks them), and the
    files that failed. With the cut at the stem there is nothing to cache: the set reads images live.

    ``backend`` runs the bottom as inference runs the trunk (:class:`~multihead.inference.config.InferenceConfig`):
    ``"auto"`` takes OpenVINO, then ONNX Runtime, in float32 when installed and on the CPU (checked against
    PyTorch on a probe batch, PyTorch when that fails), else PyTorch. Their float32 maps differ from PyTorch's
    by about 1e-6 (relative), far below the cache's float16 rounding, so the cache does not name the backend.
    ``batch_size`` images go through the bottom at once, fewer when they would not fit in the memory budget
    (:func:`~multihead.model.memory.batch_for_memory`).
    """
    by_path = {r.relpath: r for r in scan.records}
    records = [by_path[p] for p in relpaths]
    tax = model.taxonomy

    def labelled(kept: list, cache: MapCache | None, locations: list[tuple[int, int]]) -> MapSet:
        return MapSet(torch.tensor([tax.organ_index(r.organ) for r in kept], dtype=torch.long),
                      torch.tensor([tax.subtype_index(r.subtype) for r in kept], dtype=torch.long),
                      [r.relpath for r in kept], cache, locations, [r.path for r in kept])

    if parts.cut == STEM:
        return labelled(records, None, []), []
    cache = MapCache(cache_dir or default_cache_dir(), model, parts)
    failures: list[tuple[int, str]] = []
    digests: dict[int, str] = {}
    for index, record in enumerate(records):
        try:
            digests[index] = file_digest(record.path)
        except ImageError as err:
            failures.append((index, str(err)))
    todo = [i for i, d in digests.items() if d not in cache.index]
    bottom = _bottom_runner(model, parts, backend) if todo else None
    batch_size = min(batch_size, batch_for_memory(model.trunk.name, model.preprocessing.image_size))
    done = 0
    pending: tuple[list[str], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
    for loaded in load_batches([records[i].path for i in todo], model.preprocessing.load, batch_size=batch_size,
                               num_workers=num_workers):
        failures.extend((todo[i], reason) for i, reason in loaded.failures)
        if loaded.images is not None:
            maps, pooled = bottom(loaded.images)
            pending[0].extend(digests[todo[i]] for i in loaded.indices)
            pending[1].append(maps.cpu().contiguous())
            pending[2].append(pooled.cpu())
            if len(pending[0]) >= SHARD_IMAGES:  # few large shards: few files open, finished work kept
                cache.add(pending[0], torch.cat(pending[1]), torch.cat(pending[2]))
                pending = ([], [], [])
        done += loaded.inputs
        if progress:
            progress(done, len(todo))
    if pending[0]:
        cache.add(pending[0], torch.cat(pending[1]), torch.cat(pending[2]))
    failed = {i for i, _ in failures}
    ok = [i for i in range(len(records)) if i not in failed]
    data = labelled([records[i] for i in ok], cache, [cache.index[digests[i]] for i in ok])
    return data, [(records[i].relpath, reason) for i, reason in sorted(failures)]


def _bottom_runner(model: MultiHeadModel, parts: TrunkSplit, backend: str
                   ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """uint8 images -> (maps, pooled stages below the cut), on ``backend`` (see :func:`labelled_maps`)."""
    resolved = resolve_backend(backend, "fp32", model.device)
    runtime = bottom_runtime_for(model, parts, resolved, fallback=backend == "auto") if resolved != "torch" else None
    if runtime is not None:
        log.info("maps at %s computed by %s", parts.cut, runtime)

        def on_runtime(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = runtime.run(images, bottom_outputs(parts))
            return out["maps"], out.get("pooled", out["maps"].new_zeros(len(images), 0))

        return on_runtime
    # channels_last: twice the images per second of MobileNetV2's bottom on a CPU (docs/training.md)
    parts.bottom.to(memory_format=torch.channels_last)

    def on_torch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            normalized = model.preprocessing.normalize(images.to(model.device))
            return parts.bottom_forward(normalized.contiguous(memory_format=torch.channels_last))

    return on_torch
