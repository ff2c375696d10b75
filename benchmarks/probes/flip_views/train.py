"""Probe: linear joint heads (the library's fit_heads) on multi-stage / multi-view features."""
import sys

import torch
from torch import nn

import multihead
from multihead.data import scan_dataset
from multihead.data.preprocessing import Preprocessing
from multihead.data.splits import Split
from multihead.evaluation import feature_metrics
from multihead.features import FeatureSet
from multihead.model.trunk import Trunk
from multihead.training import TrainConfig, fit_heads

torch.set_num_threads(1)
parts = [torch.load(p) for p in sys.argv[1].split("+")]
data = parts[0]
assert all(p["files"] == data["files"] for p in parts)
files, X = data["files"], torch.cat([p["features"].float() for p in parts], 1)  # [N, V, D]
STAGES = data["stages"]
CH = {3: 24, 6: 32, 10: 64, 13: 96, 16: 160, 17: 320, 18: 1280}
split = Split.load("/work/main/docs/accuracy/split.json")
scan = scan_dataset("/work/shared/data/multi-cancer-sample")
label = {r.relpath: r for r in scan.records}
tax = scan.taxonomy
offsets, o = {}, 0
for kind in ("mean", "max"):
    for s in STAGES:
        offsets[(kind, s)] = (o, o + CH[s]); o += CH[s]

def cols(spec):
    idx = []
    for kind, s in spec:
        a, b = offsets[(kind, s)]; idx += list(range(a, b))
    return torch.tensor(idx)

def sets(spec, view_mode, standardize):
    c = cols(spec)
    Z = X[:, :, c]
    out = {}
    for name in ("train", "val", "test"):
        wanted = set(split.files(name))
        rows = [i for i, f in enumerate(files) if f in wanted]
        feats = Z[rows]
        out[name] = [feats, rows]
    if standardize:
        tr = out["train"][0][:, 0]
        mu, sd = tr.mean(0), tr.std(0) + 1e-3
        for k in out: out[k][0] = (out[k][0] - mu) / sd
    result = {}
    for name, (feats, rows) in out.items():
        if view_mode == "avg":
            feats = feats.mean(1, keepdim=True)
        elif view_mode == "identity" or name != "train":
            feats = feats[:, :1] if view_mode != "avg" else feats
        rel = [files[i] for i in rows]
        result[name] = FeatureSet(feats, torch.tensor([tax.organ_index(label[r].organ) for r in rel]),
                                  torch.tensor([tax.subtype_index(label[r].subtype) for r in rel]), rel, ("v",) * feats.shape[1])
    return result

def run(spec, view_mode="identity", standardize=False, epochs=30, wd=1e-4, lr=1e-3, seed=0):
    s = sets(spec, view_mode, standardize)
    D = s["train"].features.shape[-1]
    trunk = Trunk(nn.Identity(), name="probe", source="torchvision", num_features=D, preprocessing=Preprocessing())
    model = multihead.create_model(trunk)
    cfg = TrainConfig(epochs=epochs, lr=lr, weight_decay=wd, views="dihedral" if view_mode == "train" else "identity", calibrate=False, seed=seed, standardize=False)
    fit_heads(model, s["train"], s["val"], cfg)
    res = {"D": D, "val": round(feature_metrics(model, s["val"])["accuracy"], 4)}
    test = s["test"]
    with torch.no_grad():
        organ, sub = model.decide(model.forward_heads(test.features[:, 0]))
    res["test"] = round(float((sub == test.subtypes).float().mean()), 4)
    res["router"] = round(float((organ == test.organs).float().mean()), 4)
    for org in ("all", "brain", "lung_colon", "lymphoma"):
        m = test.organs == model.taxonomy.organ_index(org)
        res[org] = round(float((sub[m] == test.subtypes[m]).float().mean()), 3)
    return res

if __name__ == "__main__" and len(sys.argv) < 3:
    final = [("mean", 18)]
    late = [("mean", s) for s in (13, 16, 17, 18)]
    allmean = [("mean", s) for s in STAGES]
    allmm = allmean + [("max", s) for s in STAGES]
    late_mm = late + [("max", s) for s in (13, 16, 17, 18)]
    for name, spec in [("final", final), ("late", late), ("allmean", allmean), ("late_mm", late_mm), ("allmm", allmm)]:
        for std in (False, True):
            print(name, "std" if std else "raw", run(spec, standardize=std), flush=True)

def sweep():
    allmean = [("mean", s) for s in STAGES]
    for epochs, wd, lr in [(60, 1e-4, 1e-3), (30, 1e-3, 1e-3), (30, 1e-5, 1e-3), (60, 1e-3, 3e-4)]:
        print("allmean std", epochs, wd, lr, run(allmean, standardize=True, epochs=epochs, wd=wd, lr=lr), flush=True)

def dihedral():
    allmean = [("mean", s) for s in STAGES]
    final = [("mean", 18)]
    for name, spec in [("allmean", allmean), ("final", final)]:
        for mode in ("identity", "train", "avg"):
            for seed in (0, 1, 2):
                print(name, mode, seed, run(spec, view_mode=mode, standardize=(name == "allmean"), seed=seed), flush=True)

if len(sys.argv) > 2: globals()[sys.argv[2]]()
