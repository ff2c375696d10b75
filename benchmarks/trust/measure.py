import json
import sys

import numpy as np
import torch

torch.set_num_threads(1)
from pathlib import Path

from multihead.data import VIEWS, scan_dataset
from multihead.data.splits import Split
from multihead.evaluation import expected_calibration_error
from multihead.evaluation.trust import ood_metrics, reliability, risk_coverage, selective_report, selective_scores
from multihead.features import dataset_features, extract_features
from multihead.model.checkpoint import load
from multihead.training.posthoc import fit_ood

ROOT = "../shared/data/multi-cancer-sample"
m = load(f"/tmp/trust/mobilenet_v2-{sys.argv[1]}.safetensors")
split = Split.load("/tmp/acc/split.json")
scan = scan_dataset(ROOT, m.taxonomy)
sets = {
    n: dataset_features(m, scan, split.files(n), views=VIEWS[:1], cache_dir="/work/mhcache")[0]
    for n in ("train", "val", "test")
}
test = sets["test"]
res = {}


def conf_correct(model, data):
    s = selective_scores(model, data.features[:, 0])
    correct = (s["subtype"] == data.subtypes).numpy()
    organ_ok = (s["organ"] == model.subtype_organ[data.subtypes]).numpy()
    return s, correct, organ_ok


s, correct, organ_ok = conf_correct(m, test)
joint_top = s["joint"].gather(1, s["subtype"][:, None]).squeeze(1).numpy()
res["ece_after"] = expected_calibration_error(joint_top, correct)
res["ece_router_after"] = expected_calibration_error(s["organ_prob"].numpy(), organ_ok)
res["ece_subtype_given_organ_after"] = expected_calibration_error(s["subtype_conf"].numpy(), correct)
res["reliability_after"] = reliability(joint_top, correct)
scale = m.temperature.logit_scale.clone()
m.temperature.logit_scale.fill_(1.0)
s0, c0, o0 = conf_correct(m, test)
jt0 = s0["joint"].gather(1, s0["subtype"][:, None]).squeeze(1).numpy()
res["ece_before"] = expected_calibration_error(jt0, c0)
res["reliability_before"] = reliability(jt0, c0)
m.temperature.logit_scale.copy_(scale)
res["test_accuracy"] = float(correct.mean())
res["test_router_accuracy"] = float(organ_ok.mean())
res["selective_test"] = selective_report(m, test)
res["selective_val"] = selective_report(m, sets["val"])
res["thresholds"] = {"router": float(m.thresholds.router), "subtype": float(m.thresholds.subtype)}
res["risk_coverage_subtype_conf"] = risk_coverage(s["subtype_conf"].numpy(), correct)
res["risk_coverage_joint"] = risk_coverage(joint_top, correct)
for name in ("joint", "subtype_conf"):
    rc = res[f"risk_coverage_{name}"]
    acc = np.array(rc["accuracy"])
    cov = np.array(rc["coverage"])
    ok = np.flatnonzero(acc >= 0.99)
    res[f"max_coverage_at_99_{name}"] = float(cov[ok[-1]]) if len(ok) else 0.0
    res[f"aurc_{name}"] = float((1 - acc).mean())
# OOD
ood = {}
for group in ("photos", "synthetic", "near"):
    paths = sorted(Path(f"/tmp/ood/{group}").glob("*.png"))
    f, ok, fail = extract_features(m, paths, cache_dir="/tmp/trust/oodcache")
    ood[group] = (f[:, 0], [paths[i].name for i in ok])
test_f = test.features[:, 0]


def scores_maha(model):
    with torch.no_grad():
        return lambda x: model.ood_score(x).numpy()


def energy(model):
    def f(x):
        with torch.no_grad():
            return (-torch.logsumexp(model.forward_heads(x).router_logits, 1)).numpy()

    return f


def msp(model):
    def f(x):
        with torch.no_grad():
            out = model.forward_heads(x)
            return (-out.joint_probs.max(1).values).numpy()

    return f


methods = {}
F = m.num_features
for k in (16, 32, 64, 128, 256):
    mk = load(f"/tmp/trust/mobilenet_v2-{sys.argv[1]}.safetensors")
    mk.ood.projection = torch.zeros(F, k)
    mk.ood.class_means = torch.zeros(mk.taxonomy.num_organs, k)
    fit_ood(mk, sets["train"], sets["val"])
    methods[f"mahalanobis_pca{k}"] = scores_maha(mk)
methods["energy_router"] = energy(m)
methods["max_joint_prob"] = msp(m)
table = {}
for name, fn in methods.items():
    ins = fn(test_f)
    row = {}
    for group, (x, _) in ood.items():
        row[group] = ood_metrics(ins, fn(x))
    row["photos+synthetic"] = ood_metrics(ins, np.r_[fn(ood["photos"][0]), fn(ood["synthetic"][0])])
    table[name] = row
    print(name, {g: (round(v["auroc"], 4), round(v["fpr_at_95_tpr"], 3)) for g, v in row.items()})
res["ood_methods"] = table
# at the model's stored threshold
thr = float(m.ood.threshold)
fn = methods["mahalanobis_pca64"]
res["ood_stored"] = {
    "threshold": thr,
    "flagged_test": float((fn(test_f) > thr).mean()),
    **{f"flagged_{g}": float((fn(x) > thr).mean()) for g, (x, _) in ood.items()},
    "per_image": {g: dict(zip(names, map(float, fn(x)))) for g, (x, names) in ood.items()},
}
res["ood_test_scores"] = fn(test_f).tolist()
res["ood_group_scores"] = {g: fn(x).tolist() for g, (x, _) in ood.items()}
Path(f"/tmp/trust/measure-{sys.argv[1]}.json").write_text(json.dumps(res, indent=1))
print({k: v for k, v in res.items() if not isinstance(v, (dict, list))})
print(res["selective_test"])
print(res["ood_stored"]["flagged_test"], {k: v for k, v in res["ood_stored"].items() if k.startswith("flagged")})
