"""``multihead benchmark``: images per second of the fused pass against the baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ._app import (
    _library_errors,
    _one_of,
    console,
    err_console,
)


@_library_errors
def benchmark(
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    batch_size: Annotated[list[int] | None, typer.Option("--batch-size", "-b", min=1,
                                                         help="Images per batch; repeat for several.")] = None,
    precision: Annotated[list[str] | None, typer.Option(callback=_one_of("fp32", "bf16", "fp16"),
                                                        help="fp32, bf16 or fp16; repeat for several.")] = None,
    system: Annotated[list[str] | None, typer.Option(
        help="multihead, eight_models, cascade or trunk_only; repeat for several (default: all four).")] = None,
    compiled: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the networks.")] = False,
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last", help="channels_last input (default: the library's, per device).")] = None,
    image_size: Annotated[int, typer.Option(min=32, help="Input side in pixels.")] = 224,
    repeats: Annotated[int, typer.Option(min=1, help="Timed batches per setting (median reported).")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed batches first.")] = 2,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the full report here.")] = None,
    backend: Annotated[list[str] | None, typer.Option(help="torch, onnxruntime or openvino; repeat for several "
                                                           "(default: torch, and the backend classify runs, OpenVINO "
                                                           "when installed). Only torch runs the baselines.")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds: every system once per round, so a busy "
                                                    "machine slows all alike; ratios come with their range.")] = 3,
) -> None:
    """Images per second of one fused pass against eight separate models, a router cascade and the bare trunk.

    Random weights, nothing downloaded; all systems on the same device at the same settings.
    """
    from ..benchmark import SYSTEMS, run_benchmark, summarize
    from ..inference.config import InferenceConfig

    if channels_last is None:
        channels_last = bool(InferenceConfig().resolve(device).channels_last)
    classify_backend = InferenceConfig().resolve(device).backend  # what `multihead classify` runs here
    if backend is None:
        backend = ["torch"] + ([classify_backend] if classify_backend != "torch" else [])
    table = Table("system", "precision", "channels_last", "compiled", "batch", "images/s", "p50 ms", "spread")

    def show(row: dict[str, Any]) -> None:
        name = row["system"] if row["backend"] == "torch" else f"{row['system']} ({row['backend']})"
        if row["system"] == "multihead" and row["backend"] == classify_backend:
            name += " = classify"
        if row["status"] != "ok":
            table.add_row(name, row["precision"], str(row["channels_last"]), str(row["compiled"]),
                          str(row["batch_size"]), f"[red]{row['status']}[/]", "", "")
            return
        table.add_row(name, row["precision"], str(row["channels_last"]), str(row["compiled"]),
                      str(row["batch_size"]), f"{row['images_per_second']:.1f}", f"{row['latency_ms_p50']:.1f}",
                      f"{row['spread_pct']:.0f}%")

    with console.status("timing..."):
        report = run_benchmark(systems=system or SYSTEMS, device=device, batch_sizes=batch_size or [1, 8, 32],
                               precisions=precision or ["fp32"], channels_last=[channels_last], compiled=[compiled],
                               image_size=image_size, warmup=warmup, repeats=repeats, backends=backend,
                               rounds=rounds, callback=show)
    machine = report["machine"]
    table.title = (f"{machine.get('gpu') or machine['cpu_model']}, {report['cpu_count']} CPUs, "
                   f"torch {report['torch']}, {image_size} px")
    console.print(table)
    for entry in summarize(report):
        ratios = ", ".join(
            f"{k.removeprefix('multihead_over_')} x{v:.2f}" + (
                " (x{:.2f}-{:.2f} over rounds)".format(*entry[f"{k}_range"]) if f"{k}_range" in entry else "")
            for k, v in entry.items() if k.startswith("multihead_over_") and not k.endswith("_range"))
        if ratios:
            console.print(f"multihead ({entry['backend']}) vs {ratios} ({entry['precision']}, "
                          f"batch {entry['batch_size']})", highlight=False, soft_wrap=True)
        for warning in entry.get("warnings", []):
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for warning in report.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {json_path}")
