"""Which features should a tuned model's OOD score read? The same estimator fitted on column subsets of one
checkpoint's features: all, the tuned stages', the final stage's alone, and the pooled stages below the cut
(for a frozen model, the automatic cut's; docs/trust.md, "A tuned trunk's OOD score reads the stages below its cut").

    python benchmarks/trust/make_unknowns.py /tmp/unknowns
    python benchmarks/probes/tuned_ood/columns.py --model /work/tuned-train/mobilenet_v2-448-tune-auto.safetensors \\
        --cache /work/tuned-train/mobilenet_v2-448-tune-auto-cache --unknowns /tmp/unknowns
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "trust"))

from ood_small_organs import KINDS, folder_features, split_features

import multihead
from multihead.evaluation.trust import ood_metrics
from multihead.model.ood import MahalanobisOOD
from multihead.model.trunk_split import resolve_tune_from, untuned_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--unknowns", type=Path, required=True)
    args = parser.parse_args()

    model = multihead.load(args.model)
    sets = split_features(model, args.cache)
    paths, unknowns = folder_features(model, args.unknowns, args.cache)
    kinds = np.array([p.parent.name for p in paths])
    total = model.trunk.num_features
    trunk = model.trunk
    if not trunk.tuned_from:  # a frozen model: the columns that tuning from the automatic cut would leave
        trunk = copy.deepcopy(trunk)
        trunk.mark_tuned(resolve_tune_from(trunk.name, "auto"))
    below = untuned_features(trunk)
    with torch.no_grad():  # the network's own output, without the pooled stages (their hooks capture nothing here)
        final = model.trunk.network.eval()(torch.zeros(1, 3, 64, 64)).flatten(1).shape[1]
    subsets = {"all": slice(None), "final stage only": slice(total - final, None),
               f"stages from {trunk.tuned_from} up": slice(below, None),
               "pooled stages below the cut": slice(0, below)}
    mask = model.organ_mask
    for label, columns in subsets.items():
        width = len(range(total)[columns])
        ood = MahalanobisOOD(width, len(model.taxonomy.organ_names))
        train, val, test = (sets[p].features[:, 0, columns] for p in ("train", "val", "test"))
        ood.fit(train, sets["train"].organs, val, sets["val"].organs, organ_mask=mask)
        with torch.no_grad():
            test, scores = ood.score(test, mask).numpy(), ood.score(unknowns[:, columns], mask).numpy()
        threshold = float(ood.threshold)
        by_kind = {k: round(float((scores[kinds == k] > threshold).mean()), 3) for k in KINDS if (kinds == k).any()}
        print(f"{label} ({width} features): AUROC {ood_metrics(test, scores)['auroc']:.4f}, unknowns flagged "
              f"{(scores > threshold).mean():.3f} {by_kind}, test images flagged {(test > threshold).mean():.3f}")


if __name__ == "__main__":
    main()
