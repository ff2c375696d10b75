"""How long a new user waits for the command line: ``multihead --help``, ``multihead --version``, and
``import multihead`` beside ``import torch`` alone (issue 19: under 1 s, and at most 0.5 s more than torch).
Each is a fresh process, timed several times; the median is reported, with what ``--help`` imported.

    python benchmarks/cli_speed.py --json benchmarks/results/cli-speed-cpu-intel-xeon-2c.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "multihead --help": [sys.executable, "-m", "multihead", "--help"],
    "multihead --version": [sys.executable, "-m", "multihead", "--version"],
    "import multihead": [sys.executable, "-c", "import multihead"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import multihead, first use (multihead.classify resolved)": [sys.executable, "-c",
                                                                   "import multihead; multihead.classify"],
}


def _cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.processor())


def _time(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "COLUMNS": "80"})
        times.append(time.perf_counter() - begin)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    _time(COMMANDS["import torch"], 1)  # warm the file cache for every command alike
    results = {name: _time(command, args.runs) for name, command in COMMANDS.items()}
    medians = {name: statistics.median(times) for name, times in results.items()}
    probe = subprocess.run([sys.executable, "-c", "import sys; from typer.testing import CliRunner; "
                            "from multihead.cli import app; CliRunner().invoke(app, ['--help']); "
                            "print(sorted(m for m in ('torch', 'torchvision', 'numpy', 'PIL') if m in sys.modules))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    report = {
        "machine": f"{_cpu()}, {os.cpu_count()} cores (shared)",
        "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "runs": args.runs,
        "median_s": medians,
        "all_s": results,
        "help_imports_heavy_modules": probe,
        "targets": {"help_under_1s": medians["multihead --help"] < 1.0,
                    "version_under_1s": medians["multihead --version"] < 1.0,
                    "import_multihead_le_import_torch_plus_0.5s":
                        medians["import multihead"] <= medians["import torch"] + 0.5},
    }
    print(json.dumps({k: report[k] for k in ("machine", "load_average_1m", "median_s", "help_imports_heavy_modules",
                                             "targets")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
