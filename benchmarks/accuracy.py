"""Accuracy on the shared real-image sample: multihead, the paper's per-organ method and a flat head,
with the ImageNet trunk that loads offline and with random ResNet18 weights as the floor.

Every configuration uses one leak-free split (seed 0) and the feature cache, so only the first run
extracts features. Writes ``docs/accuracy/<name>/`` (report.md, report.json, figures) and
``docs/accuracy/summary.json``; ``docs/accuracy.md`` is rendered from those numbers and the probes' result
files (``--render-only`` renders it again without training).

    python benchmarks/accuracy.py --data ../shared/data/multi-cancer-sample --out docs/accuracy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

import multihead
from multihead.benchmark import machine_info
from multihead.data.splits import Split
from multihead.evaluation import evaluate_folder
from multihead.evaluation.reports import markdown_report, write_report
from multihead.training import PRESETS, TrainConfig
from multihead.training.pipeline import train_from_folder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the page's first section lives beside this script
import accuracy_sample_extra as sample_extra  # noqa: E402

IMAGENET_TRUNK = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors"

# name -> (trunk, trunk weights, preset, overrides). FINAL: the trunk's own pooled features only, as the
# paper's models use them (and as every row was measured before stage pooling became the default).
FINAL = {"stages": "none", "standardize": False}


def _mobilenet(**overrides: object) -> tuple:
    return ("mobilenet_v2", IMAGENET_TRUNK, "default", overrides)


CONFIGS = {
    "mobilenet_v2-paper-per-organ": ("mobilenet_v2", IMAGENET_TRUNK, "paper", {"method": "per-organ"}),
    "mobilenet_v2-224-multihead": _mobilenet(image_size=224, **FINAL),
    "mobilenet_v2-224-per-organ": _mobilenet(method="per-organ", image_size=224, **FINAL),
    "mobilenet_v2-224-flat": _mobilenet(method="flat", image_size=224, **FINAL),
    "mobilenet_v2-448-multihead": _mobilenet(image_size=448, **FINAL),
    "mobilenet_v2-448-per-organ": _mobilenet(method="per-organ", image_size=448, **FINAL),
    "mobilenet_v2-448-flat": _mobilenet(method="flat", image_size=448, **FINAL),
    "mobilenet_v2-448-stages-multihead": _mobilenet(image_size=448),
    "mobilenet_v2-448-stages-per-organ": _mobilenet(method="per-organ", image_size=448),
    "mobilenet_v2-448-stages-flat": _mobilenet(method="flat", image_size=448),
    "mobilenet_v2-640-stages-multihead": _mobilenet(),  # the default preset: the bundled model's configuration
    "mobilenet_v2-640-stages-per-organ": _mobilenet(method="per-organ"),
    "mobilenet_v2-640-stages-flat": _mobilenet(method="flat"),
    "resnet18-random-224-multihead": ("resnet18", None, "default", {"image_size": 224, **FINAL}),
}


GOAL_ORGANS = ("all", "brain", "lung_colon", "lymphoma")  # enough images to measure
DEFAULT_RUN = "mobilenet_v2-640-stages-multihead"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _features(config: dict) -> str:
    """What the heads see: the trunk's output alone, or with pooled earlier stages (older rows: no key)."""
    stages = config.get("stages", "none")
    return "output" if stages in ("none", "") else f"output + stages ({stages})"


def _levers(runs: dict) -> list[str]:
    """What each measured lever changed, from the rows above, and what was not measured."""
    lines = []
    low, high = runs.get("mobilenet_v2-224-multihead"), runs.get("mobilenet_v2-448-multihead")
    if low and high:
        deltas = ", ".join(
            f"{o} {100 * (high['organs'][o]['accuracy'] - low['organs'][o]['accuracy']):+.1f}" for o in GOAL_ORGANS
        )
        lines.append(
            f"- **Input resolution 224 -> 448 px** (the trunk is convolutional; lymphoma images are 417x312): all "
            f"subtypes {100 * (high['overall_accuracy'] - low['overall_accuracy']):+.1f} points, per organ {deltas}. "
            "For ResNet18 on the 2-core CPU of benchmarks.md that is 2.5x to 4.2x the trunk's time per image. "
            "Larger still: see the input-size table below (640 px is the default)."
        )
    final, staged = runs.get("mobilenet_v2-448-multihead"), runs.get("mobilenet_v2-448-stages-multihead")
    seeds_path = REPO / "docs" / "accuracy" / "stages-seeds.json"
    if final and staged and seeds_path.exists():
        spread = json.loads(seeds_path.read_text())["results"]
        before, after = spread["output/multihead"]["mean_sd"], spread["stages/multihead"]["mean_sd"]
        lines.append(
            "- **Pooled features from earlier trunk stages** (MobileNetV2 `features.3, .6, .10, .13, .16, .17`, "
            "average-pooled beside the trunk's output: 1,976 features instead of 1,280; standardised for training "
            "and folded into the heads): over five seeds, validation "
            f"{100 * (after['val'][0] - before['val'][0]):+.1f} and test "
            f"{100 * (after['test'][0] - before['test'][0]):+.1f} points (per organ "
            + ", ".join(f"{o} {100 * (after[o][0] - before[o][0]):+.1f}" for o in GOAL_ORGANS)
            + "); the seed-0 rows above differ by "
            f"{100 * (staged['overall_accuracy'] - final['overall_accuracy']):+.1f}, inside the seed spread (below). "
            "Small but consistent on validation, and free at inference: the means are over maps the forward pass "
            "computes anyway (`benchmarks/stages_cost.py`: images per second with and without them within 5 % of "
            "each other, ResNet18 224 px and MobileNetV2 448 px, batch 1 to 32, the default CPU path). "
            "This is the default."
        )
    paper, ours = runs.get("mobilenet_v2-paper-per-organ"), runs.get("mobilenet_v2-224-per-organ")
    if paper and ours:
        lines.append(
            "- **Recipe** (same trunk, 224 px, per-organ): the paper's preset (4 epochs, no class weights, its "
            "rotation/flip/scaling augmentation through the trunk) "
            f"{_pct(paper['overall_accuracy'])} %, ours (30 epochs, class-balanced, best epoch on validation) "
            f"{_pct(ours['overall_accuracy'])} %."
        )
    lines += [
        "- **Joint training vs separate models vs a flat head**: within about one point of each other at",
        "  either size (the rows above); with a frozen trunk and linear heads the joint loss separates into",
        "  one problem per head, so this is expected. The one-pass model's advantage is speed, not accuracy.",
        "- **A small MLP neck** (512 or 1024 GELU units shared by all heads, dropout) did not beat linear heads",
        "  in a probe on the same cached 448-px features (`benchmarks/probes/mlp_head.py`: 93.8 % and 92.9 %",
        "  all-subtype test accuracy against 94.6 % for linear heads trained the same way, 60 epochs).",
        "- **Test-time augmentation** over the 8 dihedral views lowered accuracy at 448 px (see trust.md).",
        "- **Flip views** (probe, `benchmarks/probes/flip_views/`: identity, horizontal and vertical flip of",
        "  every image at 448 px, all stages pooled, three seeds): training on a random view per step gave",
        "  94.0 % validation / 94.6 % test, averaging the three views' features (3x the trunk's work at",
        "  inference) 94.3 / 94.6, the identity view alone 94.3 / 94.4. Within the seed spread: not adopted.",
        "  The 90-degree rotations (the rest of the dihedral group) were not extracted (8x the work).",
        "- **Not measured here** (left open): any trunk but the two above; 90-degree rotation views.",
    ]
    return lines


def _input_size() -> list[str]:
    """The tables of benchmarks/probes/pooling/: input size over four splits, other poolings of the same maps."""
    path = REPO / "docs" / "accuracy" / "pooling-probe.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cost_path = REPO / "benchmarks" / "results" / "resolution-cost-cpu-amd-epyc-2c.json"
    speed = {}
    if cost_path.exists():
        speed = {r["image_size"]: r["images_per_second"] for r in json.loads(cost_path.read_text())["results"]
                 if r["path"] == "default" and r["batch_size"] == 8}
    by_size = {}
    for row in rows:
        if row["features"] == "default":
            by_size.setdefault(row["size"], {})[row["split"]] = row
    splits = sorted({split for per_split in by_size.values() for split in per_split})
    seeds = sorted({row["seeds"] for row in rows})

    def mean(size: int, key: str) -> float:
        return statistics.mean(by_size[size][split][key][0] for split in splits)

    lines = [
        "## Input size and pooling",
        "",
        f"A probe on the same trunk (`benchmarks/probes/pooling/`, `docs/accuracy/pooling-probe.jsonl`): the "
        f"default heads trained with {' or '.join(map(str, seeds))} seeds on the features of every image at "
        f"each input size, on the split above (seed 0) and on {len(splits) - 1} more leak-free splits made the "
        "same way (seeds " + ", ".join(str(s) for s in splits if s) + "). Mean accuracy in %, averaged over "
        "seeds and then over splits; the cost is images per second of the default CPU path at batch 8 "
        "relative to 448 px (`benchmarks/resolution_cost.py`, random weights).",
        "",
        "| px | time per image vs 448 | validation | test | test on split " + " / ".join(map(str, splits))
        + " | brain | lymphoma |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for size in sorted(by_size):
        relative = f"{speed[448] / speed[size]:.2f}x" if size in speed and 448 in speed else "-"
        lines.append(
            f"| {size} | {relative} | {mean(size, 'val'):.1f} | {mean(size, 'test'):.1f} | "
            + " / ".join(f"{by_size[size][split]['test'][0]:.1f}" for split in splits)
            + f" | {mean(size, 'brain'):.1f} | {mean(size, 'lymphoma'):.1f} |"
        )
    best = max(by_size, key=lambda size: mean(size, "test"))
    wins = sum(by_size[best][split]["test"][0] > by_size[448][split]["test"][0] for split in splits)
    lines += [
        "",
        f"{best} px has the highest test accuracy averaged over the splits, "
        f"{mean(best, 'test') - mean(448, 'test'):+.1f} points over 448 px (higher on {wins} of {len(splits)} "
        f"splits), brain {mean(best, 'brain') - mean(448, 'brain'):+.1f}, lymphoma "
        f"{mean(best, 'lymphoma') - mean(448, 'lymphoma'):+.1f}; validation accuracy barely separates the sizes "
        "(it also picks each run's best epoch, so it is the optimistic one). The gain is small against the "
        "spread between splits and costs the time in the second column. It is the default "
        "(`TrainConfig.image_size`); `image_size=448` is the faster choice"
        + (f" ({speed[448] / speed[best]:.1f}x the images per second)." if {best, 448} <= speed.keys() else "."),
        "",
        "Other poolings of the same maps on the split above, five seeds (beside the default features: the means "
        "of the six stages and of the last map); none beat the default of the same size on validation:",
        "",
        "| px | features | width | validation | test | brain | lymphoma |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    names = {"default": "default (stage means)", "+max": "+ max of the last map",
             "+gem": "+ GeM (p = 3) of the last map", "+grid2": "+ 2x2 grid means of the last map",
             "+grid3": "+ 3x3 grid means of the last map", "+grid2+grid2_17": "+ 2x2 grid means of the last two maps"}
    for row in rows:
        if row["split"] == 0 and any(r["size"] == row["size"] and r["features"] != "default" for r in rows):
            cells = [f"{row[k][0]:.1f} ± {row[k][1]:.1f}" for k in ("val", "test", "brain", "lymphoma")]
            lines.append(f"| {row['size']} | {names.get(row['features'], row['features'])} | {row['width']:,} | "
                         + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _seed_spread() -> list[str]:
    """The table of benchmarks/probes/stages_seeds.py: one seed is not enough to call a one-point lever."""
    path = REPO / "docs" / "accuracy" / "stages-seeds.json"
    if not path.exists():
        return []
    probe = json.loads(path.read_text())
    seeds = probe["seeds"]
    lines = [
        "## Seed to seed",
        "",
        f"The rows above are one training run each (seed 0). Heads trained with {len(seeds)} seeds (initialisation",
        "and batch order) on the same cached 448-px features, mean ± standard deviation of accuracy in % "
        "(`benchmarks/probes/stages_seeds.py`, `docs/accuracy/stages-seeds.json`):",
        "",
        "| features | standardised | method | validation | test | " + " | ".join(GOAL_ORGANS) + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(GOAL_ORGANS),
    ]
    for run in probe["results"].values():
        cells = [_features(run), "yes" if run["standardize"] else "no", run["method"]]
        cells += [f"{100 * run['mean_sd'][k][0]:.1f} ± {100 * run['mean_sd'][k][1]:.1f}"
                  for k in ("val", "test", *GOAL_ORGANS)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Pooled stages add about half a point on validation and a quarter to half a point on test, less than",
        "two standard deviations of the seed spread; standardising them changes little except on `all`.",
        "The default (stages, standardised) was chosen on validation accuracy. The lymphoma test set has 27",
        "images: one image is 3.7 points.",
        "",
    ]
    return lines


TUNED_TRAIN = REPO / "benchmarks" / "results" / "tuned-train.jsonl"
TUNED_CALIBRATION = REPO / "docs" / "accuracy" / "tuned-calibration.jsonl"
TUNED_OOD_REFIT = REPO / "benchmarks" / "results" / "tuned-ood-refit*.json"
TUNING_SIZE = 448  # the input size the tuning settings were searched at (and the other splits run at)
PICKED_KEYS = ("image_size", "method", "tune_from", "tune_epochs", "tune_lr", "tune_head_lr", "tune_batchnorm",
               "tune_views", "tune_precision", "tune_label_smoothing")
SINCE = {"tune_precision": "fp32", "tune_label_smoothing": 0.0}
"""Settings added to TrainConfig after the first tuning rows, as those rows ran them (fp32 on the CPU, no smoothing)."""


def _same_settings(row: dict, other: dict, but: str | None = None) -> bool:
    """Whether two tuning rows ran one configuration (:data:`PICKED_KEYS`, all but ``but``; seeds may differ)."""
    a, b = {**SINCE, **row["config"]}, {**SINCE, **other["config"]}
    return all(a[k] == b[k] for k in PICKED_KEYS if k != but)


def _organ_changes(before: dict, after: dict) -> list[str]:
    """Each goal organ's test accuracy, "before -> after", in %."""
    return [f"{_pct(before['test']['organs'].get(o))} -> {_pct(after['test']['organs'].get(o))}" for o in GOAL_ORGANS]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _tuning() -> list[str]:
    """The tables of benchmarks/tuning.py (docs/accuracy/tuning.jsonl): frozen against a tuned top; then the
    picked configuration on the other splits, and the timed end-to-end runs of benchmarks/tuned_train.py."""
    rows = _jsonl(REPO / "docs" / "accuracy" / "tuning.jsonl")
    if not rows:
        return []
    committed = [r for r in rows if not r.get("split_seed")]
    lines = [
        "## Tuning the top of the shared trunk",
        "",
        "`benchmarks/tuning.py`, one row per run, on the split above: the frozen bottom's maps cached once "
        "(float16), the heads warmed up on the frozen top's features (the **frozen** columns: the same heads the "
        "frozen default trains, on the same features), then the top stages and heads tuned together "
        "(`multihead.training.tune`: AdamW at the learning rates of the row, warm-up then cosine decay, class-weighted "
        "joint loss, every epoch run; the kept epoch is the best organ-balanced validation accuracy). "
        "Accuracy in %, end to end; per-organ columns are test. \"tuned, whole trunk\" measures the tuned model "
        "again from the image files through the whole trunk in float32, as `classify` runs it.",
        "",
        "Rows marked *raw heads* were run before the heads were tuned in the standardised feature space they "
        "were warmed up in (AdamW then stepped on the folded heads, whose scale differs per feature); the "
        "other rows are the library's recipe.",
        "",
        "| px | tune from | stage lr | head lr | BatchNorm | map views | method | seed | kept epoch of "
        "| val frozen -> tuned | test frozen -> tuned | tuned, whole trunk | "
        + " | ".join(f"{o} frozen -> tuned" for o in GOAL_ORGANS) + " | s / epoch |",
        "|---:|---|---:|---:|---|---|---|---:|---:|---|---|---:|" + "---|" * len(GOAL_ORGANS) + "---:|",
    ]
    for row in committed:
        config, frozen, tuned = row["config"], row["frozen"], row["tuned"]
        whole = row.get("tuned_end_to_end_test", {})
        epochs = row["timings"].get("epoch_s") or []
        cells = [
            str(config["image_size"]), f"`{row['cut']}`", f"{config['tune_lr']:g}", f"{config['tune_head_lr']:g}",
            config["tune_batchnorm"],
            config["tune_views"],
            config["method"] + ("" if row.get("heads_space") else " (raw heads)") + _extras(config),
            str(config["seed"]),
            f"{_kept(row)} of {config['tune_epochs']}",
            f"{_pct(frozen['val']['accuracy'])} -> {_pct(tuned['val']['accuracy'])}",
            f"{_pct(frozen['test']['accuracy'])} -> {_pct(tuned['test']['accuracy'])}",
            _pct(whole.get("accuracy")),
        ]
        cells += _organ_changes(frozen, tuned)
        cells.append(f"{statistics.median(epochs):.0f}" if epochs else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    best = _picked(committed, TUNING_SIZE)
    trained = _jsonl(TUNED_TRAIN)
    calibration = _jsonl(TUNED_CALIBRATION)
    lines += _tuning_verdict(committed, best, _other_splits(rows, best), trained, calibration)
    for row in committed:  # the other configurations run on the other splits too
        splits = _other_splits(rows, row)
        if row is not best and row.get("heads_space") and row["config"]["method"] == "multihead" and len(splits) > 1:
            lines += _split_table(splits, _settings(row) + ",")
    lines += _sharing(committed)
    lines += _other_sizes(committed)
    lines += _statistics_only(_jsonl(REPO / "docs" / "accuracy" / "adapted-statistics-only.jsonl"))
    kept = {r["name"]: r["best_epoch"] for r in rows}
    lines += _frozen_beside_tuned(_jsonl(REPO / "docs" / "accuracy" / "frozen-beside-tuned.jsonl"), kept)
    lines += _tuned_train(trained)
    lines += _tuned_calibration(calibration, kept)
    lines += _tuned_ood_refit(sorted(TUNED_OOD_REFIT.parent.glob(TUNED_OOD_REFIT.name)))
    curve = REPO / "docs" / "accuracy" / "brain-data-curve.json"
    lines += _brain_data_curve(json.loads(curve.read_text())) if curve.is_file() else []
    views = REPO / "docs" / "accuracy" / "brain-true-views.json"
    lines += _brain_true_views(json.loads(views.read_text())) if views.is_file() else []
    machines = sorted({f"{r['machine']['cpu_model']}, {r['machine']['torch_threads']} threads" for r in rows})
    lines += ["", f"Machine: {'; '.join(machines)}; dates {min(r['date'] for r in rows)} to "
              f"{max(r['date'] for r in rows)}. Seconds per epoch include the validation pass.", ""]
    return lines


def _kept(row: dict) -> str:
    """The tuning epoch validation kept ("none": the frozen top); a per-organ run keeps one per organ."""
    return "per organ" if row["config"]["method"] == "per-organ" else str(row["best_epoch"] or "none")


def _picked(rows: list[dict], image_size: int) -> dict | None:
    """The seed-0 row of the library-recipe multihead configuration at ``image_size`` with the best
    organ-balanced validation accuracy, averaged over the training seeds the configuration was run with (one
    seed swings it by about a point, more than some configurations differ)."""
    candidates = [r for r in rows if r.get("heads_space") and r["config"]["method"] == "multihead"
                  and r["config"]["seed"] == 0 and r["config"]["image_size"] == image_size]
    return max(candidates, key=lambda r: statistics.mean(s["tuned"]["val"]["organ_balanced"] for s in _seeds(rows, r)),
               default=None)


def _sharing(rows: list[dict]) -> list[str]:
    """What sharing the tuned top costs or gains: each multihead run beside the per-organ and flat runs of the
    same settings and seed on the committed split."""
    table = []
    for row in rows:
        if not row.get("heads_space") or row["config"]["method"] != "multihead":
            continue
        others = [r for r in rows if r.get("heads_space") and r["config"]["method"] != "multihead"
                  and r["config"]["seed"] == row["config"]["seed"] and _same_settings(r, row, but="method")]
        if not others:
            continue
        for run in [row, *sorted(others, key=lambda r: r["config"]["method"])]:
            frozen, tuned = run["frozen"], run["tuned"]
            cells = [_settings(row), str(row["config"]["seed"]), run["config"]["method"], _kept(run),
                     f"{_pct(frozen['val']['organ_balanced'])} -> {_pct(tuned['val']['organ_balanced'])}",
                     f"{_pct(frozen['test']['accuracy'])} -> {_pct(tuned['test']['accuracy'])}",
                     *_organ_changes(frozen, tuned)]
            table.append("| " + " | ".join(cells) + " |")
    if not table:
        return []
    return ["", "**Sharing the tuned top**: each multihead run beside the runs of the same settings and seed with "
            "eight separately tuned tops (per-organ: the paper's deployment, eight trunks, each organ's epoch kept "
            "on its own validation images, so its validation figure is optimistic) and with one flat head over "
            "the 26 subtypes. Accuracy in %, frozen -> tuned:", "",
            "| settings | seed | method | kept epoch | organ-balanced val | test | " + " | ".join(GOAL_ORGANS) + " |",
            "|---|---:|---|---:|---|---|" + "---|" * len(GOAL_ORGANS), *table]


def _other_sizes(rows: list[dict]) -> list[str]:
    """The library-recipe multihead rows at the other input sizes (640 px is the default): what validation kept."""
    others = [r for r in rows if r.get("heads_space") and r["config"]["method"] == "multihead"
              and r["config"]["seed"] == 0 and r["config"]["image_size"] != TUNING_SIZE]
    if not others:
        return []
    lines = ["", f"**At other input sizes** (the committed split, seed 0; the picked settings above were searched at "
             f"{TUNING_SIZE} px, where an epoch costs half as much):", ""]
    for row in others:
        config, frozen, tuned = row["config"], row["frozen"], row["tuned"]
        epochs = [r for r in row["history"] if str(r["part"]).startswith("tune")]
        top = max(epochs, key=lambda r: r["organ_balanced_accuracy"])
        kept = (f"kept epoch {row['best_epoch']}" if row["best_epoch"] else
                "validation kept the frozen top: no tuning epoch beat its organ-balanced validation accuracy")
        lines.append(
            f"- {config['image_size']} px, {_settings(row)}: {kept} (frozen "
            f"{_pct(frozen['val']['organ_balanced'])}, best tuning epoch {top['epoch']} "
            f"{_pct(top['organ_balanced_accuracy'])}; validation accuracy {_pct(frozen['val']['accuracy'])} frozen, "
            f"{_pct(max(r['val']['accuracy'] for r in epochs))} at best tuned). Test: all subtypes "
            f"{_pct(frozen['test']['accuracy'])} -> {_pct(tuned['test']['accuracy'])}, "
            + ", ".join(f"{o} {_pct(frozen['test']['organs'][o])} -> {_pct(tuned['test']['organs'][o])}"
                        for o in GOAL_ORGANS) + ".")
    return lines


def _other_splits(rows: list[dict], best: dict | None) -> list[dict]:
    """The picked configuration's rows (seed 0) on every split, the committed one first."""
    if best is None:
        return []
    same = [r for r in rows if r.get("heads_space") and r["config"]["seed"] == best["config"]["seed"]
            and _same_settings(r, best)]
    by_split = {r.get("split_seed", 0): r for r in same if r.get("split_seed")}
    return [best] + [by_split[k] for k in sorted(by_split)]


def _seeds(rows: list[dict], best: dict | None) -> list[dict]:
    """A configuration's rows on the committed split, one per training seed."""
    if best is None:
        return []
    same = {r["config"]["seed"]: r for r in rows if r.get("heads_space") and not r.get("split_seed")
            and _same_settings(r, best)}
    return [same[k] for k in sorted(same)]


def _repeated(rows: list[dict]) -> list[list[dict]]:
    """Every library-recipe configuration run with more than one seed on the committed split."""
    groups = [_seeds(rows, r) for r in rows if r.get("heads_space") and r["config"]["seed"] == 0
              and not r.get("split_seed")]
    return [g for g in groups if len(g) > 1]


def _seed_table(rows: list[dict]) -> list[str]:
    """Frozen against tuned for each training seed on the committed split: how much of a change is the seed's."""
    lines = [
        "",
        f"**{_settings(rows[0])}, with {len(rows)} training seeds** on the committed split (the seed sets the "
        "heads' initialisation, the order of the batches and the map views; the frozen heads are warmed up with "
        "the same seed). Accuracy in %, frozen -> tuned:",
        "",
        "| seed | kept epoch | val frozen -> tuned | organ-balanced val | test frozen -> tuned | "
        + " | ".join(GOAL_ORGANS) + " |",
        "|---:|---:|---|---|---|" + "---|" * len(GOAL_ORGANS),
    ]
    for row in rows:
        frozen, tuned = row["frozen"], row["tuned"]
        cells = [str(row["config"]["seed"]), str(row["best_epoch"] or "none"),
                 f"{_pct(frozen['val']['accuracy'])} -> {_pct(tuned['val']['accuracy'])}",
                 f"{_pct(frozen['val']['organ_balanced'])} -> {_pct(tuned['val']['organ_balanced'])}",
                 f"{_pct(frozen['test']['accuracy'])} -> {_pct(tuned['test']['accuracy'])}"]
        cells += _organ_changes(frozen, tuned)
        lines.append("| " + " | ".join(cells) + " |")

    def spread(pick) -> str:
        deltas = [100 * (pick(r["tuned"]) - pick(r["frozen"])) for r in rows]
        sd = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        return f"{statistics.mean(deltas):+.1f} ± {sd:.1f} ({min(deltas):+.1f} to {max(deltas):+.1f})"

    lines += [
        "",
        "Change over the seeds, tuned minus frozen, in points (mean ± standard deviation, smallest to largest): "
        "validation " + spread(lambda x: x["val"]["accuracy"]) + "; test " + spread(lambda x: x["test"]["accuracy"])
        + "; " + "; ".join(f"{o} {spread(lambda x, o=o: x['test']['organs'][o])}" for o in GOAL_ORGANS) + ".",
    ]
    return lines


def _settings(row: dict) -> str:
    """A tuning run's settings as the page names a configuration (the cut only when it is not `auto`'s)."""
    config = row["config"]
    cut = "" if config["tune_from"] == "auto" else f"tuned from `{row['cut']}`, "
    epochs = "" if config["tune_epochs"] == 8 else f", {config['tune_epochs']} epochs"
    return (f"{cut}BatchNorm {config['tune_batchnorm']}, {config['tune_views']}, stage lr {config['tune_lr']:g}, "
            f"head lr {config['tune_head_lr']:g}{epochs}{_extras(config)}")


def _extras(config: dict) -> str:
    """The settings added later, named where a row does not run them as the first rows did."""
    config = {**SINCE, **config}
    return ((f", label smoothing {config['tune_label_smoothing']:g}" if config["tune_label_smoothing"] else "")
            + (f", {config['tune_precision']}" if config["tune_precision"] != "fp32" else ""))


def _seed_means(groups: list[list[dict]]) -> list[str]:
    """The configurations run with several seeds side by side, best mean organ-balanced validation first."""
    if len(groups) < 2:
        return []

    def mean(rows: list[dict], pick) -> float:
        return statistics.mean(pick(r) for r in rows)

    ranked = sorted(groups, key=lambda g: -mean(g, lambda r: r["tuned"]["val"]["organ_balanced"]))
    cells = [f"{_settings(g[0])} ({len(g)} seeds): "
             f"{_pct(mean(g, lambda r: r['tuned']['val']['organ_balanced']))} validation, "
             f"{_pct(mean(g, lambda r: r['tuned']['test']['accuracy']))} test, "
             f"{_pct(mean(g, lambda r: r['tuned']['test']['organs']['brain']))} brain" for g in ranked]
    return ["", "Means over the training seeds, tuned (organ-balanced validation accuracy, which picks; test "
            "accuracy; test brain): " + "; ".join(cells) + "."]


def _mean_range(deltas: list[float]) -> str:
    """Changes in points as "mean (smallest to largest)"."""
    return f"{statistics.mean(deltas):+.1f} ({min(deltas):+.1f} to {max(deltas):+.1f})"


def _split_table(rows: list[dict], label: str = "The picked configuration") -> list[str]:
    """Frozen against tuned on each split, and the mean change over the splits (each split's own pair)."""
    lines = [
        "",
        f"**{label} on {len(rows)} leak-free splits** (the committed one, seed 0, and the ones "
        "the input-size probe made with seeds 1-3; each split tunes from its own warmed-up frozen heads). Test "
        "accuracy in %, frozen -> tuned:",
        "",
        "| split | n test | kept epoch | val frozen -> tuned | test frozen -> tuned | "
        + " | ".join(f"{o}" for o in GOAL_ORGANS) + " | router tuned |",
        "|---:|---:|---:|---|---|" + "---|" * len(GOAL_ORGANS) + "---:|",
    ]
    for row in rows:
        frozen, tuned = row["frozen"], row["tuned"]
        cells = [str(row.get("split_seed", 0)), str(tuned["test"]["n"]), str(row["best_epoch"] or "none"),
                 f"{_pct(frozen['val']['accuracy'])} -> {_pct(tuned['val']['accuracy'])}",
                 f"{_pct(frozen['test']['accuracy'])} -> {_pct(tuned['test']['accuracy'])}"]
        cells += _organ_changes(frozen, tuned)
        cells.append(_pct(tuned["test"]["router"]))
        lines.append("| " + " | ".join(cells) + " |")

    def change(pick) -> str:
        return _mean_range([100 * (pick(r["tuned"]) - pick(r["frozen"])) for r in rows])

    lines += [
        "",
        "Mean change over the splits, tuned minus frozen, in points (smallest to largest): validation "
        + change(lambda x: x["val"]["accuracy"]) + "; test " + change(lambda x: x["test"]["accuracy"]) + "; "
        + "; ".join(f"{o} {change(lambda x, o=o: x['test']['organs'][o])}" for o in GOAL_ORGANS) + ".",
    ]
    return lines


def _tuning_verdict(rows: list[dict], best: dict | None, splits: list[dict], trained: list[dict],
                    calibration: list[dict]) -> list[str]:
    """Which tuned configuration validation picks, and the issue's targets judged on its test figures."""
    from multihead.evaluation import PAPER_TEST_ACCURACY

    if best is None:
        return []
    frozen, tuned = best["frozen"]["test"], best["tuned"]["test"]
    seeds = _seeds(rows, best)
    brains = [r["tuned"]["test"]["organs"].get("brain", 0.0) for r in splits]
    # the committed split judged by the mean over its training seeds, the other splits by their one run
    losses, worst = _organs_below([seeds if r is best and seeds else [r] for r in splits])
    timed = [r for r in trained if r["tuned_from"] and "-tune-auto" in r["name"]]
    picked = _timed_settings_of(best["config"])
    # the latest timed run of the picked settings, else of its BatchNorm mode and views, else of its BatchNorm mode,
    # else the first there is
    run = next((r for r in reversed(timed) if _timed_settings(r) == picked),
               next((r for r in reversed(timed) if _timed_settings(r)[:2] == picked[:2]),
                    next((r for r in reversed(timed) if _timed_batchnorm(r) == picked[0]), next(iter(timed), None))))
    met = {
        f"brain >= {_pct(PAPER_TEST_ACCURACY['brain'])} % (the paper)"
        + (f" (tuned brain on the {len(splits)} splits: {', '.join(_pct(b) for b in brains)})" if len(splits) > 1
           else ""): min(brains) >= PAPER_TEST_ACCURACY["brain"],
        "no other measurable organ more than 0.5 points below the frozen model" + _aside(
            f"the committed split by the mean over its {len(seeds)} training seeds" if len(seeds) > 1 else "",
            f"below on some split: {', '.join(losses)}" if losses else "",
            f"the largest drop of one run: {worst[1]} {100 * worst[0]:.1f} points" if worst[0] > 0.005 else ""):
            not losses,
        "router >= 99.5 %": min(r["tuned"]["test"]["router"] for r in splits) >= 0.995,
    }
    whole = best.get("tuned_end_to_end_test", {})
    if "ece" in whole:
        met[f"calibration error <= 0.03 before temperature scaling ({whole['ece']:.3f})"] = whole["ece"] <= 0.03
    if run:
        calibrated = run["test_whole_trunk"]["calibrated"]["ece"]
        minutes = run["wall_s"] / 60
        batchnorm = _timed_batchnorm(run)
        described = f"the timed checkpoint, {_timed_description(run)}"
        if _timed_settings(run) != picked:  # say so when no run of the picked configuration was timed
            described += ": not the picked configuration, which was not timed end to end"
        picked_names = {r["name"] for r in seeds}
        seeded = [r["tuned"]["ece"] for r in calibration if r["checkpoint"] in picked_names]
        over_seeds = (f"; the picked configuration over {len(seeded)} training seeds, from the cached maps: "
                      f"{min(seeded):.4f} to {max(seeded):.4f}, at most 0.03 in {sum(e <= 0.03 for e in seeded)}"
                      if len(seeded) > 1 else "")
        met[f"calibration error <= 0.03 ({described}, temperatures fitted: {calibrated:.3f}{over_seeds})"] = (
            calibrated <= 0.03 and all(e <= 0.03 for e in seeded))
        refit = REPO / "benchmarks" / "results" / "tuned-ood-refit-intel-xeon-2c.json"
        # the refit is of the train-mode checkpoint, timed before its OOD score read only the untuned features
        after = (json.loads(refit.read_text())["after"]["unknowns"] if refit.is_file() and batchnorm == "train"
                 and "ood_features_read" not in run else None)
        met[f"OOD AUROC on the trust page's unknowns >= 0.99 ({described}: {run['ood']['unknowns']['auroc']:.4f}, "
            f"{_pct(run['ood']['unknowns']['flagged'])} % flagged"
            + (f"; refitted on the untuned features: {after['auroc']:.4f}, {_pct(after['flagged'])} % flagged"
               if after else "") + ")"] = run["ood"]["unknowns"]["auroc"] >= 0.99
        extra = ("; adapted adds a pass over the training maps and a second warm-up"
                 if batchnorm == "train" and best["config"]["tune_batchnorm"] == "adapted" else "")
        # the library's defaults, its precision "auto" whatever that resolved to on the run's machine
        library = _timed_settings_of(asdict(TrainConfig()))[:4]
        default = next((r for r in reversed(timed) if _timed_settings(r)[:4] == library
                        and _timed_option(r, "--tune-precision", "auto") == "auto"), None)
        if default is not None and default is not run:  # the library's own tuned settings, timed as well
            extra += (f"; the library's default tuned settings ({_timed_description(default)}), latest run: "
                      f"{default['wall_s'] / 60:.1f} min")
        met[f"`multihead train --tune-from auto` within 15 minutes, extraction included, for the picked "
            f"configuration ({described}: {minutes:.1f} min{extra})"] = minutes <= 15 and _timed_settings(run) == picked
    config = best["config"]
    same = [r for r in rows if r.get("heads_space") and r["config"]["method"] != "multihead"
            and _same_settings(r, best, but="method")]
    baselines = [
        f"{r['config']['method']} tuned: validation {_pct(r['tuned']['val']['accuracy'])}, test "
        f"{_pct(r['tuned']['test']['accuracy'])}, "
        + ", ".join(f"{o} {_pct(r['tuned']['test']['organs'].get(o))}" for o in GOAL_ORGANS)
        for r in same]
    return [
        "",
        f"**Picked on validation** (organ-balanced accuracy of the kept epoch, library recipe, multihead, the mean "
        f"over a configuration's training seeds, here {len(seeds)}): tuned from `{best['cut']}`, stage lr "
        f"{config['tune_lr']:g}, head lr {config['tune_head_lr']:g}, BatchNorm {config['tune_batchnorm']}, "
        f"{config['tune_views']}, {config['tune_epochs']} epochs{_extras(config)} (validation "
        f"{_pct(best['frozen']['val']['accuracy'])} -> {_pct(best['tuned']['val']['accuracy'])} with seed 0). "
        "On test, seed 0: all "
        f"subtypes {_pct(frozen['accuracy'])} -> {_pct(tuned['accuracy'])}, "
        + ", ".join(f"{o} {_pct(frozen['organs'][o])} -> {_pct(tuned['organs'][o])}" for o in GOAL_ORGANS) + ".",
        f"Organ-balanced validation accuracy, seed 0: frozen {_pct(best['frozen']['val']['organ_balanced'])}, tuned "
        f"{_pct(best['tuned']['val']['organ_balanced'])}.",
        *_seed_means(_repeated(rows)),
        *[line for group in _repeated(rows) for line in _seed_table(group)],
        *(_split_table(splits) if len(splits) > 1 else []),
        "",
        "Targets: " + "; ".join(f"{name}: {'met' if ok else 'not met'}" for name, ok in met.items()) + ". "
        + ("All met." if all(met.values()) else "Not all met, so the frozen trunk stays the default and the "
           f"bundled model is not retrained ({len(seeds) if len(seeds) > 1 else 'one'} "
           f"seed{'s' if len(seeds) > 1 else ''} on the committed split, {len(splits) if len(splits) > 1 else 'one'} "
           f"split{'s' if len(splits) > 1 else ''}; a "
           "lymphoma test set has about 27 images, one image is 3.7 points).")
        + ("" if run else " Not measured for tuned models: calibration after temperature scaling and OOD AUROC on "
           "the trust page's unknowns."),
        *([
            "",
            "**Baselines with the same settings** (per-organ: eight separately tuned tops and heads, each on its "
            "organ's images alone, the frozen router choosing among them, as the paper's deployment would need, "
            "eight tops at inference; flat: one tuned top under a 26-way softmax): " + "; ".join(baselines)
            + f". Shared and tuned (the row picked above): validation {_pct(best['tuned']['val']['accuracy'])}, "
            f"test {_pct(tuned['accuracy'])}.",
        ] if baselines else []),
    ]


def _organs_below(groups: list[list[dict]]) -> tuple[list[str], tuple[float, str]]:
    """Organs but brain whose test accuracy, averaged over a group's runs (one split's training seeds), is more
    than half a point below the frozen model's in some group; and the largest drop of a single run, (drop, organ).
    The mean, because one image of ALL's 225 test images is 0.44 points: one seed's loss is noise as well."""
    def drop(row: dict, organ: str) -> float:
        return row["frozen"]["test"]["organs"][organ] - row["tuned"]["test"]["organs"][organ]

    others = [o for o in GOAL_ORGANS if o != "brain"]
    losses = sorted({o for group in groups for o in others if statistics.mean(drop(r, o) for r in group) > 0.005})
    worst = max(((drop(r, o), o) for group in groups for r in group for o in others), default=(0.0, ""))
    return losses, worst


def _maps_backend(run: dict) -> str:
    """What computed a timed tuned run's maps: rows from before `maps_backend` was recorded ran PyTorch."""
    return f" ({run.get('maps_backend', 'torch')})" if run["tuned_from"] else ""


def _aside(*parts: str) -> str:
    """The non-empty ``parts`` in parentheses, or nothing."""
    kept = [p for p in parts if p]
    return f" ({'; '.join(kept)})" if kept else ""


def _timed_settings(run: dict) -> tuple[str, str, str, str, str]:
    """A timed command's BatchNorm mode, map views, tuning epochs (the library's defaults where not given),
    patience ("every epoch", or the patience; rows without the field ran the old default, 3) and the precision
    its tuning steps ran in (rows without the field ran fp32)."""
    patience = run.get("tune_patience", 3)
    return (_timed_batchnorm(run), _timed_option(run, "--tune-views", "flips"),
            _timed_option(run, "--tune-epochs", str(TrainConfig.tune_epochs)),
            "every epoch" if patience is None else f"patience {patience}", run.get("tune_precision") or "fp32")


def _timed_settings_of(config: dict) -> tuple[str, str, str, str, str]:
    """The same for a tuning row's configuration (benchmarks/tuning.py runs every epoch)."""
    patience = config.get("tune_patience")
    every = patience is None or patience >= config["tune_epochs"]
    return (config["tune_batchnorm"], config["tune_views"], str(config["tune_epochs"]),
            "every epoch" if every else f"patience {patience}", config.get("tune_precision", "fp32"))


def _timed_description(run: dict) -> str:
    """A timed command's tuning settings in words."""
    batchnorm, views, epochs, patience, precision = _timed_settings(run)
    return f"BatchNorm {batchnorm}, {views}, {epochs} epochs, {patience}, {precision}"


def _timed_batchnorm(run: dict) -> str:
    """The ``--tune-batchnorm`` of a timed command (``train`` when not given)."""
    return _timed_option(run, "--tune-batchnorm", "train")


def _timed_option(run: dict, flag: str, default: str) -> str:
    """A timed command's value of ``flag`` (``default`` when not given)."""
    words = run["command"].split()
    return words[words.index(flag) + 1] if flag in words else default


def _statistics_only(runs: list[dict]) -> list[str]:
    """benchmarks/probes/adapted_statistics_only.py: the top's BatchNorm statistics re-estimated, no weight moved."""
    if not runs:
        return []
    lines = [
        "",
        "**Statistics alone** (`benchmarks/probes/adapted_statistics_only.py`, "
        "`docs/accuracy/adapted-statistics-only.jsonl`): the top's BatchNorm statistics re-estimated on the "
        "training maps as `adapted` does before tuning, no weight of the trunk moved, the heads trained again; "
        "against the frozen heads of the same run. Accuracy in %, frozen -> statistics adapted:",
        "",
        "| split | seed | val | organ-balanced val | test | " + " | ".join(GOAL_ORGANS) + " |",
        "|---:|---:|---|---|---|" + "---|" * len(GOAL_ORGANS),
    ]
    for run in runs:
        frozen, adapted = run["frozen"], run["adapted_statistics"]
        cells = [str(run["split_seed"]), str(run["seed"]),
                 f"{_pct(frozen['val']['accuracy'])} -> {_pct(adapted['val']['accuracy'])}",
                 f"{_pct(frozen['val']['organ_balanced'])} -> {_pct(adapted['val']['organ_balanced'])}",
                 f"{_pct(frozen['test']['accuracy'])} -> {_pct(adapted['test']['accuracy'])}"]
        cells += _organ_changes(frozen, adapted)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _frozen_beside_tuned(runs: list[dict], kept: dict[str, int | None]) -> list[str]:
    """benchmarks/probes/frozen_beside_tuned.py: new heads on the tuned features, with and without the published
    top's pooled features beside them, against new heads on the frozen features."""
    if not runs:
        return []
    lines = [
        "",
        "**The frozen top's features beside the tuned ones** (`benchmarks/probes/frozen_beside_tuned.py`, "
        "`docs/accuracy/frozen-beside-tuned.jsonl`): would keeping the published top's pooled features next to "
        "the tuned top's protect the small organs? (At inference the top stages would run twice, once as "
        "published and once tuned.) From the cached maps of a tuned run above, three sets of heads are trained "
        "the same way (the run's settings and seed, epoch picked on validation): on the frozen features, on the "
        "tuned features alone (the control: the tuned run's own heads are retrained), and on both. Accuracy in "
        "%, frozen / tuned / both:",
        "",
        "| split | BatchNorm | kept epoch of the run | features | val | organ-balanced val | test | "
        + " | ".join(GOAL_ORGANS) + " | router test |",
        "|---:|---|---:|---|---|---|---|" + "---|" * len(GOAL_ORGANS) + "---|",
    ]
    for run in runs:
        parts = [run[k] for k in ("frozen", "tuned", "both")]
        epoch = kept.get(run["checkpoint"].removesuffix(".safetensors"))

        def three(pick, parts=parts) -> str:
            return " / ".join(_pct(pick(part)) for part in parts)

        cells = [str(run["split_seed"]), run["config"]["tune_batchnorm"], str(epoch or "none"),
                 " / ".join(f"{run['features'][k]:,}" for k in ("frozen", "tuned", "both")),
                 three(lambda x: x["val"]["accuracy"]), three(lambda x: x["val"]["organ_balanced"]),
                 three(lambda x: x["test"]["accuracy"])]
        cells += [three(lambda x, o=o: x["test"]["organs"].get(o)) for o in GOAL_ORGANS]
        cells.append(three(lambda x: x["test"]["router"]))
        lines.append("| " + " | ".join(cells) + " |")

    def change(pick, against: str) -> str:
        return _mean_range([100 * (pick(run["both"]) - pick(run[against])) for run in runs])

    for against in ("tuned", "frozen"):
        lines += ["", f"Both against {against}, mean over the rows in points (smallest to largest): validation "
                  + change(lambda x: x["val"]["accuracy"], against) + "; organ-balanced validation "
                  + change(lambda x: x["val"]["organ_balanced"], against) + "; test "
                  + change(lambda x: x["test"]["accuracy"], against) + "; "
                  + "; ".join(f"{o} {change(lambda x, o=o: x['test']['organs'][o], against)}" for o in GOAL_ORGANS)
                  + "."]
    return lines


def _tuned_train(runs: list[dict]) -> list[str]:
    """benchmarks/tuned_train.py: `multihead train` timed from a cold cache, and its checkpoint measured."""
    if not runs:
        return []
    lines = [
        "",
        "**The command a user types, timed** (`benchmarks/tuned_train.py`, results in "
        "`benchmarks/results/tuned-train.jsonl`): `multihead train` on the whole sample with the committed split "
        "from an empty cache, extraction (maps or features) included, with the library's defaults otherwise "
        "(rows from before 2026-11-30's fix ran patience 3 counted against the warmed-up frozen top, which would "
        "have stopped 29 of the 40 tuning runs of `docs/accuracy/tuning.jsonl` at epoch 3 with the frozen top kept; "
        "the settings column says which); then its checkpoint measured on the test split through the whole trunk, "
        "and its out-of-distribution "
        "score on the trust page's 116 unknowns (`benchmarks/trust/make_unknowns.py`) against "
        "the test images, at the threshold it stored. \"Most flagged\" is the largest share of one organ's images "
        "flagged in one part of the split, among organs with at least 20 images there.",
        "",
        "| px | trunk | kept epoch | wall time | extraction | training | test [95% CI] | brain | lymphoma "
        "| ECE, temperatures fitted | ECE at T = 1 | OOD AUROC | unknowns flagged | most flagged "
        "| load before / after | CPU |",
        "|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for run in runs:
        timings, test, ood = run["timings"], run["test_whole_trunk"], run["ood"]
        extraction = timings.get("maps_s", timings.get("features_s"))
        training = timings.get("tune_s", timings.get("heads_s"))
        kept = max((e["epoch"] for e in run["epochs"] if e.get("best")), default=0)
        shares = [v["share"] for parts in ood["flagged"].values() for v in parts.values() if v["n"] >= 20]
        calibrated = test["calibrated"]
        cells = [
            run["name"].split("-")[1],
            f"tuned from `{run['tuned_from']}`, {_timed_description(run)}" if run["tuned_from"] else "frozen",
            f"{kept or 'frozen'} of {len(run['epochs'])}" if run["epochs"] else "n/a",
            f"{run['wall_s'] / 60:.1f} min",
            "n/a" if extraction is None else f"{extraction / 60:.1f} min" + _maps_backend(run),
            "n/a" if training is None else f"{training / 60:.1f} min",
            f"{_pct(calibrated['accuracy'])} [{_pct(calibrated['accuracy_ci95'][0])}, "
            f"{_pct(calibrated['accuracy_ci95'][1])}]",
            _pct(calibrated["organs"].get("brain")), _pct(calibrated["organs"].get("lymphoma")),
            f"{calibrated['ece']:.3f}", f"{test['temperature_1']['ece']:.3f}",
            f"{ood['unknowns']['auroc']:.4f}", _pct(ood["unknowns"]["flagged"]), _pct(max(shares, default=None)),
            f"{run['machine']['load_average_1m']:.1f} / {run['machine']['load_average_1m_after']:.1f}",
            run["machine"]["cpu_model"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    frozen = next((r for r in runs if not r["tuned_from"]), None)
    for tuned in (r for r in runs if r["tuned_from"] and frozen):
        a, b = tuned["test_whole_trunk"]["calibrated"], frozen["test_whole_trunk"]["calibrated"]
        lines += ["", f"The tuned checkpoint (BatchNorm {_timed_batchnorm(tuned)}, "
                  f"{_timed_option(tuned, '--tune-views', 'flips')}) against the frozen one the same "
                  f"command writes with `--tune-from none`: test {_pct(a['accuracy'])} against {_pct(b['accuracy'])}, "
                  + ", ".join(f"{o} {_pct(a['organs'].get(o))} against {_pct(b['organs'].get(o))}" for o in GOAL_ORGANS)
                  + f"; unknowns flagged {_pct(tuned['ood']['unknowns']['flagged'])} % against "
                  f"{_pct(frozen['ood']['unknowns']['flagged'])} %. (Their times are not comparable when the load "
                  "columns differ.)"]
    lines += ["", f"Every run on {runs[0]['machine']['torch_threads']} threads of 2 cores (compare times only "
              "between runs on one CPU); the load averages (1 minute, before and after the training command) say "
              "how idle it was: about 2 is the run's own two threads on the 2 cores."]
    return lines


def _probed_settings(run: dict) -> str:
    """A probed checkpoint's BatchNorm mode, map views and tuning epochs (when not the default 8)."""
    epochs = "" if run["tune_epochs"] == 8 else f", {run['tune_epochs']} epochs"
    return f"{run['tune_batchnorm']}, {run['tune_views']}{epochs}"


def _tuned_calibration(runs: list[dict], kept: dict[str, int | None]) -> list[str]:
    """benchmarks/probes/tuned_calibration.py: test ECE of tuned checkpoints and their frozen pairs over seeds."""
    if not runs:
        return []
    lines = [
        "",
        "**Calibration over training seeds** (`benchmarks/probes/tuned_calibration.py`, "
        "`docs/accuracy/tuned-calibration.jsonl`): is a tuned model's calibration error worse with adapted "
        "BatchNorm? Each tuned checkpoint above (committed split) and the frozen model of the same seed get "
        "temperatures fitted on validation as `multihead train` fits them; ECE of the joint probability on the "
        "test images, from the cached maps (float16), with 95 % bootstrap intervals over the test images and the "
        "paired change (the same resampled images for both):",
        "",
        "| BatchNorm, map views | seed | kept epoch | test frozen -> tuned | ECE frozen [95% CI] | ECE tuned [95% CI] "
        "| change [95% CI] | ECE at T = 1, frozen -> tuned | brain T tuned |",
        "|---|---:|---:|---|---|---|---|---|---:|",
    ]
    for run in sorted(runs, key=lambda r: (_probed_settings(r), r["seed"])):
        frozen, tuned, ci = run["frozen"], run["tuned"], run["ece_ci95"]
        lines.append("| " + " | ".join([
            _probed_settings(run), str(run["seed"]), str(kept.get(run["checkpoint"]) or "none (frozen kept)"),
            f"{_pct(frozen['accuracy'])} -> {_pct(tuned['accuracy'])}",
            f"{frozen['ece']:.3f} [{ci['frozen'][0]:.3f}, {ci['frozen'][1]:.3f}]",
            f"{tuned['ece']:.3f} [{ci['tuned'][0]:.3f}, {ci['tuned'][1]:.3f}]",
            f"{tuned['ece'] - frozen['ece']:+.3f} [{run['change_ci95'][0]:+.3f}, {run['change_ci95'][1]:+.3f}]",
            f"{frozen['ece_t1']:.3f} -> {tuned['ece_t1']:.3f}", f"{tuned['temperatures'].get('brain', 1.0):.2f}",
        ]) + " |")
    summary = []
    for mode in sorted({_probed_settings(r) for r in runs}):
        mine = [r for r in runs if _probed_settings(r) == mode]
        eces = [r["tuned"]["ece"] for r in mine]
        summary.append(f"{mode}: tuned ECE {min(eces):.3f} to {max(eces):.3f} over {len(mine)} seeds, at most 0.03 "
                       f"in {sum(e <= 0.03 for e in eces)}; change against frozen "
                       + ", ".join(f"{r['tuned']['ece'] - r['frozen']['ece']:+.3f}" for r in mine)
                       + ", the interval holding 0 in "
                       f"{sum(r['change_ci95'][0] <= 0 <= r['change_ci95'][1] for r in mine)} of {len(mine)}")
    frozen_eces = {r["seed"]: r["frozen"]["ece"] for r in runs}  # one frozen model per seed
    lines += ["", "Per configuration (BatchNorm mode, map views, epochs when not 8): " + "; ".join(summary)
              + ". Frozen: " + ", ".join(f"{frozen_eces[seed]:.3f}" for seed in sorted(frozen_eces))
              + " over its seeds."]
    return lines


def _brain_data_curve(curve: dict) -> list[str]:
    """benchmarks/probes/brain_data_curve.py: brain accuracy of brain-only models against the training images."""
    counts = sorted({r["train_images"] for r in curve["runs"]})
    config = curve["config"]

    def cell(trunk: str, count: int) -> str:
        runs = [r for r in curve["runs"] if r["trunk"] == trunk and r["train_images"] == count]
        if not runs:
            return "n/a"
        kept = " (frozen top kept)" if trunk == "tuned" and all(not r["kept_epoch"] for r in runs) else ""
        return " / ".join(_pct(statistics.mean(r[s] for r in runs)) for s in ("val", "test")) + kept

    seeds = {t: len({r["seed"] for r in curve["runs"] if r["trunk"] == t}) for t in ("frozen", "tuned")}
    return [
        "",
        "**Brain against its number of training images** (`benchmarks/probes/brain_data_curve.py`, "
        "`docs/accuracy/brain-data-curve.json`): brain-only models trained on nested, class-stratified fractions "
        f"of the committed split's brain training images, brain accuracy on its {curve['val_images']} validation "
        f"and {curve['test_images']} test images, validation / test in %. Frozen: heads trained on the frozen "
        f"trunk's features, the mean of {seeds['frozen']} head seeds; tuned: `{curve['cut']}` up, BatchNorm "
        f"{config['tune_batchnorm']}, {config['tune_views']}, stage lr {config['tune_lr']:g}, head lr "
        f"{config['tune_head_lr']:g}, the epoch kept on validation, {seeds['tuned']} "
        f"seed{'s' if seeds['tuned'] > 1 else ''}.",
        "",
        "| trunk | " + " | ".join(f"{n} images" for n in counts) + " |",
        "|---|" + "---:|" * len(counts),
        *[f"| {trunk} | " + " | ".join(cell(trunk, n) for n in counts) + " |" for trunk in ("frozen", "tuned")],
    ]


def _brain_true_views(probe: dict) -> list[str]:
    """benchmarks/probes/brain_true_views.py: brain-only tuned models, with and without paper-augmented views of
    the training images through the frozen bottom."""
    arms = list(dict.fromkeys(r["arm"] for r in probe["runs"]))
    seeds = sorted({r["seed"] for r in probe["runs"]})
    config = probe["config"]

    def row(arm: str) -> str:
        runs = {r["seed"]: r for r in probe["runs"] if r["arm"] == arm}
        cells = [f"{_pct(runs[s]['val'])} / {_pct(runs[s]['test'])} (epoch {runs[s]['kept_epoch']})" if s in runs
                 else "n/a" for s in seeds]
        means = " / ".join(_pct(statistics.mean(r[k] for r in runs.values())) for k in ("val", "test"))
        return f"| {arm} | " + " | ".join(cells) + f" | {means} |"

    return [
        "",
        "**Brain with true views through the frozen bottom** (`benchmarks/probes/brain_true_views.py`, "
        f"`docs/accuracy/brain-true-views.json`): brain-only models tuned from `{probe['cut']}` (BatchNorm "
        f"{config['tune_batchnorm']}, {config['tune_views']}, {config['tune_epochs']} epochs, the epoch kept on "
        f"validation) on the committed split's {probe['train_images']} brain training images, each read as it "
        f"is or, with views, as itself or one of its {probe['views']} views drawn at random at every read (the "
        f"paper's rotation, flips and scaling, run through the frozen bottom once: {probe['views_s'] / 60:.1f} "
        "min). Brain accuracy on "
        f"{probe['val_images']} validation / {probe['test_images']} test images, in %, and the kept epoch (0: the "
        "frozen top with its warmed-up heads).",
        "",
        "| training maps | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
        "|---|" + "---|" * (len(seeds) + 1),
        *[row(arm) for arm in arms],
    ]


def _tuned_ood_refit(paths: list[Path]) -> list[str]:
    """benchmarks/trust/ood_small_organs.py --refit on the timed tuned checkpoint: its OOD score fitted again
    with the rule that reads only the untuned features, on one or more sets of unknowns."""
    if not paths:
        return []
    lines = [
        "",
        "**The tuned checkpoint's OOD score, refitted to read only the untuned features** "
        "(`benchmarks/trust/ood_small_organs.py --refit`, results in `benchmarks/results/tuned-ood-refit*.json`). "
        "The tuned stages learn to tell the trained classes apart and lose what tells a page of text or a "
        "photograph from a slide; the pooled stages below the cut did not move. Since this was found, a tuned "
        "model's score reads only those (`untuned_features`, docs/trust.md); a frozen model's reads every "
        "feature as before. The second set of unknowns (`make_unknowns.py ... 1`: other noise, text and "
        "patterns, the photographs cut at random) was made after the rule was chosen on the first.",
        "",
        "| unknowns | OOD fit | features read | AUROC | unknowns flagged | text | photo | most flagged |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for path in paths:
        result = json.loads(path.read_text())
        unknown_set = "second set (seed 1)" if "seed1" in path.name else "trust page's set"
        for when, fit in (("before", "ood_fit_before"), ("after", "ood_fit_after")):
            measured, ood = result[when], result[fit]
            unknowns = measured["unknowns"]
            shares = [v["share"] for parts in measured["flagged"].values() for v in parts.values() if v["n"] >= 20]
            lines.append("| " + " | ".join([
                unknown_set, "as trained (all features)" if when == "before" else "refitted",
                str(ood.get("features_read", "all")), f"{unknowns['auroc']:.4f}", _pct(unknowns["flagged"]),
                _pct(unknowns["flagged_by_kind"]["text"]), _pct(unknowns["flagged_by_kind"]["photo"]),
                _pct(max(shares, default=None))]) + " |")
    return lines


def render_markdown(summary: dict) -> str:
    """docs/accuracy.md from summary.json: every number in the page comes from a measured run."""
    from multihead.evaluation import PAPER_TEST_ACCURACY

    runs = {k: v for k, v in summary.items() if not k.startswith("_")}
    machine = summary.get("_machine", {})
    lines = [
        "# Accuracy on the shared real images",
        "",
        "<!-- Generated by benchmarks/accuracy.py from docs/accuracy/summary.json, docs/accuracy/sample-extra/ and",
        "     docs/accuracy/brain-curve.jsonl; do not edit by hand. -->",
        "",
        *sample_extra.render(),
        "## The sample alone",
        "",
        "Trained on the training split and measured on the test split of `shared/data/multi-cancer-sample`",
        "(4,907 real images; one leak-free split, seed 0: 3,433 train, 737 validation, 737 test). Every row",
        "uses the same split and the same cached trunk features. **Trunks:** `mobilenet_v2` is torchvision's",
        "MobileNetV2 with ImageNet-1k weights from `shared/weights/` (ResNet18's ImageNet weights cannot be",
        "obtained in the environment this was run in); `resnet18 (random)` is ResNet18 with random weights,",
        "the floor. The paper's column is its own experiment (eight ResNet18 models on the full Kaggle set):",
        "orientation, not a like-for-like comparison.",
        "",
        "Organs with too few images to measure: **breast** (3 test images), **oral** (2), **kidney** (0: one",
        "image per subtype, both in training) and **cervix** (no images at all). Their numbers are not",
        "reported as accuracy; see each run's report for the raw counts.",
        "",
        'End to end means from the one forward pass, organ and subtype both right; "organ given" is the',
        "paper's setting, the true organ's head alone. Intervals are 95 % bootstrap intervals.",
        "",
        "| run | trunk | px | features | method | router | all subtypes [95% CI] | ECE | "
        + " | ".join(f"{o} (paper {_pct(PAPER_TEST_ACCURACY[o])})" for o in GOAL_ORGANS)
        + " |",
        "|---|---|---:|---|---|---:|---|---:|" + "---:|" * len(GOAL_ORGANS),
    ]
    for name, run in runs.items():
        config = run["config"]
        organs = run["organs"]
        overall_ci = run.get("overall_ci95") or [None, None]
        cells = [
            f"[{name}](accuracy/{name}/report.md)",
            f"{run['trunk']} ({'ImageNet' if 'imagenet' in run['trunk_weights'] else 'random'})",
            str(config.get("image_size") or 224),
            _features(config),
            config["method"] + (" (paper preset)" if "paper" in name else ""),
            _pct(run["router_accuracy"]),
            f"{_pct(run['overall_accuracy'])} [{_pct(overall_ci[0])}, {_pct(overall_ci[1])}]",
            f"{run['ece']:.3f}",
        ]
        cells += [_pct(organs[o]["accuracy"]) for o in GOAL_ORGANS]
        lines.append("| " + " | ".join(cells) + " |")
    best = DEFAULT_RUN if DEFAULT_RUN in runs else max(
        (k for k in runs if runs[k]["trunk_weights"] != "random"), key=lambda k: runs[k]["overall_accuracy"])
    met = [f"`{o}`" for o in GOAL_ORGANS if runs[best]["organs"][o]["accuracy"] >= PAPER_TEST_ACCURACY[o]]
    short = [f"`{o}`" for o in GOAL_ORGANS if runs[best]["organs"][o]["accuracy"] < PAPER_TEST_ACCURACY[o]]
    lines += [
        "",
        f"The default configuration, **{best}** (the bundled model's; router {_pct(runs[best]['router_accuracy'])} %, "
        f"all subtypes {_pct(runs[best]['overall_accuracy'])} %), reaches the paper's test accuracy on "
        f"{', '.join(met) if met else 'none'} of the four measurable organs"
        + (f" and falls short on {', '.join(short)}." if short else "."),
        "The goal router accuracy of 99.5 % is " + ("met." if runs[best]["router_accuracy"] >= 0.995 else "not met."),
        "",
        "## Levers",
        "",
        *_levers(runs),
        "",
        *_input_size(),
        *_seed_spread(),
        f"Machine: {machine.get('cpu', '?')}, torch {machine.get('torch', '?')}, {machine.get('date', '?')}.",
        "Reproduce: `python benchmarks/accuracy.py` (extracts features once, then seconds per run).",
        "",
        *_tuning(),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", help="data folders (several: their union; give their runs "
                        "their own --out)", default=[REPO.parent / "shared" / "data" / "multi-cancer-sample"])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy")
    parser.add_argument("--models", type=Path, default=Path("runs/accuracy"), help="where checkpoints go")
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run these configurations only")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=REPO / "docs" / "accuracy.md")
    parser.add_argument("--render-only", action="store_true", help="rewrite the Markdown from summary.json")
    args = parser.parse_args()

    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if args.render_only:
        args.markdown.write_text(render_markdown(summary))
        return
    split: Split | None = None
    split_path = args.out / "split.json"
    if split_path.exists():
        split = Split.load(split_path)
    for name in args.only or list(CONFIGS):
        trunk, weights, preset, overrides = CONFIGS[name]
        torch.manual_seed(0)  # random trunks are reproducible too
        config = PRESETS[preset].override(**overrides)
        started = time.perf_counter()
        result = train_from_folder(
            args.data,
            config=config,
            trunk=trunk,
            trunk_weights=weights,
            split=split,
            cache_dir=args.cache_dir,
            on_stage=print,
        )
        if split is None:
            split = result.split
            args.out.mkdir(parents=True, exist_ok=True)
            split.save(split_path)
        model = result.model
        args.models.mkdir(parents=True, exist_ok=True)
        multihead.save(model, args.models / f"{name}.safetensors")
        test, _ = evaluate_folder(model, args.data, split=split, subset="test", cache_dir=args.cache_dir)
        val, _ = evaluate_folder(model, args.data, split=split, subset="val", cache_dir=args.cache_dir)
        trunk_label = f"{trunk} ({'ImageNet, shared/weights' if weights else 'random'})"
        info = {"path": f"{name}.safetensors", "trunk": trunk_label, "config": config.to_dict()}
        text = markdown_report(test, title=name, model_info=info, val_report=val)
        write_report(args.out / name, test, model.taxonomy, history=result.history, markdown=text)
        summary[name] = {
            "trunk": trunk,
            "trunk_weights": "imagenet (shared/weights mobilenet_v2)" if weights else "random",
            "config": config.to_dict(),
            "seconds": round(time.perf_counter() - started, 1),
            "timings": result.timings,
            "router_accuracy": test["router"]["accuracy"],
            "overall_accuracy": test["overall"]["accuracy"],
            "overall_ci95": test["overall"]["accuracy_ci95"],
            "ece": test["overall"]["ece"],
            "organs": {
                o: {k: e.get(k) for k in ("n", "scored", "accuracy", "accuracy_ci95", "accuracy_given_organ",
                                          "router_recall")}
                for o, e in test["organs"].items()
            },
            **({"sources": test["sources"]} if "sources" in test else {}),
            "val_organs": {o: e.get("accuracy") for o, e in val["organs"].items()},
        }
        summary["_machine"] = {
            "cpu": f"{machine_info()['cpu_model']}, {os.cpu_count()} cores",
            "torch": torch.__version__,
            "multihead": multihead.__version__,
            "date": time.strftime("%Y-%m-%d"),
        }
        summary_path.write_text(json.dumps(summary, indent=1))
        print(f"{name}: router {test['router']['accuracy']:.4f}, overall {test['overall']['accuracy']:.4f}")
    args.markdown.write_text(render_markdown(json.loads((REPO / "docs" / "accuracy" / "summary.json").read_text())))
    print("wrote", args.markdown)


if __name__ == "__main__":
    main()
