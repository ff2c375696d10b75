"""What a figure needs beside it (card, driver, versions, backend flags) and what the machine lacks (preflight).

Written without ``multihead`` so that it still reports when the package does not import there.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

REQUIRED = ("torch", "torchvision", "timm", "numpy", "safetensors", "PIL")
OPTIONAL = ("triton", "sklearn", "typer", "rich", "matplotlib", "onnxruntime", "openvino")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_smi() -> dict[str, Any]:
    """``nvidia-smi --query-gpu=name,driver_version,memory.total``: the card as its driver names it."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return {"available": False, "error": f"{type(err).__name__}: {err}"[:300]}
    if done.returncode != 0:
        return {"available": False, "error": (done.stderr or done.stdout).strip()[:300]}
    cards = []
    for line in done.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            cards.append({"name": parts[0], "driver_version": parts[1], "memory_total": parts[2]})
    return {"available": bool(cards), "cards": cards, "raw": done.stdout.strip()[:500]}


def _version(module: str) -> str | None:
    name = {"PIL": "pillow", "sklearn": "scikit-learn"}.get(module, module)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    """Card (``nvidia-smi`` and torch's view), driver, torch/CUDA/cuDNN versions, CPU and cores."""
    info: dict[str, Any] = {
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "versions": {name: _version(name) for name in ("torchvision", "timm", "numpy", "safetensors", "PIL",
                                                       "triton")},
        "nvidia_smi": nvidia_smi(),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_multiprocessors=props.multi_processor_count,
                    gpu_capability=f"{props.major}.{props.minor}")
        cards = info["nvidia_smi"].get("cards") or [{}]
        info["driver_version"] = cards[0].get("driver_version")
    info["hardware"] = info.get("gpu") or info["cpu_model"]
    return info


def set_backend_flags(device: torch.device) -> dict[str, Any]:
    """cuDNN autotuning on, TF32 for fp32 matmuls and convolutions on (the fast fp32 a GPU user gets);
    parity measures fp32 against a reference with TF32 off. Returns the flags as set.

    Set on the CPU too (where they change nothing) so that smoke mode compiles under the same global state
    as the GPU run: Dynamo guards on it, and a difference would recompile in the parity section.
    """
    del device
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    return backend_flags()


def backend_flags() -> dict[str, Any]:
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def preflight(repo: Path) -> dict[str, Any]:
    """Which packages import, and whether ``multihead`` does (with the error if not)."""
    imports: dict[str, Any] = {}
    for name in (*REQUIRED, *OPTIONAL):
        try:
            importlib.import_module(name)
            imports[name] = {"ok": True, "version": _version(name)}
        except Exception as err:  # any failure to import is a finding, not a crash
            imports[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
    result: dict[str, Any] = {"python_executable": sys.executable, "repo": str(repo), "imports": imports,
                              "missing_required": [n for n in REQUIRED if not imports[n]["ok"]],
                              "cuda_available": torch.cuda.is_available(),
                              "cuda_device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    try:
        import multihead

        result["multihead"] = {"ok": True, "file": multihead.__file__,
                               "version": getattr(multihead, "__version__", None)}
    except Exception as err:  # the package is mid-restructuring, or needs a missing dependency
        result["multihead"] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500],
                               "traceback": traceback.format_exc(limit=6)[-2000:]}
    result["git_commit"] = _git_commit(repo)
    return result


def _git_commit(repo: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
