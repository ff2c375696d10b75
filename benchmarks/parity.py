"""Does each fast-path option give the same answers as float32 eager? Random and real images, two trunks.

Writes ``benchmarks/results/<hardware-slug>-parity.json``. Usage::

    .venv/bin/python benchmarks/parity.py [--data ../shared/data/multi-cancer-sample] [--per-subtype N]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import multihead
from multihead.benchmark import collect_outputs, compare_outputs, hardware_slug, machine_info
from multihead.images import IMAGE_EXTENSIONS
from multihead.inference import InferenceConfig

REPO = Path(__file__).resolve().parents[1]
FP32 = InferenceConfig(precision="fp32", channels_last=False)
# name -> (config, convert the model's weights to channels_last, torch.compile the trunk)
CANDIDATES = {
    "default": (InferenceConfig(), False, False),
    "fp32_channels_last_model": (InferenceConfig(precision="fp32", channels_last=True), True, False),
    "fp32_compiled": (FP32, False, True),
    "bf16": (InferenceConfig(precision="bf16", channels_last=False), False, False),
    "bf16_channels_last": (InferenceConfig(precision="bf16", channels_last=True), False, False),
}


def _images(data: Path, per_subtype: int | None, preprocessing: multihead.Preprocessing) -> torch.Tensor:
    files = []
    for folder in sorted(p for p in data.glob("*/*") if p.is_dir()):
        found = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        files.extend(found[:per_subtype] if per_subtype else found)
    return torch.stack([preprocessing.load(f) for f in files])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "multi-cancer-sample")
    parser.add_argument("--weights", type=Path,
                        default=REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors")
    parser.add_argument("--per-subtype", type=int, default=None, help="at most N real images per subtype")
    parser.add_argument("--random-images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    models = {
        "resnet18 (random weights, seed 0)": multihead.create_model("resnet18", trunk_weights=None, seed=0),
        "mobilenet_v2 (ImageNet trunk, random heads, seed 0)": multihead.create_model(
            multihead.create_trunk("mobilenet_v2", weights=args.weights), seed=0),
    }
    began = time.perf_counter()
    real = _images(args.data, args.per_subtype, next(iter(models.values())).preprocessing)
    print(f"loaded {len(real)} real images in {time.perf_counter() - began:.0f} s", flush=True)
    noise = torch.randint(0, 256, (args.random_images, 3, 224, 224), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    rows = []
    for model_name, model in models.items():
        model.eval()
        for inputs_name, images in (("random", noise), ("real", real)):
            batches = list(images.split(args.batch_size))
            reference = collect_outputs(model, batches, FP32)
            for name in args.candidates:
                config, convert, compiled = CANDIDATES[name]
                candidate_model = copy.deepcopy(model)
                if convert:
                    candidate_model.to(memory_format=torch.channels_last)
                if compiled:
                    candidate_model.trunk.network.compile()
                began = time.perf_counter()
                metrics = compare_outputs(model, reference, collect_outputs(candidate_model, batches, config))
                row = {"model": model_name, "inputs": inputs_name, "candidate": name,
                       "resolved": str(config.resolve("cpu")), "seconds": time.perf_counter() - began, **metrics}
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"torch": torch.__version__, "machine": machine_info("cpu"),
              "reference": str(FP32), "results": rows}
    out = args.out or REPO / "benchmarks" / "results" / f"{hardware_slug('cpu')}-parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
