"""Probe: do other poolings of the same trunk maps beat the default features? (docs/accuracy.md)

    [SPLIT=split.json] [SEEDS=5] [SETS=default,+gem] python benchmarks/probes/pooling/train.py FEATURES.pt ...

Trains the library's default heads (`PRESETS["default"]`: joint heads, standardised features, 30 epochs,
best epoch on validation) with seeds 0-4 (``SEEDS``) on column sets of the probe's features (extract.py), and prints
one JSON line per (file, feature set): mean and standard deviation of validation and test accuracy and
of each measurable organ's test accuracy.
"""
import copy
import json
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

import multihead
from multihead.data import scan_dataset
from multihead.data.preprocessing import Preprocessing
from multihead.data.splits import Split
from multihead.features import FeatureSet
from multihead.model.trunk import Trunk
from multihead.training import PRESETS, fit_heads

ORGANS = ("all", "brain", "lung_colon", "lymphoma")
SEEDS = range(int(os.environ.get("SEEDS", "5")))
SETS = {  # name -> probe columns; "means" is the library's default feature vector (stages="auto")
    "default": ["means"],
    "+max": ["means", "max18"],
    "+gem": ["means", "gem18"],
    "+grid2": ["means", "grid2_18"],
    "+grid3": ["means", "grid3_18"],
    "+grid2+grid2_17": ["means", "grid2_18", "grid2_17"],
}
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
REPO = Path(__file__).resolve().parents[3]
SPLIT = os.environ.get("SPLIT", REPO / "docs" / "accuracy" / "split.json")
split = Split.load(SPLIT)
scan = scan_dataset(REPO.parent / "shared" / "data" / "multi-cancer-sample")
records = {r.relpath: r for r in scan.records}
taxonomy = scan.taxonomy


def feature_sets(data: dict, columns: list[str]) -> dict[str, FeatureSet]:
    features = torch.cat([data[c].float() for c in columns], 1)
    row = {f: i for i, f in enumerate(data["files"])}
    out = {}
    for part in ("train", "val", "test"):
        files = split.files(part)
        rows = torch.tensor([row[f] for f in files])
        organs = torch.tensor([taxonomy.organ_index(records[f].organ) for f in files])
        subtypes = torch.tensor([taxonomy.subtype_index(records[f].subtype) for f in files])
        out[part] = FeatureSet(features[rows][:, None], organs, subtypes, list(files), ("identity",))
    return out


def one_run(sets: dict[str, FeatureSet], seed: int) -> dict[str, float]:
    width = sets["train"].features.shape[-1]
    trunk = Trunk(nn.Identity(), name="probe", source="torchvision", num_features=width, preprocessing=Preprocessing())
    model = multihead.create_model(trunk, taxonomy)
    fit_heads(model, sets["train"], sets["val"], copy.deepcopy(PRESETS["default"]).override(seed=seed))
    run = {}
    for part in ("val", "test"):
        with torch.no_grad():
            _, subtype = model.decide(model.forward_heads(sets[part].features[:, 0]))
        run[part] = float((subtype == sets[part].subtypes).float().mean())
    test = sets["test"]
    for organ in ORGANS:
        rows = test.organs == taxonomy.organ_index(organ)
        run[organ] = float((subtype[rows] == test.subtypes[rows]).float().mean())
    return run


for path in sys.argv[1:]:
    data = torch.load(path)
    for name in os.environ.get("SETS", ",".join(SETS)).split(","):
        sets = feature_sets(data, SETS[name])
        runs = [one_run(sets, seed) for seed in SEEDS]
        summary = {k: [round(100 * statistics.mean(r[k] for r in runs), 1),
                       round(100 * statistics.stdev(r[k] for r in runs), 1)] for k in runs[0]}
        width = sets["train"].features.shape[-1]
        print(json.dumps({"split": split.info.get("seed"), "size": data["size"], "features": name, "width": width,
                          "seeds": len(runs), **summary}), flush=True)
