"""The issue-6 targets for one checkpoint (the bundled default model unless told): calibration, kept
accuracy at the stored operating point, out-of-distribution AUROC. Writes one JSON file.

    MULTIHEAD_CACHE=... python benchmarks/trust/default_model.py --ood /tmp/ood \
        --json benchmarks/results/trust-default-model.json

Unlike the other scripts here, this one reads everything from the repository (the split of
docs/accuracy/split.json) except the out-of-distribution folder (see README.md for how it was made).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import multihead
from multihead.data import VIEWS, scan_dataset
from multihead.data.splits import Split
from multihead.evaluation import evaluate_folder
from multihead.evaluation.trust import ood_report, selective_report
from multihead.features import dataset_features
from multihead.inference import default_model_path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "multi-cancer-sample")
    parser.add_argument("--split", type=Path, default=REPO / "docs" / "accuracy" / "split.json")
    parser.add_argument("--ood", type=Path, required=True, help="folder of images that are none of the organs")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    model = multihead.load(args.model)
    split, scan = Split.load(args.split), scan_dataset(args.data)
    test, _ = evaluate_folder(model, args.data, split=split, subset="test")
    selective = {}
    for part in ("val", "test"):
        data, _ = dataset_features(model, scan, split.files(part), views=VIEWS[:1], cache_dir=None)
        selective[part] = selective_report(model, data)
    ood = ood_report(model, args.data, args.ood, split=split, subset="test")
    result = {
        "model": args.model.name,
        "date": time.strftime("%Y-%m-%d"),
        "thresholds": {"router": float(model.thresholds.router), "subtype": float(model.thresholds.subtype),
                       "ood": float(model.ood.threshold)},
        "test_accuracy": test["overall"]["accuracy"],
        "router_accuracy": test["router"]["accuracy"],
        "ece_after_scaling": test["overall"]["ece"],
        "selective": selective,
        "ood": {k: ood[k] for k in ("auroc", "fpr_at_95_tpr", "n_in", "n_out", "flagged_in", "flagged_out")},
        "targets": {
            "ece_le_0.03": test["overall"]["ece"] <= 0.03,
            "ood_auroc_ge_0.95": ood["auroc"] >= 0.95,
            "kept_accuracy_ge_0.99": selective["test"]["accuracy_kept"] >= 0.99,
        },
    }
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["targets"]), f"coverage {selective['test']['coverage']:.3f}",
          f"kept accuracy {selective['test']['accuracy_kept']:.4f}")


if __name__ == "__main__":
    main()
