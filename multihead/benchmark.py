"""Throughput of one fused pass against the deployments it replaces: timm-style runners returning flat dicts.

Every system starts from the same uint8 batch on the host, crosses to the device, is normalised there and
runs at the same precision and memory format, so the only difference is the network work:

- ``multihead``: one ResNet18 trunk, the router and all subtype heads as one matmul (:func:`run_batch`).
- ``eight_models``: the paper's deployment, one ResNet18 classifier per organ, all eight run because the
  organ of a new image is unknown.
- ``cascade``: a ResNet18 router, then the chosen organ's ResNet18 (images grouped by organ): two passes.
- ``trunk_only``: ResNet18 pooled features only, the upper bound for ``multihead``.

``multihead`` and ``trunk_only`` also run on the other backends (:mod:`multihead.inference.backends`: the trunk as an
exported graph on ONNX Runtime or OpenVINO); the baselines run in PyTorch only.

Weights are random (speed does not depend on their values) and nothing is downloaded.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import itertools
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from ._precision import PRECISIONS as PRECISION_DTYPES
from .data.preprocessing import Preprocessing
from .inference.backends import BACKEND_PRECISIONS, BACKENDS
from .inference.config import InferenceConfig
from .inference.engine import run_batch, run_features
from .model.heads import HeadOutput, MultiHeadModel, create_model
from .taxonomy import MULTI_CANCER, Taxonomy

__all__ = [
    "PRECISIONS",
    "SYSTEMS",
    "BenchSystem",
    "benchmark_system",
    "build_system",
    "collect_outputs",
    "compare_outputs",
    "hardware_slug",
    "machine_info",
    "model_system",
    "run_benchmark",
    "summarize",
]

logger = logging.getLogger(__name__)

SYSTEMS = ("multihead", "eight_models", "cascade", "trunk_only")
BACKEND_SYSTEMS = ("multihead", "trunk_only")
"""The systems that run on every backend; the others are PyTorch modules."""
PRECISIONS = tuple(PRECISION_DTYPES)


@dataclass
class BenchSystem:
    """A built system: ``step(uint8_batch, precision)`` runs one batch end to end."""

    name: str
    step: Callable[[torch.Tensor, str], Any]
    num_params: int
    model: nn.Module
    channels_last_weights: bool = False


# --- the systems ------------------------------------------------------------------------------------

def _resnet18(num_classes: int) -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval().requires_grad_(False)


class _EightModels(nn.Module):
    """One classifier per organ; all run, since the organ of a new image is unknown."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.models = nn.ModuleList(_resnet18(len(organ.subtypes)) for organ in taxonomy.organs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(images) for model in self.models], dim=1)


class _Cascade(nn.Module):
    """A router network, then each image through its predicted organ's network (grouped by organ)."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.router = _resnet18(taxonomy.num_organs)
        self.organs = nn.ModuleList(_resnet18(len(organ.subtypes)) for organ in taxonomy.organs)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        organ = self.router(images).argmax(dim=1)
        subtype_logits = []
        for index in organ.unique().tolist():  # the data-dependent second pass
            rows = (organ == index).nonzero().squeeze(1)
            subtype_logits.append(self.organs[index](images[rows]))
        return organ, subtype_logits


def _normalized(batch: torch.Tensor, device: torch.device, preprocessing: Preprocessing,
                channels_last: bool) -> torch.Tensor:
    """What :func:`run_features` does before the trunk, for the baselines."""
    batch = batch.to(device, non_blocking=True)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return preprocessing.normalize(batch)


def model_system(model: MultiHeadModel, *, name: str = "multihead", backend: str = "torch",
                 channels_last: bool = False, channels_last_weights: bool = False) -> BenchSystem:
    """``multihead`` (:func:`run_batch`) or ``trunk_only`` (:func:`run_features`) around a built model, such
    as a loaded checkpoint, on ``backend``.

    Example:
        >>> system = model_system(multihead.load("model.safetensors"), backend="openvino")  # doctest: +SKIP
    """
    if name not in BACKEND_SYSTEMS:
        raise ValueError(f"model_system builds {' or '.join(BACKEND_SYSTEMS)}, got {name!r}")
    run = run_batch if name == "multihead" else run_features

    def step(batch: torch.Tensor, precision: str) -> Any:
        return run(model, batch, InferenceConfig(batch_size=batch.shape[0], precision=precision,
                                                 channels_last=channels_last, backend=backend))

    counted = model if name == "multihead" else model.trunk
    return BenchSystem(name, step, sum(p.numel() for p in counted.parameters()), model, channels_last_weights)


def build_system(name: str, *, device: str | torch.device = "cpu", image_size: int = 224,
                 channels_last: bool = False, compiled: bool = False, channels_last_weights: bool = False,
                 taxonomy: Taxonomy = MULTI_CANCER, seed: int = 0, backend: str = "torch") -> BenchSystem:
    """Build one system with random weights, on ``device``, optionally channels_last and ``torch.compile``-d.

    ``channels_last`` lays out the input only, as :func:`run_features` does; ``channels_last_weights``
    also converts the networks' weights (a step the library leaves to the caller). ``backend`` runs the
    trunk of ``multihead`` and ``trunk_only`` (see :mod:`multihead.inference.backends`); the baselines need ``"torch"``.

    Example:
        >>> system = build_system("trunk_only", image_size=64)
        >>> system.step(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "fp32").shape
        torch.Size([2, 512])
    """
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; expected one of {', '.join(SYSTEMS)}")
    if backend != "torch" and name not in BACKEND_SYSTEMS:
        raise ValueError(f"system {name!r} runs in PyTorch only; backend {backend!r} runs "
                         f"{' and '.join(BACKEND_SYSTEMS)}")
    device = torch.device(device)
    torch.manual_seed(seed)
    memory_format = torch.channels_last if channels_last_weights else torch.contiguous_format
    if name in ("multihead", "trunk_only"):
        model: nn.Module = create_model("resnet18", trunk_weights=None, taxonomy=taxonomy, image_size=image_size,
                                        seed=seed).eval().to(device, memory_format=memory_format)
        if compiled:
            model.trunk.network.compile()
        return model_system(model, name=name, backend=backend, channels_last=channels_last,
                            channels_last_weights=channels_last_weights)
    network = (_EightModels if name == "eight_models" else _Cascade)(taxonomy)
    model = network.to(device, memory_format=memory_format)
    if compiled:
        for module in model.modules():
            if isinstance(module, torchvision.models.ResNet):
                module.compile()
    preprocessing = Preprocessing(image_size=image_size)

    def step(batch: torch.Tensor, precision: str) -> Any:
        dtype = PRECISION_DTYPES[precision]
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model(_normalized(batch, device, preprocessing, channels_last))

    return BenchSystem(name, step, sum(p.numel() for p in model.parameters()), model, channels_last_weights)


# --- timing -----------------------------------------------------------------------------------------

def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds per call: CUDA events on a GPU (the queue is asynchronous), a wall clock elsewhere."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return times


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower() or (
        "can't allocate memory" in str(err).lower())


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def benchmark_system(system: str | BenchSystem, *, device: str | torch.device = "cpu", batch_size: int = 1,
                     image_size: int = 224, precision: str = "fp32", channels_last: bool = False,
                     compiled: bool = False, warmup: int = 2, repeats: int = 5, seed: int = 0,
                     backend: str = "torch") -> dict[str, Any]:
    """Time one system at one setting: warm-up, then ``repeats`` timed batches; a flat dict back.

    ``system`` may be a name or a :class:`BenchSystem` already built with the same ``channels_last``,
    ``compiled`` and ``backend`` (to reuse a compiled model across batch sizes). Out-of-memory gives
    ``status="oom"``. On another backend than torch the warm-up includes exporting and compiling the graph.

    Example:
        >>> row = benchmark_system("trunk_only", batch_size=2, image_size=64, repeats=1)
        >>> row["status"], row["batch_size"]
        ('ok', 2)
    """
    _check_settings(precisions=[precision], batch_sizes=[batch_size], image_size=image_size, repeats=repeats,
                    warmup=warmup, backends=[backend])
    device = torch.device(device)
    name = system.name if isinstance(system, BenchSystem) else system
    row: dict[str, Any] = {"system": name, "backend": backend, "precision": precision,
                           "channels_last": channels_last, "compiled": compiled, "batch_size": batch_size,
                           "image_size": image_size, "device": str(device)}
    try:
        if not isinstance(system, BenchSystem):
            system = build_system(system, device=device, image_size=image_size, channels_last=channels_last,
                                  compiled=compiled, seed=seed, backend=backend)
        row["channels_last_weights"] = system.channels_last_weights
        generator = torch.Generator().manual_seed(seed)
        batch = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8,
                              generator=generator)
        if device.type == "cuda":
            batch = batch.pin_memory()
        step = system.step
        begin = time.perf_counter()
        for _ in range(warmup):
            step(batch, precision)
        _synchronize(device)
        warmup_s = time.perf_counter() - begin
        times = _time_steps(lambda: step(batch, precision), device, repeats)
    except (RuntimeError, torch.OutOfMemoryError) as err:
        if not _is_oom(err):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        logger.warning("%s batch %d %s: out of memory", name, batch_size, precision)
        row.update(status="oom", error=str(err).splitlines()[0][:300])
        return row
    p50 = statistics.median(times)
    row.update(
        status="ok",
        images_per_second=batch_size / p50,
        latency_ms_p50=p50 * 1e3,
        latency_ms_min=min(times) * 1e3,
        latency_ms_p90=_percentile(times, 0.9) * 1e3,
        latency_ms_max=max(times) * 1e3,
        spread_pct=(max(times) - min(times)) / p50 * 100.0,
        repeats=repeats,
        warmup=warmup,
        warmup_s=warmup_s,
        num_params=system.num_params,
    )
    return row


# --- the whole run ----------------------------------------------------------------------------------

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


def _check_settings(*, precisions: Sequence[str], batch_sizes: Sequence[int], image_size: int, repeats: int,
                    warmup: int, systems: Sequence[str] = (), backends: Sequence[str] = ("torch",)) -> None:
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if not set(precisions) & set(BACKEND_PRECISIONS[backend]):
            raise ValueError(f"backend {backend!r} runs {' or '.join(BACKEND_PRECISIONS[backend])}, "
                             f"asked for {', '.join(precisions)}")
    for system in systems:
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}; expected one of {', '.join(SYSTEMS)}")
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")


def run_benchmark(*, systems: Sequence[str] = SYSTEMS, device: str | torch.device = "cpu",
                  batch_sizes: Sequence[int] = (1, 8, 32), precisions: Sequence[str] = ("fp32",),
                  channels_last: Sequence[bool] = (False,), compiled: Sequence[bool] = (False,),
                  image_size: int = 224, warmup: int = 2, repeats: int = 5, seed: int = 0,
                  backends: Sequence[str] = ("torch",),
                  callback: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every system at every setting, in one process on one device; the JSON report as a dict.

    Each system is built once per (backend, channels_last, compiled) and reused across batch sizes and
    precisions. The other backends than torch run ``multihead`` and ``trunk_only`` only, at the precisions
    they support, with ``channels_last`` and ``compiled`` off (PyTorch settings, which they do not use).
    ``callback`` gets each result row as it is measured (for progress display).

    Example:
        >>> report = run_benchmark(batch_sizes=[2], image_size=64, repeats=1, warmup=0)  # doctest: +SKIP
        >>> sorted({r["system"] for r in report["results"]})
        ['cascade', 'eight_models', 'multihead', 'trunk_only']
    """
    _check_settings(precisions=precisions, batch_sizes=batch_sizes, image_size=image_size, repeats=repeats,
                    warmup=warmup, systems=systems, backends=backends)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no CUDA device; use --device cpu")
    results = []
    load_at_start = machine_info(device)["load_average_1m"]
    torch_settings = list(itertools.product(channels_last, compiled))
    settings = [(backend, cl, comp, name) for backend in backends
                for cl, comp in (torch_settings if backend == "torch" else [(False, False)])
                for name in systems if backend == "torch" or name in BACKEND_SYSTEMS]
    for backend, cl, comp, name in settings:
        system = build_system(name, device=device, image_size=image_size, channels_last=cl, compiled=comp,
                              seed=seed, backend=backend)
        for precision, batch_size in itertools.product(precisions, batch_sizes):
            if precision not in BACKEND_PRECISIONS[backend]:
                continue
            row = benchmark_system(system, device=device, batch_size=batch_size, image_size=image_size,
                                   precision=precision, channels_last=cl, compiled=comp, warmup=warmup,
                                   repeats=repeats, seed=seed, backend=backend)
            results.append(row)
            if callback is not None:
                callback(row)
        del system
    machine = machine_info(device)
    machine["load_average_1m_at_end"] = machine.pop("load_average_1m")
    machine["load_average_1m_at_start"] = load_at_start
    return {
        "device": str(device),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "image_size": image_size,
        "machine": machine,
        "results": results,
    }


def summarize(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per setting: multihead's images/s over each other system's (``multihead_over_<system>``).

    On another backend than torch, multihead is compared with that backend's ``trunk_only`` and with the
    PyTorch baselines at the same precision and batch size (with ``channels_last`` and ``compiled`` off).
    """
    keyed: dict[tuple, dict[str, float]] = {}
    for row in report["results"]:
        if row.get("status") == "ok":
            key = (row.get("backend", "torch"), row["precision"], row["channels_last"], row["compiled"],
                   row["batch_size"])
            keyed.setdefault(key, {})[row["system"]] = row["images_per_second"]
    summary = []
    for (backend, precision, cl, comp, batch_size), speeds in keyed.items():
        if "multihead" not in speeds:
            continue
        entry: dict[str, Any] = {"backend": backend, "precision": precision, "channels_last": cl,
                                 "compiled": comp, "batch_size": batch_size,
                                 "multihead_images_per_second": speeds["multihead"]}
        baselines = {**keyed.get(("torch", precision, cl, comp, batch_size), {}), **speeds}
        for other in SYSTEMS[1:]:
            if other in baselines:
                entry[f"multihead_over_{other}"] = speeds["multihead"] / baselines[other]
        summary.append(entry)
    return summary


# --- parity -----------------------------------------------------------------------------------------

def collect_outputs(model: MultiHeadModel, batches: Iterable[torch.Tensor],
                    config: InferenceConfig) -> HeadOutput:
    """Run uint8 batches through :func:`run_batch` and concatenate the outputs (on the CPU)."""
    outputs = [run_batch(model, batch, config) for batch in batches]
    if not outputs:
        raise ValueError("collect_outputs needs at least one batch")
    return HeadOutput(*(torch.cat([getattr(o, f).cpu() for o in outputs])
                        for f in ("router_logits", "subtype_logits", "joint_log_probs")))


def compare_outputs(model: MultiHeadModel, reference: HeadOutput, candidate: HeadOutput) -> dict[str, Any]:
    """How far ``candidate`` strays from ``reference`` on the same images (``model`` decides).

    Returns:
        ``images``; ``subtype_agreement`` and ``organ_agreement``, the fractions of images given the same
        subtype / organ; ``max_abs_joint_prob_diff`` and ``mean_abs_joint_prob_diff`` over all 26 joint
        probabilities of all images.

    Example:
        >>> ref = collect_outputs(model, batches, InferenceConfig(precision="fp32"))  # doctest: +SKIP
        >>> compare_outputs(model, ref, collect_outputs(model, batches, InferenceConfig()))["subtype_agreement"]
        1.0
    """
    if reference.joint_log_probs.shape != candidate.joint_log_probs.shape:
        raise ValueError(f"outputs differ in shape: {tuple(reference.joint_log_probs.shape)} "
                         f"vs {tuple(candidate.joint_log_probs.shape)}; run both on the same batches")
    with torch.inference_mode():
        ref_organ, ref_subtype = (t.cpu() for t in model.decide(_on(reference, model.device)))
        cand_organ, cand_subtype = (t.cpu() for t in model.decide(_on(candidate, model.device)))
        diff = (reference.joint_probs.double() - candidate.joint_probs.double()).abs()
    images = reference.joint_log_probs.shape[0]
    return {"images": images,
            "subtype_agreement": float((ref_subtype == cand_subtype).double().mean()),
            "organ_agreement": float((ref_organ == cand_organ).double().mean()),
            "max_abs_joint_prob_diff": float(diff.max()),
            "mean_abs_joint_prob_diff": float(diff.mean())}


def _on(output: HeadOutput, device: torch.device) -> HeadOutput:
    return HeadOutput(output.router_logits.to(device), output.subtype_logits.to(device),
                      output.joint_log_probs.to(device))
