"""What pooling earlier trunk stages costs at inference: the same model with and without ``stages``.

    python benchmarks/stages_cost.py --json benchmarks/results/stages-cost-cpu-amd-epyc-2c.json

Times the ``multihead`` system (trunk, pooled features, fused heads) on the library's default inference
path, random weights (speed does not depend on their values), for ResNet18 at 224 px and MobileNetV2 at
448 px (the bundled model's trunk and size), at a few batch sizes, alternating the two variants.
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

TRUNKS = {"resnet18": 224, "mobilenet_v2": 448}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    default = InferenceConfig().resolve("cpu")
    rows = []
    for trunk, size in TRUNKS.items():
        models = {stages: multihead.create_model(trunk, trunk_weights=None, trunk_stages=stages, image_size=size,
                                                 seed=0).eval() for stages in ((), "auto")}
        for batch_size in args.batch_size:
            for stages, model in models.items():
                system = model_system(model, channels_last=default.channels_last, backend=default.backend)
                row = benchmark_system(system, batch_size=batch_size, image_size=size, precision=default.precision,
                                       channels_last=default.channels_last, repeats=args.repeats,
                                       backend=default.backend)
                row.update(trunk=trunk, stages=list(model.trunk.stages), num_features=model.num_features)
                rows.append(row)
                print(f"{trunk} {size}px batch {batch_size} stages={bool(stages)}: "
                      f"{row['images_per_second']:.1f} images/s", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**machine_info("cpu"), "torch": torch.__version__,
                                     "date": time.strftime("%Y-%m-%d"), "inference": asdict(default),
                                     "results": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
