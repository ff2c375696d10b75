"""Probe: why every tuning run loses validation accuracy in its first epoch (docs/accuracy/tune-drift.json).

Hypothesis: the warmed-up heads lean on features whose spread over the training images is tiny (a ReLU6 that
is almost always 0 or 6), because standardisation divides by that spread; the first epoch of tuning moves
those features by little in absolute terms but by many standard deviations, and the logits with them.

On the committed split (MobileNetV2, 448 px, features.14 up, the picked configuration): warm the heads up as
``tune_top`` does, run one tuning epoch, and on the validation images compare frozen and epoch-1 features in
standardised units, grouped by the features' training spread. Then the intervention: put the frozen values
back into the features of the lowest-spread group (or of a random group of the same size, the control) and
measure the epoch-1 heads' validation accuracy again.

    python benchmarks/probes/tune_drift.py --cache-dir /work/mhcache-maps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from tuning import SAMPLE, model_and_maps  # noqa: E402

from multihead.benchmark import machine_info  # noqa: E402
from multihead.data.scan import scan_dataset  # noqa: E402
from multihead.data.splits import Split  # noqa: E402
from multihead.evaluation.metrics import feature_metrics  # noqa: E402
from multihead.features import FeatureSet  # noqa: E402
from multihead.training import TrainConfig  # noqa: E402
from multihead.training.heads import feature_statistics  # noqa: E402
from multihead.training.tune import top_features, tune_top  # noqa: E402

GROUPS = 5  # the features split into quintiles of their training spread


class _Stop(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "tune-drift.json")
    args = parser.parse_args()
    config = TrainConfig(image_size=448, seed=0, tune_from="auto", tune_epochs=8, tune_patience=8)
    torch.manual_seed(0)
    split = Split.load(REPO / "docs" / "accuracy" / "split.json")
    model, parts, maps, _ = model_and_maps(scan_dataset(SAMPLE), split, config, args.cache_dir, ("train", "val"))
    frozen_train = top_features(parts, maps["train"], model)
    frozen_val = top_features(parts, maps["val"], model)
    mean, std = feature_statistics(frozen_train)
    captured: dict[str, object] = {}

    def on_epoch(record: dict[str, object]) -> None:
        if str(record["part"]).startswith("tune"):  # heads are in the standardised space here
            captured["val_features"] = top_features(parts, maps["val"], model).features[:, 0]
            captured["record"] = record
            raise _Stop

    started = time.perf_counter()
    try:
        tune_top(model, parts, maps["train"], maps["val"], config, on_epoch=on_epoch)
    except _Stop:
        pass
    elapsed = time.perf_counter() - started
    # the model's heads are the epoch-1 heads in the standardised space (tune_top stopped before folding them)
    before, after = frozen_val.features[:, 0], captured["val_features"]
    z_before, z_after = (before - mean) / std, (after - mean) / std
    drift = (z_after - z_before).abs().mean(0)  # mean |change| per feature, in training standard deviations
    raw_drift = (after - before).abs().mean(0)
    order = std.argsort()
    groups = order.chunk(GROUPS)
    weights = torch.cat([model.router.weight, *[h.weight for h in model.heads.values()]]).detach()
    influence = (weights.abs().sum(0) * drift)  # how far each feature's change moves the logits, summed

    def accuracy(z: torch.Tensor) -> float:
        data = FeatureSet(z[:, None], frozen_val.organs, frozen_val.subtypes, frozen_val.relpaths, ("identity",))
        return round(feature_metrics(model, data)["accuracy"], 4)

    generator = torch.Generator().manual_seed(0)
    random_group = torch.randperm(len(std), generator=generator)[:len(groups[0])]
    restored = {}
    for name, rows in [("lowest_spread_fifth", groups[0]), ("highest_spread_fifth", groups[-1]),
                       ("random_fifth", random_group)]:
        z = z_after.clone()
        z[:, rows] = z_before[:, rows]
        restored[name] = accuracy(z)
    result = {
        "what": __doc__.splitlines()[0],
        "val_accuracy": {"epoch1_heads_on_frozen_features": accuracy(z_before),
                         "epoch1": accuracy(z_after),
                         "epoch1_recorded": round(captured["record"]["val"]["accuracy"], 4)},
        "restored_frozen_values_of": restored,
        "by_spread_fifth": [{"std_range": [round(float(std[g].min()), 5), round(float(std[g].max()), 5)],
                             "mean_abs_change_raw": round(float(raw_drift[g].mean()), 5),
                             "mean_abs_change_in_std": round(float(drift[g].mean()), 3),
                             "share_of_logit_influence": round(float(influence[g].sum() / influence.sum()), 3)}
                            for g in groups],
        "features": len(std), "epoch_s": round(elapsed, 1), "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
