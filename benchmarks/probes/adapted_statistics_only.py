"""Probe: how much of the adapted-statistics tuning comes from the statistics alone? The top's BatchNorm
statistics re-estimated on the training maps (``adapt_batchnorm``), no weight of the trunk moved, the heads
trained again on those features; against the frozen heads of the same run. One line per split appended to
docs/accuracy/adapted-statistics-only.jsonl.

    python benchmarks/probes/adapted_statistics_only.py --cache-dir /work/mhcache-maps \\
        [--split /work/splits/split1.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from tuning import SAMPLE, model_and_maps, summary  # noqa: E402

from multihead.benchmark import machine_info  # noqa: E402
from multihead.data.scan import scan_dataset  # noqa: E402
from multihead.data.splits import Split  # noqa: E402
from multihead.training import TrainConfig  # noqa: E402
from multihead.training.heads import fit_heads  # noqa: E402
from multihead.training.tune import adapt_batchnorm, top_features  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--split", type=Path, default=REPO / "docs" / "accuracy" / "split.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "adapted-statistics-only.jsonl")
    args = parser.parse_args()
    config = TrainConfig(image_size=448, seed=args.seed, tune_from="auto")
    torch.manual_seed(args.seed)
    split = Split.load(args.split)
    model, parts, maps, _ = model_and_maps(scan_dataset(SAMPLE), split, config, args.cache_dir)
    result: dict[str, object] = {"split_seed": int(split.info.get("seed", 0)), "seed": args.seed}
    for label in ("frozen", "adapted_statistics"):
        started = time.perf_counter()
        if label == "adapted_statistics":
            adapt_batchnorm(parts, maps["train"], model, batch_size=config.batch_size)
        features = {s: top_features(parts, data, model) for s, data in maps.items()}
        fit_heads(model, features["train"], features["val"], config)
        result[label] = {s: summary(model, features[s]) for s in ("val", "test")}
        result[f"{label}_s"] = round(time.perf_counter() - started, 1)
        print(label, {s: (v["accuracy"], v["organ_balanced"], v["organs"]) for s, v in result[label].items()},
              flush=True)
    result |= {"machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
    with args.out.open("a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
