"""Accuracy on the shared real-image sample: multihead, the paper's per-organ method and a flat head,
with the ImageNet trunk that loads offline and with random ResNet18 weights as the floor.

Every configuration uses one leak-free split (seed 0) and the feature cache, so only the first run
extracts features. Writes ``docs/accuracy/<name>/`` (report.md, report.json, figures) and
``docs/accuracy/summary.json``; ``docs/accuracy.md`` is written by hand from those numbers.

    python benchmarks/accuracy.py --data ../shared/data/multi-cancer-sample --out docs/accuracy
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import multihead
from multihead.evaluation import evaluate_folder
from multihead.reports import markdown_report, write_report
from multihead.runs import train_from_folder
from multihead.splits import Split
from multihead.training import PRESETS

REPO = Path(__file__).resolve().parents[1]
IMAGENET_TRUNK = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors"

# name -> (trunk, trunk weights, preset, overrides)
CONFIGS = {
    "mobilenet_v2-paper-per-organ": ("mobilenet_v2", IMAGENET_TRUNK, "paper", {"method": "per-organ"}),
    "mobilenet_v2-multihead-identity": ("mobilenet_v2", IMAGENET_TRUNK, "default", {"views": "identity"}),
    "mobilenet_v2-per-organ-identity": ("mobilenet_v2", IMAGENET_TRUNK, "default",
                                        {"method": "per-organ", "views": "identity"}),
    "mobilenet_v2-flat-identity": ("mobilenet_v2", IMAGENET_TRUNK, "default", {"method": "flat", "views": "identity"}),
    "mobilenet_v2-multihead-dihedral": ("mobilenet_v2", IMAGENET_TRUNK, "default", {}),
    "mobilenet_v2-448-multihead-identity": ("mobilenet_v2", IMAGENET_TRUNK, "default",
                                            {"views": "identity", "image_size": 448}),
    "mobilenet_v2-448-per-organ-identity": ("mobilenet_v2", IMAGENET_TRUNK, "default",
                                            {"method": "per-organ", "views": "identity", "image_size": 448}),
    "mobilenet_v2-448-flat-identity": ("mobilenet_v2", IMAGENET_TRUNK, "default",
                                       {"method": "flat", "views": "identity", "image_size": 448}),
    "resnet18-random-multihead": ("resnet18", None, "default", {"views": "identity"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "multi-cancer-sample")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy")
    parser.add_argument("--models", type=Path, default=Path("runs/accuracy"), help="where checkpoints go")
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run these configurations only")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()

    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    split: Split | None = None
    split_path = args.out / "split.json"
    if split_path.exists():
        split = Split.load(split_path)
    for name in args.only or list(CONFIGS):
        trunk, weights, preset, overrides = CONFIGS[name]
        torch.manual_seed(0)  # random trunks are reproducible too
        config = PRESETS[preset].override(**overrides)
        started = time.perf_counter()
        result = train_from_folder(args.data, config=config, trunk=trunk, trunk_weights=weights, split=split,
                                   cache_dir=args.cache_dir, on_stage=print)
        if split is None:
            split = result.split
            args.out.mkdir(parents=True, exist_ok=True)
            split.save(split_path)
        model = result.model
        args.models.mkdir(parents=True, exist_ok=True)
        model.save(args.models / f"{name}.safetensors")
        test, _ = evaluate_folder(model, args.data, split=split, subset="test", cache_dir=args.cache_dir)
        val, _ = evaluate_folder(model, args.data, split=split, subset="val", cache_dir=args.cache_dir)
        trunk_label = f"{trunk} ({'ImageNet, shared/weights' if weights else 'random'})"
        info = {"path": f"{name}.safetensors", "trunk": trunk_label,
                "config": config.to_dict()}
        text = markdown_report(test, title=name, model_info=info, val_report=val)
        write_report(args.out / name, test, model.taxonomy, history=result.history, markdown=text)
        summary[name] = {
            "trunk": trunk, "trunk_weights": "imagenet (shared/weights mobilenet_v2)" if weights else "random",
            "config": config.to_dict(), "seconds": round(time.perf_counter() - started, 1),
            "timings": result.timings,
            "router_accuracy": test["router"]["accuracy"], "overall_accuracy": test["overall"]["accuracy"],
            "ece": test["overall"]["ece"],
            "organs": {o: {k: e.get(k) for k in ("n", "accuracy", "accuracy_ci95", "accuracy_given_organ")}
                       for o, e in test["organs"].items()},
            "val_organs": {o: e.get("accuracy") for o, e in val["organs"].items()},
        }
        summary["_machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                               "multihead": multihead.__version__, "date": time.strftime("%Y-%m-%d")}
        summary_path.write_text(json.dumps(summary, indent=1))
        print(f"{name}: router {test['router']['accuracy']:.4f}, overall {test['overall']['accuracy']:.4f}")


if __name__ == "__main__":
    main()
