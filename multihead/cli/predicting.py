"""Classifying from the command line: ``classify`` (a table, JSON lines, a figure, or a file under
torchrun), ``extract`` (the feature cache) and ``explain`` (Grad-CAM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from ..data.folders import expand_inputs
from ._app import (
    EXIT_ERROR,
    EXIT_PARTIAL,
    ModelOption,
    _json_line,
    _library_errors,
    _one_of,
    _shown,
    console,
    err_console,
)
from .precision import PRECISION_CHOICES, PRECISION_HELP, checked_precision

BATCH_HELP = ("Images per forward pass (default: as many as fit in 1 GiB, at most 64: 10 for the bundled model at "
              "640 px).")


@_library_errors
def classify(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Show the K most probable subtypes.")] = 1,
    batch_size: Annotated[int | None, typer.Option(min=1, help=BATCH_HELP)] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    plot: Annotated[Path | None, typer.Option(help="Write the prediction figure (image + probability bars) "
                                                   "of the first image to this PNG.")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average over the 8 flips and rotations (8x slower).")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write one JSON line per file here, in sorted path order, instead of printing; "
                            "resumable, and split over the processes under torchrun (docs/scale-out.md).")] = None,
    precision: Annotated[str, typer.Option(callback=_one_of(*PRECISION_CHOICES), help=PRECISION_HELP)] = "auto",
) -> None:
    """Classify images: organ and subtype from one forward pass. Unreadable files are listed, not fatal."""
    from ..inference.config import InferenceConfig
    from ..inference.models import resolve_model
    from ..inference.predict import classify_files

    config = InferenceConfig(batch_size=batch_size, tta=tta, precision=checked_precision(precision, device))
    if out is not None:
        _classify_to_file(inputs, model, device, config, out)
        return
    resolved = resolve_model(model, device=device)
    files, shown = _named_inputs(inputs)
    if plot is not None:
        _plot_prediction(files[0] if files else None, resolved, plot)
    results = classify_files(files, resolved, config=config)
    table = _prediction_table(top_k)
    seen = failed = 0
    for result in _with_progress(results, len(files), enabled=err_console.is_terminal and len(files) > 1):
        display = shown[seen]
        seen += 1
        failed += result.error is not None
        prediction = result.prediction
        if as_json:
            record = result.to_dict()
            if prediction is not None and top_k > 1:
                record["top_k"] = prediction.top_k(top_k)
            typer.echo(_json_line(record))
        elif prediction is None:
            table.add_row(_shown(display), "[red]error[/]", _shown(result.error or ""), "")
        else:
            others = [f"[dim]{_shown(s)} {p:.3f}[/]" for s, p in prediction.top_k(top_k) if s != prediction.subtype]
            subtype_cell = "\n".join([f"{_shown(prediction.subtype)} {prediction.subtype_probability:.3f}",
                                      *others[:top_k - 1]])
            table.add_row(_shown(display), f"{_shown(prediction.organ)} {prediction.organ_probability:.3f}",
                          subtype_cell, _status(prediction))
    if not as_json and seen:
        console.print(table)
    if seen == 0:
        err_console.print("[bold red]error:[/] no image files found in the given inputs")
        raise typer.Exit(EXIT_ERROR)
    if failed:
        err_console.print(f"{failed} of {seen} files could not be classified (listed above)")
        raise typer.Exit(EXIT_PARTIAL)

def _named_inputs(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """The files to classify and the names the table shows: relative to the folder given (with the folder's
    name in front when several inputs are given), files as given."""
    files: list[Path] = []
    shown: list[str] = []
    for item in inputs:
        if item.is_dir():
            found = list(expand_inputs([item]))
            prefix = f"{item.name}/" if len(inputs) > 1 else ""
            files += found
            shown += [prefix + f.relative_to(item).as_posix() for f in found]
        else:
            files.append(item)
            shown.append(str(item))
    return files, shown

def _prediction_table(top_k: int) -> Table:
    """Columns fold rather than cut names short, so the table reads at 80 columns."""
    columns = [Column("file", overflow="fold", ratio=3), Column("organ (P)", overflow="fold", ratio=1),
               Column("subtype (P, joint)" + ("; next best" if top_k > 1 else ""), overflow="fold", min_width=16),
               Column("status", overflow="fold", min_width=17)]
    return Table(*columns, show_edge=False, pad_edge=False)

def _with_progress(results: Any, total: int, *, enabled: bool) -> Any:
    """Yield ``results`` while a progress bar on stderr counts them (only on a terminal)."""
    if not enabled:
        yield from results
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task("classifying", total=total)
        for result in results:
            progress.advance(task)
            yield result

def _classify_to_file(inputs: list[Path], model: str | None, device: str, config: Any, out: Path) -> None:
    from ..distributed import classify_to_jsonl, finish, rank_and_world
    from ..inference.models import resolve_model

    rank, _ = rank_and_world()  # first: under torchrun this pins "cuda" to the rank's GPU
    try:
        summary = classify_to_jsonl(expand_inputs(inputs), resolve_model(model, device=device), out, config)
    finally:
        finish()
    if rank == 0:
        resumed = f", {summary.resumed} already done" if summary.resumed else ""
        console.print(f"wrote {out}: {summary.total} files, {summary.failed} failed{resumed} "
                      f"({summary.world} process{'es' if summary.world > 1 else ''})", highlight=False,
                      soft_wrap=True)
    if summary.failed:
        raise typer.Exit(EXIT_PARTIAL)

def _status(prediction: Any) -> str:
    """The status by its one name (:class:`multihead.Status`), coloured; why, when out of distribution."""
    status = str(prediction.status)
    if prediction.out_of_distribution:
        return f"[red]{status}[/] (out of distribution)"
    return {"organ_and_subtype": "[green]organ_and_subtype[/]", "organ_only": "[yellow]organ_only[/]"}.get(
        status, f"[red]{status}[/]")

def _plot_prediction(image_path: Path | None, model: Any, out: Path) -> None:
    from ..data.images import read_image
    from ..evaluation.plots import plot_prediction
    from ..inference.predict import classify as classify_image

    if image_path is None:
        raise ValueError("--plot needs at least one image")
    image = read_image(image_path)
    figure = plot_prediction(image, classify_image(image, model=model), taxonomy=model.taxonomy)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    err_console.print(f"wrote {out}")

@_library_errors
def extract(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    model: ModelOption = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder (default: $MULTIHEAD_CACHE).")] = None,
    views: Annotated[str, typer.Option(callback=_one_of("identity", "dihedral"),
                                       help="identity, or dihedral (all 8 flips and rotations).")] = "identity",
    batch_size: Annotated[int | None, typer.Option(min=1, help=BATCH_HELP)] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Fill the feature cache for training and evaluation; split over the processes under torchrun."""
    from ..data.views import VIEWS
    from ..distributed import extract_to_cache, finish, rank_and_world
    from ..inference.config import InferenceConfig
    from ..inference.models import resolve_model

    chosen = {"identity": ("identity",), "dihedral": VIEWS}.get(views)
    if chosen is None:
        raise ValueError(f"--views must be identity or dihedral, got {views!r}")
    files = list(expand_inputs(inputs))
    if not files:
        raise ValueError("no image files found in the given inputs")
    rank, _ = rank_and_world()
    try:
        summary = extract_to_cache(files, resolve_model(model, device=device), cache_dir,
                                   views=chosen, config=InferenceConfig(batch_size=batch_size))
    finally:
        finish()
    for _, reason in summary.failures:  # the reason names the file
        err_console.print(f"  {reason}", highlight=False, soft_wrap=True)
    if rank == 0:
        console.print(f"cached {summary.total - summary.failed} of {summary.total} files x {len(chosen)} "
                      f"view(s) ({summary.world} process{'es' if summary.world > 1 else ''})", highlight=False,
                      soft_wrap=True)
    if summary.failed:
        raise typer.Exit(EXIT_PARTIAL)

@_library_errors
def explain(
    image: Annotated[Path, typer.Argument(help="Image to explain.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write: the image and both heat maps.")],
    model: ModelOption = None,
) -> None:
    """Grad-CAM on the shared trunk: where the router saw the organ and the head saw the subtype."""
    from ..evaluation.plots import plot_explanation, pyplot
    from ..inference.explain import explain as explain_image

    explanation = explain_image(image, model=model)
    figure = plot_explanation(explanation)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    pyplot().close(figure)
    p = explanation.prediction
    console.print(f"{p.organ} / {p.subtype} ({p.status}); Grad-CAM on {explanation.layer}; wrote {out}",
                  highlight=False)
