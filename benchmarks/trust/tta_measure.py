import json
import time

import numpy as np
import torch

from multihead.evaluation import expected_calibration_error
from multihead.evaluation.trust import risk_coverage
from multihead.inference import classify
from multihead.model.checkpoint import load
from multihead.model.decision import decide, subtype_confidence

m = load("/tmp/trust/mobilenet_v2-448.safetensors")
d = torch.load("/tmp/trust/test_dihedral.pt")
f, subtypes = d["features"], d["subtypes"]
with torch.no_grad():
    joints = torch.stack([m.forward_heads(f[:, v]).joint_probs.double() for v in range(8)])
res = {}
for name, joint in (("identity", joints[0]), ("tta", joints.mean(0))):
    organ, sub = decide(joint, m.subtype_organ)
    op, sc = subtype_confidence(joint, m.subtype_organ, organ, sub)
    ok = (sub == subtypes).numpy()
    ook = (organ == m.subtype_organ[subtypes]).numpy()
    st = np.array([str(x) for x in m.thresholds.status(op, sc)])
    kept = st == "organ_and_subtype"
    rc = risk_coverage(sc.numpy(), ok)
    acc = np.array(rc["accuracy"])
    good = np.flatnonzero(acc >= 0.99)
    res[name] = {
        "accuracy": float(ok.mean()),
        "router_accuracy": float(ook.mean()),
        "ece": expected_calibration_error(joint.gather(1, sub[:, None]).squeeze(1).numpy(), ok),
        "coverage_at_stored_thresholds": float(kept.mean()),
        "accuracy_kept": float(ok[kept].mean()),
        "max_coverage_at_99": float(rc["coverage"][good[-1]]) if len(good) else 0.0,
    }
print(json.dumps(res, indent=1))
torch.set_num_threads(2)
paths = ["../shared/data/multi-cancer-sample/" + p for p in d["relpaths"][:32]]
for tta in (False, True, False, True):
    t = time.perf_counter()
    classify(paths, model=m, batch_size=16, tta=tta)
    el = time.perf_counter() - t
    res[f"time_{'tta' if tta else 'plain'}_s_per_image"] = el / len(paths)
    print(tta, el / len(paths))
json.dump(res, open("/tmp/trust/tta.json", "w"), indent=1)
