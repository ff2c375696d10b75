"""``multihead train``: the pipeline from a folder, with progress bars on a terminal and plain lines
when piped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ._app import (
    _library_errors,
    _one_of,
    console,
    err_console,
)


def _plain_progress(every_s: float = 5.0) -> Callable[[str, int, int], None]:
    """A progress callback that prints a plain line when a task starts, every ``every_s`` seconds, and at
    its end: what a log file or a pipe can show of a progress bar."""
    import time

    started: dict[str, float] = {}
    last: dict[str, float] = {}

    def line(name: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if name not in started:
            started[name], last[name] = now, now
            err_console.print(f"{name}: 0/{total}", highlight=False)
            return
        if done < total and now - last[name] < every_s:
            return
        last[name] = now
        rate = done / max(now - started[name], 1e-9)
        err_console.print(f"{name}: {done}/{total} ({rate:.0f} images/s)", highlight=False)

    return line

@_library_errors
def train(
    data_dir: Annotated[list[Path], typer.Argument(
        help="Folders of <organ>/<subtype>/<image> files; several are trained on as their union.", exists=True,
        file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors).")],
    trunk: Annotated[str, typer.Option(help="torchvision or timm model name.")] = "resnet18",
    trunk_weights: Annotated[str, typer.Option(help="imagenet, none, a weights id, or a local file.")] = "imagenet",
    preset: Annotated[str, typer.Option(help="default (best measured) or paper (Adam 1e-3, batch 32, 4 epochs).")
                      ] = "default",
    method: Annotated[str | None, typer.Option(callback=_one_of("multihead", "per-organ", "flat"),
                                               help="multihead, per-organ (the paper) or flat (26-way).")] = None,
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
    target_accuracy: Annotated[float | None, typer.Option(
        min=0.5, max=1.0, help="Accuracy asked of the answers kept in full (default 0.99), certified at 95% "
                               "confidence when the validation split is large enough, else by plain validation "
                               "accuracy (docs/trust.md).")] = None,
    no_abstain: Annotated[bool, typer.Option("--no-abstain", help="Keep every answer (thresholds 0); images "
                                                                  "out of distribution are still flagged.")] = False,
    min_covered_images: Annotated[int | None, typer.Option(
        min=1, help="Training images an organ needs to be claimed (default 50); answers naming an organ with "
                    "fewer are 'uncertain'.")] = None,
    tune_from: Annotated[str | None, typer.Option(
        help="Tune the shared trunk's top jointly with the heads: none (frozen, the default), auto (the last "
             "stages: MobileNetV2 features.14, ResNet layer4), a module name to tune from, or stem (the whole "
             "trunk; best on a GPU). Below it the trunk stays frozen and its maps are cached.")] = None,
    tune_epochs: Annotated[int | None, typer.Option(min=1, help="Epochs of tuning (after the heads' warm-up).")
                           ] = None,
    tune_patience: Annotated[int | None, typer.Option(
        min=1, help="Stop tuning after this many epochs without a better one (default: every epoch runs; the "
                    "best on validation is kept either way).")] = None,
    tune_lr: Annotated[float | None, typer.Option(min=0.0, help="AdamW learning rate of the tuned stages.")] = None,
    tune_head_lr: Annotated[float | None, typer.Option(
        min=0.0, help="AdamW learning rate of the router and heads while the stages are tuned.")] = None,
    tune_batchnorm: Annotated[str | None, typer.Option(
        callback=_one_of("train", "frozen", "adapted"),
        help="BatchNorm of the tuned stages: train (batch statistics while tuning, the default), frozen "
             "(ImageNet's statistics), or adapted (first re-estimated on the training maps and the heads warmed "
             "up again, then as train; docs/training.md).")] = None,
    tune_views: Annotated[str | None, typer.Option(
        callback=_one_of("none", "flips", "dihedral"),
        help="Views of the cached maps while tuning: none, flips (the default) or dihedral (flips and "
             "90-degree rotations).")] = None,
    tune_precision: Annotated[str | None, typer.Option(
        callback=_one_of("auto", "fp32", "bf16"),
        help="Arithmetic of the tuning steps: auto (the default: bf16 where the device computes it in hardware, "
             "CUDA or a CPU with AVX-512 BF16 or AMX; fp32 elsewhere), fp32 or bf16. Evaluation stays fp32.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N: where to train (tuning is what a GPU speeds up).")
                      ] = "cpu",
) -> None:
    """Train the router and heads on cached features of a frozen trunk (or, with --tune-from, the trunk's top
    stages with them); writes the checkpoint and its split.

    DATA_DIR may be the download folder itself: folders that hold only one folder are walked down. Several
    folders are read as one data set (a folder given twice is read once; each file is named by its folder's
    name in the split), so evaluate them together too: multihead evaluate MODEL DIR1 DIR2 --split ...
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..model.checkpoint import save
    from ..model.trunk import WeightsUnavailableError
    from ..training.config import PRESETS
    from ..training.pipeline import save_split_next_to, train_from_folder

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    try:  # options that cannot go together are a wrong command line (exit 2), like an unknown option
        config = PRESETS[preset].override(method=method, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                          views=views, image_size=image_size, stages=stages,
                                          target_accuracy=target_accuracy, abstain=False if no_abstain else None,
                                          min_covered_images=min_covered_images,
                                          tune_from=tune_from, tune_epochs=tune_epochs, tune_patience=tune_patience,
                                          tune_lr=tune_lr, tune_head_lr=tune_head_lr, tune_batchnorm=tune_batchnorm,
                                          tune_views=tune_views, tune_precision=tune_precision)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    weights = None if trunk_weights.lower() == "none" else trunk_weights
    epochs_table = Table("part", "epoch", "train loss", "train router", "train acc", "val loss", "val router",
                         "val acc", "", title="training")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[rate]}"))
    plain = not err_console.is_terminal  # piped or logged: rich draws nothing there, so print lines
    with Progress(*columns, console=err_console, transient=True, disable=plain) as progress:
        tasks: dict[str, tuple[Any, float]] = {}
        progress_line = _plain_progress()

        def on_progress(name: str, done: int, total: int) -> None:
            import time

            if plain:
                progress_line(name, done, total)
                return
            if name not in tasks:
                tasks[name] = (progress.add_task(name, total=total, rate=""), time.perf_counter())
            task, started = tasks[name]
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=done, rate=f"{rate:.0f} images/s")

        def on_epoch(record: dict[str, Any]) -> None:
            tr, va = record["train"], record.get("val", {})
            keys = ("loss", "router_accuracy", "accuracy")  # a tuning epoch reports its training loss only
            cells = [f"{part[k]:.3f}" if k in part else "" for part in (tr, va) for k in keys]
            best = "best" if record.get("best") else ""
            epochs_table.add_row(str(record["part"]), str(record["epoch"]), *cells, best)
            if plain:
                err_console.print(f"{record['part']} epoch {record['epoch']}: train loss {cells[0]}, val acc "
                                  f"{cells[5] or '-'} {best}".rstrip(), highlight=False, soft_wrap=True)

        try:
            result = train_from_folder(
                data_dir, config=config, trunk=trunk, trunk_weights=weights,
                taxonomy="from-folders" if taxonomy == "from-folders" else None, split=split, cache_dir=cache_dir,
                device=device, on_stage=lambda text: err_console.print(text, highlight=False, soft_wrap=True),
                on_progress=on_progress, on_epoch=on_epoch)
        except WeightsUnavailableError as err:  # the library's advice names its Python argument: say the option
            raise WeightsUnavailableError(str(err).replace("trunk_weights=", "--trunk-weights ")) from None
    if not plain:  # piped, each epoch was printed as it ended: the table would say it all again
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
