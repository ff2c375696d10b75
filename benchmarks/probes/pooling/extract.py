"""Probe: pooling variants of MobileNetV2 (ImageNet) maps at one input size, for every image of the split.

For each image: the mean of every stage the library pools (features.3, 6, 10, 13, 16, 17, 18), and for the
last map (features.18, 1280 channels) its max, its GeM (p = 3) and its means over 2x2 and 3x3 grids; for
features.17 (320 channels) its 2x2 grid means. The network runs in OpenVINO fp32 (parity with PyTorch was
measured in benchmarks/results/*parity-backends.json) so an extraction takes minutes, not a quarter hour.

    python benchmarks/probes/pooling/extract.py SIZE OUT.pt [LIMIT]
"""
import sys
import time
from pathlib import Path

import openvino as ov
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import multihead
from multihead.data.splits import Split

SIZE, OUT = int(sys.argv[1]), sys.argv[2]
LIMIT = int(sys.argv[3]) if len(sys.argv) > 3 else None
REPO = Path(__file__).resolve().parents[3]
ROOT = REPO.parent / "shared" / "data" / "multi-cancer-sample"
STAGES = [3, 6, 10, 13, 16, 17, 18]
torch.set_num_threads(2)


class Pooled(nn.Module):
    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = {}
        for i, block in enumerate(self.features):
            x = block(x)
            if i in STAGES:
                maps[i] = x
        last = maps[18]
        return (torch.cat([maps[s].mean((2, 3)) for s in STAGES], 1),
                last.amax((2, 3)),
                last.clamp_min(1e-6).pow(3).mean((2, 3)).pow(1 / 3),
                F.adaptive_avg_pool2d(last, 2).flatten(1),
                F.adaptive_avg_pool2d(last, 3).flatten(1),
                F.adaptive_avg_pool2d(maps[17], 2).flatten(1))


NAMES = ("means", "max18", "gem18", "grid2_18", "grid3_18", "grid2_17")
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors"
trunk = multihead.create_trunk("mobilenet_v2", weights=WEIGHTS)
model = multihead.create_model(trunk, image_size=SIZE).eval()
net = Pooled(trunk.network.features).eval()
example = torch.zeros(1, 3, SIZE, SIZE)
compiled = ov.Core().compile_model(ov.convert_model(net, example_input=example, input=[(-1, 3, SIZE, SIZE)]), "CPU",
                                   {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
with torch.inference_mode():  # the OpenVINO graph against PyTorch on a few images
    x = torch.randn(2, 3, SIZE, SIZE)
    ref, got = net(x), compiled(x.numpy())
    print("max abs diff vs torch", max(float((r - torch.from_numpy(got[i])).abs().max()) for i, r in enumerate(ref)))

split = Split.load(REPO / "docs" / "accuracy" / "split.json")
files = [f for n in ("train", "val", "test") for f in split.files(n)][:LIMIT]


class Images(Dataset):
    def __len__(self) -> int:
        return len(files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return model.preprocessing.load(ROOT / files[i])


parts = {name: [] for name in NAMES}
start = time.time()
with torch.inference_mode():
    for n, batch in enumerate(DataLoader(Images(), batch_size=16, num_workers=1)):
        outputs = compiled(model.preprocessing.normalize(batch).numpy())
        for i, name in enumerate(NAMES):
            parts[name].append(torch.from_numpy(outputs[i]).half())
        if n % 20 == 0:
            print((n + 1) * 16, round(time.time() - start, 1), flush=True)
torch.save({"files": files, "size": SIZE, "stages": STAGES, **{k: torch.cat(v) for k, v in parts.items()}}, OUT)
print("done", round(time.time() - start, 1), "s")
