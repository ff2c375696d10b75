"""How fast the map cache fills on each backend: the frozen bottom of a trunk cut for tuning, from image files.

``multihead train --tune-from`` first computes every image's map at the cut (:func:`multihead.features.maps.
labelled_maps`); on this project's 2-core CPU that was 6.3 of the tuned run's 15.7 minutes in PyTorch. This
times it on ``--images`` real images of the shared sample (every organ, in the sample's order) into an empty
cache, once per backend, in one run (compare backends only as ratios within it), and reports how far each
backend's cached maps are from PyTorch's. One JSON object, written to ``--out``.

    python benchmarks/map_extraction.py --px 448 --images 320
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import multihead
from multihead.benchmark import machine_info
from multihead.data.scan import scan_dataset
from multihead.features.maps import labelled_maps
from multihead.inference.backends import installed_backends
from multihead.model.trunk_split import split_trunk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "multi-cancer-sample"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, default=448)
    parser.add_argument("--cut", default="auto")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=32, help="as multihead train's (TrainConfig.batch_size)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    scan = scan_dataset(args.data)
    step = max(1, len(scan.records) // args.images)  # spread over every organ: sizes and formats differ
    files = [r.relpath for r in scan.records[::step][:args.images]]
    model = multihead.create_model("mobilenet_v2", WEIGHTS, scan.taxonomy, trunk_stages="auto", image_size=args.px)
    parts = split_trunk(model.trunk, args.cut)
    results, maps = {}, {}
    for backend in installed_backends():
        with tempfile.TemporaryDirectory(prefix="multihead-maps-") as folder:
            started = time.perf_counter()
            data, failed = labelled_maps(model, parts, scan, files, cache_dir=folder, batch_size=args.batch_size,
                                         backend=backend)
            seconds = time.perf_counter() - started
            maps[backend] = data.cache.gather(data.locations)
        results[backend] = {"seconds": round(seconds, 1), "images_per_s": round(len(files) / seconds, 1),
                            "failed": len(failed)}
        print(backend, results[backend], flush=True)
    reference = maps["torch"]
    for backend, (cut_maps, pooled) in maps.items():
        scale = reference[0].abs().max()
        results[backend]["max_map_difference_relative"] = float((cut_maps - reference[0]).abs().max() / scale)
        results[backend]["max_pooled_difference"] = float((pooled - reference[1]).abs().max())
        results[backend]["speed_vs_torch"] = round(results["torch"]["seconds"] / results[backend]["seconds"], 2)
    record = {"benchmark": "benchmarks/map_extraction.py", "trunk": "mobilenet_v2", "px": args.px, "cut": parts.cut,
              "images": len(files), "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "backends": results, "machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(record["backends"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
