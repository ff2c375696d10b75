"""Issue 34's question: do the images of both shared folders take brain to the paper's 92.9 %?

Trains on the committed split of ``multi-cancer-sample`` + ``multi-cancer-extra`` with the brain training images
cut to nested, subtype-stratified fractions (a quarter, a half, all; every other organ keeps all of its), and
measures brain (and every organ) on validation and test, per data folder too:

- ``--trunk frozen``: the bundled model's configuration (the default preset: frozen MobileNetV2, 640 px, pooled
  stages, the joint heads), on cached features; seconds a run.
- ``--trunk tuned``: issue 17's pick on top of it (``features.14`` up tuned, adapted BatchNorm, dihedral views of
  the cached maps, 12 epochs, lr 1e-4 / 1e-4, the epoch kept on validation), at ``--px``.

One JSON line per run in ``--out``. Choices are read off validation; test is reported.

    python benchmarks/brain_curve.py --trunk frozen --seeds 0 1
    python benchmarks/brain_curve.py --trunk tuned --px 448 --seeds 0 1 --cache-dir /work/mhcache
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tuning import WEIGHTS, model_and_maps, summary

from multihead.benchmark import machine_info
from multihead.data import VIEWS, scan_dataset
from multihead.data.splits import Split, make_split
from multihead.features import dataset_features
from multihead.model.heads import create_model
from multihead.training import PRESETS, fit_heads
from multihead.training.tune import top_features, tune_top

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FOLDERS = (SHARED / "multi-cancer-sample", SHARED / "multi-cancer-extra")
SPLIT = REPO / "docs" / "accuracy" / "sample-extra" / "split.json"
FRACTIONS = (0.25, 0.5, 1.0)
TUNED = {"tune_from": "auto", "tune_epochs": 12, "tune_lr": 1e-4, "tune_head_lr": 1e-4, "tune_batchnorm": "adapted",
         "tune_views": "dihedral"}
"""Issue 17's pick (docs/accuracy.md, "Tuning the top of the shared trunk")."""


def committed_split(scan) -> Split:
    """The committed split of both folders (seed 0), made once and then read back."""
    if SPLIT.exists():
        return Split.load(SPLIT)
    split, _ = make_split(scan, seed=0)
    split.save(SPLIT)
    return split


def brain_fraction(organs: torch.Tensor, subtypes: torch.Tensor, brain: int, fraction: float, seed: int) -> list[int]:
    """Rows to train on: every non-brain row, and the first ``fraction`` of each brain subtype's rows in one seeded
    order (so a larger fraction holds a smaller one)."""
    generator = torch.Generator().manual_seed(seed)
    keep = (organs != brain).nonzero().flatten().tolist()
    for subtype in subtypes[organs == brain].unique().tolist():
        own = ((organs == brain) & (subtypes == subtype)).nonzero().flatten()
        own = own[torch.randperm(len(own), generator=generator)]
        keep += own[:round(fraction * len(own))].tolist()
    return sorted(keep)


def _rows(data, keep: list[int]):
    """The rows ``keep`` of a MapSet."""
    return type(data)(data.organs[keep], data.subtypes[keep], [data.relpaths[i] for i in keep], data.cache,
                      [data.locations[i] for i in keep], [data.paths[i] for i in keep])


def by_source(model, data, brain: int) -> dict[str, dict[str, float]]:
    """Brain accuracy (end to end) per data folder: the first part of each relpath."""
    with torch.no_grad():
        _, subtype = model.decide(model.forward_heads(data.features[:, 0].to(model.device)))
    right = (subtype.cpu() == data.subtypes) & (data.organs == brain)
    result = {}
    for source in sorted({p.split("/")[0] for p in data.relpaths}):
        mine = torch.tensor([p.split("/")[0] == source for p in data.relpaths]) & (data.organs == brain)
        if mine.any():
            result[source] = {"n": int(mine.sum()), "accuracy": round(float(right[mine].sum() / mine.sum()), 4)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunk", choices=("frozen", "tuned"), required=True)
    parser.add_argument("--px", type=int, default=PRESETS["default"].image_size)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "brain-curve.jsonl")
    args = parser.parse_args()

    scan = scan_dataset(FOLDERS)
    split = committed_split(scan)
    brain = scan.taxonomy.organ_index("brain")
    base = PRESETS["default"].override(image_size=args.px, **(TUNED if args.trunk == "tuned" else {}))
    started = time.perf_counter()
    if args.trunk == "frozen":
        model = create_model("mobilenet_v2", WEIGHTS, scan.taxonomy, trunk_stages=base.trunk_stages,
                             image_size=base.image_size)
        sets = {s: dataset_features(model, scan, split.files(s), views=VIEWS[:1], cache_dir=args.cache_dir)[0]
                for s in ("train", "val", "test")}
    else:
        model, _, maps, _ = model_and_maps(scan, split, base, args.cache_dir)
    prepared_s = round(time.perf_counter() - started, 1)
    print(f"{args.trunk} {args.px} px: features or maps in {prepared_s} s", flush=True)
    for fraction in args.fractions:
        for seed in args.seeds:
            config = base.override(seed=seed)
            started = time.perf_counter()
            torch.manual_seed(seed)
            if args.trunk == "frozen":
                train = sets["train"]
                keep = brain_fraction(train.organs, train.subtypes, brain, fraction, seed)
                fit_heads(model, train.subset([train.relpaths[i] for i in keep]), sets["val"], config)
                measured, kept_epoch = sets, None
            else:
                run_model, run_parts = model_and_maps(scan, split, config, args.cache_dir, subsets=())[:2]
                train = maps["train"]
                keep = brain_fraction(train.organs, train.subtypes, brain, fraction, seed)
                history = tune_top(run_model, run_parts, _rows(train, keep), maps["val"], config)
                kept_epoch = max((r["epoch"] for r in history if r.get("best") and "tune" in r["part"]), default=0)
                measured = {s: top_features(run_parts, maps[s], run_model) for s in ("val", "test")}
                model = run_model
            record = {
                "trunk": args.trunk, "px": args.px, "fraction": fraction, "seed": seed,
                "brain_train_images": int((train.organs[keep] == brain).sum()), "train_images": len(keep),
                "kept_epoch": kept_epoch, "seconds": round(time.perf_counter() - started, 1),
                **{s: summary(model, measured[s]) for s in ("val", "test")},
                "brain_by_source": {s: by_source(model, measured[s], brain) for s in ("val", "test")},
                "config": config.to_dict(), "split": SPLIT.name, "prepared_s": prepared_s,
                "machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
            }
            print(json.dumps({k: record[k] for k in ("trunk", "fraction", "seed", "brain_train_images",
                                                     "kept_epoch", "seconds")}),
                  "brain val", record["val"]["organs"]["brain"], "test", record["test"]["organs"]["brain"],
                  record["brain_by_source"]["test"], flush=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
