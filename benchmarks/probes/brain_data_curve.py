"""Issue 17's blocker: is brain short of the paper because of the recipe or because of the images it has?

The committed split trains on 838 brain MRI images (the Kaggle set has 5,000 a class; the issue's brain-only
probe trained on 1,198). This probe trains brain-only models on nested, class-stratified fractions of the
committed split's brain training images (a quarter, a half, three quarters, all) and measures brain
validation and test accuracy: the frozen trunk with trained heads (three head seeds a fraction) and the top
tuned from the cached maps (``benchmarks/tuning.py``'s picked recipe: ``features.14``, adapted BatchNorm, lr
1e-4 / 1e-4, 8 epochs, the epoch kept on validation; one seed a fraction). How fast accuracy grows with the
number of training images says how far more images would go. Brain-only models, so the router has nothing to
confuse; the joint model's brain is within a point of them (docs/accuracy.md).

    python benchmarks/probes/brain_data_curve.py --cache-dir /work/mhcache-maps
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from multihead.benchmark import machine_info
from multihead.data.scan import scan_dataset
from multihead.data.splits import Split
from multihead.model.trunk_split import split_trunk
from multihead.training import TrainConfig, fit_heads
from multihead.training.tune import organ_accuracies, top_features, tune_top

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tuning import SAMPLE, model_and_maps, subset

REPO = Path(__file__).resolve().parents[2]
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
HEAD_SEEDS = (0, 1, 2)


def rows(data, keep: list[int]):
    """The images ``keep`` of a MapSet."""
    return type(data)(data.organs[keep], data.subtypes[keep], [data.relpaths[i] for i in keep], data.cache,
                      [data.locations[i] for i in keep], [data.paths[i] for i in keep])


def nested_fraction(data, fraction: float, seed: int = 0) -> list[int]:
    """The first ``fraction`` of each subtype's images in one seeded order: a larger fraction holds a smaller."""
    generator = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for subtype in data.subtypes.unique().tolist():
        own = (data.subtypes == subtype).nonzero().flatten()
        own = own[torch.randperm(len(own), generator=generator)]
        keep += own[:round(fraction * len(own))].tolist()
    return sorted(keep)


def brain_accuracy(model, data) -> float:
    return organ_accuracies(model, data)[model.taxonomy.organ_names[int(data.organs[0])]][0]


def brain_maps(data: Path, split_file: Path, config: TrainConfig, cache_dir: Path | None) -> tuple:
    """The scanned sample, MobileNetV2 cut as ``config`` says, and the maps of the brain images of each part of
    the split (cached in ``cache_dir``): ``(scan, model, parts, maps)``."""
    scan = scan_dataset(data)
    torch.manual_seed(0)
    model, parts, maps, _ = model_and_maps(scan, Split.load(split_file), config, cache_dir)
    brain = scan.taxonomy.organ_index("brain")
    return scan, model, parts, {s: subset(maps[s], brain) for s in maps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=REPO / "docs" / "accuracy" / "split.json")
    parser.add_argument("--data", type=Path, default=SAMPLE)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--tuned-seeds", type=int, default=1, help="tuned runs a fraction (seeds 0, 1, ...)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "brain-data-curve.json")
    args = parser.parse_args()

    config = TrainConfig(image_size=448, tune_from="auto", tune_epochs=8, tune_lr=1e-4, tune_head_lr=1e-4,
                         tune_batchnorm="adapted", tune_views="flips", tune_patience=8)
    _, model, parts, maps = brain_maps(args.data, args.split, config, args.cache_dir)
    published = {s: top_features(parts, maps[s], model) for s in maps}
    runs = []
    for fraction in FRACTIONS:
        keep = nested_fraction(maps["train"], fraction)
        for seed in HEAD_SEEDS:
            frozen = copy.deepcopy(model)
            fit_heads(frozen, published["train"].subset([maps["train"].relpaths[i] for i in keep]), published["val"],
                      config.override(seed=seed))
            run = {"fraction": fraction, "train_images": len(keep), "trunk": "frozen", "seed": seed,
                   **{s: round(brain_accuracy(frozen, published[s]), 4) for s in ("val", "test")}}
            runs.append(run)
            print(json.dumps(run), flush=True)
        for seed in range(args.tuned_seeds):
            tuned = copy.deepcopy(model)
            tuned_parts = split_trunk(tuned.trunk, config.tune_from)
            started = time.perf_counter()
            torch.manual_seed(seed)
            history = tune_top(tuned, tuned_parts, rows(maps["train"], keep), maps["val"], config.override(seed=seed))
            moved = {s: top_features(tuned_parts, maps[s], tuned) for s in ("val", "test")}
            run = {"fraction": fraction, "train_images": len(keep), "trunk": "tuned", "seed": seed,
                   **{s: round(brain_accuracy(tuned, moved[s]), 4) for s in ("val", "test")},
                   "kept_epoch": max((r["epoch"] for r in history if r.get("best") and "tune" in r["part"]), default=0),
                   "seconds": round(time.perf_counter() - started, 1)}
            runs.append(run)
            print(json.dumps(run), flush=True)
    record = {"probe": "benchmarks/probes/brain_data_curve.py", "config": config.to_dict(), "cut": parts.cut,
              "split": args.split.name, "val_images": len(maps["val"]), "test_images": len(maps["test"]),
              "runs": runs, "machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
