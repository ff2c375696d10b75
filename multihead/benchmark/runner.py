"""The whole run: every system at every setting, in interleaved rounds, and the ratios between systems."""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..inference.backends import BACKEND_PRECISIONS
from .machine import machine_info
from .systems import BACKEND_SYSTEMS, SYSTEMS, build_system, prepare_int8
from .timing import benchmark_system, check_settings, time_steps

logger = logging.getLogger(__name__)


def run_benchmark(*, systems: Sequence[str] = SYSTEMS, device: str | torch.device = "cpu",
                  batch_sizes: Sequence[int] = (1, 8, 32), precisions: Sequence[str] = ("fp32",),
                  channels_last: Sequence[bool] = (False,), compiled: Sequence[bool] = (False,),
                  image_size: int = 224, warmup: int = 2, repeats: int = 5, seed: int = 0,
                  backends: Sequence[str] = ("torch",), rounds: int = 3,
                  callback: Callable[[dict[str, Any]], None] | None = None,
                  on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every system at every setting, in one process on one device; the JSON report as a dict.

    Systems are timed in interleaved rounds: at each precision and batch size every system runs
    ``repeats`` batches once per round, ``rounds`` times, so a busy or throttling machine slows them alike;
    each row keeps its per-round images/s, and :func:`summarize` reports the ratios with their spread over
    rounds. The PyTorch systems convert their weights to channels_last whenever the input is (as timm's
    benchmark does). The other backends than torch run ``multihead`` and ``trunk_only`` only, at the
    precisions they support, with ``channels_last`` and ``compiled`` off; int8 is OpenVINO's, on a trunk quantised
    for timing (:func:`~multihead.benchmark.systems.prepare_int8`). ``callback`` gets each row when its rounds are
    done, ``on_progress`` a line of text at each step (building, each round of each row), so a long run shows
    what it is doing.

    Example:
        >>> report = run_benchmark(batch_sizes=[2], image_size=64, repeats=1, warmup=0)  # doctest: +SKIP
        >>> sorted({r["system"] for r in report["results"]})
        ['cascade', 'eight_models', 'multihead', 'trunk_only']
    """
    check_settings(precisions=precisions, batch_sizes=batch_sizes, image_size=image_size, repeats=repeats,
                    warmup=warmup, systems=systems, backends=backends)
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no CUDA device; use --device cpu")
    results = []
    load_at_start = machine_info(device)["load_average_1m"]
    torch_settings = list(itertools.product(channels_last, compiled))
    settings = [(backend, cl, comp, name) for backend in backends
                for cl, comp in (torch_settings if backend == "torch" else [(False, False)])
                for name in systems if backend == "torch" or name in BACKEND_SYSTEMS]
    say = on_progress or (lambda line: logger.info("%s", line))
    built = {}
    for key in settings:
        say(f"building {key[3]} ({key[0]}{', channels_last' if key[1] else ''}{', compiled' if key[2] else ''})")
        built[key] = build_system(key[3], device=device, image_size=image_size, channels_last=key[1],
                                  compiled=key[2], channels_last_weights=key[1] and key[0] == "torch", seed=seed,
                                  backend=key[0])
        if "int8" in precisions and "int8" in BACKEND_PRECISIONS[key[0]]:
            say(f"int8 trunk of {key[3]}: {prepare_int8(built[key].model, seed=seed)}")
    for precision, batch_size in itertools.product(precisions, batch_sizes):
        keys = [key for key in settings if precision in BACKEND_PRECISIONS[key[0]]]
        rows = {}
        for key in keys:
            rows[key] = benchmark_system(built[key], device=device, batch_size=batch_size, image_size=image_size,
                                         precision=precision, channels_last=key[1], compiled=key[2], warmup=warmup,
                                         repeats=repeats, seed=seed, backend=key[0])
            say(_progress_line(rows[key], 1, rounds))
        batch = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(seed))
        for key in keys:  # the first measurement is round 0
            if rows[key]["status"] == "ok":
                rows[key]["round_images_per_second"] = [rows[key]["images_per_second"]]
        for _ in range(rounds - 1):
            for key in keys:
                row = rows[key]
                if row["status"] != "ok":
                    continue
                step = built[key].step
                times = time_steps(lambda step=step, batch=batch, precision=precision: step(batch, precision),
                                    device, repeats)
                row["round_images_per_second"].append(batch_size / statistics.median(times))
                say(_progress_line(row, len(row["round_images_per_second"]), rounds))
        for key in keys:
            row = rows[key]
            if row["status"] == "ok":
                per_round = row["round_images_per_second"]
                row.update(images_per_second=statistics.median(per_round), rounds=rounds,
                           round_spread_pct=(max(per_round) - min(per_round)) / statistics.median(per_round) * 100)
            results.append(row)
            if callback is not None:
                callback(row)
    built.clear()
    machine = machine_info(device)
    machine["load_average_1m_at_end"] = machine.pop("load_average_1m")
    machine["load_average_1m_at_start"] = load_at_start
    threads = torch.get_num_threads()
    busiest = max(v for v in (load_at_start, machine["load_average_1m_at_end"]) if v is not None) if (
        load_at_start is not None or machine["load_average_1m_at_end"] is not None) else None
    warnings = []
    if busiest is not None and busiest > threads:
        warnings.append(f"the machine was busy: load average {busiest:.1f} above the {threads} threads in use; "
                        "the figures are lower than on an idle machine, and ratios less certain")
    return {
        "device": str(device),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "image_size": image_size,
        "trunk": "resnet18",
        "weights": "random (seeded): speed does not depend on the values; not the bundled model",
        "rounds": rounds,
        "machine": machine,
        "results": results,
        "warnings": warnings,
    }


def _progress_line(row: dict[str, Any], done: int, rounds: int) -> str:
    speed = (f"{row['round_images_per_second'][-1]:.1f} images/s" if row.get("round_images_per_second")
             else f"{row['images_per_second']:.1f} images/s" if row["status"] == "ok" else row["status"])
    return (f"round {done}/{rounds}: {row['system']} on {row['backend']} {row['precision']}, batch "
            f"{row['batch_size']}: {speed}")


RATIO_SPREAD_WARNING = 0.2
"""A ratio whose spread over rounds (max - min over the median) exceeds this is reported with a warning."""


def summarize(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per setting: multihead's images/s over each other system's (``multihead_over_<system>``).

    On another backend than torch, multihead is compared with that backend's ``trunk_only`` and with the
    PyTorch baselines at the same precision and batch size (with ``channels_last`` and ``compiled`` off).
    """
    keyed: dict[tuple, dict[str, float]] = {}
    for row in report["results"]:
        if row.get("status") == "ok":
            key = (row.get("backend", "torch"), row["precision"], row["channels_last"], row["compiled"],
                   row["batch_size"])
            keyed.setdefault(key, {})[row["system"]] = row["images_per_second"]
    rounds: dict[tuple, dict[str, list[float]]] = {}
    for row in report["results"]:
        if row.get("status") == "ok" and row.get("round_images_per_second"):
            key = (row.get("backend", "torch"), row["precision"], row["channels_last"], row["compiled"],
                   row["batch_size"])
            rounds.setdefault(key, {})[row["system"]] = row["round_images_per_second"]
    summary = []
    for (backend, precision, cl, comp, batch_size), speeds in keyed.items():
        if "multihead" not in speeds:
            continue
        entry: dict[str, Any] = {"backend": backend, "precision": precision, "channels_last": cl,
                                 "compiled": comp, "batch_size": batch_size,
                                 "multihead_images_per_second": speeds["multihead"]}
        torch_key = ("torch", precision, cl, comp, batch_size)
        if backend != "torch":  # the PyTorch baselines at whatever layout they ran
            torch_key = next((k for k in keyed if k[0] == "torch" and k[1] == precision and k[4] == batch_size),
                             torch_key)
        baselines = {**keyed.get(torch_key, {}), **speeds}
        per_round = {**rounds.get(torch_key, {}), **rounds.get((backend, precision, cl, comp, batch_size), {})}
        for other in SYSTEMS[1:]:
            if other in baselines:
                entry[f"multihead_over_{other}"] = speeds["multihead"] / baselines[other]
                mine, theirs = per_round.get("multihead"), per_round.get(other)
                if mine and theirs and len(mine) == len(theirs):  # same rounds: ratio per round
                    ratios = [a / b for a, b in zip(mine, theirs)]
                    middle = statistics.median(ratios)
                    entry[f"multihead_over_{other}"] = middle
                    entry[f"multihead_over_{other}_range"] = [min(ratios), max(ratios)]
                    if (max(ratios) - min(ratios)) / middle > RATIO_SPREAD_WARNING:
                        entry.setdefault("warnings", []).append(
                            f"multihead over {other} varied from x{min(ratios):.2f} to x{max(ratios):.2f} over "
                            "rounds: the machine was not steady")
        summary.append(entry)
    return summary
