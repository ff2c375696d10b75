"""Fill a persistent feature cache with the bundled model's features of its own split (train, val, test), the
shipped examples and the synthetic unknowns, so that refitting its OOD estimator and measuring it is cheap.

    MULTIHEAD_CACHE=/work/mhcache-fh python benchmarks/trust/extract_default.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import multihead
from multihead.data import VIEWS, scan_dataset
from multihead.data.folders import expand_inputs
from multihead.data.splits import Split
from multihead.features import dataset_features, extract_features
from multihead.inference import default_model_path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "multi-cancer-sample"


def main() -> None:
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    model = multihead.load(default_model_path())
    split = Split(model.metadata["split"]["files"], model.metadata["split"]["info"])
    scan = scan_dataset(DATA)
    for part in ("val", "test", "train"):
        started = time.perf_counter()
        data, failed = dataset_features(model, scan, split.files(part), views=VIEWS[:1], cache_dir=cache)
        print(part, len(data), "images", len(failed), "failed", f"{time.perf_counter() - started:.0f} s", flush=True)
    for folder in [REPO / "multihead" / "examples", *sys.argv[2:]]:
        paths = list(expand_inputs([folder]))
        started = time.perf_counter()
        extract_features(model, paths, views=VIEWS[:1], cache_dir=cache)
        print(folder, len(paths), f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
