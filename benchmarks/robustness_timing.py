"""How fast hostile inputs are refused: the wall-clock checks that used to sit in tests/test_robustness.py.

Unit tests assert no clock (a busy CI machine makes them flaky); they check *that* a pixel bomb is refused from
its header. This script measures *how fast*, best of five, and exits 1 when a refusal takes longer than
``--limit`` seconds (0.5 by default, the bound the unit tests used to assert):

    .venv/bin/python benchmarks/robustness_timing.py [--limit 0.5]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import multihead
from multihead.data.images import ImageError, read_image
from multihead.model.checkpoint import CheckpointError


def _png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width x height`` pixels, with one byte of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _best(refuse, expected: type[Exception], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            refuse()
        except expected:
            times.append(time.perf_counter() - start)
        else:
            raise SystemExit(f"{refuse} was not refused")
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=0.5, help="seconds a refusal may take")
    limit = parser.parse_args().limit
    folder = Path(tempfile.mkdtemp(prefix="multihead-robustness-"))
    (folder / "bomb.png").write_bytes(_png(9000, 9000))
    (folder / "huge.png").write_bytes(_png(20000, 20000))
    checks = {
        "png over max_pixels (9000x9000)": (lambda: read_image(folder / "bomb.png", max_pixels=9000 * 9000 - 1),
                                            ImageError),
        "png decompression bomb (20000x20000)": (lambda: read_image(folder / "huge.png", max_pixels=None),
                                                 ImageError),
    }
    for claimed in (2**63 - 1, 2**40, 50_000_000, 10):
        path = folder / f"huge-{claimed}.safetensors"
        path.write_bytes(struct.pack("<Q", claimed) + b'{"__metadata__": {}}')
        checks[f"safetensors header claiming {claimed} bytes"] = (lambda p=path: multihead.load(p), CheckpointError)
    results = {name: round(_best(refuse, expected), 4) for name, (refuse, expected) in checks.items()}
    print(json.dumps({"limit_s": limit, "best_of_5_s": results}, indent=1))
    slow = [name for name, seconds in results.items() if seconds > limit]
    if slow:
        print(f"slower than {limit} s: {', '.join(slow)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
