"""Issue 19: images per second of the torch CPU path before and after its weights were laid out channels_last
too, in one process, the two alternating batch by batch (so a busy machine slows both alike).

"before" is the engine as it was (the uint8 input made channels_last, the weights left contiguous); "after" is
:func:`multihead.inference.run_features` now (the trunk's weights converted on the first call). Each runs its
own copy of the model. Both are checked against fp32 eager (contiguous input and weights).

    python benchmarks/channels_last_weights.py --rounds 6 --json benchmarks/results/channels-last-weights-cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

import multihead
from multihead.benchmark import machine_info
from multihead.inference import InferenceConfig, default_model_path, run_features


def before(model: multihead.MultiHeadModel, batch: torch.Tensor) -> torch.Tensor:
    """The engine before issue 19: the input alone channels_last."""
    with torch.inference_mode():
        images = model.preprocessing.normalize(batch.contiguous(memory_format=torch.channels_last))
        return model.forward_features(images).float()


def after(model: multihead.MultiHeadModel, batch: torch.Tensor) -> torch.Tensor:
    return run_features(model, batch, InferenceConfig(backend="torch", channels_last=True))


def eager(model: multihead.MultiHeadModel, batch: torch.Tensor) -> torch.Tensor:
    return run_features(model, batch, InferenceConfig(backend="torch", channels_last=False))


def measure(name: str, model: multihead.MultiHeadModel, batch: torch.Tensor, rounds: int) -> dict[str, object]:
    models = {"before": copy.deepcopy(model), "after": copy.deepcopy(model)}
    runs = {"before": before, "after": after}
    reference = eager(copy.deepcopy(model), batch)
    outputs = {key: runs[key](models[key], batch) for key in runs}  # warm-up, and the parity check
    times: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(rounds):
        for key in (("before", "after") if r % 2 == 0 else ("after", "before")):
            start = time.perf_counter()
            runs[key](models[key], batch)
            times[key].append(time.perf_counter() - start)
    ips = {key: [len(batch) / t for t in values] for key, values in times.items()}
    ratios = [a / b for a, b in zip(times["before"], times["after"])]
    median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"model": name, "image_size": batch.shape[-1], "batch": len(batch), "rounds": rounds,
            "images_per_second": {key: round(median(v), 3) for key, v in ips.items()},
            "images_per_second_per_round": {key: [round(x, 3) for x in v] for key, v in ips.items()},
            "speedup_median": round(median(ratios), 3), "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "max_abs_feature_diff_vs_fp32_eager": {key: float((o - reference).abs().max())
                                                   for key, o in outputs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    bundled = multihead.load(default_model_path())
    size = bundled.preprocessing.image_size
    rows = [measure("bundled default (MobileNetV2 + pooled stages)", bundled,
                    torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, generator=generator),
                    args.rounds)]
    resnet = multihead.create_model("resnet18", trunk_weights=None, image_size=224, seed=0).eval()
    rows.append(measure("resnet18 (random weights)", resnet,
                        torch.randint(0, 256, (2 * args.batch, 3, 224, 224), dtype=torch.uint8, generator=generator),
                        args.rounds))
    machine = {"cpu": machine_info()["cpu_model"], "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "load_average_at_end": os.getloadavg()}
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine,
              "precision": "fp32", "results": rows}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
