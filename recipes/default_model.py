"""Reproduce the bundled default model, ``multihead/weights/default.safetensors``, from the shared data.

    python recipes/default_model.py                      # the shipped file: ImageNet MobileNetV2 trunk
    python recipes/default_model.py --trunk resnet18 --trunk-weights imagenet --data KAGGLE_DIR --out model.safetensors

Trained on every real image there is: ``multi-cancer-sample`` and ``multi-cancer-extra`` together (``--data`` takes
one folder or several). Same seed, same leak-free split, same configuration as the shipped file. The embedded
trunk is stored in float16 only if that changes no prediction on the test split (checked here, and recorded in
the file).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import multihead
from multihead.data import VIEWS
from multihead.evaluation import evaluate_folder
from multihead.evaluation.trust import ood_report
from multihead.features import dataset_features
from multihead.inference import run_batch
from multihead.training import PRESETS
from multihead.training.pipeline import train_from_folder

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "multihead" / "weights" / "default.safetensors"
DATA = (SHARED / "data" / "multi-cancer-sample", SHARED / "data" / "multi-cancer-extra")
RECIPE = {"preset": "default", "overrides": {}, "trunk": "mobilenet_v2",
          "trunk_weights": SHARED / "weights" / "mobilenet_v2-imagenet-features.safetensors"}


def _changed_predictions(model: multihead.MultiHeadModel, half: multihead.MultiHeadModel, result) -> int:
    """How many test-split predictions differ between the float32 trunk and the float16-rounded one."""
    data, _ = dataset_features(model, result.scan, result.split.files("test"), views=VIEWS[:1], cache_dir=None)
    paths = {r.relpath: r.path for r in result.scan.records}
    changed = 0
    for start in range(0, len(data), 64):
        batch = torch.stack([model.preprocessing.load(paths[p]) for p in data.relpaths[start:start + 64]])
        full, rounded = model.decide(run_batch(model, batch))[1], half.decide(run_batch(half, batch))[1]
        changed += int((full != rounded).sum())
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=list(DATA), help="data folders (their union)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--trunk", default=RECIPE["trunk"])
    parser.add_argument("--trunk-weights", default=RECIPE["trunk_weights"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--near-ood", type=Path, default=SHARED / "data" / "near-ood",
                        help="real images that are none of the subtypes, one folder per group (skipped if absent)")
    args = parser.parse_args()

    config = PRESETS[RECIPE["preset"]].override(**RECIPE["overrides"])
    started = time.perf_counter()
    result = train_from_folder(args.data, config=config, trunk=args.trunk, trunk_weights=args.trunk_weights,
                               cache_dir=args.cache_dir, on_stage=print)
    model = result.model
    test, _ = evaluate_folder(model, args.data, split=result.split, subset="test", cache_dir=args.cache_dir)
    model.metadata["test_report"] = {k: test[k] for k in ("n_images", "router", "overall", "organs", "paper",
                                                          "sources") if k in test}
    if args.near_ood.is_dir():  # what it answers for real images that are none of its subtypes (docs/trust.md)
        near = ood_report(model, args.data, args.near_ood, split=result.split, subset="test", cache_dir=args.cache_dir)
        model.metadata["near_ood"] = {"folder": args.near_ood.name, "in_distribution": near["in_distribution"],
                                      "groups": {g: {k: row[k] for k in ("n_out", "flagged", "organ_claimed",
                                                                          "subtype_claimed", "auroc", "fpr_at_95_tpr")}
                                                 for g, row in near["groups"].items()}}
    model.metadata["recipe"] = {**RECIPE, "script": "recipes/default_model.py",  # names, never this machine's paths
                                "data": [source.name for source in result.scan.sources], "trunk": args.trunk,
                                "trunk_weights": Path(args.trunk_weights).name, "seconds": 0.0}

    trunk_dtype = "float32"
    if model.trunk.weights_id is None:  # embedded: try float16 storage
        tmp = args.out.with_suffix(".fp16-check.safetensors")
        multihead.save(model, tmp, trunk_dtype="float16")
        changed = _changed_predictions(model, multihead.load(tmp), result)
        tmp.unlink()
        model.metadata["float16_trunk_check"] = {"test_images": test["n_images"], "changed_predictions": changed}
        trunk_dtype = "float16" if changed == 0 else "float32"
        print(f"float16 trunk changes {changed} of {test['n_images']} test predictions -> storing {trunk_dtype}")
    model.metadata["recipe"]["seconds"] = round(time.perf_counter() - started, 1)
    multihead.save(model, args.out, trunk_dtype=trunk_dtype)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.0f} s; "
          f"test router accuracy {test['router']['accuracy']:.4f}, overall {test['overall']['accuracy']:.4f}")


if __name__ == "__main__":
    main()
