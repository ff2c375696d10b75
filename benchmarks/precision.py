"""Issue 37's targets, measured in one process: precision ``auto`` against fp32, end to end and for the trunk alone.

Two sections, written to one JSON file (default ``benchmarks/results/precision-<hardware-slug>.json``):

- ``end_to_end``: ``classify_files`` on held-out files (the split's ``--subset``, default the test images, which
  neither training nor the guard saw), decoding and resizing included, at fp32 and at ``auto``, in interleaved
  rounds (:func:`multihead.benchmark.time_classify`): files/s of each, their ratio per round, the share of files
  given the same subtype as fp32 and the accuracy of each against the folders' labels.
- ``trunk``: the trunk alone on ready uint8 batches of the same images, OpenVINO fp32 against int8 (and bf16), in
  interleaved rounds: images/s and the ratio per round. int8 is the graph ``multihead tune-precision`` cached on
  this machine; the script refuses to run without one (run tune-precision first).

Each figure is checked against the issue's targets in ``targets`` (measured values only, no estimates): auto at
least 2.5x fp32 end to end, agreement at least 99.5 %, accuracy at most 0.3 points lower, trunk int8 at least 3x
fp32. Timings are only valid on an otherwise idle machine: the report records the load average and the CPU other
processes used (``machine``). Usage::

    .venv/bin/python benchmarks/precision.py --model multihead/weights/default.safetensors \\
        --data ../shared/data/multi-cancer-sample ../shared/data/multi-cancer-extra \\
        --split docs/accuracy/sample-extra/split.json [--subset test] [--rounds 5] [--batch-sizes 1 8] [--out PATH]

``--max-files N`` and ``--rounds 1`` make a quick check that it runs (not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import multihead
from multihead.benchmark import hardware_slug, machine_info, time_classify
from multihead.data.scan import scan_dataset
from multihead.data.splits import Split
from multihead.inference import InferenceConfig, run_features
from multihead.inference.quantize import cached_trunk
from multihead.model.precision import MAX_ACCURACY_DROP, MIN_AGREEMENT, choose_precision, openvino_precisions

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"end_to_end_auto_over_fp32": 2.5, "agreement": MIN_AGREEMENT, "accuracy_drop": MAX_ACCURACY_DROP,
           "trunk_int8_over_fp32": 3.0}


def _busy_jiffies() -> int:
    with open("/proc/stat", encoding="utf-8") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _trunk(model: multihead.MultiHeadModel, files: list[Path], batch_sizes: list[int], rounds: int,
           repeats: int) -> list[dict[str, Any]]:
    """OpenVINO fp32 against int8 (and bf16 where OpenVINO runs it) on ready batches, interleaved rounds."""
    precisions = ["fp32", "int8", *(["bf16"] if "bf16" in openvino_precisions() else [])]
    rows = []
    for batch_size in batch_sizes:
        batch = torch.stack([model.preprocessing.load(path) for path in (files * batch_size)[:batch_size]])
        configs = {p: InferenceConfig(precision=p, backend="openvino", batch_size=batch_size) for p in precisions}
        for config in configs.values():  # compile, warm up
            run_features(model, batch, config)
        rates: dict[str, list[float]] = {p: [] for p in precisions}
        for number in range(rounds):
            for precision, config in configs.items():
                times = []
                for _ in range(repeats):
                    begin = time.perf_counter()
                    run_features(model, batch, config)
                    times.append(time.perf_counter() - begin)
                rates[precision].append(batch_size / statistics.median(times))
            print(f"trunk, batch {batch_size}, round {number + 1}/{rounds}: "
                  + ", ".join(f"{p} {rates[p][-1]:.1f} images/s" for p in precisions), flush=True)
        for precision in precisions:
            ratios = [a / b for a, b in zip(rates[precision], rates["fp32"])]
            rows.append({"backend": "openvino", "precision": precision, "batch_size": batch_size,
                         "images_per_second": statistics.median(rates[precision]),
                         "round_images_per_second": rates[precision], "over_fp32": statistics.median(ratios),
                         "round_over_fp32": ratios})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "multihead" / "weights" / "default.safetensors")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="the data folders the model was trained on")
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--subset", default="test", choices=["train", "val", "test"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="trunk batches per precision and round")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-files", type=int, default=None, help="a quick check only: fewer held-out files")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    began, busy_before, own_before = time.perf_counter(), _busy_jiffies(), time.process_time()
    load_before = os.getloadavg()[0]
    model = multihead.load(args.model)
    if cached_trunk(model) is None:
        print(f"no int8 graph of {args.model} is cached on this machine: run `multihead tune-precision "
              f"{args.model} {' '.join(map(str, args.data))} --split {args.split}` first", file=sys.stderr)
        return 1
    scan = scan_dataset(args.data, model.taxonomy)
    by_path = {r.relpath: r for r in scan.records}
    relpaths = [p for p in Split.load(args.split).files(args.subset) if p in by_path][:args.max_files]
    files = [by_path[p].path for p in relpaths]
    labels = [by_path[p].subtype for p in relpaths]
    choice = choose_precision(model.metadata, model.trunk.spec(), model.preprocessing)
    print(f"{len(files)} {args.subset} files; auto here: {choice}", flush=True)
    end_to_end = time_classify(files, model, {"fp32": InferenceConfig(precision="fp32"), "auto": InferenceConfig()},
                               rounds=args.rounds, labels=labels, on_progress=lambda line: print(line, flush=True))
    trunk = _trunk(model, files, args.batch_sizes, args.rounds, args.repeats)
    seconds = time.perf_counter() - began
    auto, fp32 = (next(r for r in end_to_end["rows"] if r["name"] == name) for name in ("auto", "fp32"))
    measured = {
        "end_to_end_auto_over_fp32": auto["over_reference"],
        "agreement": auto["agreement"],
        "accuracy_drop": (fp32["accuracy"] - auto["accuracy"]) if auto["accuracy"] is not None else None,
        "trunk_int8_over_fp32": {r["batch_size"]: r["over_fp32"] for r in trunk if r["precision"] == "int8"},
    }
    verdicts = {
        "end_to_end_auto_over_fp32": measured["end_to_end_auto_over_fp32"] >= TARGETS["end_to_end_auto_over_fp32"],
        "agreement": measured["agreement"] is not None and measured["agreement"] >= TARGETS["agreement"],
        "accuracy_drop": (measured["accuracy_drop"] is not None
                          and measured["accuracy_drop"] <= TARGETS["accuracy_drop"]),
        "trunk_int8_over_fp32": {b: r >= TARGETS["trunk_int8_over_fp32"]
                                 for b, r in measured["trunk_int8_over_fp32"].items()},
    }
    machine = machine_info("cpu")
    busy = (_busy_jiffies() - busy_before) / os.sysconf("SC_CLK_TCK")  # every process, all cores
    others = max(0.0, busy - (time.process_time() - own_before))
    machine.update(load_average_1m_at_start=load_before, load_average_1m_at_end=os.getloadavg()[0],
                   other_processes_cpu_pct=100.0 * others / (seconds * (os.cpu_count() or 1)))
    report = {
        "model": {"file": args.model.name, "trunk": model.trunk.spec(), "image_size": model.preprocessing.image_size},
        "held_out": {"subset": args.subset, "files": len(files), "split": args.split.name,
                     "quick_check": args.max_files is not None},
        "auto": {"precision": choice.precision, "backend": choice.backend, "reason": choice.reason},
        "end_to_end": end_to_end,
        "trunk": trunk,
        "targets": TARGETS,
        "measured": measured,
        "meets": verdicts,
        "machine": machine,
        "wall_s": seconds,
    }
    out = args.out or REPO / "benchmarks" / "results" / f"precision-{hardware_slug('cpu')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({"measured": measured, "meets": verdicts}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
