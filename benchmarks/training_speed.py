"""Training speed on cached features, feature extraction against the trunk's own throughput, and the cache.

    python benchmarks/training_speed.py --data ../shared/data/multi-cancer-sample

Measures, on this machine: (1) training the heads for 20 epochs on cached features of the whole sample
(target: under 5 s on a 2-core CPU); (2) feature extraction from JPEG/PNG files (decode with DataLoader
workers, resize, trunk) in images/s, against the trunk alone on ready uint8 batches (target: within 20 %);
(3) a second extraction of the same files, which must run the trunk zero times. Writes
``benchmarks/results/training-<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import multihead
import multihead.features.extract as features_module
from multihead.benchmark import hardware_slug, machine_info
from multihead.data import scan_dataset
from multihead.features import FeatureSet, extract_features
from multihead.inference import InferenceConfig, run_features
from multihead.training import TrainConfig, fit_heads

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "multi-cancer-sample")
    parser.add_argument("--trunk", default="resnet18")
    parser.add_argument("--extract-images", type=int, default=512, help="files timed for extraction")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = multihead.create_model(args.trunk, trunk_weights=None, seed=0)
    scan = scan_dataset(args.data)
    tax = model.taxonomy
    results: dict[str, object] = {
        "machine": machine_info()["cpu_model"], "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "trunk": args.trunk, "threads": torch.get_num_threads(),
    }

    # (1) heads on cached features: every image of the sample, 20 epochs, dihedral views as in the default
    n = len(scan.records)
    subtypes = torch.tensor([tax.subtype_index(r.subtype) for r in scan.records])
    organs = torch.tensor([tax.organ_index(r.organ) for r in scan.records])
    features = torch.randn(n, 8, model.num_features)  # values do not change the work done
    data = FeatureSet(features, organs, subtypes, [r.relpath for r in scan.records], ("v",) * 8)
    started = time.perf_counter()
    fit_heads(model, data, None, TrainConfig(epochs=20))
    results["heads_20_epochs"] = {"images": n, "seconds": round(time.perf_counter() - started, 2)}
    print("heads, 20 epochs:", results["heads_20_epochs"])

    # (2) extraction from files against the trunk alone on the same number of ready batches
    paths = [r.path for r in scan.records[: args.extract_images]]
    config = InferenceConfig()
    batch = torch.randint(0, 256, (config.batch_size, 3, 224, 224), dtype=torch.uint8)
    run_features(model, batch, config)  # warm-up
    started = time.perf_counter()
    for _ in range(max(1, len(paths) // config.batch_size)):
        run_features(model, batch, config)
    trunk_rate = (max(1, len(paths) // config.batch_size) * config.batch_size) / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        extract_features(model, paths, cache_dir=cache, config=config)
        extract_rate = len(paths) / (time.perf_counter() - started)
        calls = []
        original = features_module.run_features
        features_module.run_features = lambda *a, **k: calls.append(1) or original(*a, **k)
        try:
            started = time.perf_counter()
            extract_features(model, paths, cache_dir=cache, config=config)
            second = time.perf_counter() - started
        finally:
            features_module.run_features = original
    results["extraction"] = {
        "images": len(paths), "precision": config.precision, "batch_size": config.batch_size,
        "trunk_only_images_per_second": round(trunk_rate, 1),
        "from_files_images_per_second": round(extract_rate, 1),
        "ratio": round(extract_rate / trunk_rate, 3),
        "second_run_seconds": round(second, 2), "second_run_trunk_batches": len(calls),
    }
    print("extraction:", results["extraction"])
    out = args.out or REPO / "benchmarks" / "results" / f"training-{hardware_slug()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
