"""What a result ran on: the machine, the device and the package versions, recorded beside every figure."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch
import torchvision


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """CPU model, cores, threads, bf16 support, GPU name, backend versions: what a throughput figure needs beside it."""
    cpu_model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu_model in ("", platform.processor(), platform.machine()):
                    cpu_model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"}),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torchvision": torchvision.__version__,
        "backend_versions": {name: _version(name) for name in ("onnx", "onnxruntime", "openvino")},
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def hardware_slug(device: str | torch.device = "cpu") -> str:
    """A file-name-safe name for the hardware, e.g. ``cpu-amd-epyc-2c`` or ``cuda-nvidia-h100-80gb-hbm3``."""
    device, info = torch.device(device), machine_info(device)
    if device.type == "cuda" and "gpu" in info:
        name = f"cuda-{info['gpu']}"
    else:
        name = f"{device.type}-{info['cpu_model']}-{os.cpu_count()}c"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")
