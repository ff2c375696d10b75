"""Reports from computed metrics: the Markdown page (the paper's Table 1 with our columns beside it) and
``write_report``, which saves it with ``report.json`` and the figures."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..taxonomy import Taxonomy
from .plots import plot_confusion_matrix, plot_history, pyplot

__all__ = ["markdown_report", "write_report"]


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
        scores = [_score(entry[k], entry["support"]) for k in ("precision", "recall", "f1")]
        lines.append(f"| {name} | {' | '.join(scores)} | {entry['support']} |")
    lines += _trust_lines(report.get("trust"))
    empty = [o for o, e in report["organs"].items() if e["n"] == 0]
    if empty:
        lines += ["", f"No test images for: {', '.join(empty)} (not measured)."]
    if report.get("skipped"):
        lines += ["", f"Skipped {len(report['skipped'])} unreadable files (listed in report.json)."]
    return "\n".join(lines) + "\n"


def _score(value: Any, support: int) -> str:
    """A per-class score, or "n/a" for a class without images here (0.000 would read as a measured zero)."""
    return "n/a" if not support or value is None else f"{value:.3f}"


def _trust_lines(trust: dict[str, Any] | None) -> list[str]:
    """The status breakdown of these images (as ``classify`` gives them) and the model's trust state."""
    if not trust:
        return []
    from .trust_state import status_breakdown

    lines = ["", "## Trust", "",
             f"Statuses of these {trust['n']} images: {status_breakdown(trust)} "
             f"({100 * trust.get('out_of_distribution_fraction', 0.0):.1f} % flagged out of distribution). "
             f"Coverage (answered in full): {_pct(trust['coverage'])} %, {_pct(trust['accuracy_kept'])} % of them "
             f"right; the organ is given for {_pct(trust['organ_coverage'])} %, "
             f"{_pct(trust['organ_accuracy_kept'])} % right. Accuracy if every answer were kept: "
             f"{_pct(trust['accuracy_all'])} %."]
    if trust.get("state"):
        lines += ["", "```text", *trust["state"], "```"]
    return lines


def _figure_links(names: Sequence[str]) -> str:
    if not names:
        return ""
    return "\n## Figures\n\n" + "\n".join(f"- [{name.removesuffix('.png').replace('_', ' ')}]({name})"
                                           for name in names) + "\n"


def write_report(directory: str | os.PathLike, report: dict[str, Any], taxonomy: Taxonomy, *,
                 history: Sequence[dict[str, Any]] = (), markdown: str = "") -> list[Path]:
    """Write ``report.json``, ``report.md`` and the figures (PNG) into ``directory``; returns the files."""
    plt = pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    written[0].write_text(json.dumps(report, indent=1, default=float))

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
    if markdown:  # written last, so that it links the figures that exist
        (out / "report.md").write_text(markdown + _figure_links([p.name for p in written if p.suffix == ".png"]))
        written.append(out / "report.md")
    return written
