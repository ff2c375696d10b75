"""End to end from files: what ``multihead classify`` delivers, decoding and resizing included.

:func:`time_classify` runs :func:`~multihead.inference.predict.classify_files` over the same files once per
configuration (fp32 against ``precision="auto"``, say) in interleaved rounds in one process, so a busy machine slows
them alike; beside it, the files' decoding and resizing alone, in the threads ``classify_files`` decodes in (when
that rate is close to a configuration's, decoding is what bounds it). It also compares the answers: the share of
files given the same subtype as the reference configuration, and the accuracy where the true subtype is known.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..data.loading import decode_threads, load_batches
from ..inference.config import InferenceConfig
from ..inference.predict import classify_files
from ..model.heads import MultiHeadModel

__all__ = ["time_classify"]


def _decode_rate(model: MultiHeadModel, files: Sequence[str | os.PathLike], batch_size: int, threads: int) -> float:
    load = functools.partial(model.preprocessing.load, draft=True)
    begin = time.perf_counter()
    for _ in load_batches(list(files), load, batch_size=batch_size, threads=threads):
        pass
    return len(files) / (time.perf_counter() - begin)


def time_classify(files: Sequence[str | os.PathLike], model: MultiHeadModel, configs: Mapping[str, InferenceConfig],
                  *, rounds: int = 3, reference: str | None = None, labels: Sequence[str | None] | None = None,
                  decode: int | None = None, on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Files per second of ``classify_files`` under each of ``configs``, in interleaved rounds.

    Args:
        files: image files (repeat a few to make a run long enough to time).
        configs: name -> configuration, e.g. ``{"fp32": InferenceConfig(precision="fp32"), "auto": InferenceConfig()}``.
        rounds: timed passes per configuration, interleaved (a first, untimed pass compiles and warms up).
        reference: the configuration the others' answers are compared with (default: the first).
        labels: the true subtype of each file, or ``None`` where unknown: accuracy per configuration.
        decode: threads decoding ahead of the trunk (default: :func:`~multihead.data.loading.decode_threads`).

    Returns:
        ``files``, ``rounds``, ``decode_threads``, ``decode_files_per_second`` (decoding and resizing alone, median over
        rounds) and ``rows``: per configuration its ``name``, the ``precision`` and ``backend`` it ran at,
        ``files_per_second`` (median over rounds) and ``round_files_per_second``, ``failed``, ``agreement`` with the
        reference's subtypes, ``accuracy`` (labelled files only; ``None`` without labels) and
        ``over_reference`` (median over rounds of its rate over the reference's in the same round).

    Example:
        >>> report = time_classify(files, model, {"fp32": InferenceConfig(precision="fp32"),  # doctest: +SKIP
        ...                                       "auto": InferenceConfig()}, rounds=3)
    """
    if not files:
        raise ValueError("time_classify needs at least one file")
    if not configs:
        raise ValueError("time_classify needs at least one configuration")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    say = on_progress or (lambda line: None)
    reference = reference or next(iter(configs))
    threads = decode_threads() if decode is None else decode
    batch_size = max(config.batch_for(model) for config in configs.values())
    answers: dict[str, list[str | None]] = {}
    for name, config in configs.items():  # warm-up: exports, compilations, the int8 graph's checks
        say(f"warm-up: classify at {name}")
        answers[name] = [r.prediction.subtype if r.prediction else None
                         for r in classify_files(files, model, config=config, decode_threads=threads)]
    rates: dict[str, list[float]] = {name: [] for name in configs}
    decoding: list[float] = []
    for number in range(1, rounds + 1):
        decoding.append(_decode_rate(model, files, batch_size, threads))
        say(f"round {number}/{rounds}: decoding and resizing alone: {decoding[-1]:.1f} files/s")
        for name, config in configs.items():
            begin = time.perf_counter()
            for _ in classify_files(files, model, config=config, decode_threads=threads):
                pass
            rates[name].append(len(files) / (time.perf_counter() - begin))
            say(f"round {number}/{rounds}: classify at {name}: {rates[name][-1]:.1f} files/s")
    rows = []
    wanted = answers[reference]
    for name, config in configs.items():
        resolved = config.resolve(model.device, model)
        found = answers[name]
        both = [(a, b) for a, b in zip(found, wanted) if a is not None and b is not None]
        known = [(a, truth) for a, truth in zip(found, labels or []) if a is not None and truth is not None]
        rows.append({
            "name": name, "precision": resolved.precision, "backend": resolved.backend,
            "files_per_second": statistics.median(rates[name]), "round_files_per_second": rates[name],
            "failed": sum(a is None for a in found),
            "agreement": sum(a == b for a, b in both) / len(both) if both else None,
            "accuracy": sum(a == truth for a, truth in known) / len(known) if known else None,
            "over_reference": statistics.median(a / b for a, b in zip(rates[name], rates[reference])),
        })
    return {"files": len(files), "rounds": rounds, "reference": reference, "decode_threads": threads,
            "decode_files_per_second": statistics.median(decoding), "round_decode_files_per_second": decoding,
            "rows": rows}
