"""Figures and Markdown from computed numbers: ``plot_*(..., ax=None)`` draws, ``write_report`` saves.

matplotlib is imported inside the functions (headless ``Agg``), so importing multihead never needs it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .inference import Prediction
from .taxonomy import Taxonomy

__all__ = ["markdown_report", "plot_confusion_matrix", "plot_history", "plot_prediction", "write_report"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], *, ax: Any = None,
                          title: str = "") -> Any:
    """A confusion-matrix heat map (rows: true, columns: predicted) with counts in the cells."""
    plt = _pyplot()
    if ax is None:
        size = max(4.0, 0.45 * len(labels) + 2)
        _, ax = plt.subplots(figsize=(size, size))
    counts = [list(row) for row in matrix]
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in counts if row), default=0)
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > peak / 2 else "black")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_history(history: Sequence[dict[str, Any]], *, axes: Any = None, part: str | None = None) -> Any:
    """Training and validation loss and accuracy per epoch (one part of the history: a method or a head)."""
    plt = _pyplot()
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4))
    part = part or (history[0]["part"] if history else None)
    rows = [h for h in history if h.get("part") == part]
    epochs = [h["epoch"] for h in rows]
    key = "accuracy_given_organ" if str(part).startswith("head:") else (
        "router_accuracy" if part == "router" else "accuracy")
    for split, style in (("train", "-o"), ("val", "--s")):
        if all(split in h for h in rows):
            axes[0].plot(epochs, [h[split]["loss"] for h in rows], style, label=split)
            axes[1].plot(epochs, [h[split][key] for h in rows], style, label=split)
    axes[0].set(xlabel="epoch", ylabel="loss", title=f"{part}: loss")
    axes[1].set(xlabel="epoch", ylabel=key.replace("_", " "), title=f"{part}: accuracy")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    return axes


def plot_prediction(image: Any, prediction: Prediction, *, taxonomy: Taxonomy | None = None, fig: Any = None,
                    top_k: int = 8) -> Any:
    """The paper's prediction figure: the image beside bar charts of organ and subtype probabilities."""
    plt = _pyplot()
    if fig is None:
        fig = plt.figure(figsize=(13, 4.2))
    ax_image, ax_organs, ax_subtypes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1, 1.3]})
    ax_image.imshow(image)
    ax_image.axis("off")
    name = lambda n: taxonomy.display_name(n) if taxonomy else n  # noqa: E731
    ax_image.set_title(f"{name(prediction.subtype)}\nP = {prediction.subtype_probability:.3f}", fontsize=10)
    organs = sorted(prediction.organ_probabilities.items(), key=lambda kv: kv[1])
    ax_organs.barh([o for o, _ in organs], [p for _, p in organs],
                   color=["tab:red" if o == prediction.organ else "tab:gray" for o, _ in organs])
    ax_organs.set(xlim=(0, 1), title="organ (router)", xlabel="probability")
    top = sorted(prediction.top_k(top_k), key=lambda kv: kv[1])
    ax_subtypes.barh([s for s, _ in top], [p for _, p in top],
                     color=["tab:red" if s == prediction.subtype else "tab:blue" for s, _ in top])
    ax_subtypes.set(xlim=(0, 1), title="subtype (joint probability)", xlabel="probability")
    fig.tight_layout()
    return fig


def _pct(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def markdown_report(report: dict[str, Any], *, title: str = "Evaluation", model_info: dict[str, Any] | None = None,
                    val_report: dict[str, Any] | None = None,
                    compare: dict[str, dict[str, Any]] | None = None) -> str:
    """A Markdown page: the paper's Table 1 with our columns beside it, then router and per-subtype tables."""
    info = model_info or {}
    config = info.get("config", {})
    compare = compare or {}
    lines = [f"# {title}", ""]
    if info:
        lines += [f"Model: `{info.get('path', '')}`, trunk `{info.get('trunk', '')}`, method "
                  f"`{config.get('method', 'multihead')}`. Images evaluated: {report['n_images']} "
                  f"({report.get('subset', 'all')}).", ""]
    head = ["organ", "batch size", "learning rate", "epochs", "n (test)", "validation accuracy",
            "test accuracy (end to end) [95% CI]", "test accuracy, organ given", "paper test accuracy"]
    head += [f"{name}: organ given" for name in compare]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for organ, entry in report["organs"].items():
        val = (val_report or {}).get("organs", {}).get(organ, {})
        ci = entry.get("accuracy_ci95")
        cells = [organ, str(config.get("batch_size", "")), str(config.get("lr", "")), str(config.get("epochs", "")),
                 str(entry["n"]), _pct(val.get("accuracy")),
                 f"{_pct(entry.get('accuracy'))} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "n/a",
                 _pct(entry.get("accuracy_given_organ")), _pct(report.get("paper", {}).get(organ))]
        cells += [_pct(other["organs"].get(organ, {}).get("accuracy_given_organ")) for other in compare.values()]
        lines.append("| " + " | ".join(cells) + " |")
    router, overall = report["router"], report["overall"]
    lines += [
        "",
        f"Router (organ) accuracy: **{_pct(router['accuracy'])} %** (95% CI {_pct(router['accuracy_ci95'][0])}"
        f"-{_pct(router['accuracy_ci95'][1])}), macro F1 {router['macro_f1']:.3f}.",
        f"Overall 26-way accuracy (one forward pass): **{_pct(overall['accuracy'])} %**, macro F1 "
        f"{overall['macro_f1']:.3f}, expected calibration error of the joint probability {overall['ece']:.3f}.",
        "",
    ]
    for name, other in compare.items():
        lines.append(f"{name}: router {_pct(other['router']['accuracy'])} %, overall "
                     f"{_pct(other['overall']['accuracy'])} %, ECE {other['overall']['ece']:.3f}.")
    lines += ["", "| subtype | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, entry in report["subtypes"].items():
        lines.append(f"| {name} | {entry['precision']:.3f} | {entry['recall']:.3f} | {entry['f1']:.3f} | "
                     f"{entry['support']} |")
    empty = [o for o, e in report["organs"].items() if e["n"] == 0]
    if empty:
        lines += ["", f"No test images for: {', '.join(empty)} (not measured)."]
    if report.get("skipped"):
        lines += ["", f"Skipped {len(report['skipped'])} unreadable files (listed in report.json)."]
    return "\n".join(lines) + "\n"


def write_report(directory: str | os.PathLike, report: dict[str, Any], taxonomy: Taxonomy, *,
                 history: Sequence[dict[str, Any]] = (), markdown: str = "") -> list[Path]:
    """Write ``report.json``, ``report.md`` and the figures (PNG) into ``directory``; returns the files."""
    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    written[0].write_text(json.dumps(report, indent=1, default=float))
    if markdown:
        (out / "report.md").write_text(markdown)
        written.append(out / "report.md")

    def save(ax: Any, name: str) -> None:
        ax.figure.tight_layout()
        ax.figure.savefig(out / name, dpi=110)
        plt.close(ax.figure)
        written.append(out / name)

    save(plot_confusion_matrix(report["router"]["confusion_matrix"], taxonomy.organ_names, title="router"),
         "confusion_router.png")
    save(plot_confusion_matrix(report["overall"]["confusion_matrix"], taxonomy.subtype_names,
                               title="all subtypes (end to end)"), "confusion_subtypes.png")
    for organ in taxonomy.organs:
        entry = report["organs"][organ.name]
        if entry["n"]:
            save(plot_confusion_matrix(entry["confusion_matrix"], organ.subtype_names,
                                       title=f"{organ.name} (organ given)"), f"confusion_{organ.name}.png")
    for part in dict.fromkeys(h["part"] for h in history):
        if not str(part).startswith("head:"):
            axes = plot_history(history, part=part)
            save(axes[0], f"history_{str(part).replace(':', '_')}.png")
    return written
