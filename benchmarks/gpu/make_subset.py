"""Copy a small per-subtype subset of the shared sample into a folder that travels to the GPU machine.

The device copies the repository (64 MiB at most) but not ``../shared`` beside it, and the whole sample is
about 170 MB. A ``shared/`` folder inside the checkout does travel, so put a subset there and keep git
from seeing it::

    echo /shared/ >> .git/info/exclude
    python benchmarks/gpu/make_subset.py shared/data/multi-cancer-sample   # about 30 MB

Usage: ``make_subset.py DEST [--source ../shared/data/multi-cancer-sample] [--per-subtype 40] [--max-kb 300]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXTENSIONS = {".jpg", ".jpeg", ".png"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "multi-cancer-sample")
    parser.add_argument("--per-subtype", type=int, default=40)
    parser.add_argument("--max-kb", type=int, default=300, help="skip larger files (a few 2048 px photographs)")
    args = parser.parse_args(argv)
    copied = total = 0
    for folder in sorted(p for p in args.source.glob("*/*") if p.is_dir()):
        files = [f for f in sorted(folder.iterdir()) if f.suffix.lower() in EXTENSIONS
                 and f.stat().st_size <= args.max_kb * 1024][:args.per_subtype]
        target = args.dest / folder.parent.name / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, target / f.name)
            copied, total = copied + 1, total + f.stat().st_size
    print(f"copied {copied} images ({total / 1e6:.1f} MB) into {args.dest}")
    return 0 if copied else 1


if __name__ == "__main__":
    sys.exit(main())
