"""``multihead train``: the pipeline from a folder, with progress bars on a terminal and plain lines
when piped."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..model.records import read_metadata
from ..model.trunk_specs import HUB_PREFIX, trunk_help
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

def _train(
    data_dir: Annotated[list[Path], typer.Argument(
        help="Folders of <organ>/<subtype>/<image> files; several are trained on as their union.", exists=True,
        file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors).")],
    trunk: Annotated[str, typer.Option(help=trunk_help())] = "resnet18",
    trunk_weights: Annotated[str, typer.Option(help="imagenet (the trunk's published weights; an hf-hub: trunk's own), "
                                                    "none, a weights id, or a local file.")] = "imagenet",
    embed_trunk: Annotated[bool, typer.Option(
        "--embed-trunk", help="Store the trunk's weights in the checkpoint even when they are published, for a "
                              "self-contained file (an hf-hub: trunk is otherwise referenced by id, revision and "
                              "sha256, and read from the local Hugging Face cache when loaded).")] = False,
    preset: Annotated[str, typer.Option(help="default (best measured) or paper (Adam 1e-3, batch 32, 4 epochs); "
                                             "the options below change it.")] = "default",
    split: Annotated[Path | None, typer.Option(help="Reuse a split file (JSON).", exists=True, dir_okay=False)
                     ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder.")] = None,
    taxonomy: Annotated[str, typer.Option(help="multi-cancer, or from-folders to define it from the folders.")
                        ] = "multi-cancer",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N: where to train (tuning is what a GPU speeds up).")
                      ] = "cpu",
    **settings: Any,
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
    if "abstain" in settings:  # the flag --no-abstain: set means False, unset leaves the preset's
        settings["abstain"] = False if settings["abstain"] else None
    try:  # options that cannot go together are a wrong command line (exit 2), like an unknown option
        config = PRESETS[preset].override(**settings)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    weights = None if trunk_weights.lower() == "none" else trunk_weights
    if trunk.startswith(HUB_PREFIX):
        config = _check_hub_trunk(trunk, weights, config, image_size_given=settings.get("image_size") is not None)
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
    from ..evaluation.evaluate import NOT_REGULAR  # left out by the scan, never opened: a FIFO would block for ever

    unreadable = [*result.failures, *((relpath, f"{NOT_REGULAR} (a FIFO, a device or a broken link): not read")
                                      for relpath, reason in result.scan.skipped if reason == NOT_REGULAR)]
    if unreadable:
        err_console.print(f"skipped {len(unreadable)} unreadable files:")
        for relpath, reason in unreadable:
            err_console.print(f"  {relpath}: {reason}", highlight=False, markup=False)
    save(result.model, out, embed_trunk=True if embed_trunk else None)
    split_path = save_split_next_to(out, result.split)
    metrics = read_metadata(result.model.metadata).metrics or {}
    console.print(f"wrote {out} and {split_path}; " + ", ".join(
        f"{name} accuracy {m.accuracy:.3f}" for name, m in metrics.items()))


def _check_hub_trunk(trunk: str, weights: str | None, config: Any, *, image_size_given: bool) -> Any:
    """A trunk from the hub, checked before anything runs: not in the cache, a revision it does not hold, no pretrained
    config, an architecture timm cannot build or a cut to tune from are a wrong command line (exit 2). Unless
    --image-size is given, the trunk's own input size is used (the presets' 640 px were chosen for the CNNs)."""
    from dataclasses import replace

    from ..model.trunk import WeightsUnavailableError, check_hub_trunk
    from ..model.trunk_split import tuning_refusal

    try:
        check_hub_trunk(trunk, weights=weights, stages=config.trunk_stages)
    except (ValueError, WeightsUnavailableError) as err:
        raise typer.BadParameter(str(err), param_hint="'--trunk'") from None
    if config.tune_from != "none":
        raise typer.BadParameter(str(tuning_refusal(trunk)).replace("tune_from='none'", "--tune-from none"),
                                 param_hint="'--tune-from'")
    return config if image_size_given else replace(config, image_size=None)


def _setting_options() -> list[inspect.Parameter]:
    """One option per setting of :class:`~multihead.training.config.TrainConfig` that the command line offers, from
    its declaration: ``--name`` (``--no-abstain`` for the one flag), its help, its choices or bounds; unset, the
    preset's value stands."""
    from ..training.config import option_specs

    parameters = []
    for spec in option_specs():
        if spec.type is bool:  # abstain: on by default, so the option turns it off
            option = typer.Option(f"--no-{spec.name.replace('_', '-')}", help=spec.help)
            annotation, default = Annotated[bool, option], False
        else:
            extra: dict[str, Any] = {"help": spec.help}
            if spec.choices:
                extra["callback"] = _one_of(*spec.choices)
            if spec.type is not str and spec.low is not None:
                extra["min"] = spec.low
            if spec.type is not str and spec.high is not None:
                extra["max"] = spec.high
            annotation, default = Annotated[spec.type | None, typer.Option(**extra)], None  # type: ignore[operator]
        parameters.append(inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
    return parameters


def _with_settings(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with the settings' options in its signature, so that typer (and docs/gen_cli.py) sees them."""
    fixed = [p for p in inspect.signature(command, eval_str=True).parameters.values()
             if p.kind != inspect.Parameter.VAR_KEYWORD]
    signature = inspect.Signature([*fixed, *_setting_options()])

    @_library_errors
    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        command(**kwargs)

    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    del wrapper.__wrapped__  # typer must read the signature above, not _train's
    wrapper.__name__ = "train"
    return wrapper


train = _with_settings(_train)
