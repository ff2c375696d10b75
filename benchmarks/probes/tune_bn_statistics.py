"""Probe: does the change of the top's BatchNorm statistics alone undo the warmed-up heads?

Results in docs/accuracy/tune-bn-statistics.json; the answer (yes) led to ``tune_batchnorm="adapted"``.

On the committed split (MobileNetV2, 448 px, ``features.14`` up): warm the heads up on the frozen top's features
as ``tune_top`` does, then re-estimate the top's statistics on the training maps, as train-mode BatchNorm does in
the first steps of tuning (an exponential average with PyTorch's momentum 0.1 over one epoch's batches, or the
cumulative average of ``adapt_batchnorm``), and score the same heads on the validation features again.

    python benchmarks/probes/tune_bn_statistics.py --cache-dir /work/mhcache-maps
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
from multihead.training import TrainConfig  # noqa: E402
from multihead.training.heads import feature_statistics, fit_heads  # noqa: E402
from multihead.training.tune import organ_balanced_accuracy, top_features  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "tune-bn-statistics.json")
    args = parser.parse_args()
    config = TrainConfig(image_size=448, seed=0, tune_from="auto")
    torch.manual_seed(0)
    split = Split.load(REPO / "docs" / "accuracy" / "split.json")
    model, parts, maps, _ = model_and_maps(scan_dataset(SAMPLE), split, config, args.cache_dir, ("train", "val"))
    train, val = top_features(parts, maps["train"], model), top_features(parts, maps["val"], model)
    fit_heads(model, train, val, config)
    _, std = feature_statistics(train)

    def scores(features) -> dict[str, float]:
        return {"val_accuracy": round(feature_metrics(model, features)["accuracy"], 4),
                "organ_balanced": round(organ_balanced_accuracy(model, features), 4)}

    result: dict[str, object] = {"what": __doc__.splitlines()[0], "warmed_up_heads_imagenet_statistics": scores(val)}
    layers = [m for m in parts.top.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    published = [(m.running_mean.clone(), m.running_var.clone()) for m in layers]
    for label, momentum in (("exponential_momentum_0.1", 0.1), ("cumulative", None)):
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = momentum
        parts.set_batchnorm_training(True)
        order = torch.randperm(len(maps["train"]), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for _, cut_maps, pooled in maps["train"].batches(order, config.batch_size, parts, model):
                parts.top_forward(cut_maps, pooled)
        moved = top_features(parts, maps["val"], model)
        change = ((moved.features[:, 0] - val.features[:, 0]) / std).abs().mean()
        result[f"same_heads_statistics_{label}"] = {**scores(moved), "mean_abs_feature_change_in_train_sd":
                                                    round(float(change), 3)}
        for layer, (mean, var) in zip(layers, published, strict=True):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.momentum = 0.1
    result |= {"machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
