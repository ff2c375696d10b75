"""Leak-free train / validation / test splits: near-copies are grouped and a group never straddles splits.

LC25000 and similar sets were built by rotating and flipping originals, so the grouping hash is a
difference hash compared under all eight dihedral views (flips and 90-degree rotations). Splits are
stratified by subtype, seeded, and written as JSON keyed by each file's path relative to the data root (with
several data folders, the path starts with the folder's name: near-copies are grouped whichever folder holds
them, since a subtype's files are grouped together).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_write_text
from .images import ImageError, read_image
from .scan import DatasetScan

__all__ = ["SPLITS", "Split", "dihedral_hashes", "group_near_duplicates", "make_split"]

SPLITS = ("train", "val", "test")
HASH_NAME = "dhash8-dihedral"
ORDER = "largest-first"
"""Groups are placed largest first (equal sizes in seeded random order), each where its split is furthest below
its target. Near-copies chain: 432 of the 945 glioma MRI slices of the sample and the extra folder form one
group. Placed at a random turn, as before, such a group overfilled the training split and left brain 132 test
images instead of 390; placed first, the smaller groups fill the splits around it."""


def dihedral_hashes(image: Image.Image) -> np.ndarray:
    """Eight 64-bit difference hashes, one per dihedral view of the image (uint64 array)."""
    gray = np.asarray(image.convert("L").resize((9, 9), Image.Resampling.BILINEAR), dtype=np.int16)
    hashes = []
    for k in range(4):
        view = np.rot90(gray, k)
        for candidate in (view, view[:, ::-1]):
            bits = (candidate[:8, 1:] > candidate[:8, :-1]).reshape(-1)
            hashes.append(int(np.packbits(bits).view(">u8")[0]))
    return np.array(hashes, dtype=np.uint64)


def group_near_duplicates(hashes: np.ndarray, threshold: int = 4) -> np.ndarray:
    """Group ids for ``hashes [N, 8]``: i and j share a group when some view of i is within ``threshold``
    bits of j's first view (union-find, so near-copies chain into one group)."""
    n = len(hashes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n - 1):
        distances = np.bitwise_count(hashes[i][None, :] ^ hashes[i + 1:, 0][:, None]).min(axis=1)
        for j in np.nonzero(distances <= threshold)[0] + i + 1:
            a, b = find(i), find(int(j))
            if a != b:
                parent[b] = a
    return np.array([find(i) for i in range(n)])


@dataclass
class Split:
    """Which split each file is in, plus how it was made; ``save``/``load`` round-trip through JSON."""

    assignment: dict[str, str]
    """relpath -> "train" | "val" | "test"."""
    info: dict[str, object]

    def files(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [path for path, s in self.assignment.items() if s == split]

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), json.dumps({"info": self.info, "files": self.assignment}, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        try:
            data = json.loads(Path(path).read_text())
            assignment = {str(k): str(v) for k, v in data["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a readable split file ({err})") from None
        bad = sorted({v for v in assignment.values() if v not in SPLITS})
        if bad:
            raise ValueError(f"{path}: unknown split names {bad}; expected {SPLITS}")
        return cls(assignment, data.get("info", {}))


def make_split(scan: DatasetScan, *, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
               leak_free: bool = True, threshold: int = 4,
               progress: Callable[[int, int], None] | None = None) -> tuple[Split, list[tuple[str, str]]]:
    """Split a scanned dataset, stratified by subtype and grouped by near-duplicate hash.

    Returns the split and the files that could not be decoded ``(relpath, reason)``, which are left out.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    unreadable: list[tuple[str, str]] = []
    by_subtype: dict[str, list[str]] = {}
    hashes: dict[str, np.ndarray] = {}
    for done, record in enumerate(scan.records, 1):
        try:
            if leak_free:
                hashes[record.relpath] = dihedral_hashes(read_image(record.path))
            by_subtype.setdefault(record.subtype, []).append(record.relpath)
        except ImageError as err:
            unreadable.append((record.relpath, str(err)))
        if progress:
            progress(done, len(scan.records))
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    grouped_files = n_groups = 0
    for subtype in sorted(by_subtype):
        files = by_subtype[subtype]
        if leak_free:
            ids = group_near_duplicates(np.stack([hashes[f] for f in files]), threshold)
        else:
            ids = np.arange(len(files))
        groups: dict[int, list[str]] = {}
        for file, gid in zip(files, ids.tolist()):
            groups.setdefault(gid, []).append(file)
        multi = [g for g in groups.values() if len(g) > 1]
        grouped_files += sum(len(g) for g in multi)
        n_groups += len(multi)
        order = list(groups.values())
        rng.shuffle(order)
        order.sort(key=len, reverse=True)  # largest first, equal sizes in seeded order
        targets = dict(zip(SPLITS, (len(files) * f for f in fractions)))
        filled = dict.fromkeys(SPLITS, 0)
        for group in order:  # each group goes where the split is furthest below its target
            name = max(SPLITS[::-1], key=lambda s: targets[s] - filled[s])
            filled[name] += len(group)
            for file in group:
                assignment[file] = name
    info = {
        "seed": seed, "fractions": list(fractions), "leak_free": leak_free, "hash": HASH_NAME, "order": ORDER,
        "threshold": threshold, "grouped_files": grouped_files, "groups": n_groups,
        "counts": {s: sum(1 for v in assignment.values() if v == s) for s in SPLITS},
        "unreadable": len(unreadable),
    }
    return Split(dict(sorted(assignment.items())), info), unreadable
