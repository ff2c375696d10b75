"""The run's bookkeeping: one JSON written after every measurement, sections with time budgets, and timing.

A GPU is lent rarely and briefly, so nothing here may lose what was already measured: every row is saved
atomically as soon as it exists, a section that runs out of time records what it skipped, and an exception
in one section is recorded and the run goes on with the next.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("gpu")


class Terminated(BaseException):
    """SIGTERM (from run.sh's timeout): stop now, keep what is saved."""


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Run:
    """The results of one run, saved to ``out/results.json`` whenever :meth:`save` is called."""

    def __init__(self, out_dir: Path, *, mode: str, deadline_s: float) -> None:
        self.out_dir = out_dir
        self.path = out_dir / "results.json"
        self.began = time.monotonic()
        self.deadline_s = deadline_s
        self.data: dict[str, Any] = {"schema": 1, "mode": mode, "status": "running", "started_utc": now_utc(),
                                     "deadline_s": deadline_s, "sections": []}

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def left(self) -> float:
        """Seconds before the run's own deadline (run.sh kills it a little after)."""
        return self.deadline_s - self.elapsed()

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 2)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def section(self, name: str, budget_s: float, key: str | None = None) -> Iterator[Section]:
        """Run one section: its results live in ``data[key or name]``, its status in ``data["sections"]``
        (and in the payload, or in ``payload["phases"][name]`` when several sections share a payload)."""
        entry: dict[str, Any] = {"name": name, "status": "running", "budget_s": budget_s,
                                 "started_at_s": round(self.elapsed(), 2)}
        self.data["sections"].append(entry)
        payload = self.data.setdefault(key or name, {})
        record = payload if key is None else payload.setdefault("phases", {}).setdefault(name, {})
        record.update(status="running", budget_s=budget_s)
        section = Section(self, payload, budget_s)
        logger.info("== %s (budget %.0f s, %.0f s left in the run)", name, budget_s, self.left())
        self.save()
        status = "error"
        try:
            yield section
            status = section.status or ("partial" if section.skipped else "ok")
        except Terminated:
            status = "killed"
            raise
        except Exception as err:  # one section's failure never stops the others
            logger.error("section %s failed:\n%s", name, traceback.format_exc())
            entry["error"] = record["error"] = f"{type(err).__name__}: {err}"[:500]
        finally:
            entry["status"] = record["status"] = status
            entry["wall_s"] = record["wall_s"] = round(section.elapsed(), 2)
            if section.skipped:
                entry["skipped_items"] = record["skipped_items"] = len(section.skipped)
            self.save()
            logger.info("== %s: %s in %.1f s", name, status, section.elapsed())


class Section:
    """A section's budget: ``left()`` is the smaller of its own time and the run's."""

    def __init__(self, run: Run, payload: dict[str, Any], budget_s: float) -> None:
        self.run, self.payload, self.budget_s = run, payload, budget_s
        self.began = time.monotonic()
        self.skipped: list[str] = []
        self.status: str | None = None
        """Set to override the status at the end (e.g. ``"skipped"`` when nothing could run)."""

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def left(self) -> float:
        return min(self.budget_s - self.elapsed(), self.run.left())

    def affords(self, seconds: float) -> bool:
        return self.left() >= seconds

    def skip(self, what: str, reason: str = "budget spent") -> None:
        self.skipped.append(f"{what}: {reason}")
        self.payload.setdefault("skipped", []).append({"what": what, "reason": reason})
        logger.info("skipped %s (%s)", what, reason)


# --- devices and timing ------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def error_row(err: BaseException, device: torch.device) -> dict[str, Any]:
    """``status="oom"`` or ``"error"`` with the first line of the message; frees the cache after an OOM."""
    if is_oom(err):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"status": "oom", "error": str(err).splitlines()[0][:300] if str(err) else "out of memory"}
    logger.warning("error: %s", traceback.format_exc(limit=4))
    return {"status": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]}


def time_calls(call: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int) -> dict[str, Any]:
    """Seconds per call, CUDA events on a GPU (the queue is asynchronous), else a wall clock.

    The first call is timed on its own with the wall clock (``first_call_s``): it holds compilation,
    cuDNN's algorithm search and allocations, which the steady-state figures leave out.
    """
    begin = time.perf_counter()
    call()
    synchronize(device)
    first = time.perf_counter() - begin
    for _ in range(max(0, warmup - 1)):
        call()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            tick = time.perf_counter()
            call()
            times.append(time.perf_counter() - tick)
    return {"first_call_s": round(first, 4), "seconds_p50": statistics.median(times), "seconds_min": min(times),
            "seconds_max": max(times), "repeats": repeats, "warmup": warmup,
            "timer": "cuda_events" if device.type == "cuda" else "perf_counter"}


class WallTimer:
    """Wall clock around work that mixes host and device (decoding, loaders): synchronises at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> WallTimer:
        synchronize(self.device)
        self._tick = time.perf_counter()
        return self

    def elapsed(self) -> float:
        return time.perf_counter() - self._tick

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._tick
