"""Model-only throughput: the four systems of ``multihead.benchmark`` and the bundled model, timed with CUDA
events on a uint8 batch already on the device (the end-to-end section times getting it there).

The systems come from ``multihead.benchmark.build_system`` / ``model_system`` (random ResNet18 weights, the
library's own ``run_batch`` / ``run_features`` steps); this module adds what that runner does not:
``torch.compile`` modes (CUDA graphs through ``reduce-overhead``), channels_last for input and weights
together, per-row peak memory, and a priority order with a time budget (the whole grid does not fit).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchvision
from config import Config
from harness import Section, error_row, time_calls

logger = logging.getLogger("gpu")

MODELS = ("resnet18", "bundled")
MODEL_SYSTEMS = {"resnet18": ("multihead", "trunk_only", "eight_models", "cascade"),
                 "bundled": ("multihead", "trunk_only")}


@dataclass(frozen=True)
class Setting:
    model: str
    """``resnet18``: random weights at ``Config.image_size``; ``bundled``: the shipped default model."""
    system: str
    precision: str
    channels_last: bool
    """Input and weights both channels_last (cuDNN picks its NHWC kernels from either)."""
    compile: str
    """``none`` (eager), or a ``torch.compile`` mode: ``default``, ``reduce-overhead`` (CUDA graphs), ..."""
    batch_size: int

    @property
    def family(self) -> str:
        """multihead and trunk_only share one built model (the same compiled network)."""
        return "multihead" if self.system in ("multihead", "trunk_only") else self.system


def compile_module(module: torch.nn.Module, mode: str, backend: str) -> None:
    """In place; static shapes (each batch size its own specialised graph)."""
    if backend == "inductor":
        module.compile(mode=None if mode == "default" else mode, dynamic=False)
    else:  # smoke: Dynamo's tracing path without inductor's code generation; modes are inductor's
        module.compile(backend=backend, dynamic=False)


class Systems:
    """Builds each (model, family, channels_last, compile) once and keeps it for later rows and parity."""

    def __init__(self, cfg: Config) -> None:
        import multihead
        from multihead import benchmark
        from multihead.inference import default_model_path

        self.cfg, self.device = cfg, torch.device(cfg.device)
        self._multihead, self._benchmark, self._default_path = multihead, benchmark, default_model_path
        self._built: dict[tuple, Any] = {}
        self.sizes = {"resnet18": cfg.image_size}

    def image_size(self, model: str) -> int:
        if model not in self.sizes:
            self.sizes[model] = self.cfg.bundled_size or self.load_bundled().preprocessing.image_size
        return self.sizes[model]

    def load_bundled(self) -> Any:
        path = self._default_path()
        if path is None:
            raise FileNotFoundError("multihead/weights/default.safetensors is missing")
        return self._multihead.load(path).eval()

    def fresh_model(self, model: str, channels_last: bool = False) -> Any:
        """A MultiHeadModel on the device: random ResNet18 (seed 0, as build_system makes it) or the bundled one."""
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if model == "resnet18":
            built = self._benchmark.build_system("multihead", device=self.device, image_size=self.cfg.image_size,
                                                 channels_last=channels_last, channels_last_weights=channels_last)
            return built.model
        return self.load_bundled().to(self.device, memory_format=memory_format)

    def multihead_model(self, model: str, channels_last: bool, compile_mode: str) -> Any | None:
        """The built model behind multihead/trunk_only, if a row built it (parity reuses compiled ones)."""
        built = self._built.get((model, "multihead", channels_last, compile_mode))
        return None if built is None or isinstance(built, BaseException) else built

    def is_built(self, s: Setting) -> bool:
        return (s.model, s.family, s.channels_last, s.compile) in self._built

    def get(self, s: Setting) -> Any:
        """A ``BenchSystem`` for ``s``; a build that failed once fails again at once."""
        key = (s.model, s.family, s.channels_last, s.compile)
        if key not in self._built:
            try:
                self._built[key] = self._build(s)
            except Exception as err:
                self._built[key] = err
        built = self._built[key]
        if isinstance(built, BaseException):
            raise built
        if s.family == "multihead":
            return self._benchmark.model_system(built, name=s.system, channels_last=s.channels_last,
                                                channels_last_weights=s.channels_last)
        return built

    def _build(self, s: Setting) -> Any:
        if s.family == "multihead":
            model = self.fresh_model(s.model, s.channels_last)
            if s.compile != "none":
                compile_module(model.trunk.network, s.compile, self.cfg.compile_backend)
            return model
        system = self._benchmark.build_system(s.system, device=self.device, image_size=self.cfg.image_size,
                                              channels_last=s.channels_last, channels_last_weights=s.channels_last)
        if s.compile != "none":
            for module in [m for m in system.model.modules() if isinstance(m, torchvision.models.ResNet)]:
                compile_module(module, s.compile, self.cfg.compile_backend)
        return system


# --- the plan ------------------------------------------------------------------------------------------

def headline_plan(cfg: Config) -> list[Setting]:
    """What the issue asks first (the systems at bf16, channels_last, the headline batch, eager, then compiled),
    the bundled model, multihead at each precision and layout (what the parity recommendation needs), then
    the other compiled options, CUDA graphs and the compiled cascade (many data-dependent shapes) last."""
    b, resnet = cfg.headline_batch, MODEL_SYSTEMS["resnet18"]
    plan = [Setting("resnet18", name, "bf16", True, "none", b) for name in resnet]
    plan += [Setting("resnet18", name, "bf16", True, "default", b) for name in ("multihead", "trunk_only",
                                                                                  "eight_models")]
    plan += [Setting("bundled", name, "bf16", True, "none", b) for name in MODEL_SYSTEMS["bundled"]]
    for model in MODELS:
        plan += [Setting(model, "multihead", p, cl, "none", b) for p, cl in itertools.product(cfg.precisions,
                                                                                             (True, False))]
    plan += [Setting("bundled", "multihead", "bf16", True, "default", b),
             Setting("resnet18", "multihead", "bf16", True, "reduce-overhead", b),
             Setting("resnet18", "trunk_only", "bf16", True, "reduce-overhead", b),
             Setting("resnet18", "multihead", "fp32", True, "default", b),
             Setting("resnet18", "cascade", "bf16", True, "default", b),
             Setting("bundled", "multihead", "bf16", True, "reduce-overhead", b)]
    return list(dict.fromkeys(plan))


def grid_plan(cfg: Config, done: set[Setting]) -> list[Setting]:
    """Everything else, most wanted first: the batch-size curve of every system at bf16 channels_last, eager
    then compiled; the other precisions and layouts eager; CUDA graphs and compiled baselines at the other
    batch sizes; then every compile mode (max-autotune last) at each precision."""
    def systems(model: str, names: tuple[str, ...] = ("multihead", "trunk_only", "eight_models", "cascade")):
        return [name for name in MODEL_SYSTEMS[model] if name in names]

    sizes, pairs = cfg.batch_sizes, ("multihead", "trunk_only")
    plan = [Setting(m, n, "bf16", True, "none", b) for b in sizes for m in MODELS for n in systems(m)]
    plan += [Setting(m, n, "bf16", True, "default", b) for b in sizes for m in MODELS for n in systems(m, pairs)]
    plan += [Setting(m, n, p, cl, "none", b) for p, cl, b in itertools.product(cfg.precisions, (True, False), sizes)
             for m in MODELS for n in systems(m)]
    plan += [Setting(m, n, "bf16", True, "reduce-overhead", b) for b in sizes for m in MODELS
             for n in systems(m, pairs)]
    plan += [Setting("resnet18", n, "bf16", True, "default", b) for b in sizes for n in ("eight_models", "cascade")]
    plan += [Setting(m, "multihead", p, True, mode, cfg.headline_batch) for mode in cfg.compile_modes
             for p in cfg.precisions for m in MODELS]
    return [s for s in dict.fromkeys(plan) if s not in done]


# --- running rows --------------------------------------------------------------------------------------

class Estimates:
    """How long a row will take, to skip what no longer fits: eager rows a constant; compiled rows the last
    compilation measured for that model, system and mode, else the config's guess for the system and mode."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.measured: dict[str, float] = {}

    def of(self, s: Setting, built: bool) -> float:
        if s.compile == "none":
            return self.cfg.eager_estimate_s
        if self.cfg.smoke:
            return 0.0
        guess = self.measured.get(f"{s.model}/{s.family}/{s.compile}") or self.cfg.compile_estimates_s.get(
            f"{s.family}/{s.compile}", 90.0)
        return guess if not built else guess * 0.6  # a new batch size recompiles, with warm caches

    def record(self, s: Setting, row: dict[str, Any]) -> None:
        if s.compile != "none" and row.get("status") == "ok" and row.get("dynamo_frames_compiled"):
            self.measured[f"{s.model}/{s.family}/{s.compile}"] = row["first_call_s"] + 5.0


def _dynamo_frames() -> int:
    """Frames Dynamo has compiled so far: a compiled row should compile once per network, never per call."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


def measure_row(systems: Systems, s: Setting, *, warmup: int, repeats: int) -> dict[str, Any]:
    """One setting: warm-up (compilation included, reported as ``first_call_s``), then timed batches."""
    device = systems.device
    row: dict[str, Any] = {**asdict(s), "compile_backend": systems.cfg.compile_backend if s.compile != "none" else None,
                           "device": str(device), "input": "uint8 batch already on the device"}
    try:
        row["image_size"] = size = systems.image_size(s.model)
        system = systems.get(s)
        generator = torch.Generator(device=device).manual_seed(0)
        batch = torch.randint(0, 256, (s.batch_size, 3, size, size), dtype=torch.uint8, device=device,
                              generator=generator)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        frames = _dynamo_frames()
        timing = time_calls(lambda: system.step(batch, s.precision), device, warmup=warmup, repeats=repeats)
        row["dynamo_frames_compiled"] = _dynamo_frames() - frames
    except Exception as err:  # OOM, a compile failure, a missing model: recorded per row, never fatal
        row.update(error_row(err, device))
        return row
    row.update(status="ok", images_per_second=s.batch_size / timing["seconds_p50"],
               ms_p50=timing["seconds_p50"] * 1e3, ms_min=timing["seconds_min"] * 1e3,
               ms_max=timing["seconds_max"] * 1e3, first_call_s=timing["first_call_s"], repeats=repeats,
               warmup=warmup, timer=timing["timer"], num_params=system.num_params)
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def run_rows(section: Section, systems: Systems, plan: list[Setting], rows: list[dict[str, Any]], *, phase: str,
             warmup: int, repeats: int, estimates: Estimates, limit: int | None = None) -> None:
    """Measure ``plan`` in order into ``rows`` (saved after each), skipping what the budget no longer allows."""
    for index, s in enumerate(plan):
        built = systems.is_built(s)
        if limit is not None and index >= limit:
            reason = "smoke: not in the smoke subset"
        elif not section.affords(estimates.of(s, built)):
            reason = f"budget: {section.left():.0f} s left, row needs about {estimates.of(s, built):.0f} s"
        else:
            reason = None
        if reason is not None:
            rows.append({**asdict(s), "phase": phase, "status": "skipped", "reason": reason})
            section.skipped.append(reason)
            continue
        row = {"phase": phase, **measure_row(systems, s, warmup=warmup, repeats=repeats)}
        estimates.record(s, row)
        rows.append(row)
        if row.get("dynamo_frames_compiled", 0) > 2 * (warmup + repeats):
            logger.warning("%s: Dynamo compiled %d frames in %d calls: it recompiles on every call", s,
                           row["dynamo_frames_compiled"], warmup + repeats)
        speed = f"{row['images_per_second']:10.0f} img/s" if row["status"] == "ok" else row["status"]
        logger.info("%-8s %-12s %s cl=%-5s compile=%-15s batch %4d  %s  (first call %.1f s)", s.model, s.system,
                    s.precision, s.channels_last, s.compile, s.batch_size, speed, row.get("first_call_s", 0.0))
        section.run.save()
