"""int8 trunks: post-training quantisation with NNCF for OpenVINO, made once per model and machine, and cached.

Only the trunk is quantised (uint8 images in, pooled ``features`` out); the heads stay float32 in PyTorch, as on
every backend. :func:`quantize_trunk` calibrates on a few hundred images, optionally leaving what some quantizers
quantised in fp32 (:mod:`.mixed_precision`), and caches the result in ``<cache>/int8/<trunk>-<key>/`` beside the
OpenVINO cache, ``key`` hashing what the model's fingerprint says about its trunk and preprocessing:

- ``manifest.json``: that identity, the calibration images' digest, the quantizers taken out, the tools' versions and
  the sha256 of every file below, written last (a folder without one is not a quantised trunk);
- ``trunk-<sha>.xml`` / ``.bin``: the quantised graph; ``probe-<sha>.npy``: its features of two random images;
- ``calibration/<sha>.<ext>``: the calibration images, so a damaged or stale graph is made again without the data.

A graph whose files do not match their sha256, whose identity is another model's, or whose probe features changed,
is never used: :func:`cached_trunk` rebuilds it from the cached calibration images, or says there are none.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_text, file_sha256
from ..data.images import ImageError, describe_input, is_path
from ..model import precision as _precision
from ..model.heads import MultiHeadModel
from ..model.precision import QUANTIZED_FORMAT, openvino_cache_dir
from .export import export_onnx, require

__all__ = ["CALIBRATION_IMAGES", "QUANTIZED_FORMAT", "QuantizedTrunk", "cached_trunk",
           "manifest_state", "openvino_cache_dir", "probe_images", "quantize_trunk", "quantized_dir",
           "quantized_identity"]

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300
"""Calibration images by default: NNCF's own default subset (``subset_size=300``)."""
PROBE_TOLERANCE = 5e-2
"""Largest difference, relative to the largest feature, between a compiled int8 trunk's features of the probe images
and those recorded when it was built: the same graph differs far less between CPUs with VNNI or AMX, a damaged or
converted-without-VNNI one far more."""
_lock = threading.Lock()

CalibrationItem = str | os.PathLike | torch.Tensor
"""A calibration image: a file (decoded and resized by the model's preprocessing) or a uint8 ``[3, S, S]`` tensor
already at the model's size."""


def quantized_dir(model: MultiHeadModel, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of ``model``'s int8 trunk (it may not exist yet; :func:`multihead.model.precision.quantized_dir`
    names it from the trunk's name, weights fingerprint and stages and the preprocessing)."""
    return _precision.quantized_dir(model.trunk.spec(), model.preprocessing, cache_dir)


def quantized_identity(model: MultiHeadModel) -> dict[str, Any]:
    """What ``model``'s int8 graph depends on (:func:`multihead.model.precision.quantized_identity`)."""
    return _precision.quantized_identity(model.trunk.spec(), model.preprocessing)


@dataclass(frozen=True)
class QuantizedTrunk:
    """A checked int8 trunk in the cache: compile ``xml`` with OpenVINO."""

    xml: Path
    calibration_sha256: str
    """sha256 over the calibration images' digests, in order: which images set the int8 ranges."""
    calibration_images: int
    fp32_quantizers: tuple[str, ...]
    """Quantizers taken out (mixed precision: what they quantised runs in fp32); empty when all of it is int8."""
    probe: np.ndarray
    """The int8 trunk's features of the probe images (:func:`probe_images`), as built."""
    manifest: dict[str, Any]


def probe_images(model: MultiHeadModel) -> torch.Tensor:
    """Two random uint8 images at the model's size (seed 0), the ones the backends' probes use."""
    size = model.preprocessing.image_size
    return torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


# --- building ----------------------------------------------------------------------------------------------

def quantize_trunk(model: MultiHeadModel, calibration: Sequence[CalibrationItem], *,
                   fp32_quantizers: Sequence[str] = (), cache_dir: str | os.PathLike | None = None,
                   threads: int | None = None) -> QuantizedTrunk:
    """Quantise ``model``'s trunk to int8 with NNCF, calibrated on ``calibration``, and cache it (replacing the
    cached one of this trunk).

    Args:
        calibration: image files (decoded and resized by the model's preprocessing) or uint8 ``[3, S, S]`` tensors
            at the model's size; a few hundred (:data:`CALIBRATION_IMAGES`) from the training split.
        fp32_quantizers: quantizers to take out, their activations or weights left in fp32 (mixed precision; from
            :func:`~.mixed_precision.find_fp32_quantizers`), by the names NNCF gives them (``<layer>/fq_output_0``,
            ``<layer>/fq_weights_1``).

    Raises:
        MissingDependencyError: ``nncf`` or ``openvino`` is not installed.
        ValueError: no calibration images, an image that cannot be read, a model not on the CPU.

    Example:
        >>> trunk = quantize_trunk(model, train_files[:300])  # doctest: +SKIP
        >>> trunk.xml.name
        'trunk-3f2a....xml'
    """
    if model.device.type != "cpu":
        raise ValueError(f"the int8 trunk is made on the CPU, the model is on {model.device}")
    if not calibration:
        raise ValueError("quantize_trunk needs calibration images (a few hundred of the training split)")
    _nncf()
    folder = quantized_dir(model, cache_dir)
    with _lock, tempfile.TemporaryDirectory(prefix="multihead-int8-") as scratch:
        stored = _store_calibration(model, calibration, folder / "calibration")
        return _build(model, folder, stored, tuple(fp32_quantizers), Path(scratch), threads)


def _store_calibration(model: MultiHeadModel, items: Sequence[CalibrationItem], where: Path) -> list[Path]:
    """Copy the calibration images into the cache by content (files as their bytes, tensors as ``.npy``)."""
    where.mkdir(parents=True, exist_ok=True)
    stored = []
    size = model.preprocessing.image_size
    for item in items:
        if isinstance(item, torch.Tensor):
            if item.dtype != torch.uint8 or tuple(item.shape) != (3, size, size):
                raise ValueError(f"a calibration tensor must be uint8 [3, {size}, {size}], got {item.dtype} "
                                 f"{tuple(item.shape)}")
            buffer = io.BytesIO()
            np.save(buffer, item.contiguous().numpy())
            data, suffix = buffer.getvalue(), ".npy"
        elif is_path(item):
            path = Path(os.fsdecode(item))
            try:
                data = path.read_bytes()
            except OSError as err:
                raise ImageError(f"{describe_input(item)}: cannot read calibration image ({err})") from None
            suffix = "" if path.suffix.lower() == ".npy" else path.suffix.lower()  # .npy: a tensor of ours
        else:
            raise TypeError(f"a calibration image is a file path or a uint8 tensor, got {type(item).__name__}")
        target = where / f"{hashlib.sha256(data).hexdigest()}{suffix}"
        if not target.is_file() or file_sha256(target) != target.stem:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        stored.append(target)
    return stored


def _calibration_tensor(model: MultiHeadModel, path: Path) -> np.ndarray:
    """A stored calibration image as the trunk's input, uint8 ``[1, 3, S, S]``."""
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)[None]
    return model.preprocessing.load(path).unsqueeze(0).numpy()


def _digest(stored: Sequence[Path]) -> str:
    return hashlib.sha256("\n".join(p.name.split(".")[0] for p in stored).encode()).hexdigest()


def _trunk_graph(model: MultiHeadModel, scratch: Path) -> Any:
    """``model``'s trunk as an OpenVINO model: uint8 images in, ``features`` out (the heads left out)."""
    ov = require("openvino")
    full = ov.Core().read_model(str(export_onnx(model, scratch / "model.onnx")))
    trunk = ov.Model([full.output("features")], full.get_parameters(), "multihead-trunk")
    ov.save_model(trunk, str(scratch / "trunk-fp32.xml"), compress_to_fp16=False)  # read back: no head left behind
    return ov.Core().read_model(str(scratch / "trunk-fp32.xml"))


def _nncf() -> Any:
    """NNCF, imported without the warning its import makes torch log (no CUDA runtime found: none is needed)."""
    extension_logger = logging.getLogger("torch.utils.cpp_extension")
    level = extension_logger.level
    extension_logger.setLevel(logging.ERROR)
    try:
        return require("nncf")
    finally:
        extension_logger.setLevel(level)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs at INFO and draws progress bars on stdout: neither belongs in ``classify --json``."""
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def _quantize(model: MultiHeadModel, graph: Any, stored: Sequence[Path], fp32_quantizers: tuple[str, ...]) -> Any:
    """NNCF's post-training quantisation of ``graph``, then the quantizers named in ``fp32_quantizers`` taken out:
    an activation's ``FakeQuantize`` bypassed, a weight's int8 copy replaced by the fp32 weight it was made from.
    The same graph for the same images and names, built again anywhere."""
    nncf = _nncf()
    ov = require("openvino")
    weights = {f"{op.get_friendly_name()}/fq_weights_{port}": inp.get_source_output().get_node().get_data().copy()
               for op in graph.get_ordered_ops() for port, inp in enumerate(op.inputs())
               if inp.get_source_output().get_node().get_type_name() == "Constant"}
    dataset = nncf.Dataset(list(stored), lambda path: _calibration_tensor(model, path))
    with _quiet_nncf():
        quantized = nncf.quantize(graph, dataset, subset_size=len(stored))
    found = {name: op for name, op in _quantizer_ops(quantized)}
    unknown = sorted(set(fp32_quantizers) - found.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} quantizers to keep in fp32 are not in the quantised graph (first: "
                         f"{unknown[0]}); NNCF names them differently now: run `multihead tune-precision` again")
    for name in fp32_quantizers:
        op = found[name]
        if op.get_type_name() == "FakeQuantize":
            op.output(0).replace(op.input_value(0))
        elif name in weights:  # a compressed weight (int8 constant, converted and scaled): the fp32 weight back
            op.output(0).replace(ov.op.Constant(weights[name]).output(0))
        else:
            raise ValueError(f"quantizer {name} has no fp32 weight to restore")
    if fp32_quantizers:
        quantized.validate_nodes_and_infer_types()
    return quantized


def _build(model: MultiHeadModel, folder: Path, stored: list[Path], fp32_quantizers: tuple[str, ...], scratch: Path,
           threads: int | None) -> QuantizedTrunk:
    ov = require("openvino")
    quantized = _quantize(model, _trunk_graph(model, scratch), stored, fp32_quantizers)
    ov.save_model(quantized, str(scratch / "trunk.xml"), compress_to_fp16=False)
    sha = hashlib.sha256((scratch / "trunk.xml").read_bytes() + (scratch / "trunk.bin").read_bytes()).hexdigest()[:16]
    names = {suffix: f"trunk-{sha}{suffix}" for suffix in (".xml", ".bin")}
    for suffix, name in names.items():  # copied beside, then renamed: the cache may be on another file system
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(scratch / f"trunk{suffix}", tmp)
        os.replace(tmp, folder / name)
    probe = _compiled_features(folder / names[".xml"], probe_images(model), threads)
    probe_buffer = io.BytesIO()
    np.save(probe_buffer, probe)
    probe_name = f"probe-{hashlib.sha256(probe_buffer.getvalue()).hexdigest()[:16]}.npy"
    (folder / probe_name).write_bytes(probe_buffer.getvalue())
    manifest = {
        "format": QUANTIZED_FORMAT,
        "identity": quantized_identity(model),
        "calibration": [p.name for p in stored],
        "calibration_sha256": _digest(stored),
        "fp32_quantizers": sorted(fp32_quantizers),
        "quantizers": _quantizers(quantized),
        "tools": {name: _version(name) for name in ("openvino", "nncf")},
        "files": {name: file_sha256(folder / name) for name in (names[".xml"], names[".bin"], probe_name)},
        "xml": names[".xml"],
        "probe": probe_name,
    }
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    _remove_unlisted(folder, manifest)
    logger.info("int8 trunk of %s made in %s (%d calibration images, %d quantizers out)", model.trunk.name, folder,
                len(stored), len(fp32_quantizers))
    return _trunk_from(folder, manifest, probe)


def _remove_unlisted(folder: Path, manifest: dict[str, Any]) -> None:
    """Graphs and probes of earlier builds (the calibration images stay: a later build may use them again)."""
    for path in folder.iterdir():
        if path.is_file() and path.name != "manifest.json" and path.name not in manifest["files"]:
            with contextlib.suppress(OSError):
                path.unlink()


def _quantizer_ops(graph: Any) -> list[tuple[str, Any]]:
    """A quantised graph's quantizers by name: each ``FakeQuantize`` (activations, some weights), and each weight
    NNCF stored as int8 (its dequantising ``Multiply``, named ``<layer>/fq_weights_<port>``)."""
    return [(op.get_friendly_name(), op) for op in graph.get_ordered_ops()
            if op.get_type_name() == "FakeQuantize" or (
                op.get_type_name() == "Multiply" and "/fq_weights_" in op.get_friendly_name())]


def _quantizers(graph: Any) -> list[str]:
    """The names of a quantised graph's quantizers (:func:`_quantizer_ops`)."""
    return sorted(name for name, _ in _quantizer_ops(graph))


def _compiled_features(xml: Path, images: torch.Tensor, threads: int | None) -> np.ndarray:
    ov = require("openvino")
    compiled = ov.Core().compile_model(str(xml), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32",  # what mixed precision left in fp32 stays so (AMX's default is bf16)
        "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
    })
    return np.asarray(compiled.create_infer_request().infer({"images": images.numpy()})[compiled.output("features")],
                      dtype=np.float32)


def _trunk_from(folder: Path, manifest: dict[str, Any], probe: np.ndarray) -> QuantizedTrunk:
    return QuantizedTrunk(xml=folder / manifest["xml"], calibration_sha256=manifest["calibration_sha256"],
                          calibration_images=len(manifest["calibration"]),
                          fp32_quantizers=tuple(manifest["fp32_quantizers"]), probe=probe, manifest=manifest)


# --- reading the cache -------------------------------------------------------------------------------------

def manifest_state(model: MultiHeadModel, cache_dir: str | os.PathLike | None = None) -> str | None:
    """Which int8 graph the cache holds for ``model``, cheaply (its manifest's graph name, named by content; nothing
    checked): what compiled runtimes and the feature cache are keyed by. ``None``: no manifest."""
    try:
        manifest = json.loads((quantized_dir(model, cache_dir) / "manifest.json").read_text())
        return str(manifest["xml"]) + "|" + str(manifest.get("calibration_sha256"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_trunk(model: MultiHeadModel, *, cache_dir: str | os.PathLike | None = None, rebuild: bool = True,
                 threads: int | None = None) -> QuantizedTrunk | None:
    """``model``'s int8 trunk from the cache, checked; ``None`` when there is none and none can be made here.

    A graph that is damaged (a file whose sha256 changed, an unreadable manifest, features of the probe images that
    moved) or stale (made for other trunk weights, stages or preprocessing, or by an older cache format) is never
    used: with ``rebuild`` it is made again from the cached calibration images, with the same quantizers out (NNCF
    needed); without, or when those images are gone too, ``None`` comes back and the reason is logged.
    """
    folder = quantized_dir(model, cache_dir)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return None
    with _lock:
        problem, manifest = _check(model, folder, manifest_path, threads)
        if problem is None:
            return _trunk_from(folder, manifest, np.load(folder / manifest["probe"], allow_pickle=False))
        logger.warning("the cached int8 trunk in %s is not used: %s", folder, problem)
        stored = _cached_calibration(folder, manifest)
        if not rebuild or stored is None or importlib.util.find_spec("nncf") is None:
            why = ("its calibration images are gone too" if stored is None else
                   "nncf is not installed" if importlib.util.find_spec("nncf") is None else "rebuilding was not asked")
            logger.warning("no int8 trunk for %s: %s; `multihead tune-precision MODEL DATA` makes one", folder, why)
            return None
        with tempfile.TemporaryDirectory(prefix="multihead-int8-") as scratch:
            return _build(model, folder, stored, tuple(manifest.get("fp32_quantizers") or ()), Path(scratch), threads)


def _check(model: MultiHeadModel, folder: Path, manifest_path: Path,
           threads: int | None) -> tuple[str | None, dict[str, Any]]:
    """``(None, manifest)`` for a sound graph of ``model``, else ``(why not, whatever manifest was read)``."""
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return f"its manifest cannot be read ({err})", {}
    if manifest.get("format") != QUANTIZED_FORMAT:
        return f"it was made in quantised-cache format {manifest.get('format')!r}, this multihead writes " \
               f"{QUANTIZED_FORMAT}", manifest
    if manifest.get("identity") != json.loads(json.dumps(quantized_identity(model))):  # as JSON stores it
        return "it was made for another trunk (weights, stages or preprocessing differ)", manifest
    files = manifest.get("files")
    if not isinstance(files, dict) or not {manifest.get("xml"), manifest.get("probe")} <= files.keys():
        return "its manifest lists no graph", manifest
    for name, sha in files.items():
        path = folder / str(name)
        if not path.is_file() or file_sha256(path) != sha:
            return f"{name} is missing or damaged (its sha256 changed)", manifest
    try:
        recorded = np.load(folder / manifest["probe"], allow_pickle=False)
        found = _compiled_features(folder / manifest["xml"], probe_images(model), threads)
    except Exception as err:  # OpenVINO raises its own RuntimeError types on a graph it cannot read or compile
        return f"it cannot be compiled ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", manifest
    scale = float(np.abs(recorded).max()) or 1.0
    difference = float(np.abs(found - recorded).max()) / scale if found.shape == recorded.shape else float("inf")
    if not difference <= PROBE_TOLERANCE:
        return (f"its features of the probe images moved by {difference:.2g} (relative) since it was made, above "
                f"{PROBE_TOLERANCE}"), manifest
    return None, manifest


def _cached_calibration(folder: Path, manifest: dict[str, Any]) -> list[Path] | None:
    """The calibration images a manifest lists, when every one is still there unchanged."""
    names = manifest.get("calibration")
    if not isinstance(names, list) or not names:
        return None
    stored = [folder / "calibration" / str(name) for name in names]
    return stored if all(p.is_file() and file_sha256(p) == p.name.split(".")[0] for p in stored) else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
