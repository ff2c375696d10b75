import json
import sys
import time

import torch

import multihead

torch.set_num_threads(2)
from multihead.data.splits import Split
from multihead.training import PRESETS
from multihead.training.pipeline import train_from_folder

t = time.time()
r = train_from_folder(
    "../shared/data/multi-cancer-sample",
    split=Split.load("/tmp/acc/split.json"),
    trunk="mobilenet_v2",
    trunk_weights="../shared/weights/mobilenet_v2-imagenet-features.safetensors",
    config=PRESETS["default"].override(views="identity", image_size=int(sys.argv[1])),
    cache_dir="/work/mhcache",
    on_stage=print,
)
multihead.save(r.model, f"/tmp/trust/mobilenet_v2-{sys.argv[1]}.safetensors")
print(json.dumps(r.model.metadata["trust"], indent=1))
print(time.time() - t)
