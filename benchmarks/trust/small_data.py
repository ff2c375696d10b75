"""Issue 39's measurement: subtype thresholds on a small data set, the two rules side by side.

A folder of ``--per-subtype`` real images a subtype (the first ones by name in ``multi-cancer-sample``) is copied,
a model trained on it per seed with the default recipe (MobileNetV2 trunk from ``shared/weights``), and its
subtype thresholds fitted twice on the same validation features: ``small_data="follow"`` (an organ too small for a
confidence bound aims at half its validation mistakes) and ``"strict"`` (the 99 % target, the earlier rule). For
each: the share of validation and test images answered with a subtype, how many of those answers are right, and
the share of ``shared/data/near-ood`` images answered with a subtype. Writes one JSON file naming the machine.

    python benchmarks/trust/small_data.py                      # 30 a subtype, seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from multihead.benchmark import machine_info
from multihead.data import VIEWS
from multihead.evaluation import evaluate_folder
from multihead.evaluation.trust import ood_report
from multihead.features import dataset_features
from multihead.training import PRESETS
from multihead.training.pipeline import train_from_folder
from multihead.training.posthoc import fit_thresholds

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


def small_folder(source: Path, target: Path, per_subtype: int) -> int:
    """Copy the first ``per_subtype`` images (by name) of every subtype folder; returns how many."""
    copied = 0
    for subtype in sorted(p for p in source.glob("*/*") if p.is_dir()):
        for image in sorted(p for p in subtype.iterdir() if p.is_file())[:per_subtype]:
            destination = target / subtype.relative_to(source) / image.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, destination)
            copied += 1
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "multi-cancer-sample")
    parser.add_argument("--ood", type=Path, default=SHARED / "data" / "near-ood")
    parser.add_argument("--weights", type=Path,
                        default=SHARED / "weights" / "mobilenet_v2-imagenet-features.safetensors")
    parser.add_argument("--per-subtype", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "small-data-thresholds.json")
    args = parser.parse_args()

    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "small"
        images = small_folder(args.data, data, args.per_subtype)
        cache = args.cache_dir or Path(scratch) / "cache"
        for seed in args.seeds:
            config = replace(PRESETS["default"], seed=seed)
            result = train_from_folder(data, config=config, trunk="mobilenet_v2", trunk_weights=args.weights,
                                       cache_dir=cache)
            model, split = result.model, result.split
            val, _ = dataset_features(model, result.scan, split.files("val"), views=VIEWS[:1], cache_dir=cache)
            for rule in ("follow", "strict"):
                fitted = fit_thresholds(model, val, target_accuracy=config.target_accuracy, small_data=rule)
                test, _ = evaluate_folder(model, data, split=split, subset="test", cache_dir=cache, n_resamples=10)
                unknown = ood_report(model, data, args.ood, split=split, subset="test", cache_dir=cache)
                runs.append({
                    "seed": seed, "rule": rule, "rules": fitted["rules"]["subtype"],
                    "targets": fitted.get("subtype_targets"),
                    "val": {"n": fitted["n"], "answered_with_subtype": fitted["coverage"],
                            "accuracy_answered": fitted["accuracy_kept"], "accuracy_all": fitted["accuracy_all"]},
                    "test": {"n": test["trust"]["n"], "answered_with_subtype": test["trust"]["coverage"],
                             "accuracy_answered": test["trust"]["accuracy_kept"],
                             "accuracy_all": test["trust"]["accuracy_all"]},
                    "near_ood_subtype_claimed": {name: group["subtype_claimed"]
                                                 for name, group in unknown["groups"].items()},
                })
                print(f"seed {seed} {rule:6s}: val {fitted['coverage']:.1%} answered, {fitted['accuracy_kept']:.1%} "
                      f"right (all {fitted['accuracy_all']:.1%}); test {test['trust']['coverage']:.1%} answered, "
                      f"{test['trust']['accuracy_kept']:.1%} right; near-ood subtype claimed "
                      + ", ".join(f"{k} {v:.0%}" for k, v in runs[-1]["near_ood_subtype_claimed"].items()),
                      flush=True)
    out = {"issue": 39, "data": f"{args.data.name}, first {args.per_subtype} images a subtype ({images} images)",
           "trunk": f"mobilenet_v2 ({args.weights.name})", "preset": "default", "target_accuracy": 0.99,
           "seconds": round(time.perf_counter() - started, 1), "machine": machine_info(), "runs": runs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
