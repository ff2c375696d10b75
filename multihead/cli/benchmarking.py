"""``multihead benchmark``: images per second of the fused pass against the baselines, per backend and precision,
and files per second of ``classify`` end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from ._app import (
    ModelOption,
    _library_errors,
    _one_of,
    _shown,
    console,
    err_console,
)

END_TO_END_FILES = 32
"""Files the end-to-end timing classifies per pass by default (the shipped examples, repeated)."""


@_library_errors
def benchmark(
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    batch_size: Annotated[list[int] | None, typer.Option("--batch-size", "-b", min=1,
                                                         help="Images per batch; repeat for several (default: 8).")
                          ] = None,
    precision: Annotated[list[str] | None, typer.Option(
        callback=_one_of("fp32", "bf16", "fp16", "int8"),
        help="fp32, bf16, fp16 or int8 (OpenVINO); repeat for several (default: fp32, and bf16 and int8 where this "
             "CPU computes them in hardware).")] = None,
    system: Annotated[list[str] | None, typer.Option(
        help="multihead, eight_models, cascade or trunk_only; repeat for several (default: all four).")] = None,
    compiled: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the networks.")] = False,
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last", help="channels_last input (default: the library's, per device).")] = None,
    image_size: Annotated[int, typer.Option(min=32, help="Input side in pixels.")] = 224,
    repeats: Annotated[int, typer.Option(min=1, help="Timed batches per setting and round (median reported).")] = 3,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed batches first.")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the full report here.")] = None,
    backend: Annotated[list[str] | None, typer.Option(help="torch, onnxruntime or openvino; repeat for several "
                                                           "(default: torch, and the backend classify runs, OpenVINO "
                                                           "when installed). Only torch runs the baselines.")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds: every system once per round, so a busy "
                                                    "machine slows all alike; ratios come with their range.")] = 3,
    end_to_end: Annotated[bool, typer.Option(
        "--end-to-end/--no-end-to-end", help="Also time classify from files (decoding included) with a real model: "
                                             "fp32 against precision auto.")] = True,
    model: ModelOption = None,
    images: Annotated[list[Path] | None, typer.Option(
        help="Image files or folders for the end-to-end timing (default: the shipped examples).", exists=True)] = None,
    files: Annotated[int, typer.Option(min=1, help="Files per end-to-end pass (the images repeated or cut to this "
                                                   "many).")] = END_TO_END_FILES,
) -> None:
    """Images per second of one fused pass against eight separate models, a router cascade and the bare trunk, per
    backend and precision; and files per second of classify end to end.

    The four systems are ResNet18 networks with random weights (not the bundled model: speed does not depend on the
    values), all on the same device at the same settings. The end-to-end part classifies real files with a real
    model (the bundled one unless --model), decoding and resizing included.
    """
    from ..benchmark import SYSTEMS, run_benchmark, summarize
    from ..inference.config import InferenceConfig
    from ..model.precision import native_precisions

    resolved = InferenceConfig(precision="fp32").resolve(device)
    if channels_last is None:
        channels_last = bool(resolved.channels_last)
    classify_backend = resolved.backend  # what `multihead classify` runs here (for a model without a guard)
    if backend is None:
        backend = ["torch"] + ([classify_backend] if classify_backend != "torch" else [])
    if precision is None:
        fast = {p for name in backend for p in native_precisions(name, device) if p in ("bf16", "int8")}
        precision = ["fp32", *(p for p in ("bf16", "int8") if p in fast)]
    for name in precision:
        if not any(name in _runs(b, device) for b in backend):
            raise typer.BadParameter(f"{name!r} runs on none of the backends timed here ({', '.join(backend)}); "
                                     f"they run {', '.join(sorted({p for b in backend for p in _runs(b, device)}))}",
                                     param_hint="'--precision'")
    systems = system or list(SYSTEMS)
    batches = batch_size or [8]
    say = _progress_printer()
    console.print(f"Timing {', '.join(systems)}: ResNet18 with random weights (not the bundled model), "
                  f"{image_size} px, batch {', '.join(map(str, batches))}, "
                  f"{'channels_last' if channels_last else 'contiguous'} input; {', '.join(precision)} on "
                  f"{', '.join(backend)} (baselines: torch only); {rounds} interleaved rounds.",
                  highlight=False, soft_wrap=True)
    say(_machine_line(device))
    report = run_benchmark(systems=systems, device=device, batch_sizes=batches, precisions=precision,
                           channels_last=[channels_last], compiled=[compiled], image_size=image_size, warmup=warmup,
                           repeats=repeats, backends=backend, rounds=rounds, on_progress=say)
    console.print(_systems_table(report, classify_backend, image_size, channels_last, compiled))
    for entry in summarize(report):
        ratios = ", ".join(
            f"{_other(k)} on {'torch' if _other(k) in SYSTEMS[1:3] else entry['backend']} x{v:.2f}"
            + (" (x{:.2f}-{:.2f} over rounds)".format(*entry[f"{k}_range"]) if f"{k}_range" in entry else "")
            for k, v in entry.items() if k.startswith("multihead_over_") and not k.endswith("_range"))
        if ratios:
            console.print(f"multihead on {entry['backend']} ({entry['precision']}, batch {entry['batch_size']}) "
                          f"over {ratios}", highlight=False, soft_wrap=True)
        for warning in entry.get("warnings", []):
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for warning in report.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if end_to_end:
        report["end_to_end"] = _end_to_end(model, images, files, device, rounds, say)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        console.print(f"wrote {json_path}")


def _other(key: str) -> str:
    return key.removeprefix("multihead_over_")


def _runs(backend: str, device: str) -> tuple[str, ...]:
    from ..model.precision import runnable_precisions

    return runnable_precisions(backend, device)


def _progress_printer() -> Any:
    """One plain line on stderr per step, flushed at once: a pipe or a log file shows the run as it goes."""
    import sys

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    return say


def _machine_line(device: str) -> str:
    from .._precision import CPU_INSTRUCTIONS, missing_instructions, native_cpu_precisions

    if str(device).split(":")[0] != "cpu":
        return f"{device}: reduced precision is chosen automatically on the CPU only"
    native = [p for p in native_cpu_precisions() if p != "fp32"]
    lacking = [f"no {missing_instructions(p)} for {p}" for p in CPU_INSTRUCTIONS if p not in native]
    if not native:
        return "this CPU computes no reduced precision in hardware (" + "; ".join(lacking) + "): auto keeps fp32"
    return f"this CPU computes {', '.join(native)} in hardware" + (f" ({'; '.join(lacking)})" if lacking else "")


def _systems_table(report: dict[str, Any], classify_backend: str, image_size: int, channels_last: bool,
                   compiled: bool) -> Table:
    """The rows, readable at 80 columns: names fold rather than being cut; the settings every row shares are in the
    title."""
    machine = report["machine"]
    table = Table(Column("system", overflow="fold"), Column("backend", overflow="fold"), Column("prec."),
                  Column("batch", justify="right"), Column("images/s", justify="right"),
                  Column("p50 ms", justify="right"), Column("spread", justify="right"),
                  title=(f"ResNet18, random weights, {image_size} px, "
                         f"{'channels_last' if channels_last else 'contiguous'}{', compiled' if compiled else ''}: "
                         f"{machine.get('gpu') or machine['cpu_model']}, {report.get('threads', '?')} threads, "
                         f"torch {report['torch']}"),
                  caption=f"* multihead on {classify_backend} at fp32: what classify runs for a model without a guard",
                  title_justify="left", caption_justify="left", show_edge=False)
    for row in report["results"]:
        name = row["system"] + ("*" if row["system"] == "multihead" and row["backend"] == classify_backend
                                and row["precision"] == "fp32" else "")
        if row["status"] != "ok":
            table.add_row(name, row["backend"], row["precision"], str(row["batch_size"]), f"[red]{row['status']}[/]",
                          "", "")
            continue
        table.add_row(name, row["backend"], row["precision"], str(row["batch_size"]),
                      f"{row['images_per_second']:.1f}", f"{row['latency_ms_p50']:.1f}", f"{row['spread_pct']:.0f}%")
    return table


def _end_to_end(model: str | None, images: list[Path] | None, count: int, device: str, rounds: int,
                say: Any) -> dict[str, Any]:
    """classify from files, fp32 against auto, with the bundled model (or ``model``): the table and the report."""
    from ..benchmark import time_classify
    from ..data.folders import expand_inputs
    from ..inference.config import InferenceConfig
    from ..inference.models import resolve_model
    from ..model.locate import locate_model
    from ..model.precision import choose_precision

    path = locate_model(model)
    loaded = resolve_model(str(path), device=device)
    source = images or [Path(__file__).resolve().parents[1] / "examples"]
    found = list(expand_inputs(source))
    if not found:
        raise ValueError("no image files found for the end-to-end timing (--images)")
    chosen = [found[i % len(found)] for i in range(count)]
    choice = choose_precision(loaded.metadata, loaded.trunk.spec(), loaded.preprocessing, device=str(device))
    title = (f"classify end to end: {_shown(path.name)} ({_shown(loaded.trunk.name)}, "
             f"{loaded.preprocessing.image_size} px), {count} files from {len(found)} "
             f"({', '.join(_shown(p.name) for p in source)}), decoding included")
    console.print(title, highlight=False, soft_wrap=True)
    say(f"auto for this model here: {choice}")
    result = time_classify(chosen, loaded, {"fp32": InferenceConfig(precision="fp32"), "auto": InferenceConfig()},
                           rounds=rounds, on_progress=say)
    table = Table(Column("precision"), Column("runs as", overflow="fold"), Column("files/s", justify="right"),
                  Column("vs fp32", justify="right"), Column("same as fp32", justify="right"), show_edge=False,
                  caption=(f"decoding and resizing alone: {result['decode_files_per_second']:.1f} files/s "
                           f"({result['decode_threads']} thread{'s' if result['decode_threads'] > 1 else ''})"),
                  caption_justify="left")
    for row in result["rows"]:
        table.add_row(row["name"], f"{row['precision']} on {row['backend']}", f"{row['files_per_second']:.1f}",
                      f"x{row['over_reference']:.2f}",
                      "-" if row["agreement"] is None else f"{row['agreement']:.1%}")
    console.print(table)
    console.print(_shown(f"auto picks here: {choice}"), highlight=False, soft_wrap=True)
    return {**result, "model": path.name, "trunk": loaded.trunk.name,
            "image_size": loaded.preprocessing.image_size, "auto": {"precision": choice.precision,
                                                                    "backend": choice.backend,
                                                                    "reason": choice.reason}}
