"""The ``multihead`` command: a thin typer layer over the library.

Exit codes: 0 everything worked; 1 an error stopped the command (one line on stderr says why);
2 the command line was wrong; 3 the command ran but some inputs failed (listed in the output).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from .data.folders import expand_inputs

app = typer.Typer(
    name="multihead",
    help="One frozen trunk, a router over organs and a subtype head per organ: classify in one forward pass.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
_F = TypeVar("_F", bound=Callable[..., Any])

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Checkpoint (.safetensors). Default: $MULTIHEAD_MODEL, then the bundled model."),
]


def _library_errors(func: _F) -> _F:
    """Turn the library's plain errors into one line on stderr and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:  # click's Exit is a RuntimeError: let it through untouched
            raise
        except (ValueError, TypeError, RuntimeError, OSError) as err:  # escaped: "[serve]" is no markup
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_library_errors
def classify(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Show the K most probable subtypes.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    plot: Annotated[Path | None, typer.Option(help="Write the prediction figure (image + probability bars) "
                                                   "of the first image to this PNG.")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average over the 8 flips and rotations (8x slower).")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write one JSON line per file here, in sorted path order, instead of printing; "
                            "resumable, and split over the processes under torchrun (docs/scale-out.md).")] = None,
) -> None:
    """Classify images: organ and subtype from one forward pass. Unreadable files are listed, not fatal."""
    from .inference.config import InferenceConfig
    from .inference.models import resolve_model
    from .inference.predict import classify_files

    if out is not None:
        _classify_to_file(inputs, model, device, InferenceConfig(batch_size=batch_size, tta=tta), out)
        return
    resolved = resolve_model(model, device=device)
    if plot is not None:
        _plot_prediction(next(iter(expand_inputs(inputs)), None), resolved, plot)
    results = classify_files(expand_inputs(inputs), resolved, config=InferenceConfig(batch_size=batch_size, tta=tta))
    columns = [Column("file", overflow="fold"), "organ", "P(organ)", "subtype", "P(subtype)", "status"]
    table = Table(*columns, *(["top subtypes"] if top_k > 1 else []))
    seen = failed = 0
    for result in results:
        seen += 1
        failed += result.error is not None
        prediction = result.prediction
        if as_json:
            record = result.to_dict()
            if prediction is not None and top_k > 1:
                record["top_k"] = prediction.top_k(top_k)
            typer.echo(json.dumps(record))
        elif prediction is None:
            table.add_row(result.path, "[red]error[/]", "", result.error or "", "", "")
        else:
            extra = [", ".join(f"{s} {p:.2f}" for s, p in prediction.top_k(top_k))] if top_k > 1 else []
            table.add_row(result.path, prediction.organ, f"{prediction.organ_probability:.3f}",
                          prediction.subtype, f"{prediction.subtype_probability:.3f}", _status(prediction), *extra)
    if not as_json and seen:
        console.print(table)
    if seen == 0:
        err_console.print("[bold red]error:[/] no image files found in the given inputs")
        raise typer.Exit(EXIT_ERROR)
    if failed:
        err_console.print(f"{failed} of {seen} files could not be classified (listed above)")
        raise typer.Exit(EXIT_PARTIAL)


def _classify_to_file(inputs: list[Path], model: str | None, device: str, config: Any, out: Path) -> None:
    from .distributed import classify_to_jsonl, finish, rank_and_world
    from .inference.models import resolve_model

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


@app.command()
@_library_errors
def extract(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    model: ModelOption = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder (default: $MULTIHEAD_CACHE).")] = None,
    views: Annotated[str, typer.Option(help="identity, or dihedral (all 8 flips and rotations).")] = "identity",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Fill the feature cache for training and evaluation; split over the processes under torchrun."""
    from .data.views import VIEWS
    from .distributed import extract_to_cache, finish, rank_and_world
    from .inference.config import InferenceConfig
    from .inference.models import resolve_model

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


@app.command()
@_library_errors
def info(model: Annotated[str | None, typer.Argument(help="Checkpoint; default: the default model.")] = None) -> None:
    """Describe a checkpoint (taxonomy, trunk, preprocessing, training) without loading its tensors."""
    from .model.checkpoint import read_header
    from .model.locate import locate_model

    path = locate_model(model)
    header = read_header(path)
    trunk, taxonomy = header["trunk"], header["taxonomy"]
    console.print(f"[bold]{path}[/] (checkpoint format {header['format_version']})")
    console.print(f"trunk: {trunk['name']} ({trunk.get('source')}), weights "
                  f"{trunk.get('weights_id') or 'embedded'}, fingerprint {trunk['fingerprint'][:16]}..., "
                  f"{trunk['num_features']} features"
                  + (f" (pooled from {', '.join(trunk['stages'])} and the output)" if trunk.get("stages") else ""))
    console.print(f"preprocessing: {header['preprocessing'].describe()}")
    table = Table("organ", "display name", "subtypes")
    for organ in taxonomy.organs:
        table.add_row(organ.name, organ.display_name, ", ".join(organ.subtype_names))
    console.print(table)
    metadata = header["metadata"]
    if metadata.get("available_organs"):
        console.print(f"answers only: {', '.join(metadata['available_organs'])}")
    if "training" in metadata:
        console.print(f"training: {json.dumps(metadata['training'].get('config', {}))}", highlight=False)
    if metadata.get("metrics"):
        scores = Table("split", "images", "router accuracy", "subtype accuracy (end to end)", title="metrics")
        for split, values in metadata["metrics"].items():
            scores.add_row(split, str(metadata.get("counts", {}).get(split, "")),
                           f"{values['router_accuracy']:.4f}", f"{values['accuracy']:.4f}")
        console.print(scores)


@app.command()
@_library_errors
def export(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.safetensors) to export.", exists=True, dir_okay=False)],
    export_format: Annotated[str, typer.Option("--format", help="onnx: one graph that ONNX Runtime and OpenVINO "
                                                                "both read.")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: MODEL.onnx).")] = None,
    opset: Annotated[int, typer.Option(min=18, max=20, help="ONNX opset.")] = 18,
) -> None:
    """Export a checkpoint as one ONNX graph: uint8 images in; features, logits and joint log-probabilities out.

    The checkpoint's taxonomy, preprocessing and fingerprints travel in the file's metadata (docs/benchmarks.md).
    """
    from .inference.export import export_onnx
    from .model.checkpoint import load

    if export_format != "onnx":
        raise ValueError(f"--format must be onnx (OpenVINO reads the ONNX file as it is), got {export_format!r}")
    written = export_onnx(load(model), out or model.with_suffix(".onnx"), opset=opset)
    console.print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB, opset {opset})", highlight=False)


def _status(prediction: Any) -> str:
    if prediction.out_of_distribution:
        return "[red]out of distribution[/]"
    return {"organ_and_subtype": "ok", "organ_only": "[yellow]organ only[/]"}.get(prediction.status,
                                                                                  "[red]uncertain[/]")


def _plot_prediction(image_path: Path | None, model: Any, out: Path) -> None:
    from .data.images import read_image
    from .evaluation.plots import plot_prediction
    from .inference.predict import classify as classify_image

    if image_path is None:
        raise ValueError("--plot needs at least one image")
    image = read_image(image_path)
    figure = plot_prediction(image, classify_image(image, model=model), taxonomy=model.taxonomy)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    err_console.print(f"wrote {out}")


@app.command()
@_library_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="Checkpoint to evaluate.", exists=True, dir_okay=False)],
    data_dir: Annotated[Path, typer.Argument(help="Folder of <organ>/<subtype>/<image> files.", exists=True,
                                             file_okay=False)],
    report: Annotated[Path, typer.Option("--report", help="Folder for report.md, report.json and figures.")],
    split: Annotated[Path | None, typer.Option(help="Split file; without it every image is evaluated.",
                                               exists=True, dir_okay=False)] = None,
    subset: Annotated[str, typer.Option(help="train, val or test (with --split).")] = "test",
    compare: Annotated[list[Path] | None, typer.Option(help="Baseline checkpoints to put beside this model.",
                                                       exists=True, dir_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print report.json to stdout.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder.")] = None,
    ood: Annotated[Path | None, typer.Option(help="Folder of images that are none of the organs: report how "
                                                  "well the model rejects them (AUROC, FPR at 95% TPR).",
                                             exists=True, file_okay=False)] = None,
) -> None:
    """The paper's metrics per organ and subtype, beside the paper's numbers and any baselines."""
    from .data.splits import Split
    from .evaluation.evaluate import evaluate_folder
    from .evaluation.reports import markdown_report, write_report
    from .model.checkpoint import load

    chosen = Split.load(split) if split else None
    loaded = load(model)
    result, failures = evaluate_folder(loaded, data_dir, split=chosen, subset=subset, cache_dir=cache_dir)
    val_result = None
    if chosen is not None and subset == "test" and chosen.files("val"):
        val_result, _ = evaluate_folder(loaded, data_dir, split=chosen, subset="val", cache_dir=cache_dir)
    others = {}
    for path in compare or []:
        other = load(path)
        others[f"{path.stem} ({other.metadata.get('training', {}).get('config', {}).get('method', '?')})"] = (
            evaluate_folder(other, data_dir, split=chosen, subset=subset, cache_dir=cache_dir)[0])
    result["compare"] = others
    training = loaded.metadata.get("training", {})
    info = {"path": str(model), "trunk": loaded.trunk.name, "config": training.get("config", {})}
    text = markdown_report(result, title=f"Evaluation of {model.name}", model_info=info, val_report=val_result,
                           compare=others)
    if ood is not None:
        from .evaluation.trust import ood_report

        result["ood"] = ood_report(loaded, data_dir, ood, split=chosen, subset=subset, cache_dir=cache_dir)
        text += _ood_markdown(result["ood"], ood)
    written = write_report(report, result, loaded.taxonomy, history=loaded.metadata.get("history", []),
                           markdown=text)
    typer.echo(text)
    if as_json:
        typer.echo(json.dumps(result, default=float))
    err_console.print(f"wrote {len(written)} files to {report}")
    if failures:
        raise typer.Exit(EXIT_PARTIAL)


def _ood_markdown(report: dict[str, Any], folder: Path) -> str:
    return (f"\n## Out of distribution\n\n{report['n_out']} images from `{folder}` against {report['n_in']} "
            f"{report['subset']} images ({report['score']} score): AUROC {report['auroc']:.4f}, "
            f"FPR at 95 % TPR {100 * report['fpr_at_95_tpr']:.1f} %. At the model's threshold "
            f"({report['threshold']:.1f}) {100 * report['flagged_out']:.1f} % of them are flagged, and "
            f"{100 * report['flagged_in']:.1f} % of the {report['subset']} images.\n")


@app.command()
@_library_errors
def explain(
    image: Annotated[Path, typer.Argument(help="Image to explain.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write: the image and both heat maps.")],
    model: ModelOption = None,
) -> None:
    """Grad-CAM on the shared trunk: where the router saw the organ and the head saw the subtype."""
    from .evaluation.plots import plot_explanation, pyplot
    from .inference.explain import explain as explain_image

    explanation = explain_image(image, model=model)
    figure = plot_explanation(explanation)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    pyplot().close(figure)
    p = explanation.prediction
    console.print(f"{p.organ} / {p.subtype} ({p.status}); Grad-CAM on {explanation.layer}; wrote {out}",
                  highlight=False)


@app.command()
@_library_errors
def serve(
    model: ModelOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server, which has no "
                                           "authentication, to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body in MiB (413 above).")] = 32.0,
    max_pixels: Annotated[int, typer.Option(min=1, help="Largest image, width x height, from its header (422 "
                                                        "above).")] = 40_000_000,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Most images in one forward pass, across requests "
                                                            "(default: 1, 2, 4 or 8, the fastest, timed at start).")
                         ] = None,
    batch_wait_ms: Annotated[float, typer.Option(min=0.0, max=1000.0, help="How long the first image of a batch "
                                                                           "waits for others.")] = 5.0,
) -> None:
    """Web page and HTTP API: upload images, see organ, subtype, probabilities and Grad-CAM (docs/serve.md)."""
    from .serve import ServeSettings, run_server

    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                             max_queue=max(ServeSettings.max_queue, max_batch or 0))
    run_server(model, host=host, port=port, device=device, settings=settings)  # MissingExtraError: a RuntimeError


@app.command()
@_library_errors
def benchmark(
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    batch_size: Annotated[list[int] | None, typer.Option("--batch-size", "-b", min=1,
                                                         help="Images per batch; repeat for several.")] = None,
    precision: Annotated[list[str] | None, typer.Option(help="fp32, bf16 or fp16; repeat for several.")] = None,
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
                                                           "(default: torch). Only torch runs the baselines.")] = None,
) -> None:
    """Images per second of one fused pass against eight separate models, a router cascade and the bare trunk.

    Random weights, nothing downloaded; all systems on the same device at the same settings.
    """
    from .benchmark import SYSTEMS, run_benchmark, summarize
    from .inference.config import InferenceConfig

    if channels_last is None:
        channels_last = bool(InferenceConfig().resolve(device).channels_last)
    table = Table("system", "precision", "channels_last", "compiled", "batch", "images/s", "p50 ms", "spread")

    def show(row: dict[str, Any]) -> None:
        name = row["system"] if row["backend"] == "torch" else f"{row['system']} ({row['backend']})"
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
                               image_size=image_size, warmup=warmup, repeats=repeats, backends=backend or ["torch"],
                               callback=show)
    machine = report["machine"]
    table.title = (f"{machine.get('gpu') or machine['cpu_model']}, {report['cpu_count']} CPUs, "
                   f"torch {report['torch']}, {image_size} px")
    console.print(table)
    for entry in summarize(report):
        ratios = ", ".join(f"{k.removeprefix('multihead_over_')} x{v:.2f}" for k, v in entry.items()
                           if k.startswith("multihead_over_"))
        if ratios:
            console.print(f"multihead vs {ratios} ({entry['backend']}, {entry['precision']}, "
                          f"batch {entry['batch_size']})")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {json_path}")


def main() -> None:  # pragma: no cover - console script entry point
    app()


@app.command()
@_library_errors
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of <organ>/<subtype>/<image> files.", exists=True,
                                             file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors).")],
    trunk: Annotated[str, typer.Option(help="torchvision or timm model name.")] = "resnet18",
    trunk_weights: Annotated[str, typer.Option(help="imagenet, none, a weights id, or a local file.")] = "imagenet",
    preset: Annotated[str, typer.Option(help="default (best measured) or paper (Adam 1e-3, batch 32, 4 epochs).")
                      ] = "default",
    method: Annotated[str | None, typer.Option(help="multihead, per-organ (the paper) or flat (26-way).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    lr: Annotated[float | None, typer.Option(min=0.0)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    views: Annotated[str | None, typer.Option(
        help="identity, dihedral (cached flip/rotation views), or augmented (online: the paper's rotation, "
             "flips and scaling through the trunk, a fresh view per epoch).")] = None,
    image_size: Annotated[int | None, typer.Option(min=8, help="Input side in pixels.")] = None,
    stages: Annotated[str | None, typer.Option(
        help="Earlier trunk stages whose pooled outputs join the features: auto (the default preset), none, "
             "or module names joined by commas (features.13,features.16).")] = None,
    split: Annotated[Path | None, typer.Option(help="Reuse a split file (JSON).", exists=True, dir_okay=False)
                     ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder.")] = None,
    taxonomy: Annotated[str, typer.Option(help="multi-cancer, or from-folders to define it from the folders.")
                        ] = "multi-cancer",
) -> None:
    """Train the router and heads on cached features of a frozen trunk; writes the checkpoint and its split."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .model.checkpoint import save
    from .training.config import PRESETS
    from .training.pipeline import save_split_next_to, train_from_folder

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    config = PRESETS[preset].override(method=method, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                      views=views, image_size=image_size, stages=stages)
    weights = None if trunk_weights.lower() == "none" else trunk_weights
    epochs_table = Table("part", "epoch", "train loss", "train router", "train acc", "val loss", "val router",
                         "val acc", "", title="training")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[rate]}"))
    with Progress(*columns, console=err_console, transient=True) as progress:
        tasks: dict[str, tuple[Any, float]] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            import time

            if name not in tasks:
                tasks[name] = (progress.add_task(name, total=total, rate=""), time.perf_counter())
            task, started = tasks[name]
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=done, rate=f"{rate:.0f} images/s")

        def on_epoch(record: dict[str, Any]) -> None:
            tr, va = record["train"], record.get("val", {})
            cells = [f"{tr['loss']:.3f}", f"{tr['router_accuracy']:.3f}", f"{tr['accuracy']:.3f}"]
            cells += [f"{va[k]:.3f}" for k in ("loss", "router_accuracy", "accuracy")] if va else ["", "", ""]
            best = "best" if record.get("best") else ""
            epochs_table.add_row(str(record["part"]), str(record["epoch"]), *cells, best)

        result = train_from_folder(
            data_dir, config=config, trunk=trunk, trunk_weights=weights,
            taxonomy="from-folders" if taxonomy == "from-folders" else None, split=split, cache_dir=cache_dir,
            on_stage=lambda text: err_console.print(text), on_progress=on_progress, on_epoch=on_epoch)
    console.print(epochs_table)
    if result.failures:
        err_console.print(f"skipped {len(result.failures)} unreadable files:")
        for relpath, reason in result.failures:
            err_console.print(f"  {relpath}: {reason}", highlight=False)
    save(result.model, out)
    split_path = save_split_next_to(out, result.split)
    metrics = result.model.metadata["metrics"]
    console.print(f"wrote {out} and {split_path}; " + ", ".join(
        f"{name} accuracy {m['accuracy']:.3f}" for name, m in metrics.items()))
