"""Checkpoints from the command line: ``info`` (the header, without tensors), ``export`` (ONNX) and
``evaluate`` (the paper's metrics and the report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..model.records import read_metadata
from ._app import (
    EXIT_PARTIAL,
    _library_errors,
    _one_of,
    _shown,
    console,
    err_console,
)
from .precision import PRECISION_CHOICES, PRECISION_HELP, auto_line, checked_precision, guard_table


@_library_errors
def info(model: Annotated[str | None, typer.Argument(help="Checkpoint; default: the default model.")] = None) -> None:
    """Describe a checkpoint (taxonomy, trunk, preprocessing, training) without loading its tensors."""
    from ..model.checkpoint import read_header
    from ..model.locate import locate_model
    from ..model.trunk_specs import TOKENS

    path = locate_model(model)
    header = read_header(path)  # checked against the header schema: every field below has its type
    trunk, taxonomy = header["trunk"], header["taxonomy"]
    stages = f" (pooled from {_shown(', '.join(trunk['stages']))} and the output)" if trunk.get("stages") else ""
    if trunk.get("stages") == [TOKENS]:
        stages = " (its class token and the mean of its patch tokens)"
    console.print(f"[bold]{_shown(path)}[/] (checkpoint format {header['format_version']})", highlight=False)
    console.print(f"trunk: {_shown(trunk['name'])} ({_shown(trunk.get('source'))}), weights "
                  f"{_shown(trunk.get('weights_id') or 'embedded')}, fingerprint {trunk['fingerprint'][:16]}..., "
                  f"{trunk['num_features']} features{stages}", highlight=False)
    if trunk.get("hub"):
        hub = trunk["hub"]
        where = "embedded" if trunk["embedded"] else "read from the local Hugging Face cache, never downloaded"
        weights = f"{hub['file']} (sha256 {hub['sha256'][:16]}...)" if hub.get("file") else "not its repository's"
        console.print(f"from the hub: {_shown(hub['id'])} at revision {hub['revision'][:12]}, weights "
                      f"{_shown(weights)}, {where}; licence {_shown(hub.get('licence') or 'not stated')}",
                      highlight=False)
    if trunk.get("tuned_from"):
        console.print(f"tuned: the trunk's stages from {_shown(trunk['tuned_from'])} up were trained with the heads "
                      "(embedded weights); the stages below are the published weights, frozen", highlight=False)
    console.print(f"preprocessing: {_shown(header['preprocessing'].describe())}", highlight=False)
    table = Table("organ", "display name", "subtypes")
    for organ in taxonomy.organs:
        table.add_row(_shown(organ.name), _shown(organ.display_name), _shown(", ".join(organ.subtype_names)))
    console.print(table)
    metadata = header["metadata"]
    record = read_metadata(metadata)
    if record.available_organs:
        console.print(f"answers only: {_shown(', '.join(record.available_organs))}", highlight=False)
    if record.training is not None:
        settings = record.training.config or {}
        if settings.get("tune_from", "none") == "none":  # a frozen trunk: the tuning settings were never used
            settings = {k: v for k, v in settings.items() if not k.startswith("tune_") or k == "tune_from"}
        config = json.dumps(settings, default=str)
        console.print(f"training: {_shown(config)}", highlight=False, soft_wrap=True)
    if record.metrics:
        scores = Table("split", "images", "router accuracy", "subtype accuracy (end to end)", title="metrics")
        counts = record.counts or {}
        for split, values in record.metrics.items():
            scores.add_row(_shown(split), str(counts.get(split, "")),
                           f"{values.router_accuracy:.4f}", f"{values.accuracy:.4f}")
        console.print(scores)
    from ..evaluation.trust_state import describe_trust  # the trust state: thresholds, calibration, OOD
    for line in describe_trust(record):
        console.print(_shown(line), highlight=False, soft_wrap=True)
    guard = guard_table(metadata)  # reduced precision: what was measured, and what auto runs on this machine
    if guard is not None:
        console.print(guard)
    console.print(_shown(auto_line(metadata, trunk, header["preprocessing"])), highlight=False, soft_wrap=True)

@_library_errors
def export(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.safetensors) to export.", exists=True, dir_okay=False)],
    export_format: Annotated[str, typer.Option("--format", callback=_one_of("onnx"), help="onnx: one graph that "
                                               "ONNX Runtime and OpenVINO both read.")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: MODEL.onnx).")] = None,
    opset: Annotated[int, typer.Option(min=18, max=20, help="ONNX opset.")] = 18,
) -> None:
    """Export a checkpoint as one ONNX graph: uint8 images in; features, logits and joint log-probabilities out.

    The checkpoint's taxonomy, preprocessing and fingerprints travel in the file's metadata (docs/benchmarks.md).
    """
    from ..inference.export import export_onnx
    from ..model.checkpoint import load

    if export_format != "onnx":
        raise ValueError(f"--format must be onnx (OpenVINO reads the ONNX file as it is), got {export_format!r}")
    written = export_onnx(load(model), out or model.with_suffix(".onnx"), opset=opset)
    console.print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB, opset {opset})", highlight=False)

@_library_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="Checkpoint to evaluate.", exists=True, dir_okay=False)],
    data_dir: Annotated[list[Path], typer.Argument(
        help="Folders of <organ>/<subtype>/<image> files (several: as the model was trained on them).",
        exists=True, file_okay=False)],
    report: Annotated[Path, typer.Option("--report", help="Folder for report.md, report.json and figures.")],
    split: Annotated[Path | None, typer.Option(help="Split file; without it every image is evaluated.",
                                               exists=True, dir_okay=False)] = None,
    subset: Annotated[str, typer.Option(help="train, val or test (with --split).")] = "test",
    compare: Annotated[list[Path] | None, typer.Option(help="Baseline checkpoints to put beside this model.",
                                                       exists=True, dir_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print report.json to stdout.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder.")] = None,
    ood: Annotated[Path | None, typer.Option(
        help="Folder of images that are none of the subtypes, one folder per group (as shared/data/near-ood): per "
             "group, the share flagged and the share still given an organ or a subtype, AUROC and FPR at 95% TPR.",
        exists=True, file_okay=False)] = None,
    precision: Annotated[str, typer.Option(callback=_one_of(*PRECISION_CHOICES), help=PRECISION_HELP)] = "auto",
) -> None:
    """The paper's metrics per organ and subtype, beside the paper's numbers and any baselines."""
    from ..data.splits import Split
    from ..evaluation.evaluate import evaluate_folder
    from ..evaluation.reports import markdown_report, write_report
    from ..inference.config import InferenceConfig
    from ..model.checkpoint import load

    config = InferenceConfig(precision=checked_precision(precision, "cpu"))
    chosen = Split.load(split) if split else None
    loaded = load(model)
    err_console.print(f"trunk precision: {config.resolve('cpu', loaded).precision}", highlight=False)
    result, failures = evaluate_folder(loaded, data_dir, split=chosen, subset=subset, cache_dir=cache_dir,
                                       config=config)
    val_result = None
    if chosen is not None and subset == "test" and chosen.files("val"):
        val_result, _ = evaluate_folder(loaded, data_dir, split=chosen, subset="val", cache_dir=cache_dir,
                                        config=config)
    others = {}
    for path in compare or []:
        other = load(path)
        others[f"{path.stem} ({_training_config(other.metadata).get('method', '?')})"] = (
            evaluate_folder(other, data_dir, split=chosen, subset=subset, cache_dir=cache_dir, config=config)[0])
    result["compare"] = others
    info = {"path": str(model), "trunk": loaded.trunk.name, "config": _training_config(loaded.metadata)}
    text = markdown_report(result, title=f"Evaluation of {model.name}", model_info=info, val_report=val_result,
                           compare=others)
    if ood is not None:
        from ..evaluation.reports import near_ood_markdown
        from ..evaluation.trust import ood_report

        result["ood"] = ood_report(loaded, data_dir, ood, split=chosen, subset=subset, cache_dir=cache_dir)
        text += near_ood_markdown(result["ood"])
    written = write_report(report, result, loaded.taxonomy, history=loaded.metadata.get("history", []),
                           markdown=text)
    from ..model.metadata import printable  # the checkpoint's strings are data: no terminal codes reach stdout

    typer.echo("\n".join(printable(line) for line in text.splitlines()))
    if as_json:
        typer.echo(json.dumps(result, default=float))
    err_console.print(f"wrote {len(written)} files to {report}")
    for _, reason in failures:  # unreadable, or never read (a FIFO, a device): one line each, naming the file
        err_console.print(f"  skipped {_shown(reason)}", highlight=False, soft_wrap=True)
    skipped = [reason for _, reason in (result.get("ood") or {}).get("skipped", [])]
    for reason in skipped:  # the reason names the file
        err_console.print(f"  skipped: {_shown(reason)}", highlight=False, soft_wrap=True)
    if failures or skipped:
        raise typer.Exit(EXIT_PARTIAL)


def _training_config(metadata: dict) -> dict:
    """The settings a model was trained with (empty for a model that records none)."""
    training = read_metadata(metadata).training
    return (training.config if training else None) or {}
