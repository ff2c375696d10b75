"""Issue 19's out-of-distribution targets for the bundled model: the share of each organ's images flagged
(train, validation and test of the model's own split, counted apart), the shipped examples flagged, and the
AUROC on unknown images. With ``--refit`` the OOD estimator is fitted again on the same split's features with
the current rule (:mod:`multihead.model.ood`) first, and ``--write`` saves the model with it.

    python benchmarks/trust/make_unknowns.py /tmp/unknowns
    python benchmarks/trust/ood_small_organs.py --cache /work/mhcache-fh --unknowns /tmp/unknowns --refit \
        --json benchmarks/results/trust-ood-small-organs.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import multihead
from multihead.data import VIEWS, scan_dataset
from multihead.data.folders import expand_inputs
from multihead.data.splits import Split
from multihead.evaluation.trust import ood_metrics
from multihead.features import dataset_features, extract_features
from multihead.inference import default_model_path
from multihead.training.posthoc import fit_ood

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "multi-cancer-sample"


def _cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.processor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--unknowns", type=Path, required=True)
    parser.add_argument("--refit", action="store_true")
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    model = multihead.load(args.model)
    split = Split(model.metadata["split"]["files"], model.metadata["split"]["info"])
    scan = scan_dataset(DATA)
    sets = {part: dataset_features(model, scan, split.files(part), views=VIEWS[:1], cache_dir=args.cache)[0]
            for part in ("train", "val", "test")}
    before = dict(model.metadata["trust"]["ood"])
    if args.refit:
        model.metadata["trust"]["ood"] = fit_ood(model, sets["train"], sets["val"])
    result = {"model": args.model.name, "date": time.strftime("%Y-%m-%d"), "machine": f"{_cpu()}, 2 cores",
              "refit": args.refit, "ood_before": before, "ood_after": model.metadata["trust"]["ood"],
              "flagged": {}}
    organs = model.taxonomy.organ_names
    with torch.no_grad():
        scores = {part: model.ood_score(s.features[:, 0]).numpy() for part, s in sets.items()}
    threshold = float(model.ood.threshold)
    for part, data in sets.items():
        organ_of = data.organs.numpy()
        for index, organ in enumerate(organs):
            rows = organ_of == index
            if rows.any():
                flagged = int((scores[part][rows] > threshold).sum())
                result["flagged"].setdefault(organ, {})[part] = {"n": int(rows.sum()), "flagged": flagged,
                                                                 "share": flagged / int(rows.sum())}
    examples = list(expand_inputs([REPO / "multihead" / "examples"]))
    feats, _, _ = extract_features(model, examples, views=VIEWS[:1], cache_dir=args.cache)
    with torch.no_grad():
        example_scores = model.ood_score(feats[:, 0]).numpy()
    result["examples"] = {p.name: {"score": float(s), "flagged": bool(s > threshold)}
                          for p, s in zip(examples, example_scores)}
    unknown_paths = list(expand_inputs([args.unknowns]))
    unknown, _, _ = extract_features(model, unknown_paths, views=VIEWS[:1], cache_dir=args.cache)
    with torch.no_grad():
        unknown_scores = model.ood_score(unknown[:, 0]).numpy()
    result["unknowns"] = {
        "set": "benchmarks/trust/make_unknowns.py: 32 noise, 32 text, 32 synthetic patterns (no photographs offline)",
        **ood_metrics(scores["test"], unknown_scores), "flagged": float((unknown_scores > threshold).mean()),
        "by_kind": {kind: float(np.mean([s > threshold for p, s in zip(unknown_paths, unknown_scores)
                                         if p.parent.name == kind])) for kind in ("noise", "text", "pattern")}}
    worst = max(v["share"] for parts in result["flagged"].values() for v in parts.values())
    result["targets"] = {"each_organ_split_flagged_le_5pct": worst <= 0.05,
                         "no_example_flagged": not any(v["flagged"] for v in result["examples"].values()),
                         "unknowns_auroc_ge_0.99": result["unknowns"]["auroc"] >= 0.99}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.write:
        multihead.save(model, args.write, trunk_dtype="float16")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
