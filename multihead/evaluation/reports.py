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
from .metrics import MIN_SCORED_IMAGES
from .plots import plot_confusion_matrix, plot_history, pyplot

__all__ = ["markdown_report", "near_ood_markdown", "write_report"]


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
        cells = [organ, str(config.get("batch_size", "")), str(config.get("lr", "")), str(config.get("epochs", "")),
                 str(entry["n"]), _scored(val, "accuracy"), _with_interval(entry),
                 _scored(entry, "accuracy_given_organ"), _pct(report.get("paper", {}).get(organ))]
        cells += [_scored(other["organs"].get(organ, {}), "accuracy_given_organ") for other in compare.values()]
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
    lines += _source_lines(report.get("sources"))
    lines += _trust_lines(report.get("trust"))
    few = [f"{o} ({e['n']})" for o, e in report["organs"].items() if e["n"] and not _is_scored(e)]
    if few:
        lines += ["", f"Listed, not scored (fewer than {MIN_SCORED_IMAGES} images here; their counts are in "
                  f"report.json): {', '.join(few)}."]
    empty = [o for o, e in report["organs"].items() if e["n"] == 0]
    if empty:
        lines += ["", f"No images here for: {', '.join(empty)} (not measured)."]
    if report.get("skipped"):
        lines += ["", f"Skipped {len(report['skipped'])} unreadable files (listed in report.json)."]
    return "\n".join(lines) + "\n"


def _is_scored(entry: dict[str, Any]) -> bool:
    """Whether an organ's entry has enough images to be shown as a figure (reports before ``scored``: any)."""
    return bool(entry.get("n")) and entry.get("scored", True)


def _scored(entry: dict[str, Any], key: str) -> str:
    """An organ's figure, or "n/a" where it has no images, or too few to be scored."""
    return _pct(entry.get(key)) if _is_scored(entry) else "n/a"


def _with_interval(entry: dict[str, Any]) -> str:
    """``94.1 [91.0, 96.8]``; for an organ with too few images, its count instead of a figure."""
    if entry.get("n") and not _is_scored(entry):
        return f"not scored (n = {entry['n']})"
    ci = entry.get("accuracy_ci95")
    return f"{_pct(entry.get('accuracy'))} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "n/a"


def _source_lines(sources: dict[str, Any] | None) -> list[str]:
    """Per data folder and organ: end-to-end accuracy and router recall, so a source shift is visible."""
    if not sources:
        return []
    lines = ["", "## By data folder", "",
             "The same organ from two sources can look as different as two hospitals' images:", "",
             "| data folder | organ | n | end to end [95% CI] | organ recognised (router recall) |",
             "|---|---|---:|---|---:|"]
    for source, entry in sources.items():
        for organ, figures in entry["organs"].items():
            lines.append(f"| {source} | {organ} | {figures['n']} | {_with_interval(figures)} | "
                         f"{_scored(figures, 'router_recall')} |")
    return lines


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


def near_ood_markdown(report: dict[str, Any], *, title: str = "## Out of distribution") -> str:
    """The near-out-of-distribution table of :func:`~multihead.evaluation.trust.ood_report`: per group of unknown
    images, how many were flagged and how many still got an organ or a subtype; and what the same rule costs the
    labelled images."""
    known = report["in_distribution"]
    lines = ["", title, "",
             f"Images that are none of the model's subtypes, by group, against the {known['n']} {report['subset']} "
             f"images; score: {report['score']}, threshold {report['threshold']:.3f}. An organ is claimed when the "
             "status is not `uncertain`, a subtype when it is `organ_and_subtype`.", "",
             "| group | n | flagged | organ claimed | subtype claimed | organs claimed | AUROC | FPR at 95 % TPR |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for group, row in report["groups"].items():
        organs = ", ".join(f"{organ} {count}" for organ, count in sorted(row["organs_claimed"].items(),
                                                                          key=lambda kv: -kv[1])) or "none"
        lines.append(f"| {group} | {row['n_out']} | {_pct(row['flagged'])} % | {_pct(row['organ_claimed'])} % | "
                     f"{_pct(row['subtype_claimed'])} % | {organs} | {row['auroc']:.3f} | "
                     f"{_pct(row['fpr_at_95_tpr'])} % |")
    lines += ["", f"The cost on the {known['n']} {report['subset']} images: {_pct(known['flagged'])} % flagged out of "
              f"distribution, {_pct(known['uncertain'])} % `uncertain` in all, {_pct(known['organ_only'])} % "
              "`organ_only`."]
    if report.get("skipped"):
        lines += ["", f"Skipped {len(report['skipped'])} unreadable files (listed in report.json)."]
    return "\n".join(lines) + "\n"


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
    for part in dict.fromkeys(h.get("part") for h in history):
        if not str(part).startswith("head:"):
            axes = plot_history(history, part=part)
            save(axes[0], f"history_{str(part).replace(':', '_')}.png")
    if markdown:  # written last, so that it links the figures that exist
        (out / "report.md").write_text(markdown + _figure_links([p.name for p in written if p.suffix == ".png"]))
        written.append(out / "report.md")
    return written
