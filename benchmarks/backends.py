"""The multihead system on each CPU backend against PyTorch fp32 eager, in one process: two models, three batches.

Models: ResNet18 at 224 px with random weights (the throughput benchmark's model) and the bundled default model
(MobileNetV2 at 640 px since 2026-11-26, 448 px before). Options: PyTorch fp32 eager contiguous (the
reference), PyTorch fp32 channels_last (the torch backend's default), PyTorch bf16 channels_last, ONNX Runtime
fp32, OpenVINO fp32 and bf16. Each row carries ``ratio_to_fp32_eager``: its images/s over the reference's at
the same model and batch size.

``--tuning`` times the runtimes' own settings instead, on the same models (batches 1 and 32), with sessions
built directly: ONNX Runtime's graph optimisation levels, OpenVINO's performance hints (one latency stream
against throughput streams), its accuracy execution mode, and its f32 and bf16 precision hints. The library
uses what won: ``ORT_ENABLE_ALL``, and ``LATENCY`` with an explicit precision hint.

Each report records how much CPU other processes used while it ran (``machine.other_processes_cpu_pct``, from
``/proc/stat``): timings are only valid on an otherwise idle machine. Answers are checked separately by
``benchmarks/parity.py``. Usage::

    .venv/bin/python benchmarks/backends.py [--threads 2] [--batch-sizes 1 8 32] [--out PATH]
    .venv/bin/python benchmarks/backends.py --tuning [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import multihead
from multihead.benchmark import benchmark_system, hardware_slug, machine_info, model_system
from multihead.inference import default_model_path
from multihead.inference.export import export_onnx, require

REPO = Path(__file__).resolve().parents[1]
# name -> (backend, precision, channels_last input)
OPTIONS = {
    "torch fp32 eager": ("torch", "fp32", False),
    "torch fp32 channels_last": ("torch", "fp32", True),
    "torch bf16 channels_last": ("torch", "bf16", True),
    "onnxruntime fp32": ("onnxruntime", "fp32", False),
    "openvino fp32": ("openvino", "fp32", False),
    "openvino bf16": ("openvino", "bf16", False),
}
REFERENCE = "torch fp32 eager"


def _busy_jiffies() -> int:
    """CPU time (all cores, clock ticks) spent not idle since boot."""
    with open("/proc/stat", encoding="utf-8") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def _models() -> dict[str, multihead.MultiHeadModel]:
    bundled = multihead.load(default_model_path())
    return {
        "resnet18 224 px (random weights)": multihead.create_model("resnet18", trunk_weights=None, seed=0).eval(),
        f"bundled default ({bundled.trunk.name} {bundled.preprocessing.image_size} px)": bundled,
    }


def describe_models(models: dict[str, multihead.MultiHeadModel]) -> dict[str, dict[str, Any]]:
    """What each model was (trunk spec with its fingerprint, image size), so a result names what it timed."""
    return {name: {"trunk": model.trunk.spec(), "image_size": model.preprocessing.image_size}
            for name, model in models.items()}


class _Idleness:
    """How much CPU the rest of the machine used between construction and :meth:`machine` (0 % = idle)."""

    def __init__(self) -> None:
        self.began, self.busy, self.own = time.perf_counter(), _busy_jiffies(), sum(os.times()[:4])
        self.load_at_start = os.getloadavg()[0]

    def machine(self) -> dict[str, Any]:
        wall_s = time.perf_counter() - self.began
        other_s = (_busy_jiffies() - self.busy) / os.sysconf("SC_CLK_TCK") - (sum(os.times()[:4]) - self.own)
        machine = machine_info("cpu")
        machine.update(load_average_1m_at_start=self.load_at_start,
                       load_average_1m_at_end=machine.pop("load_average_1m"),
                       other_processes_cpu_pct=max(0.0, 100.0 * other_s / (wall_s * (os.cpu_count() or 1))),
                       wall_s=wall_s)
        return machine


def _report(idleness: _Idleness, **fields: Any) -> dict[str, Any]:
    return {"device": "cpu", "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": idleness.machine(), **fields}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every option on every model at every batch size; rows tagged with ``model``, ``option`` and the ratio."""
    idleness = _Idleness()
    rows, models = [], _models()
    for model_name, model in models.items():
        size = model.preprocessing.image_size
        for option, (backend, precision, channels_last) in OPTIONS.items():
            system = model_system(model, backend=backend, channels_last=channels_last)
            for batch_size in args.batch_sizes:
                row = benchmark_system(system, batch_size=batch_size, image_size=size, precision=precision,
                                       channels_last=channels_last, backend=backend, warmup=args.warmup,
                                       repeats=args.repeats)
                row.update(model=model_name, option=option)
                rows.append(row)
                print(f"{model_name:>38} {option:>25} batch {batch_size:3} {row['images_per_second']:8.1f} img/s "
                      f"p50 {row['latency_ms_p50']:8.1f} ms  warm-up {row['warmup_s']:.2f} s", flush=True)
    reference = {(r["model"], r["batch_size"]): r["images_per_second"] for r in rows if r["option"] == REFERENCE}
    for row in rows:
        row["ratio_to_fp32_eager"] = row["images_per_second"] / reference[row["model"], row["batch_size"]]
    return _report(idleness, models=describe_models(models), reference=REFERENCE, results=rows)


def _runtime_variants(path: Path, threads: int) -> dict[str, Callable[[np.ndarray], Any]]:
    """Sessions with each setting tried, built directly (the library exposes only the winners)."""
    ort, ov = require("onnxruntime"), require("openvino")
    variants: dict[str, Callable[[np.ndarray], Any]] = {}
    for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        variants[f"onnxruntime {level}"] = lambda x, s=session: s.run(["features"], {"images": x})
    for name, properties in {
        "openvino f32 LATENCY": {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
        "openvino f32 THROUGHPUT": {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT"},
        "openvino EXECUTION_MODE ACCURACY": {"EXECUTION_MODE_HINT": "ACCURACY", "PERFORMANCE_HINT": "LATENCY"},
        "openvino bf16 LATENCY": {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"},
        "openvino default precision LATENCY": {"PERFORMANCE_HINT": "LATENCY"},
    }.items():
        compiled = ov.Core().compile_model(str(path), "CPU", {**properties, "INFERENCE_NUM_THREADS": threads})
        variants[name] = lambda x, c=compiled: c.create_infer_request().infer({"images": x})
    return variants


def tune(args: argparse.Namespace) -> dict[str, Any]:
    """images/s of each runtime setting (median of ``repeats`` after ``warmup``), batches 1 and 32."""
    idleness = _Idleness()
    rows, models = [], _models()
    for model_name, model in models.items():
        size = model.preprocessing.image_size
        with tempfile.TemporaryDirectory() as folder:
            variants = _runtime_variants(export_onnx(model, Path(folder) / "model.onnx"), args.threads)
        for batch_size in (1, 32):
            images = np.random.default_rng(0).integers(0, 256, (batch_size, 3, size, size), dtype=np.uint8)
            for setting, run in variants.items():
                for _ in range(args.warmup):
                    run(images)
                times = []
                for _ in range(args.repeats):
                    begin = time.perf_counter()
                    run(images)
                    times.append(time.perf_counter() - begin)
                rows.append({"model": model_name, "setting": setting, "batch_size": batch_size,
                             "images_per_second": batch_size / statistics.median(times)})
                print(f"{model_name:>38} {setting:>36} batch {batch_size:3} {rows[-1]['images_per_second']:8.1f} "
                      "img/s", flush=True)
    return _report(idleness, models=describe_models(models), threads=args.threads, results=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=2, help="torch threads, and each runtime's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tuning", action="store_true", help="time the runtimes' own settings instead")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/<hardware-slug>-backends[-tuning].json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = tune(args) if args.tuning else measure(args)
    suffix = "-backends-tuning" if args.tuning else "-backends"
    out = args.out or REPO / "benchmarks" / "results" / f"{hardware_slug('cpu')}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    machine = report["machine"]
    print(f"wrote {out} ({machine['wall_s']:.0f} s; other processes used {machine['other_processes_cpu_pct']:.1f} % "
          "of the CPU meanwhile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
