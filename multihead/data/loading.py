"""Load many images for the trunk, a batch at a time: unreadable files are reported, never fatal.

Extraction, augmented views and ``classify_files`` all use :func:`load_batches`, so a broken file is
skipped and named the same way everywhere, and no run loses the files around it.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from .images import ImageError

__all__ = ["LoadedBatch", "decode_threads", "load_batches"]

T = TypeVar("T")


@dataclass
class LoadedBatch:
    """One batch of inputs: the stacked images that loaded and what failed, by position in the inputs."""

    indices: list[int]
    """Positions (in the input order) of the images in ``images``."""
    images: torch.Tensor | None
    """``[len(indices), ...]`` stacked tensors, or ``None`` when nothing in the batch loaded."""
    failures: list[tuple[int, str]]
    """``(position, reason)`` of the inputs that could not be loaded; the reason names the file."""
    inputs: int
    """How many inputs this batch covered (loaded and failed)."""


_Item = tuple[int, "torch.Tensor | None", "str | None"]


def _load_one(index: int, item: T, load: Callable[[T], torch.Tensor]) -> _Item:
    try:
        return index, load(item), None
    except ImageError as err:
        return index, None, str(err)


class _Loader(Dataset, Generic[T]):
    def __init__(self, items: Sequence[T], load: Callable[[T], torch.Tensor]) -> None:
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Item:
        return _load_one(index, self.items[index], self.load)


def _batch(items: list[_Item]) -> LoadedBatch:
    good = [(i, t) for i, t, _ in items if t is not None]
    return LoadedBatch([i for i, _ in good], torch.stack([t for _, t in good]) if good else None,
                       [(i, err) for i, t, err in items if t is None], len(items))


def decode_threads() -> int:
    """Threads that decode ahead of the trunk by default: half the CPUs, at least 1, at most 4 (the trunk's own
    threads take the rest; on 2 cores one thread decodes the next batch while the trunk runs this one)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def load_batches(items: Iterable[T], load: Callable[[T], torch.Tensor], *, batch_size: int,
                 num_workers: int = 0, threads: int = 0) -> Iterator[LoadedBatch]:
    """``load`` every item and stack them ``batch_size`` at a time, in order.

    Args:
        items: paths or other inputs; with ``num_workers > 0`` a sequence (read by DataLoader workers),
            otherwise any iterable, read lazily.
        load: item -> tensor; an :class:`~multihead.data.images.ImageError` it raises becomes a failure.
        batch_size: with workers, inputs per batch; without, *loaded* images per batch (failures do not
            shrink the batches the trunk sees).
        num_workers: DataLoader worker processes (0: load in this process).
        threads: with ``num_workers=0``, threads that load the next images while the caller works on this batch
            (Pillow's decoders and torch's resize release the GIL); the items are still read lazily, in order, at
            most two batches ahead. 0: load in the caller's thread, when it asks.

    Example:
        >>> for batch in load_batches(paths, preprocessing.load, batch_size=64):  # doctest: +SKIP
        ...     features = run_features(model, batch.images)
    """
    if num_workers > 0:
        loader = DataLoader(_Loader(list(items), load), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=_batch)
        yield from loader
        return
    pending: list[_Item] = []
    loaded = 0
    results = _ahead(items, load, threads, 2 * batch_size) if threads > 0 else (
        _load_one(index, item, load) for index, item in enumerate(items))
    for result in results:
        pending.append(result)
        loaded += pending[-1][1] is not None
        if loaded == batch_size:
            yield _batch(pending)
            pending, loaded = [], 0
    if pending:
        yield _batch(pending)


def _ahead(items: Iterable[T], load: Callable[[T], torch.Tensor], threads: int, depth: int) -> Iterator[_Item]:
    """``_load_one`` of every item, in order, ``threads`` at a time and at most ``depth`` items ahead."""
    numbered = enumerate(items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="multihead-decode") as pool:
        queue: deque[Future[_Item]] = deque(pool.submit(_load_one, index, item, load)
                                            for index, item in itertools.islice(numbered, depth))
        try:
            while queue:
                result = queue.popleft().result()
                for index, item in itertools.islice(numbered, 1):
                    queue.append(pool.submit(_load_one, index, item, load))
                yield result
        finally:  # the caller stopped early: what was not started is not decoded
            for future in queue:
                future.cancel()
