"""Run the trunk on ONNX Runtime or OpenVINO instead of PyTorch: the same features, the same Predictions.

Only the trunk moves. :func:`multihead.inference.engine.run_features` hands the uint8 batch to a :class:`Runtime`,
which runs the exported graph (:mod:`multihead.inference.export`) and returns its ``features``; the heads, the joint
probabilities, the trust rules, test-time augmentation and the out-of-distribution score stay in PyTorch
float32, so every backend goes through the same code after the trunk.

``InferenceConfig(backend="auto")``, the default, takes OpenVINO when it is installed, then ONNX Runtime, then
PyTorch: on the CPU only, and only once the runtime has reproduced PyTorch's features on a probe batch. When
the export, the compilation or the probe fails it logs why and stays with PyTorch. The order, and OpenVINO's
fp32 precision hint, come from measurements (docs/benchmarks.md, "CPU backends").
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model import precision as _policy
from ..model.heads import MultiHeadModel
from ..model.precision import AUTO_ORDER, BACKEND_PRECISIONS, BACKENDS, installed_backends, openvino_precisions
from ..model.trunk import fingerprint_state_dict
from ..model.trunk_split import TrunkSplit
from .export import OUTPUTS, bottom_outputs, check_onnx, export_bottom_onnx, export_onnx, require
from .shared_weights import weights_in_use

__all__ = ["AUTO_ORDER", "BACKENDS", "BACKEND_PRECISIONS", "Runtime", "bottom_runtime_for", "installed_backends",
           "open_bottom_runtime", "open_int8_runtime", "open_runtime", "openvino_precisions", "resolve_backend",
           "runtime_for"]

logger = logging.getLogger(__name__)

_OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` per precision: an int8 graph runs its quantised layers in int8 whatever
the hint, and the layers kept in fp32 (mixed precision) in f32 only with this hint (on AMX the default is bf16)."""
_PROBE_TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}
"""Largest feature difference from PyTorch on the probe batch, relative to the largest feature: far above what
the runtimes differ by here (fp32 2e-7 to 2e-6, bf16 3e-3 to 3e-2), far below a wrongly converted graph."""
_CACHE_SIZE = 4


class Runtime:
    """An exported graph compiled by one backend: uint8 batch -> its outputs. Safe to call from several threads.

    Build one with :func:`open_runtime`; :func:`runtime_for` keeps the ones inference uses.
    """

    def __init__(self, backend: str, precision: str, threads: int, source: str) -> None:
        self.backend = backend
        self.precision = precision
        self.threads = threads
        self.source = source
        """The ONNX file it was compiled from, or ``"exported on the fly"``."""

    def run(self, batch: torch.Tensor, outputs: tuple[str, ...] = OUTPUTS) -> dict[str, torch.Tensor]:
        """uint8 ``[B, 3, S, S]`` (any device) -> the named graph outputs, float32 CPU tensors."""
        images = batch.detach().to("cpu", torch.uint8).contiguous().numpy()
        return {name: torch.from_numpy(np.ascontiguousarray(array))
                for name, array in zip(outputs, self._infer(images, outputs))}

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, S, S]`` -> pooled trunk features ``[B, F]`` (what :func:`run_features` returns)."""
        return self.run(batch, ("features",))["features"]

    def _infer(self, images: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(backend={self.backend!r}, precision={self.precision!r}, "
                f"threads={self.threads}, source={self.source!r})")


class _OnnxRuntime(Runtime):
    def __init__(self, path: Path, precision: str, threads: int, source: str) -> None:
        super().__init__("onnxruntime", precision, threads, source)
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one graph, one batch at a time: parallelism is inside the operators
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _infer(self, images: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        return self._session.run(list(outputs), {"images": images})  # InferenceSession.run is thread-safe


class _OpenVino(Runtime):
    """An OpenVINO graph: the exported ONNX file, or (int8) the quantised trunk's IR."""

    def __init__(self, path: Path, precision: str, threads: int, source: str) -> None:
        super().__init__("openvino", precision, threads, source)
        ov = require("openvino")
        # Explicit: on a CPU with bf16 instructions OpenVINO's own default precision is bf16, not f32.
        self._compiled = ov.Core().compile_model(str(path), "CPU", {
            "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[precision],
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",  # one stream: each call is one batch, its threads work on it together
        })

    def _infer(self, images: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        request = self._compiled.create_infer_request()  # one per call: a request is not thread-safe
        result = request.infer({"images": images})
        return [result[self._compiled.output(name)] for name in outputs]


_RUNTIMES = {"onnxruntime": _OnnxRuntime, "openvino": _OpenVino}


def resolve_backend(backend: str, precision: str, device: str | torch.device) -> str:
    """``"auto"`` -> the first of :data:`AUTO_ORDER` that is installed and runs ``precision`` (CPU only), else
    ``"torch"``; any other backend is returned as it is.

    Example:
        >>> resolve_backend("auto", "fp32", "cuda"), resolve_backend("onnxruntime", "fp32", "cpu")
        ('torch', 'onnxruntime')
    """
    if backend != "auto":
        return backend
    if torch.device(device).type != "cpu":
        return "torch"
    installed = _policy.installed_backends()
    return next((name for name in AUTO_ORDER if name in installed and precision in BACKEND_PRECISIONS[name]),
                "torch")


def open_runtime(model: MultiHeadModel, backend: str, *, precision: str = "fp32",
                 onnx_file: str | Path | None = None, threads: int | None = None) -> Runtime:
    """Compile ``model``'s trunk for ``backend`` and check it reproduces PyTorch's features on a probe batch.

    Args:
        backend: ``"onnxruntime"`` or ``"openvino"``.
        precision: ``"fp32"``, or ``"bf16"`` on OpenVINO (its ``INFERENCE_PRECISION_HINT``).
        onnx_file: a file from :func:`multihead.inference.export.export_onnx`, checked against ``model`` first; default:
            export ``model`` to a temporary file.
        threads: the runtime's CPU threads (default: ``torch.get_num_threads()``).

    Raises:
        MissingDependencyError: the backend's package is not installed.
        ValueError: an unknown backend or precision, a model not on the CPU, an ``onnx_file`` from another model.
        RuntimeError: the export fails, or the runtime's features differ from PyTorch's.

    Example:
        >>> runtime = open_runtime(multihead.load(default_model_path()), "openvino")  # doctest: +SKIP
        >>> runtime.features(torch.zeros(1, 3, 640, 640, dtype=torch.uint8)).shape  # doctest: +SKIP
        torch.Size([1, 1976])
    """
    _check_backend(model, backend, precision)
    if precision == "int8":
        raise ValueError("an int8 trunk is not compiled from the ONNX file: use open_int8_runtime")
    threads = threads or torch.get_num_threads()
    if onnx_file is not None:
        check_onnx(onnx_file, model)
        runtime = _RUNTIMES[backend](Path(onnx_file), precision, threads, str(onnx_file))
    else:
        with tempfile.TemporaryDirectory(prefix="multihead-onnx-") as folder:
            path = export_onnx(model, Path(folder) / "model.onnx")
            runtime = _RUNTIMES[backend](path, precision, threads, "exported on the fly")
    _probe(model, runtime)
    return runtime


def open_int8_runtime(model: MultiHeadModel, *, threads: int | None = None) -> Runtime:
    """The int8 trunk of ``model`` on OpenVINO: the quantised graph cached on this machine
    (:func:`multihead.inference.quantize.cached_trunk`, checked and rebuilt there when damaged or stale).

    Raises:
        MissingDependencyError: OpenVINO is not installed.
        RuntimeError: no int8 trunk exists for this model on this machine, and none can be made from cached
            calibration images.
    """
    from .quantize import cached_trunk

    _check_backend(model, "openvino", "int8")
    threads = threads or torch.get_num_threads()
    quantized = cached_trunk(model, threads=threads)
    if quantized is None:
        raise RuntimeError("no int8 trunk of this model on this machine: `multihead tune-precision MODEL DATA` makes "
                           "one from its training split (or multihead.inference.quantize.quantize_trunk)")
    return _OpenVino(quantized.xml, "int8", threads, str(quantized.xml))


def open_bottom_runtime(model: MultiHeadModel, parts: TrunkSplit, backend: str, *, precision: str = "fp32",
                        threads: int | None = None) -> Runtime:
    """Compile the frozen bottom of ``parts`` (``model``'s trunk cut for tuning) for ``backend``: uint8 images ->
    ``maps`` and, when stages below the cut are pooled, ``pooled`` (the graph of :func:`export_bottom_onnx`),
    checked against ``parts.bottom_forward`` on a probe batch. Raises as :func:`open_runtime`.
    """
    _check_backend(model, backend, precision)
    with tempfile.TemporaryDirectory(prefix="multihead-onnx-") as folder:
        path = export_bottom_onnx(model, parts, Path(folder) / "bottom.onnx")
        runtime = _RUNTIMES[backend](path, precision, threads or torch.get_num_threads(), "exported on the fly")

    def expected(images: torch.Tensor) -> dict[str, torch.Tensor]:
        maps, pooled = parts.bottom_forward(model.preprocessing.normalize(images))
        return {"maps": maps, "pooled": pooled} if "pooled" in bottom_outputs(parts) else {"maps": maps}

    _probe(model, runtime, expected, "maps")
    return runtime


def _check_backend(model: MultiHeadModel, backend: str, precision: str) -> None:
    if backend not in _RUNTIMES:
        raise ValueError(f"backend must be one of {', '.join(_RUNTIMES)} (torch needs no runtime), got {backend!r}")
    if precision not in BACKEND_PRECISIONS[backend]:
        raise ValueError(f"{backend} runs {' or '.join(BACKEND_PRECISIONS[backend])} on the CPU, "
                         f"got precision {precision!r}")
    if model.device.type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU, the model is on {model.device}; use backend='torch'")


def _probe(model: MultiHeadModel, runtime: Runtime,
           expected: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None, what: str = "features") -> None:
    """Raise unless ``runtime`` gives PyTorch's float32 outputs (``expected(images)``, by default the trunk's
    features) on two random images: a wrong conversion shows."""
    size = model.preprocessing.image_size
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with weights_in_use(), torch.inference_mode():
        wanted = (expected(images) if expected is not None
                  else {"features": model.forward_features(model.preprocessing.normalize(images))})
    found = runtime.run(images, tuple(wanted))
    for name, value in wanted.items():
        if found[name].shape != value.shape:
            raise RuntimeError(f"{runtime.backend} ({runtime.precision}) {what} differ from PyTorch's in shape: "
                               f"{tuple(found[name].shape)} against {tuple(value.shape)}; use backend='torch'")
    difference = max(float((found[name] - value.float()).abs().max() / value.float().abs().max().clamp_min(1e-12))
                     for name, value in wanted.items())
    tolerance = _PROBE_TOLERANCE[runtime.precision]
    if not difference <= tolerance:  # also catches NaN
        raise RuntimeError(f"{runtime.backend} ({runtime.precision}) {what} differ from PyTorch's by "
                           f"{difference:.2g} (relative) on a probe batch, above {tolerance}; use backend='torch'")


_cache: OrderedDict[tuple[Any, ...], Runtime | None] = OrderedDict()
_cache_lock = threading.Lock()


def runtime_for(model: MultiHeadModel, backend: str, precision: str, *, fallback: bool) -> Runtime | None:
    """The runtime inference uses for ``model`` (built once per trunk, preprocessing, backend, precision, threads;
    the graph's heads are not used, so retrained heads on the same trunk share it).

    With ``fallback`` (``backend="auto"``) a runtime that cannot be built is logged once and ``None`` comes
    back: run the trunk in PyTorch. Without it the error is raised.
    """
    trunk = json.dumps(model.trunk.spec(), sort_keys=True)  # weights fingerprint, and stages where a trunk has them
    key = ("trunk", backend, precision, torch.get_num_threads(), trunk, model.preprocessing.to_json())
    if precision == "int8":  # a quantised graph made again (tune-precision, a damaged cache) is compiled again
        from .quantize import manifest_state

        return _cached((*key, manifest_state(model)), lambda: open_int8_runtime(model), fallback,
                       "the int8 trunk is not used, the trunk runs in fp32")
    return _cached(key, lambda: open_runtime(model, backend, precision=precision), fallback,
                   f"{backend} is not used, the trunk runs in PyTorch")


def bottom_runtime_for(model: MultiHeadModel, parts: TrunkSplit, backend: str, *, fallback: bool) -> Runtime | None:
    """The fp32 runtime that fills the map cache at ``parts.cut``, built once per bottom (its weights, cut and pooled
    stages, as the map cache is keyed), preprocessing, backend and threads: the training, validation and test maps
    of a run share one compilation. Falls back as :func:`runtime_for` does; ``None``: run the bottom in PyTorch."""
    bottom = (model.trunk.name, fingerprint_state_dict(parts.bottom.state_dict()), parts.cut, tuple(parts.stages_below))
    return _cached(("bottom", backend, torch.get_num_threads(), *bottom, model.preprocessing.to_json()),
                   lambda: open_bottom_runtime(model, parts, backend), fallback,
                   f"{backend} is not used for the maps, the bottom runs in PyTorch")


def _cached(key: tuple[Any, ...], build: Callable[[], Runtime], fallback: bool, instead: str) -> Runtime | None:
    """``build()`` once per ``key``; with ``fallback`` a failure is logged (``instead``) and remembered as ``None``."""
    with _cache_lock:  # one export per key, even when several threads ask at once
        if key in _cache and (_cache[key] is not None or fallback):  # an explicit backend retries and raises
            _cache.move_to_end(key)
            return _cache[key]
        try:
            runtime: Runtime | None = build()
        except (RuntimeError, ValueError) as err:
            if not fallback:
                raise
            logger.warning("backend 'auto': %s (%s)", instead, err)
            runtime = None
        _cache[key] = runtime
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return runtime
