"""Does each fast-path option give the same answers as float32 eager? Random and real images, three models.

Writes ``benchmarks/results/<hardware-slug>-parity.json``. Usage::

    .venv/bin/python benchmarks/parity.py [--data ../shared/data/multi-cancer-sample] [--per-subtype N]
    .venv/bin/python benchmarks/parity.py --per-subtype 100 --models resnet18 mobilenet_v2 bundled \
        --candidates default torch_default onnxruntime_fp32 openvino_fp32 openvino_bf16 \
        --out benchmarks/results/cpu-amd-epyc-2c-parity-backends.json

A candidate passes when it gives the reference's subtype on at least 99.9 % of the images and no joint
probability moves by more than 1e-4 (fp32 rounding is at most about 1e-5 here, bf16 at least 1e-3).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import torch

import multihead
from multihead.benchmark import collect_outputs, compare_outputs, hardware_slug, machine_info
from multihead.data.images import IMAGE_EXTENSIONS
from multihead.inference import InferenceConfig, default_model_path

REPO = Path(__file__).resolve().parents[1]
FP32 = InferenceConfig(precision="fp32", channels_last=False, backend="torch")
PASS_AGREEMENT, PASS_MAX_ABS_DIFF = 0.999, 1e-4
# name -> (config, convert the model's weights to channels_last, torch.compile the trunk)
CANDIDATES = {
    "default": (InferenceConfig(), False, False),
    "torch_default": (InferenceConfig(backend="torch"), False, False),
    "fp32_channels_last_model": (InferenceConfig(precision="fp32", channels_last=True, backend="torch"), True, False),
    "fp32_compiled": (FP32, False, True),
    "bf16": (InferenceConfig(precision="bf16", channels_last=False, backend="torch"), False, False),
    "bf16_channels_last": (InferenceConfig(precision="bf16", channels_last=True, backend="torch"), False, False),
    "onnxruntime_fp32": (InferenceConfig(backend="onnxruntime"), False, False),
    "openvino_fp32": (InferenceConfig(backend="openvino"), False, False),
    "openvino_bf16": (InferenceConfig(backend="openvino", precision="bf16"), False, False),
}
MODELS = ("resnet18", "mobilenet_v2", "bundled")


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
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    def random_resnet18() -> multihead.MultiHeadModel:
        torch.manual_seed(0)  # the trunk's random weights too, not only the heads: the same rows every run
        return multihead.create_model("resnet18", trunk_weights=None, seed=0)

    builders = {
        "resnet18": ("resnet18 (random weights, seed 0)", random_resnet18),
        "mobilenet_v2": ("mobilenet_v2 (ImageNet trunk, random heads, seed 0)", lambda: multihead.create_model(
            multihead.create_trunk("mobilenet_v2", weights=args.weights), seed=0)),
        "bundled": ("bundled default model (mobilenet_v2, trained heads)",
                    lambda: multihead.load(default_model_path())),
    }
    models = {builders[key][0]: builders[key][1]() for key in args.models}
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # image size -> (random, real)
    rows = []
    for model_name, model in models.items():
        model.eval()
        size = model.preprocessing.image_size
        if size not in inputs:
            began = time.perf_counter()
            inputs[size] = (torch.randint(0, 256, (args.random_images, 3, size, size), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(0)),
                            _images(args.data, args.per_subtype, model.preprocessing))
            print(f"loaded {len(inputs[size][1])} real images at {size} px in {time.perf_counter() - began:.0f} s",
                  flush=True)
        for inputs_name, images in zip(("random", "real"), inputs[size]):
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
                row["passes"] = (row["subtype_agreement"] >= PASS_AGREEMENT
                                 and row["max_abs_joint_prob_diff"] <= PASS_MAX_ABS_DIFF)
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"torch": torch.__version__, "machine": machine_info("cpu"),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "reference": str(FP32),
              "models": {name: {"trunk": model.trunk.spec(), "image_size": model.preprocessing.image_size}
                         for name, model in models.items()},
              "pass_rule": {"subtype_agreement_at_least": PASS_AGREEMENT,
                            "max_abs_joint_prob_diff_at_most": PASS_MAX_ABS_DIFF},
              "results": rows}
    out = args.out or REPO / "benchmarks" / "results" / f"{hardware_slug('cpu')}-parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
