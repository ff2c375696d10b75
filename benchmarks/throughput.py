"""Throughput of multihead against eight models, a cascade and the bare trunk, plus the inference fast path.

Two sections, one process, one device, written to ``benchmarks/results/<hardware-slug>.json``:

- ``systems``: the four systems (see :mod:`multihead.benchmark`) at fp32 contiguous (eager reference) and at
  the PyTorch default for the device; with ``--backends``, also multihead and trunk_only on ONNX Runtime or
  OpenVINO (the CPU backends' own comparison is ``benchmarks/backends.py``).
- ``fast_path``: multihead only, each precision x channels_last (input, then input and weights), and
  fp32 with ``torch.compile``.

Usage::

    .venv/bin/python benchmarks/throughput.py [--device cpu] [--batch-sizes 1 8 32] [--skip-fast-path]
    .venv/bin/python benchmarks/throughput.py --skip-fast-path --backends torch openvino
    .venv/bin/python benchmarks/throughput.py --plot benchmarks/results/<slug>.json --png docs/benchmarks-cpu.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from multihead.benchmark import benchmark_system, build_system, hardware_slug, run_benchmark, summarize
from multihead.inference import InferenceConfig

REPO = Path(__file__).resolve().parents[1]


def _progress(row: dict[str, Any]) -> None:
    speed = f"{row['images_per_second']:8.1f} img/s  p50 {row['latency_ms_p50']:8.1f} ms" if row["status"] == "ok" \
        else row["status"]
    print(f"{row['system']:>13} {row['backend']:>11} {row['precision']} cl={row['channels_last']!s:5} "
          f"w={row.get('channels_last_weights')!s:5} compiled={row['compiled']!s:5} "
          f"batch {row['batch_size']:3}  {speed}", flush=True)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run both sections and return one report (rows tagged with ``section``)."""
    began = time.perf_counter()
    default_cl = bool(InferenceConfig().resolve(args.device).channels_last)
    common = {"device": args.device, "image_size": args.image_size, "warmup": args.warmup, "repeats": args.repeats,
              "callback": _progress}
    report = run_benchmark(batch_sizes=args.batch_sizes, precisions=["fp32"],
                           channels_last=sorted({False, default_cl}), backends=args.backends, **common)
    for row in report["results"]:
        row["section"] = "systems"
    if not args.skip_fast_path:
        fast = run_benchmark(systems=["multihead"], batch_sizes=args.fast_batch_sizes, precisions=args.precisions,
                             channels_last=[False, True], **common)["results"]
        if args.compile:  # fp32 only: each compiled shape and precision costs a compilation
            fast += run_benchmark(systems=["multihead"], batch_sizes=args.fast_batch_sizes, precisions=["fp32"],
                                  channels_last=[default_cl], compiled=[True], **common)["results"]
        system = build_system("multihead", device=args.device, image_size=args.image_size, channels_last=True,
                              channels_last_weights=True)
        for precision in args.precisions:
            for batch_size in args.fast_batch_sizes:
                row = benchmark_system(system, device=args.device, batch_size=batch_size, image_size=args.image_size,
                                       precision=precision, channels_last=True, warmup=args.warmup,
                                       repeats=args.repeats)
                _progress(row)
                fast.append(row)
        for row in fast:
            row["section"] = "fast_path"
        report["results"].extend(fast)
    report["summary"] = summarize({"results": [r for r in report["results"] if r["section"] == "systems"]})
    report["wall_s"] = time.perf_counter() - began
    return report


def plot(report: dict[str, Any], png: Path) -> None:
    """images/s against batch size: the four systems (fp32), and multihead's fast-path options."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    default_cl = bool(InferenceConfig().resolve(report["device"]).channels_last)
    for system in ("multihead", "trunk_only", "cascade", "eight_models"):
        rows = sorted((r for r in report["results"] if r["section"] == "systems" and r["system"] == system
                       and r["channels_last"] == default_cl and r["status"] == "ok"), key=lambda r: r["batch_size"])
        left.plot([r["batch_size"] for r in rows], [r["images_per_second"] for r in rows], marker="o", label=system)
    left.set(title=f"systems, fp32, library default layout ({report['image_size']} px)", xlabel="batch size",
             ylabel="images / s", xscale="log", yscale="log")
    variants: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        if r["section"] == "fast_path" and r["status"] == "ok":
            layout = ("channels_last in+weights" if r.get("channels_last_weights") else "channels_last input") \
                if r["channels_last"] else "contiguous"
            label = f"{r['precision']}, {layout}{', compiled' if r['compiled'] else ''}"
            variants.setdefault(label, []).append(r)
    for label, rows in sorted(variants.items()):
        rows.sort(key=lambda r: r["batch_size"])
        right.plot([r["batch_size"] for r in rows], [r["images_per_second"] for r in rows], marker="o", label=label)
    right.set(title="multihead fast path", xlabel="batch size", ylabel="images / s", xscale="log")
    for axes in (left, right):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    machine = report["machine"]
    fig.suptitle(f"{machine.get('gpu') or machine['cpu_model']}, {report['cpu_count']} cores, "
                 f"{machine['torch_threads']} torch thread(s), torch {report['torch']}, {report['date'][:10]}",
                 fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--fast-batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile rows")
    parser.add_argument("--skip-fast-path", action="store_true")
    parser.add_argument("--backends", nargs="+", default=["torch"], choices=["torch", "onnxruntime", "openvino"],
                        help="systems section: also time multihead and trunk_only on these (baselines stay torch)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/<hardware-slug>.json")
    parser.add_argument("--plot", type=Path, default=None, help="only draw this existing report")
    parser.add_argument("--png", type=Path, default=None, help="write the plot here")
    args = parser.parse_args(argv)
    if args.plot is not None:
        plot(json.loads(args.plot.read_text()), args.png or args.plot.with_suffix(".png"))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = measure(args)
    out = args.out or REPO / "benchmarks" / "results" / f"{hardware_slug(args.device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    if args.png is not None:
        plot(report, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
