"""Probe: does a small MLP neck before the heads beat linear heads on cached features? (docs/accuracy.md)

    MULTIHEAD_CACHE=... python benchmarks/probes/mlp_head.py 448

Kept as it was run for the accuracy page: a self-contained joint-loss trainer over cached MobileNetV2
features of the shared split (docs/accuracy/split.json), linear heads against a GELU neck of 512 or 1024
units, best epoch on validation, then the test split.
"""

import sys
import time

import torch
import torch.nn.functional as F

import multihead
from multihead.data import VIEWS, scan_dataset
from multihead.data.splits import Split
from multihead.features import dataset_features

torch.set_num_threads(1)
size = int(sys.argv[1])
split = Split.load("docs/accuracy/split.json")
scan = scan_dataset("../shared/data/multi-cancer-sample")
trunk = multihead.create_trunk("mobilenet_v2", weights="../shared/weights/mobilenet_v2-imagenet-features.safetensors")
model = multihead.create_model(trunk, image_size=size)
sets = {
    n: dataset_features(model, scan, split.files(n), views=VIEWS[:1], cache_dir="/work/mhcache")[0]
    for n in ("train", "val", "test")
}
tax = model.taxonomy
organ_of = torch.tensor(tax.subtype_organ_indices)


def run(hidden, dropout, epochs=60, lr=1e-3, wd=1e-4, seed=0):
    torch.manual_seed(seed)
    Fdim = model.num_features
    neck = (
        torch.nn.Sequential(torch.nn.Linear(Fdim, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout))
        if hidden
        else torch.nn.Dropout(dropout)
    )
    out_dim = hidden or Fdim
    head = torch.nn.Linear(out_dim, 26 + 8)
    params = list(neck.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    X, y = sets["train"].features[:, 0], sets["train"].subtypes
    cnt = torch.bincount(y, minlength=26).float()
    w = 1 / cnt[y]
    w = w / w.mean()
    mask = torch.zeros(8, dtype=torch.bool)
    mask[organ_of[y].unique()] = True

    def joint(x):
        z = head(neck(x))
        r, s = z[:, :8].masked_fill(~mask, -1e9), z[:, 8:]
        lp = F.log_softmax(r, 1)[:, organ_of]
        pad = torch.full((x.shape[0], 8, 5), -1e9)
        for o in range(8):
            a = tax.head_offsets[o]
            pad[:, o, : tax.head_sizes[o]] = s[:, a : a + tax.head_sizes[o]]
        lse = torch.logsumexp(pad, 2)
        return lp + s - lse[:, organ_of], r

    best = (-1, None)
    for _ep in range(epochs):
        neck.train()
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 32):
            b = perm[i : i + 32]
            j, _ = joint(X[b])
            loss = (F.nll_loss(j, y[b], reduction="none") * w[b]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        neck.eval()
        with torch.no_grad():
            j, r = joint(sets["val"].features[:, 0])
            yv = sets["val"].subtypes
            o = r.argmax(1)
            jm = j.masked_fill(organ_of[None] != o[:, None], -1e9)
            acc = (jm.argmax(1) == yv).float().mean().item()
        if acc > best[0]:
            best = (acc, [p.detach().clone() for p in params])
    for p, v in zip(params, best[1]):
        p.data.copy_(v)
    with torch.no_grad():
        j, r = joint(sets["test"].features[:, 0])
        yt = sets["test"].subtypes
        o = r.argmax(1)
        jm = j.masked_fill(organ_of[None] != o[:, None], -1e9)
        pred = jm.argmax(1)
        res = {
            "val": round(best[0], 4),
            "test": round((pred == yt).float().mean().item(), 4),
            "router": round((o == organ_of[yt]).float().mean().item(), 4),
        }
        for org in ["all", "brain", "lung_colon", "lymphoma"]:
            m = organ_of[yt] == tax.organ_index(org)
            res[org] = round((pred[m] == yt[m]).float().mean().item(), 3)
    return res


for hidden, dropout in [(0, 0.0), (0, 0.3), (512, 0.3), (1024, 0.5)]:
    t = time.time()
    print(size, hidden, dropout, run(hidden, dropout), round(time.time() - t, 1), flush=True)
