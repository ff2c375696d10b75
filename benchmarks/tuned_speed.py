"""Inference speed of a tuned model against the frozen model it came from: the same network, so the same speed.

Both models are timed on the default CPU path (OpenVINO when installed) and on PyTorch, in interleaved rounds
(every model once per round), and the ratio tuned / frozen is reported per round. Writes one JSON file.

    python benchmarks/tuned_speed.py runs/tuning/<tuned>.safetensors --out benchmarks/results/tuned-speed-<cpu>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import multihead
from multihead.benchmark import machine_info
from multihead.benchmark.systems import model_system
from multihead.benchmark.timing import time_steps

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tuned", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    tuned = multihead.load(args.tuned)
    spec = tuned.trunk.spec()
    frozen = multihead.create_model(spec["name"], WEIGHTS, tuned.taxonomy, trunk_stages=tuple(spec["stages"]),
                                    preprocessing=tuned.preprocessing).eval()
    size = tuned.preprocessing.image_size
    batch = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    systems = {(label, backend): model_system(model, backend=backend)
               for backend in ("openvino", "torch") for label, model in (("frozen", frozen), ("tuned", tuned))}
    speeds: dict[tuple[str, str], list[float]] = {key: [] for key in systems}
    for system in systems.values():  # warm-up (OpenVINO compiles here)
        time_steps(lambda system=system: system.step(batch, "fp32"), torch.device("cpu"), 2)
    for _ in range(args.rounds):
        for key, system in systems.items():
            times = time_steps(lambda system=system: system.step(batch, "fp32"), torch.device("cpu"), args.repeats)
            speeds[key].append(args.batch_size / statistics.median(times))
    rows = []
    for backend in ("openvino", "torch"):
        ratios = [t / f for t, f in zip(speeds[("tuned", backend)], speeds[("frozen", backend)])]
        rows.append({"backend": backend, "batch_size": args.batch_size, "image_size": size,
                     "frozen_images_per_second": statistics.median(speeds[("frozen", backend)]),
                     "tuned_images_per_second": statistics.median(speeds[("tuned", backend)]),
                     "tuned_over_frozen": statistics.median(ratios), "tuned_over_frozen_range": [min(ratios),
                                                                                                 max(ratios)]})
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"tuned": str(args.tuned.name), "tuned_from": spec.get("tuned_from"),
                                    "rounds": args.rounds, "machine": machine_info(), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
