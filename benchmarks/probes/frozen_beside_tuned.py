"""Issue 17's open question: do the frozen top's pooled features, kept beside the tuned ones, protect the
small organs? (The top stages would run twice: once as published, once tuned; one trunk, one pass.)

For a tuned checkpoint of ``benchmarks/tuning.py`` and its split, from the cached maps at the cut:

- **frozen**: heads trained on the published top's features (what tuning.py's frozen column trains);
- **tuned, heads refit**: new heads on the tuned checkpoint's features, trained the same way (the control:
  what retraining the heads alone changes);
- **tuned + frozen top**: new heads on the tuned features with the published top's pooled features appended
  (the stages below the cut are the same in both, so they appear once).

Every model's heads come from ``fit_heads`` with the checkpoint's own training settings and seed, the epoch
picked on validation; test is reported, per organ. One JSON line per checkpoint, appended to ``--out``.

    python benchmarks/probes/frozen_beside_tuned.py /work/runs/tuning/<run>.safetensors \
        --split docs/accuracy/split.json --cache-dir /work/mhcache-maps
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import multihead
from multihead.benchmark import machine_info
from multihead.data.scan import scan_dataset
from multihead.data.splits import Split
from multihead.features import FeatureSet
from multihead.model.heads import MultiHeadModel
from multihead.model.trunk_split import split_trunk, untuned_features
from multihead.training import TrainConfig, fit_heads
from multihead.training.tune import top_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tuning import SAMPLE, model_and_maps, summary

REPO = Path(__file__).resolve().parents[2]


def widened(model: MultiHeadModel, num_features: int, seed: int) -> MultiHeadModel:
    """A model like ``model`` whose router and heads read ``num_features`` features (fresh heads)."""
    trunk = copy.deepcopy(model.trunk)
    trunk.num_features = num_features
    wide = MultiHeadModel(trunk, model.taxonomy, preprocessing=model.preprocessing)
    wide.reset_heads(seed)
    return wide


def trained(model: MultiHeadModel, sets: dict[str, FeatureSet], config: TrainConfig) -> dict[str, object]:
    fit_heads(model, sets["train"], sets["val"], config)
    return {subset: summary(model, sets[subset]) for subset in ("val", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a tuned checkpoint written by benchmarks/tuning.py")
    parser.add_argument("--split", type=Path, default=REPO / "docs" / "accuracy" / "split.json")
    parser.add_argument("--data", type=Path, default=SAMPLE)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "frozen-beside-tuned.jsonl")
    args = parser.parse_args()

    started = time.perf_counter()
    tuned = multihead.load(args.checkpoint)
    config = TrainConfig(**tuned.metadata["training"]["config"])
    split = Split.load(args.split)
    scan = scan_dataset(args.data)
    frozen, frozen_parts, maps, _ = model_and_maps(scan, split, config, args.cache_dir)
    tuned_parts = split_trunk(tuned.trunk, tuned.trunk.tuned_from)
    below = untuned_features(tuned.trunk)
    sets = {"frozen": {}, "tuned": {}, "both": {}}
    for subset, data in maps.items():
        published = top_features(frozen_parts, data, frozen)
        moved = top_features(tuned_parts, data, tuned)
        # the stages below the cut are untouched by tuning: the same values in both
        assert torch.allclose(published.features[:, :, :below], moved.features[:, :, :below], atol=1e-4)
        sets["frozen"][subset], sets["tuned"][subset] = published, moved
        sets["both"][subset] = FeatureSet(torch.cat([moved.features, published.features[:, :, below:]], dim=2),
                                          moved.organs, moved.subtypes, moved.relpaths, moved.views)
    results = {}
    for name, features in sets.items():
        torch.manual_seed(config.seed)
        results[name] = trained(widened(tuned, features["train"].features.shape[2], config.seed), features, config)
        print(name, "val", results[name]["val"]["accuracy"], "test", results[name]["test"]["accuracy"],
              results[name]["test"]["organs"], flush=True)
    record = {
        "checkpoint": args.checkpoint.name, "split_seed": int(split.info.get("seed", 0)), "cut": tuned_parts.cut,
        "features": {name: int(s["train"].features.shape[2]) for name, s in sets.items()},
        "untuned_features": below, "config": config.to_dict(), **results,
        "seconds": round(time.perf_counter() - started, 1), "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
    }
    with args.out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
