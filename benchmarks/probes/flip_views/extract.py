"""Probe: multi-stage mean+max pooled MobileNetV2 features, 8 dihedral views, 448 px."""
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

import multihead
from multihead.data import VIEWS, apply_view, scan_dataset
from multihead.data.splits import Split

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
limit = int(sys.argv[1])
views = sys.argv[3].split(",") if len(sys.argv) > 3 else list(VIEWS)
split = Split.load("/work/main/docs/accuracy/split.json")
scan = scan_dataset("/work/shared/data/multi-cancer-sample")
trunk = multihead.create_trunk("mobilenet_v2", weights="/work/shared/weights/mobilenet_v2-imagenet-features.safetensors")
model = multihead.create_model(trunk, image_size=448).eval()
net = trunk.network.to(memory_format=torch.channels_last)
STAGES = [3, 6, 10, 13, 16, 17, 18]
outs = {}
for s in STAGES:
    net.features[s].register_forward_hook(lambda m, i, o, s=s: outs.__setitem__(s, o))
files = [f for n in ("train", "val", "test") for f in split.files(n)][:limit]
root = scan.root if hasattr(scan, "root") else "/work/shared/data/multi-cancer-sample"
class DS(Dataset):
    def __len__(self): return len(files)
    def __getitem__(self, i): return model.preprocessing.load(f"{root}/{files[i]}")
loader = DataLoader(DS(), batch_size=32, num_workers=1)
feats = []
t = time.time()
with torch.inference_mode():
    for batch in loader:
        x = model.preprocessing.normalize(batch).contiguous(memory_format=torch.channels_last)
        per_view = []
        for v in views:
            net(apply_view(x, v).contiguous(memory_format=torch.channels_last))
            per_view.append(torch.cat([outs[s].mean((2, 3)) for s in STAGES] + [outs[s].amax((2, 3)) for s in STAGES], 1))
        feats.append(torch.stack(per_view, 1).half())
        print(len(feats) * 32, round(time.time() - t, 1), flush=True)
torch.save({"files": files, "features": torch.cat(feats), "stages": STAGES}, f"/work/probe/ms448_{limit}_{'-'.join(views)}.pt")
print("done", time.time() - t)
