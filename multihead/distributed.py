"""Split batch classification and feature extraction over ``torchrun`` processes, with one process's results.

Every rank sorts the same inputs and takes ``sorted[rank::world]``; nothing is exchanged but a barrier
and two counts. Classification writes one JSON-lines part file per rank, which a restarted rank resumes,
and rank 0 merges the parts in the global sorted order. Extraction writes to the shared feature cache,
whose shards have distinct names and are written atomically, so ranks never collide.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import torch
import torch.distributed as dist

from ._io import atomic_path
from .data.images import describe_input
from .features.extract import extract_features
from .inference.config import InferenceConfig
from .inference.models import ModelInput, shared_model
from .inference.predict import classify_files

__all__ = ["RunSummary", "classify_to_jsonl", "extract_to_cache", "finish", "part_path", "rank_and_world", "shard"]

log = logging.getLogger(__name__)
_T = TypeVar("_T", str, os.PathLike, Path)


@dataclass(frozen=True)
class RunSummary:
    """What a distributed run did, counted over every rank (``failures`` are this rank's own)."""

    total: int
    failed: int
    resumed: int
    rank: int
    world: int
    failures: tuple[tuple[str, str], ...] = ()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``: from the initialised process group, else from torchrun's environment.

    With ``WORLD_SIZE > 1`` and no group yet, one is started (nccl with CUDA, else gloo), after pinning
    the process to GPU ``LOCAL_RANK`` so that ``"cuda"`` means this rank's GPU. Without torchrun: ``(0, 1)``.

    Example:
        >>> rank_and_world()  # a plain python process
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); got "
                         f"{os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, "
                         f"{os.environ.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world}")
    if world > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return rank, world


def finish() -> None:
    """Leave the process group, if one was started, so the process exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Iterable[_T], rank: int, world: int) -> list[_T]:
    """This rank's share: the items sorted by path, then every ``world``-th from ``rank``.

    Sorting first makes the split the same on every rank whatever order the inputs were listed in.

    Example:
        >>> shard(["c.jpg", "a.jpg", "b.jpg"], 1, 2)
        ['b.jpg']
    """
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a positive integer, got {world!r}")
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be in 0..{world - 1}, got {rank!r}")
    return sorted(items, key=os.fspath)[rank::world]


def part_path(out_path: str | os.PathLike, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` writes its lines before the merge."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.part-{rank}-of-{world}.jsonl")


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _sum_over_ranks(values: Sequence[int], world: int) -> list[int]:
    if world == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor(list(values), dtype=torch.long, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _resume(part: Path, expected: Sequence[str]) -> tuple[int, int]:
    """Keep the complete JSON lines already in ``part`` (cutting off a torn last line): ``(kept, failed)``."""
    if not part.exists():
        return 0, 0
    data = part.read_bytes()
    keep = done = failed = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # written halfway when the rank was killed
        try:
            record = json.loads(line)
            source, error = record["source"], record["error"]
        except (ValueError, KeyError, TypeError):
            break
        if done >= len(expected) or source != expected[done]:
            raise ValueError(f"{part}: line {done + 1} is for {source!r}, but this rank's input "
                             f"{done + 1} is {expected[done] if done < len(expected) else 'nothing'!r}; the part "
                             "was written for other inputs: delete it or choose another --out")
        keep += len(line)
        done += 1
        failed += error is not None
    if keep < len(data):
        log.warning("%s: dropping %d bytes of an unfinished line", part, len(data) - keep)
        with open(part, "r+b") as handle:
            handle.truncate(keep)
    return done, failed


def classify_to_jsonl(paths: Iterable[str | os.PathLike], model: ModelInput, out_path: str | os.PathLike,
                      config: InferenceConfig | None = None) -> RunSummary:
    """Classify ``paths`` across the torchrun ranks into one JSON-lines file, in sorted path order.

    Each rank writes ``<out>.part-<rank>-of-<world>.jsonl`` (flushed every batch) and, when restarted,
    skips the lines already there, so a killed rank neither repeats nor drops a file. Rank 0 then merges
    the parts into ``out_path`` atomically and removes them. Run once per rank, with the same inputs.

    Example:
        >>> classify_to_jsonl(["a.jpg", "b.jpg"], "model.safetensors", "out.jsonl")  # doctest: +SKIP
        RunSummary(total=2, failed=0, resumed=0, rank=0, world=1, failures=())
    """
    config = config or InferenceConfig()
    rank, world = rank_and_world()
    everything = sorted(paths, key=os.fspath)
    if not everything:
        raise ValueError("no input files to classify")
    mine = everything[rank::world]
    part = part_path(out_path, rank, world)
    part.parent.mkdir(parents=True, exist_ok=True)
    resumed, failed = _resume(part, [describe_input(p) for p in mine])
    if resumed < len(mine):
        resolved = shared_model(model)
        every = config.batch_for(resolved)  # flushed once a batch
        with open(part, "a", encoding="utf-8") as handle:
            for written, result in enumerate(classify_files(mine[resumed:], resolved, config=config), start=1):
                failed += result.error is not None
                handle.write(json.dumps(result.to_dict()) + "\n")
                if written % every == 0:
                    _sync(handle)
            _sync(handle)
    _barrier(world)
    if rank == 0:
        _merge(out_path, [part_path(out_path, r, world) for r in range(world)],
               [len(everything[r::world]) for r in range(world)])
    _barrier(world)
    total, failed, resumed_all = _sum_over_ranks([len(mine), failed, resumed], world)
    return RunSummary(total=total, failed=failed, resumed=resumed_all, rank=rank, world=world)


def _sync(handle: IO[str]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _merge(out_path: str | os.PathLike, parts: list[Path], counts: list[int]) -> None:
    """Interleave the parts back into sorted order (item ``i`` is line ``i // world`` of part ``i % world``)."""
    lines = []
    for part, count in zip(parts, counts):
        found = part.read_text("utf-8").splitlines(keepends=True) if part.exists() else []
        if len(found) != count:
            raise RuntimeError(f"{part}: expected {count} lines, found {len(found)}; rerun the same command to "
                               "finish the missing files")
        lines.append(found)
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for index in range(sum(counts)):
            handle.write(lines[index % len(parts)][index // len(parts)])
    for part in parts:
        part.unlink(missing_ok=True)


def extract_to_cache(paths: Iterable[str | os.PathLike], model: ModelInput,
                     cache_dir: str | os.PathLike | None = None, views: Sequence[str] = ("identity",),
                     config: InferenceConfig | None = None) -> RunSummary:
    """Fill the shared feature cache for ``paths``, each rank extracting its shard; all ranks wait at the end.

    Training then reads every feature from the cache in one process (cache hits, no trunk work).

    Example:
        >>> extract_to_cache(files, "model.safetensors", "cache/", views=("identity",))  # doctest: +SKIP
        RunSummary(total=4907, failed=0, resumed=0, rank=0, world=1, failures=())
    """
    rank, world = rank_and_world()
    mine = shard(paths, rank, world)
    failures: list[tuple[int, str]] = []
    if mine:
        _, _, failures = extract_features(shared_model(model), mine, views=views, cache_dir=cache_dir,
                                          config=config)
    _barrier(world)
    total, failed = _sum_over_ranks([len(mine), len(failures)], world)
    return RunSummary(total=total, failed=failed, resumed=0, rank=rank, world=world,
                      failures=tuple((describe_input(mine[i]), reason) for i, reason in failures))
