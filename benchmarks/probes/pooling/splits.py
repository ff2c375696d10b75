"""Leak-free splits of the shared sample with other seeds, the same way as the committed one (seed 0).

    python benchmarks/probes/pooling/splits.py OUT_DIR SEED [SEED ...]   # -> OUT_DIR/split<SEED>.json
"""
import sys
from pathlib import Path

from multihead.data import scan_dataset
from multihead.data.splits import make_split

scan = scan_dataset(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "multi-cancer-sample")
for seed in map(int, sys.argv[2:]):
    split, unreadable = make_split(scan, seed=seed)
    split.save(Path(sys.argv[1]) / f"split{seed}.json")
    print(f"split seed {seed}: {split.info['counts']}, {len(unreadable)} unreadable", flush=True)
