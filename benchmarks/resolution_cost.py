"""What the input size costs at inference: the bundled model's architecture at several sizes.

    python benchmarks/resolution_cost.py --json benchmarks/results/resolution-cost-cpu-amd-epyc-2c.json

Times the ``multihead`` system (MobileNetV2 trunk with the default pooled stages, fused heads; random weights,
speed does not depend on their values) on the library's default inference path and on fp32 eager PyTorch,
at each input size and batch size, for docs/accuracy.md's "Input size" table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

import multihead
from multihead.benchmark import benchmark_system, machine_info, model_system
from multihead.inference import InferenceConfig

SIZES = (224, 448, 560, 640, 768)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    paths = {"default": InferenceConfig().resolve("cpu"), "fp32 eager": InferenceConfig(backend="torch",
                                                                                          channels_last=False)}
    rows = []
    for size in args.size:
        model = multihead.create_model("mobilenet_v2", trunk_weights=None, trunk_stages="auto", image_size=size,
                                       seed=0).eval()
        for batch_size in args.batch_size:
            for path, config in paths.items():
                system = model_system(model, channels_last=bool(config.channels_last), backend=config.backend)
                row = benchmark_system(system, batch_size=batch_size, image_size=size, precision=config.precision,
                                       channels_last=bool(config.channels_last), repeats=args.repeats,
                                       backend=config.backend)
                row.update(path=path, trunk="mobilenet_v2", image_size=size)
                rows.append(row)
                print(f"{size}px batch {batch_size} {path}: {row['images_per_second']:.1f} images/s", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**machine_info("cpu"), "torch": torch.__version__,
                                     "date": time.strftime("%Y-%m-%d"),
                                     "inference": {k: asdict(v) for k, v in paths.items()}, "results": rows},
                                    indent=1, default=str))


if __name__ == "__main__":
    main()
