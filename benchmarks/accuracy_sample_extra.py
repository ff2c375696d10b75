"""The accuracy page's first section: the bundled model's data, both shared folders (issue 34).

Rendered by ``benchmarks/accuracy.py`` from ``docs/accuracy/sample-extra/summary.json`` (its runs on the union of
``multi-cancer-sample`` and ``multi-cancer-extra``, ``python benchmarks/accuracy.py --data SAMPLE EXTRA --out
docs/accuracy/sample-extra --only ...``) and ``docs/accuracy/brain-curve.jsonl`` (``benchmarks/brain_curve.py``).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from multihead.evaluation.metrics import MIN_SCORED_IMAGES

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "docs" / "accuracy" / "sample-extra"
CURVE = REPO / "docs" / "accuracy" / "brain-curve.jsonl"
DEFAULT_RUN = "mobilenet_v2-640-stages-multihead"
PAPER_BRAIN = 0.929
EARLIER_PREDICTION = ("issue 17's curve (brain-only models on the sample, about 3.6 validation points per doubling) "
                      "put the paper's 92.9 % at 3,000 to 7,000 brain training images")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _interval(entry: dict) -> str:
    if not entry.get("n"):
        return "n/a"
    if entry.get("scored") is False:
        return f"not scored (n = {entry['n']})"
    low, high = entry["accuracy_ci95"]
    return f"{_pct(entry['accuracy'])} [{_pct(low)}, {_pct(high)}]"


def _split_counts(split_path: Path) -> str:
    split = json.loads(split_path.read_text())
    counts = split["info"]["counts"]
    return f"{counts['train']:,} train, {counts['val']:,} validation, {counts['test']:,} test"


def _organ_table(run: dict, paper: dict[str, float]) -> list[str]:
    lines = ["| organ | n test | end to end [95% CI] | organ given | organ recognised | paper |",
             "|---|---:|---|---:|---:|---:|"]
    for organ, entry in run["organs"].items():
        if not entry.get("n"):
            continue
        scored = entry.get("scored") is not False
        lines.append(f"| {organ} | {entry['n']} | {_interval(entry)} | "
                     f"{_pct(entry['accuracy_given_organ']) if scored else 'n/a'} | "
                     f"{_pct(entry.get('router_recall')) if scored else 'n/a'} | {_pct(paper.get(organ))} |")
    absent = [organ for organ, entry in run["organs"].items() if not entry.get("n")]
    unscored = [f"{organ} ({entry['n']})" for organ, entry in run["organs"].items()
                if entry.get("n") and entry.get("scored") is False]
    notes = []
    if unscored:
        notes.append(f"Listed, not scored (fewer than {MIN_SCORED_IMAGES} test images; the counts are in the run's "
                     f"report.json): {', '.join(unscored)}.")
    if absent:
        notes.append(f"No test images: {', '.join(absent)}.")
    return lines + (["", *notes] if notes else [])


def _source_table(run: dict) -> list[str]:
    sources = run.get("sources") or {}
    shared = [organ for organ in run["organs"]
              if sum(s["organs"].get(organ, {}).get("n", 0) >= MIN_SCORED_IMAGES for s in sources.values()) > 1]
    if not shared:
        return []
    lines = ["", "By data folder, for the organs both folders hold (the sample's brain MRI are 224 px crops with "
             "changed contrast, the extra's another copy of the same upstream sets at 256 px):", "",
             "| organ | data folder | n test | end to end [95% CI] | organ recognised |", "|---|---|---:|---|---:|"]
    for organ in shared:
        for source, entry in sources.items():
            if organ in entry["organs"]:
                figures = entry["organs"][organ]
                recall = _pct(figures["router_recall"]) if figures.get("scored") is not False else "n/a"
                lines.append(f"| {organ} | {source} | {figures['n']} | {_interval(figures)} | {recall} |")
    return lines


def _curve(rows: list[dict]) -> list[str]:
    """Brain test accuracy against brain training images, frozen and tuned, means over seeds, and what the
    frozen curve (a line in log2 of the images) predicts for the paper's 92.9 %."""
    if not rows:
        return []
    counts = sorted({r["brain_train_images"] for r in rows})

    def runs(trunk: str, count: int) -> list[dict]:
        return [r for r in rows if r["trunk"] == trunk and r["brain_train_images"] == count]

    def cell(trunk: str, count: int) -> str:
        found = runs(trunk, count)
        if not found:
            return "not run"
        values = [100 * r["test"]["organs"]["brain"] for r in found]
        spread = f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread}, {len(values)} seed{'s' if len(values) > 1 else ''}"

    lines = ["", "**Brain against its training images** (`benchmarks/brain_curve.py`, "
             "`docs/accuracy/brain-curve.jsonl`): the brain training images of the committed split cut to nested, "
             "subtype-stratified fractions, every other organ keeping all of its; brain accuracy on the test split "
             "(end to end, mean over seeds and their range). Frozen: the bundled model's configuration; tuned: "
             "issue 17's pick (`features.14` up, adapted BatchNorm, dihedral views, 12 epochs) at 448 px.", "",
             "| trunk | " + " | ".join(f"{n:,} brain images" for n in counts) + " |", "|---|" + "---:|" * len(counts)]
    lines += [f"| {trunk} | " + " | ".join(cell(trunk, n) for n in counts) + " |" for trunk in ("frozen", "tuned")]
    frozen = [(n, statistics.mean(100 * r["test"]["organs"]["brain"] for r in runs("frozen", n)))
              for n in counts if runs("frozen", n)]
    if len(frozen) >= 2:
        xs, ys = [math.log2(n) for n, _ in frozen], [y for _, y in frozen]
        slope = statistics.linear_regression(xs, ys).slope
        at_all = frozen[-1]
        needed = at_all[0] * 2 ** ((100 * PAPER_BRAIN - at_all[1]) / slope) if slope > 0 else math.inf
        lines += ["", f"The frozen curve gains {slope:.1f} test points per doubling of the brain images; at that "
                  f"rate the paper's 92.9 % needs about {needed:,.0f} brain training images "
                  f"({needed / at_all[0]:.1f} times the {at_all[0]:,} here). Earlier, {EARLIER_PREDICTION}."]
    both = [n for n in counts if runs("frozen", n) and runs("tuned", n)]
    if both:
        n = both[-1]
        mean = {trunk: statistics.mean(100 * r["test"]["organs"]["brain"] for r in runs(trunk, n))
                for trunk in ("frozen", "tuned")}
        minutes = [r["seconds"] / 60 for r in runs("tuned", n)]
        lines += ["", f"At {n:,} brain images the tuned top gives {mean['tuned']:.1f} against the frozen trunk's "
                  f"{mean['frozen']:.1f} ({mean['tuned'] - mean['frozen']:+.1f} points, means over "
                  f"{len(runs('tuned', n))} and {len(runs('frozen', n))} seeds), for {min(minutes):.0f} to "
                  f"{max(minutes):.0f} minutes of tuning per run against under a minute for the frozen heads on "
                  "cached features: the bundled model keeps the frozen trunk."]
    return lines


def render() -> list[str]:
    """The section's lines (none when its runs have not been made)."""
    summary_path = FOLDER / "summary.json"
    if not summary_path.is_file():
        return []
    from multihead.evaluation import PAPER_TEST_ACCURACY

    summary = json.loads(summary_path.read_text())
    runs = {k: v for k, v in summary.items() if not k.startswith("_")}
    default = runs.get(DEFAULT_RUN)
    lines = ["## The bundled model's data: both shared folders", "",
             "The bundled model is trained on `multi-cancer-sample` and `multi-cancer-extra` together (6,474 real "
             "images; one leak-free split of the union, seed 0: " + _split_counts(FOLDER / "split.json") + "). "
             "Near-copies are grouped whichever folder holds them, largest group first. Every row below uses this "
             "split; the sections after it were measured on the sample alone.", ""]
    if default:
        lines += [f"**{DEFAULT_RUN}** (the bundled model's configuration): router {_pct(default['router_accuracy'])} "
                  f"%, all subtypes {_pct(default['overall_accuracy'])} % [{_pct(default['overall_ci95'][0])}, "
                  f"{_pct(default['overall_ci95'][1])}], ECE {default['ece']:.3f}.", "",
                  *_organ_table(default, PAPER_TEST_ACCURACY), *_source_table(default)]
    others = {k: v for k, v in runs.items() if k != DEFAULT_RUN}
    if others:
        organs = [o for o in ("all", "brain", "kidney", "lung_colon", "lymphoma")
                  if default and default["organs"].get(o, {}).get("n")]
        lines += ["", "The same split with the other methods (end to end, %):", "",
                  "| run | router | all subtypes | " + " | ".join(organs) + " |",
                  "|---|---:|---:|" + "---:|" * len(organs)]
        for name, run in runs.items():
            lines.append(f"| [{name}](accuracy/sample-extra/{name}/report.md) | {_pct(run['router_accuracy'])} | "
                         f"{_pct(run['overall_accuracy'])} | "
                         + " | ".join(_pct(run["organs"][o]["accuracy"]) for o in organs) + " |")
    rows = [json.loads(line) for line in CURVE.read_text().splitlines()] if CURVE.is_file() else []
    lines += _curve(rows)
    machine = summary.get("_machine", {})
    lines += ["", f"Machine: {machine.get('cpu', '?')}, torch {machine.get('torch', '?')}, {machine.get('date', '?')}.",
              ""]
    return lines
