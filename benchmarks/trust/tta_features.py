import time

import torch

torch.set_num_threads(2)
from multihead.data import VIEWS, scan_dataset
from multihead.data.splits import Split
from multihead.features import dataset_features
from multihead.model.checkpoint import load

m = load("/tmp/trust/mobilenet_v2-trust.safetensors")
split = Split.load("/tmp/acc/split.json")
scan = scan_dataset("../shared/data/multi-cancer-sample", m.taxonomy)
t = time.time()
data, failed = dataset_features(m, scan, split.files("test"), views=VIEWS, cache_dir="/work/mhcache")
print(data.features.shape, failed, time.time() - t)
torch.save(
    {"features": data.features, "subtypes": data.subtypes, "organs": data.organs, "relpaths": data.relpaths},
    "/tmp/trust/test_dihedral.pt",
)
