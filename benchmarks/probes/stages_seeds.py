"""Probe: how much do pooled trunk stages add, beyond seed-to-seed noise? (docs/accuracy.md)

    MULTIHEAD_CACHE=... python benchmarks/probes/stages_seeds.py

Trains the heads five times (seeds 0-4: head initialisation and batch order) on the cached 448-px
MobileNetV2 features of the shared split, with the trunk's output alone or with its pooled stages, with
and without standardisation, for the joint and the flat head; writes the mean and standard deviation
of validation and test accuracy to docs/accuracy/stages-seeds.json (first run from a scratch copy
of this code, same logic, features from the same cache).
"""

import copy
import json
import statistics
from pathlib import Path

import torch

import multihead
from multihead.data import VIEWS, scan_dataset
from multihead.data.splits import Split
from multihead.features import dataset_features
from multihead.training import PRESETS, fit_heads

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors"
ORGANS = ("all", "brain", "lung_colon", "lymphoma")
SEEDS = range(5)

torch.set_num_threads(1)
split = Split.load(REPO / "docs" / "accuracy" / "split.json")
scan = scan_dataset(REPO.parent / "shared" / "data" / "multi-cancer-sample")
results = {}
for name, stages, standardize in [("output", "none", False), ("output-std", "none", True),
                                  ("stages", "auto", True), ("stages-raw", "auto", False)]:
    base = PRESETS["default"].override(stages=stages, standardize=standardize)
    model = multihead.create_model("mobilenet_v2", WEIGHTS, scan.taxonomy, trunk_stages=base.trunk_stages,
                                   image_size=448)
    sets = {part: dataset_features(model, scan, split.files(part), views=VIEWS[:1], cache_dir=None)[0]
            for part in ("train", "val", "test")}
    for method in ("multihead", "flat"):
        runs = []
        for seed in SEEDS:
            trained = copy.deepcopy(model)
            fit_heads(trained, sets["train"], sets["val"], base.override(seed=seed, method=method))
            run = {}
            for part in ("val", "test"):
                with torch.no_grad():
                    _, subtype = trained.decide(trained.forward_heads(sets[part].features[:, 0]))
                run[part] = float((subtype == sets[part].subtypes).float().mean())
            test = sets["test"]
            for organ in ORGANS:
                rows = test.organs == trained.taxonomy.organ_index(organ)
                run[organ] = float((subtype[rows] == test.subtypes[rows]).float().mean())
            runs.append(run)
        summary = {key: [round(statistics.mean(r[key] for r in runs), 4),
                         round(statistics.stdev(r[key] for r in runs), 4)] for key in runs[0]}
        results[f"{name}/{method}"] = {"stages": stages, "standardize": standardize, "method": method,
                                       "mean_sd": summary, "runs": runs}
        print(name, method, summary, flush=True)
out = REPO / "docs" / "accuracy" / "stages-seeds.json"
out.write_text(json.dumps({"seeds": list(SEEDS), "results": results}, indent=1))
print("wrote", out)
