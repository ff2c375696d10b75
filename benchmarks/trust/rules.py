import numpy as np
import torch

torch.set_num_threads(1)
from scipy.stats import beta

from multihead.data import VIEWS, scan_dataset
from multihead.data.splits import Split
from multihead.evaluation.trust import selective_scores
from multihead.features import dataset_features
from multihead.model.checkpoint import load
from multihead.model.thresholds import largest_safe_threshold

m = load("/tmp/trust/mobilenet_v2-448.safetensors")
split = Split.load("/tmp/acc/split.json")
scan = scan_dataset("../shared/data/multi-cancer-sample", m.taxonomy)
sets = {
    n: dataset_features(m, scan, split.files(n), views=VIEWS[:1], cache_dir="/work/mhcache")[0] for n in ("val", "test")
}


def sc(d):
    s = selective_scores(m, d.features[:, 0])
    return s["subtype_conf"].numpy(), (s["subtype"] == d.subtypes).numpy()


vc, vok = sc(sets["val"])
tc, tok = sc(sets["test"])


def at(t, c, ok):
    k = c >= t
    return round(float(ok[k].mean()), 4), round(float(k.mean()), 4), int((~ok[k]).sum())


order = np.argsort(-vc)
hits = vok[order].astype(float)
n = np.arange(1, len(hits) + 1)
errs = n - np.cumsum(hits)
for target in (0.99, 0.995, 0.997):
    t = largest_safe_threshold(vc, vok, target, None)
    print("empirical", target, round(t, 4), "val", at(t, vc, vok), "test", at(t, tc, tok))
for conf in (0.8, 0.9, 0.95):
    lb = beta.ppf(1 - conf, n - errs, errs + 1)  # one-sided Clopper-Pearson lower bound
    ok = np.flatnonzero(lb >= 0.99)
    t = vc[order][ok[-1]] if len(ok) else 1.0
    print("clopper-pearson", conf, round(float(t), 4), "val", at(t, vc, vok), "test", at(t, tc, tok))
for t in (0.9, 0.93, 0.95, 0.97, 0.98, 0.99):
    print("fixed", t, "val", at(t, vc, vok), "test", at(t, tc, tok))
