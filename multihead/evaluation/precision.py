"""The accuracy guard of reduced precision: how a model's answers at bf16, fp16 and int8 compare with fp32 on its
own validation images, recorded in the checkpoint so that ``InferenceConfig(precision="auto")`` can choose
(:mod:`multihead.model.precision`).

:func:`measure_guard` runs the validation images of a split at fp32 (the reference), then at each reduced
precision this machine computes in hardware, and records per precision the share of subtypes identical to fp32
(``agreement``), the accuracy and its change, and the trunk's speed relative to fp32 on one batch (interleaved
rounds, same process). int8 is the trunk quantised by NNCF (:mod:`multihead.inference.quantize`), calibrated on a
few hundred images of the training split; when it falls short of the agreement rule, NNCF's accuracy control
returns what the costliest quantizers quantised to fp32 (mixed precision) and the mixed graph is measured instead.
:func:`record_guard` writes the table into a checkpoint's metadata, changing nothing else.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .._precision import cpu_flags, missing_instructions
from ..data.loading import load_batches
from ..data.scan import DatasetScan, scan_dataset
from ..data.splits import Split
from ..inference.backends import resolve_backend
from ..inference.config import InferenceConfig
from ..inference.engine import run_features
from ..inference.export import require
from ..inference.mixed_precision import find_fp32_quantizers
from ..inference.quantize import CALIBRATION_IMAGES, quantize_trunk
from ..model import precision as _policy
from ..model.checkpoint import load, read_header, save
from ..model.heads import MultiHeadModel
from ..model.precision import GUARD_KEY, MIN_AGREEMENT, native_precisions, passes, runnable_precisions
from ..model.records import PrecisionGuard, PrecisionReference, PrecisionRow, to_dict

__all__ = ["DEFAULT_PRECISIONS", "REDUCED_PRECISIONS", "calibration_files", "measure_guard", "model_split",
           "record_guard"]

logger = logging.getLogger(__name__)

REDUCED_PRECISIONS = ("bf16", "fp16", "int8")
"""What the guard can measure against fp32, where this machine computes it in hardware."""
DEFAULT_PRECISIONS = ("bf16", "int8")
"""What it measures unless asked: the precisions OpenVINO runs (fp16 runs on PyTorch only; ask for it)."""

RANKING_IMAGES = 300
"""Validation images NNCF's accuracy control ranks the quantizers on (each quantizer once); the validation set
itself is run at each step that returns one to fp32."""

Progress = Callable[[str], None]


def model_split(model_path: str | os.PathLike, split: str | os.PathLike | None = None) -> Split:
    """The split a model was trained on: ``split`` when given, else ``MODEL.split.json`` beside the checkpoint (what
    ``multihead train`` writes), else the split recorded in the checkpoint's metadata.

    Raises:
        ValueError: none of the three exists.
    """
    if split is not None:
        return Split.load(split)
    beside = Path(model_path).with_suffix(".split.json")
    if beside.is_file():
        return Split.load(beside)
    recorded = read_header(model_path)["metadata"].get("split") or {}
    if isinstance(recorded.get("files"), dict) and recorded["files"]:
        return Split({str(k): str(v) for k, v in recorded["files"].items()}, dict(recorded.get("info") or {}))
    raise ValueError(f"{model_path}: no split found (no {beside.name} beside it, none in its metadata); give the "
                     "split file the model was trained with: --split SPLIT.json")


def calibration_files(scan: DatasetScan, relpaths: Sequence[str], count: int = CALIBRATION_IMAGES, *,
                      seed: int = 0) -> list[Path]:
    """``count`` files of ``relpaths`` (the training split) for int8 calibration, spread over the subtypes: one of
    each subtype in turn (each subtype's files in a seeded random order) until ``count`` are taken."""
    by_path = {r.relpath: r for r in scan.records}
    groups: dict[str, list[Path]] = {}
    for relpath in sorted(relpaths):
        if relpath in by_path:
            groups.setdefault(by_path[relpath].subtype, []).append(by_path[relpath].path)
    generator = random.Random(seed)
    for files in groups.values():
        generator.shuffle(files)
    chosen: list[Path] = []
    queues = [groups[name] for name in sorted(groups)]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return chosen


def _labelled_batches(model: MultiHeadModel, scan: DatasetScan, relpaths: Sequence[str],
                      batch_size: int) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """The validation images as uint8 batches (kept in memory: every precision runs the same ones), their true
    subtypes, and the files that could not be read."""
    by_path = {r.relpath: r for r in scan.records}
    missing = [p for p in relpaths if p not in by_path]
    if missing:
        raise ValueError(f"{len(missing)} files of the split are not in {scan.describe()} (first: {missing[0]}); give "
                         "the data folders the model was trained on")
    records = [by_path[p] for p in relpaths]
    batches, labels, failed = [], [], []
    for loaded in load_batches([r.path for r in records], model.preprocessing.load, batch_size=batch_size):
        failed += [reason for _, reason in loaded.failures]
        if loaded.images is not None:
            batches.append(loaded.images)
            labels += [model.taxonomy.subtype_index(records[i].subtype) for i in loaded.indices]
    if not batches:
        raise ValueError(f"none of the {len(records)} validation images could be read")
    return batches, torch.tensor(labels, dtype=torch.long), failed


def _subtypes(model: MultiHeadModel, batches: Sequence[torch.Tensor], config: InferenceConfig) -> torch.Tensor:
    return torch.cat([model.decisions(run_features(model, batch, config)).subtype for batch in batches])


def _speed(model: MultiHeadModel, batch: torch.Tensor, configs: dict[str, InferenceConfig], rounds: int,
           repeats: int = 2) -> dict[str, float]:
    """Each precision's trunk speed over fp32's on one batch: interleaved rounds in this process, median ratio."""
    for config in configs.values():  # warm-up: compilation and the first call's allocations
        run_features(model, batch, config)
    ratios: dict[str, list[float]] = {name: [] for name in configs if name != "fp32"}
    for _ in range(rounds):
        seconds = {}
        for name, config in configs.items():
            begin = time.perf_counter()
            for _ in range(repeats):
                run_features(model, batch, config)
            seconds[name] = time.perf_counter() - begin
        for name in ratios:
            ratios[name].append(seconds["fp32"] / seconds[name])
    return {name: statistics.median(values) for name, values in ratios.items()}


def measure_guard(model: MultiHeadModel, data_dir: str | os.PathLike | Sequence[str | os.PathLike], *,
                  split: Split, subset: str = "val", precisions: Sequence[str] = DEFAULT_PRECISIONS,
                  calibration_images: int = CALIBRATION_IMAGES, mixed_precision: bool = True, rounds: int = 3,
                  batch_size: int | None = None, on_progress: Progress | None = None) -> dict[str, Any]:
    """The guard table of ``model``: each of ``precisions`` this machine computes in hardware, against fp32, on the
    ``subset`` images of ``split`` (the validation images: the test images stay unseen).

    Args:
        data_dir: the data folder(s) the model was trained on, as ``multihead train`` took them.
        calibration_images: training images int8 is calibrated on.
        mixed_precision: when full int8 falls short of the agreement rule, take its costliest quantizers out, what
            they quantised left in fp32 (NNCF's accuracy control; it runs the validation images many times), and
            measure that graph.
        rounds: interleaved timing rounds for ``speed_vs_fp32``.

    Returns:
        What :data:`multihead.model.precision.GUARD_KEY` holds: ``precisions`` (per precision: ``backend``,
        ``agreement``, ``accuracy``, ``accuracy_change``, ``speed_vs_fp32``; int8 also ``calibration_sha256``,
        ``calibration_images`` and ``fp32_quantizers``), ``not_measured`` (precision -> why), the reference's
        ``backend`` and ``accuracy``, ``images``, ``subset``, ``data`` (folder names), ``measured_on`` and ``date``.
    """
    say = on_progress or (lambda line: logger.info("%s", line))
    unknown = [p for p in precisions if p not in REDUCED_PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precision {unknown[0]!r}; the guard measures {', '.join(REDUCED_PRECISIONS)}")
    if model.device.type != "cpu":
        raise ValueError(f"the guard is measured on the CPU (what auto chooses for), the model is on {model.device}")
    scan = scan_dataset(data_dir, model.taxonomy)
    relpaths = split.files(subset)
    if not relpaths:
        raise ValueError(f"the split has no {subset!r} images to measure the guard on")
    batch_size = batch_size or InferenceConfig().batch_for(model)
    say(f"reading {len(relpaths)} {subset} images of {scan.describe()}")
    batches, labels, failed = _labelled_batches(model, scan, relpaths, batch_size)
    for reason in failed:
        say(f"skipped {reason}")
    reference_config = InferenceConfig(precision="fp32", batch_size=batch_size)
    reference_backend = reference_config.resolve("cpu").backend
    say(f"fp32 on {reference_backend}: the reference")
    reference = _subtypes(model, batches, reference_config)
    reference_accuracy = float((reference == labels).double().mean())
    rows: dict[str, PrecisionRow] = {}
    not_measured = {p: f"not asked for (tune-precision --precision {p} measures it)"
                    for p in REDUCED_PRECISIONS if p not in precisions}
    configs = {"fp32": reference_config}
    for precision in precisions:
        backend = resolve_backend("auto", precision, "cpu")
        why = _cannot_measure(precision, backend)
        if why:
            not_measured[precision] = why
            say(f"{precision}: not measured, {why}")
            continue
        config = InferenceConfig(precision=precision, backend=backend, batch_size=batch_size)
        graph = _int8(model, scan, split, batches, reference, calibration_images, mixed_precision, say) if (
            precision == "int8") else {}
        say(f"{precision} on {backend}: {sum(len(b) for b in batches)} images")
        found = _subtypes(model, batches, config)
        accuracy = float((found == labels).double().mean())
        row = rows[precision] = PrecisionRow(
            backend=backend, agreement=float((found == reference).double().mean()), accuracy=accuracy,
            accuracy_change=accuracy - reference_accuracy, **graph)
        configs[precision] = config
        say(f"{precision}: {row.agreement:.2%} of subtypes as fp32, accuracy {accuracy:.2%} "
            f"({row.accuracy_change * 100:+.2f} points): {'passes' if passes(row) else 'fails'} the guard")
    if rows and rounds > 0:
        say(f"timing the trunk: {len(configs)} precisions, {rounds} interleaved rounds")
        for precision, ratio in _speed(model, batches[0], configs, rounds).items():
            rows[precision] = replace(rows[precision], speed_vs_fp32=ratio)
    return to_dict(PrecisionGuard(
        precisions=rows, not_measured=not_measured,
        reference=PrecisionReference(precision="fp32", backend=reference_backend, accuracy=reference_accuracy),
        images=int(labels.numel()), subset=subset, data=[source.name for source in scan.sources],
        measured_on=_machine(), date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")))


def _cannot_measure(precision: str, backend: str) -> str | None:
    """Why ``precision`` cannot be measured here (no backend runs it, or not natively), or ``None``."""
    if precision == "int8":
        for package in ("openvino", "nncf"):
            try:
                require(package)
            except RuntimeError:
                return f"int8 needs {package}: pip install 'multihead[openvino]'"
    if precision not in runnable_precisions(backend, "cpu"):
        return f"no backend installed here runs {precision}"
    if precision not in native_precisions(backend, "cpu"):
        return (f"this CPU has no {missing_instructions(precision)}" if precision not in _policy.native_cpu_precisions()
                else f"{backend} does not run {precision} natively here")
    return None


def _int8(model: MultiHeadModel, scan: DatasetScan, split: Split, batches: Sequence[torch.Tensor],
          reference: torch.Tensor, count: int, mixed_precision: bool, say: Progress) -> dict[str, Any]:
    """Quantise the trunk (calibrated on the training split), check its agreement, and when it falls short of the
    rule take its costliest quantizers out; the graph left in the cache is the one measured next."""
    calibration = calibration_files(scan, split.files("train"), count)
    if not calibration:
        raise ValueError("the split has no training images to calibrate int8 on")
    say(f"int8: quantising the trunk with NNCF, calibrated on {len(calibration)} training images")
    quantized = quantize_trunk(model, calibration)
    config = InferenceConfig(precision="int8", backend="openvino", batch_size=len(batches[0]))
    agreement = float((_subtypes(model, batches, config) == reference).double().mean())
    if mixed_precision and agreement < MIN_AGREEMENT:
        say(f"int8: {agreement:.2%} of subtypes as fp32, below {MIN_AGREEMENT:.1%}: finding the quantizers to take "
            "out (NNCF accuracy control; this runs the validation images many times)")
        offsets = [0]
        for batch in batches:
            offsets.append(offsets[-1] + len(batch))
        validation = [(batch, reference[offsets[i]:offsets[i + 1]]) for i, batch in enumerate(batches)]

        def agree(features: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
            return (model.decisions(features).subtype == wanted).double()

        ranking = min(len(validation), max(1, RANKING_IMAGES // len(batches[0])))
        kept = find_fp32_quantizers(model, calibration, validation, metric=agree, max_drop=1.0 - MIN_AGREEMENT,
                                    ranking_batches=ranking)
        say(f"int8: {len(kept)} quantizers taken out (their activations or weights stay fp32)")
        quantized = quantize_trunk(model, calibration, fp32_quantizers=kept)
    return {"calibration_sha256": quantized.calibration_sha256, "calibration_images": quantized.calibration_images,
            "fp32_quantizers": list(quantized.fp32_quantizers)}


def _machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.partition(":")[2].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                                  "amx_bf16", "amx_int8", "amx_fp16"})
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "cpu_flags": flags, "threads": torch.get_num_threads(),
            **{name: installed(name) for name in ("torch", "openvino", "nncf")}}


def record_guard(path: str | os.PathLike, guard: dict[str, Any], *, out: str | os.PathLike | None = None) -> Path:
    """Write ``guard`` into the checkpoint's metadata (``metadata["precision_guard"]``), at ``out`` or in place;
    the tensors and the rest of the header are written back as they were (the header's checksum is checked).

    Returns:
        The file written.
    """
    path, target = Path(path), Path(out or path)
    header = read_header(path)
    model = load(path)
    model.metadata = {**model.metadata, GUARD_KEY: guard}
    scratch = target.with_name(f".{target.name}.guard-{os.getpid()}.tmp")
    try:
        save(model, scratch, embed_trunk=bool(header["trunk"].get("embedded")),
             trunk_dtype=str(header["trunk"].get("stored_dtype", "float32")))
        written = read_header(scratch)  # the guard passes the header's schema, and the model is the same
        if header.get("header_sha256") and written.get("header_sha256") != header["header_sha256"]:
            raise RuntimeError(f"{path}: the model would change if its guard were recorded (header checksum differs)")
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return target
