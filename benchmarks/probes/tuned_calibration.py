"""Issue 17's open question: does adapted BatchNorm make a tuned model's calibration worse, or is it noise?

The timed checkpoints' test ECE with fitted temperatures read 0.021 (tuned, BatchNorm train), 0.025 (frozen)
and 0.032 (tuned, adapted): one run each. This probe measures it over the training seeds of
``benchmarks/tuning.py``: for each tuned checkpoint, and for the frozen model of the same seed (heads trained
on the published top's features with the checkpoint's settings: tuning.py's frozen column), temperatures are
fitted on validation as the training pipeline does (:func:`multihead.training.fit_temperatures`) and the test
ECE is measured, with a 95 % bootstrap interval over the test images and the paired change tuned minus frozen
(the same resampled images for both). Features come from the cached maps at the cut (float16), not from the
image files. One JSON line per checkpoint, appended to ``--out``.

    python benchmarks/probes/tuned_calibration.py /work/runs/tuning/<run>.safetensors \
        --split docs/accuracy/split.json --cache-dir /work/mhcache-maps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import multihead
from multihead.benchmark import machine_info
from multihead.data.scan import scan_dataset
from multihead.data.splits import Split
from multihead.evaluation.metrics import expected_calibration_error, predict_features
from multihead.model.heads import MultiHeadModel
from multihead.model.trunk_split import split_trunk
from multihead.training import TrainConfig, fit_heads, fit_temperatures
from multihead.training.tune import top_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tuning import SAMPLE, model_and_maps

REPO = Path(__file__).resolve().parents[2]
RESAMPLES = 1000


def confidences(model: MultiHeadModel, data) -> tuple[np.ndarray, np.ndarray]:
    """Each image's top joint probability and whether that subtype is right."""
    evaluation = predict_features(model, data.features[:, 0], data.subtypes, data.relpaths)
    return evaluation.joint_probs.max(axis=1), (evaluation.pred_subtypes == evaluation.subtypes).astype(float)


def calibration(model: MultiHeadModel, val, test) -> dict[str, object]:
    """Test ECE at T = 1 and with temperatures fitted on ``val``; the fitted model's (confidence, correct)."""
    model.temperature.logit_scale.fill_(1.0)
    at_one = expected_calibration_error(*confidences(model, test))
    temperatures = fit_temperatures(model, val)
    confidence, correct = confidences(model, test)
    return {"ece": round(expected_calibration_error(confidence, correct), 4), "ece_t1": round(at_one, 4),
            "accuracy": round(float(correct.mean()), 4), "mean_confidence": round(float(confidence.mean()), 4),
            "temperatures": {"router": round(temperatures.get("router", 1.0), 3),
                             **{head: round(t, 3) for head, t in temperatures.get("heads", {}).items()}},
            "_scores": (confidence, correct)}


def bootstrap(frozen: tuple, tuned: tuple, seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile intervals of each ECE and of their paired difference, over resampled test images."""
    rng = np.random.default_rng(seed)
    n = len(frozen[0])
    eces = {"frozen": [], "tuned": [], "change": []}
    for _ in range(RESAMPLES):
        rows = rng.integers(0, n, size=n)
        a = expected_calibration_error(frozen[0][rows], frozen[1][rows])
        b = expected_calibration_error(tuned[0][rows], tuned[1][rows])
        eces["frozen"].append(a), eces["tuned"].append(b), eces["change"].append(b - a)
    return {k: [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]
            for k, v in eces.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="tuned checkpoints written by benchmarks/tuning.py")
    parser.add_argument("--split", type=Path, default=REPO / "docs" / "accuracy" / "split.json")
    parser.add_argument("--data", type=Path, default=SAMPLE)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "tuned-calibration.jsonl")
    args = parser.parse_args()

    split = Split.load(args.split)
    scan = scan_dataset(args.data)
    frozen_by_seed: dict[tuple, dict[str, object]] = {}
    for checkpoint in args.checkpoints:
        started = time.perf_counter()
        tuned = multihead.load(checkpoint)
        config = TrainConfig(**tuned.metadata["training"]["config"])
        torch.manual_seed(config.seed)  # as tuning.py: the frozen column is then the same heads
        frozen, frozen_parts, maps, _ = model_and_maps(scan, split, config, args.cache_dir)
        key = (config.seed, config.image_size, config.tune_from)
        if key not in frozen_by_seed:  # the frozen column does not depend on the tuned run's BatchNorm mode
            published = {s: top_features(frozen_parts, maps[s], frozen) for s in maps}
            fit_heads(frozen, published["train"], published["val"], config)
            frozen_by_seed[key] = calibration(frozen, published["val"], published["test"])
        tuned_parts = split_trunk(tuned.trunk, tuned.trunk.tuned_from)
        moved = {s: top_features(tuned_parts, maps[s], tuned) for s in ("val", "test")}
        result = {"frozen": frozen_by_seed[key], "tuned": calibration(tuned, moved["val"], moved["test"])}
        intervals = bootstrap(result["frozen"]["_scores"], result["tuned"]["_scores"])
        record = {
            "checkpoint": checkpoint.stem, "seed": config.seed, "px": config.image_size,
            "tune_batchnorm": config.tune_batchnorm, "tune_views": config.tune_views,
            "tune_epochs": config.tune_epochs, "split": args.split.name,
            **{name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in result.items()},
            "ece_ci95": {k: intervals[k] for k in ("frozen", "tuned")}, "change_ci95": intervals["change"],
            "seconds": round(time.perf_counter() - started, 1), "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps({k: record[k] for k in ("checkpoint", "frozen", "tuned", "ece_ci95", "change_ci95")}),
              flush=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
