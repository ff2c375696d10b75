"""``multihead tune-precision``: measure a model's accuracy guard for reduced precision and record it in the
checkpoint; and the guard table ``info`` and ``tune-precision`` print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from ._app import (
    _library_errors,
    _one_of,
    _shown,
    console,
    err_console,
)

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")
"""What ``--precision`` takes (:data:`multihead._precision.INFERENCE_PRECISIONS`, kept here free of a torch import)."""
PRECISION_HELP = ("auto (the fastest precision the model's accuracy guard allows on this machine, else fp32), fp32, "
                  "bf16, fp16 or int8 (OpenVINO, a quantised trunk: see tune-precision).")


def checked_precision(precision: str, device: str, backend: str = "auto") -> str:
    """``precision``, unless this machine or ``backend`` cannot run it: then a usage error (exit 2) naming what
    it can run."""
    from ..model.precision import check_precision

    try:
        check_precision(precision, backend, device)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="'--precision'") from None
    return precision


def guard_table(metadata: dict[str, Any]) -> Table | None:
    """The guard table of a checkpoint's metadata, readable at 80 columns (notes below the rows); ``None`` when it
    has none."""
    from ..model.precision import guard_rows
    from ..model.records import PrecisionReference, read_guard

    rows, guard = guard_rows(metadata), read_guard(metadata)
    if not rows or guard is None:
        return None
    reference = guard.reference or PrecisionReference()
    table = Table(Column("prec."), Column("backend", overflow="fold"), Column("agreement", justify="right"),
                  Column("accuracy", justify="right"), Column("speed", justify="right"),
                  Column("verdict", overflow="fold"),
                  title=(f"precision guard: {guard.images or '?'} {_shown(guard.subset or 'val')} images "
                         f"against fp32 on {_shown(reference.backend or '?')} (accuracy "
                         f"{_percent(reference.accuracy)}); agreement: the share of subtypes as fp32's"),
                  title_justify="left", show_edge=False,
                  caption="\n".join(f"{row['precision']}: {_shown(row['note'])}" for row in rows if row["note"])
                  or None, caption_justify="left")
    for row in rows:
        change = row["accuracy_change"]
        table.add_row(row["precision"], _shown(row["backend"] or "-"), _percent(row["agreement"]),
                      "-" if change is None else f"{change * 100:+.2f} pt",
                      "-" if row["speed_vs_fp32"] is None else f"x{row['speed_vs_fp32']:.2f}", _shown(row["verdict"]))
    return table


def _percent(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.2%}"


def auto_line(metadata: dict[str, Any], trunk: dict[str, Any], preprocessing: Any, device: str = "cpu") -> str:
    """``auto picks here: int8 on openvino (why)``: what ``precision="auto"`` runs on this machine."""
    from ..model.precision import choose_precision

    return f"auto picks here: {choose_precision(metadata, trunk, preprocessing, device=device)}"


@_library_errors
def tune_precision(
    model: Annotated[Path, typer.Argument(help="Checkpoint to measure; its guard is written into it (or --out).",
                                          exists=True, dir_okay=False)],
    data_dir: Annotated[list[Path], typer.Argument(
        help="The data folder(s) the model was trained on, as train and evaluate take them.", exists=True,
        file_okay=False)],
    split: Annotated[Path | None, typer.Option(
        help="Split file (default: MODEL.split.json beside the checkpoint, else the split it records).",
        exists=True, dir_okay=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the checkpoint with its guard here instead "
                                                                 "of in place.")] = None,
    precision: Annotated[list[str] | None, typer.Option(
        callback=_one_of("bf16", "fp16", "int8"),
        help="bf16, fp16 or int8; repeat for several (default: bf16 and int8, where this CPU computes them in "
             "hardware).")] = None,
    calibration_images: Annotated[int, typer.Option(min=1, help="Training images int8 is calibrated on.")] = 300,
    mixed_precision: Annotated[bool, typer.Option(
        "--mixed-precision/--no-mixed-precision",
        help="When int8 changes too many answers, take its costliest quantizers out, leaving those tensors fp32 "
             "(NNCF accuracy control: slow, it runs the validation images many times).")] = True,
    rounds: Annotated[int, typer.Option(min=0, help="Interleaved rounds timing each precision's trunk against "
                                                    "fp32 (0: no speed recorded).")] = 3,
) -> None:
    """Measure, per reduced precision, the share of validation subtypes identical to fp32 and the accuracy change,
    and record this guard in the checkpoint: precision auto then takes the fastest precision that keeps 99.5 % of
    the answers and loses at most 0.3 points. int8 is the trunk quantised by NNCF for OpenVINO, calibrated on the
    training split and cached on this machine."""
    from ..evaluation.precision import DEFAULT_PRECISIONS, measure_guard, model_split, record_guard
    from ..model.checkpoint import load, read_header

    chosen = model_split(model, split)
    loaded = load(model)

    def say(line: str) -> None:
        err_console.print(_shown(line), highlight=False, soft_wrap=True)

    guard = measure_guard(loaded, data_dir, split=chosen, precisions=precision or DEFAULT_PRECISIONS,
                          calibration_images=calibration_images, mixed_precision=mixed_precision, rounds=rounds,
                          on_progress=say)
    written = record_guard(model, guard, out=out)
    header = read_header(written)
    table = guard_table(header["metadata"])
    if table is not None:
        console.print(table)
    console.print(_shown(auto_line(header["metadata"], header["trunk"], header["preprocessing"])), highlight=False,
                  soft_wrap=True)
    console.print(f"wrote the guard into {_shown(written)}", highlight=False, soft_wrap=True)
