"""Timing one system at one setting: warm-up, synchronise, time repeated steps, record out-of-memory."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..inference.backends import BACKEND_PRECISIONS, BACKENDS
from .systems import PRECISIONS, SYSTEMS, BenchSystem, build_system

logger = logging.getLogger(__name__)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds per call: CUDA events on a GPU (the queue is asynchronous), a wall clock elsewhere."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return times


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower() or (
        "can't allocate memory" in str(err).lower())


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def benchmark_system(system: str | BenchSystem, *, device: str | torch.device = "cpu", batch_size: int = 1,
                     image_size: int = 224, precision: str = "fp32", channels_last: bool = False,
                     compiled: bool = False, warmup: int = 2, repeats: int = 5, seed: int = 0,
                     backend: str = "torch") -> dict[str, Any]:
    """Time one system at one setting: warm-up, then ``repeats`` timed batches; a flat dict back.

    ``system`` may be a name or a :class:`BenchSystem` already built with the same ``channels_last``,
    ``compiled`` and ``backend`` (to reuse a compiled model across batch sizes). Out-of-memory gives
    ``status="oom"``. On another backend than torch the warm-up includes exporting and compiling the graph.

    Example:
        >>> row = benchmark_system("trunk_only", batch_size=2, image_size=64, repeats=1)
        >>> row["status"], row["batch_size"]
        ('ok', 2)
    """
    check_settings(precisions=[precision], batch_sizes=[batch_size], image_size=image_size, repeats=repeats,
                    warmup=warmup, backends=[backend])
    device = torch.device(device)
    name = system.name if isinstance(system, BenchSystem) else system
    row: dict[str, Any] = {"system": name, "backend": backend, "precision": precision,
                           "channels_last": channels_last, "compiled": compiled, "batch_size": batch_size,
                           "image_size": image_size, "device": str(device)}
    try:
        if not isinstance(system, BenchSystem):
            system = build_system(system, device=device, image_size=image_size, channels_last=channels_last,
                                  compiled=compiled, seed=seed, backend=backend)
        row["channels_last_weights"] = system.channels_last_weights
        generator = torch.Generator().manual_seed(seed)
        batch = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8,
                              generator=generator)
        if device.type == "cuda":
            batch = batch.pin_memory()
        step = system.step
        begin = time.perf_counter()
        for _ in range(warmup):
            step(batch, precision)
        _synchronize(device)
        warmup_s = time.perf_counter() - begin
        times = time_steps(lambda: step(batch, precision), device, repeats)
    except (RuntimeError, torch.OutOfMemoryError) as err:
        if not _is_oom(err):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        logger.warning("%s batch %d %s: out of memory", name, batch_size, precision)
        row.update(status="oom", error=str(err).splitlines()[0][:300])
        return row
    p50 = statistics.median(times)
    row.update(
        status="ok",
        images_per_second=batch_size / p50,
        latency_ms_p50=p50 * 1e3,
        latency_ms_min=min(times) * 1e3,
        latency_ms_p90=_percentile(times, 0.9) * 1e3,
        latency_ms_max=max(times) * 1e3,
        spread_pct=(max(times) - min(times)) / p50 * 100.0,
        repeats=repeats,
        warmup=warmup,
        warmup_s=warmup_s,
        num_params=system.num_params,
    )
    return row


def check_settings(*, precisions: Sequence[str], batch_sizes: Sequence[int], image_size: int, repeats: int,
                    warmup: int, systems: Sequence[str] = (), backends: Sequence[str] = ("torch",)) -> None:
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if not set(precisions) & set(BACKEND_PRECISIONS[backend]):
            raise ValueError(f"backend {backend!r} runs {' or '.join(BACKEND_PRECISIONS[backend])}, "
                             f"asked for {', '.join(precisions)}")
    for system in systems:
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}; expected one of {', '.join(SYSTEMS)}")
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
