"""Export a model to ONNX: one self-contained graph, uint8 images in, features, logits and joint log-probabilities out.

The graph does what :func:`multihead.inference.engine.run_batch` does: normalise the uint8 batch, run the
trunk, then the router and every subtype head as one matmul. It runs without multihead (ONNX Runtime,
OpenVINO, any ONNX runtime); inside multihead, :mod:`multihead.inference.backends` uses it for the trunk. The
checkpoint's header (taxonomy, preprocessing, trunk with its weights fingerprint and pooled stages, heads
checksum) travels in the file's ``metadata_props``, as strings, so a runtime can check the graph belongs to
the model before trusting it (:func:`check_onnx`).

Inputs and outputs (the batch axis is dynamic, the image side fixed by the model's preprocessing):

- ``images``: uint8 ``[B, 3, S, S]``, RGB, already resized (:meth:`Preprocessing.load`), not normalised.
- ``features``: float32 ``[B, F]``, the trunk's pooled features (what the out-of-distribution score reads).
- ``router_logits`` ``[B, O]``, ``subtype_logits`` ``[B, S]``, ``joint_log_probs`` ``[B, S]``: as in
  :class:`~multihead.model.heads.HeadOutput`.

:func:`export_bottom_onnx` writes another graph, the frozen bottom of a trunk cut for tuning
(:class:`~multihead.model.trunk_split.TrunkSplit`): ``images`` in, ``maps`` (the map at the cut) and
``pooled`` (the pooled stages below it) out, which :mod:`multihead.features.maps` caches.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .._io import atomic_path
from ..model.checkpoint import model_header
from ..model.heads import MultiHeadModel
from ..model.trunk_split import TrunkSplit
from .shared_weights import weights_in_use

__all__ = ["DEFAULT_OPSET", "ONNX_FORMAT", "OUTPUTS", "MissingDependencyError", "bottom_outputs", "check_onnx",
           "export_bottom_onnx", "export_onnx", "read_onnx_header", "require"]

ONNX_FORMAT = "multihead-onnx"
ONNX_FORMAT_VERSION = 1
OUTPUTS = ("features", "router_logits", "subtype_logits", "joint_log_probs")
DEFAULT_OPSET = 18
"""Opset 18 or newer: OpenVINO 2026.4 reads opset 17's ``ReduceLogSumExp`` (its axes an attribute) as a
reduction over every axis, and the graph then fails to convert."""
_MIN_OPSET, _MAX_OPSET = 18, 20  # 20: the newest opset torch's TorchScript-based exporter writes
_EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino"}


class MissingDependencyError(RuntimeError):
    """An optional package (onnx, onnxruntime, openvino) is not installed; the message names the extra."""


def require(package: str) -> ModuleType:
    """Import an optional package, or raise :class:`MissingDependencyError` naming the pip extra that has it."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise MissingDependencyError(
            f"{package} is not installed ({err}); install it with: pip install 'multihead[{_EXTRAS[package]}]'"
        ) from None


class _Graph(nn.Module):
    """What gets traced: uint8 images -> normalise -> trunk -> fused heads, as :func:`run_batch` runs them."""

    def __init__(self, model: MultiHeadModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.forward_features(self.model.preprocessing.normalize(images))
        output = self.model.forward_heads(features)
        return features, output.router_logits, output.subtype_logits, output.joint_log_probs


def bottom_outputs(parts: TrunkSplit) -> tuple[str, ...]:
    """The outputs of the bottom's graph: ``maps``, and ``pooled`` when stages below the cut are pooled (no
    zero-width output, which not every runtime takes)."""
    return ("maps", "pooled") if parts.stages_below else ("maps",)


class _Bottom(nn.Module):
    """What gets traced for the map cache: uint8 images -> normalise -> the frozen bottom of a cut trunk."""

    def __init__(self, model: MultiHeadModel, parts: TrunkSplit) -> None:
        super().__init__()
        self.model = model
        self.parts = parts

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps, pooled = self.parts.bottom_forward(self.model.preprocessing.normalize(images))
        return (maps, pooled)[:len(bottom_outputs(self.parts))]


def _metadata(model: MultiHeadModel) -> dict[str, str]:
    """The checkpoint's header (:func:`~multihead.model.checkpoint.model_header`) under ``multihead.`` keys."""
    fields = {"format": ONNX_FORMAT, "format_version": str(ONNX_FORMAT_VERSION), **model_header(model),
              "outputs": json.dumps(OUTPUTS)}
    return {f"multihead.{key}": value for key, value in fields.items()}


def export_onnx(model: MultiHeadModel, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` as one ONNX file (atomically), its checkpoint metadata in ``metadata_props``.

    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs only the ``onnx`` package; the
    dynamo exporter would also need ``onnxscript``.

    Raises:
        MissingDependencyError: the ``onnx`` package is not installed.
        ValueError: an opset outside 18-20.
        RuntimeError: the trunk cannot be exported (the message names it).

    Example:
        >>> export_onnx(multihead.load("model.safetensors"), "model.onnx")  # doctest: +SKIP
        PosixPath('model.onnx')
    """
    model = model if model.device.type == "cpu" else copy.deepcopy(model).cpu()
    return _export(_Graph(model), model, OUTPUTS, path, opset, _metadata(model))


def export_bottom_onnx(model: MultiHeadModel, parts: TrunkSplit, path: str | os.PathLike, *,
                       opset: int = DEFAULT_OPSET) -> Path:
    """Write the frozen bottom of ``parts`` (``model``'s trunk cut for tuning) as one ONNX file: uint8 images in,
    :func:`bottom_outputs` out. ``model`` on the CPU.

    The file carries no checkpoint header: it is built on the fly for the map cache, whose key already names
    the bottom's weights fingerprint, cut and preprocessing (:class:`~multihead.features.maps.MapCache`).

    Raises: as :func:`export_onnx`.
    """
    return _export(_Bottom(model, parts), model, bottom_outputs(parts), path, opset, {})


def _export(graph: nn.Module, model: MultiHeadModel, outputs: tuple[str, ...], path: str | os.PathLike, opset: int,
            props: dict[str, str]) -> Path:
    """Trace ``graph`` (uint8 images of ``model``'s size in, ``outputs`` out, the batch axis dynamic) into ``path``."""
    onnx = require("onnx")
    if not isinstance(opset, int) or not _MIN_OPSET <= opset <= _MAX_OPSET:
        raise ValueError(f"opset must be an integer from {_MIN_OPSET} to {_MAX_OPSET}, got {opset!r}")
    path = Path(path)
    size = model.preprocessing.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    buffer = io.BytesIO()
    dynamic_axes = {name: {0: "batch"} for name in ("images", *outputs)}
    # the exporter traces in eval mode, then calls train(mode of `graph`) on the wrapper, which would put every
    # module below it (BatchNorm of a frozen bottom included) in that mode: each module's own mode is restored
    modes = [(module, module.training) for module in graph.modules()]
    try:
        with weights_in_use(), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on constants (mean, std) that are constants indeed
            torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=list(outputs), dynamic_axes=dynamic_axes)
    except Exception as err:  # the exporter raises many types; the caller needs one, naming the trunk
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise RuntimeError(f"trunk {model.trunk.name!r} could not be exported to ONNX "
                           f"({type(err).__name__}: {first_line})") from err
    finally:
        for module, training in modes:
            module.training = training
    proto = onnx.load_from_string(buffer.getvalue())
    if props:
        onnx.helper.set_model_props(proto, props)
    with atomic_path(path) as tmp:
        onnx.save(proto, tmp)
    return path


def read_onnx_header(path: str | os.PathLike) -> dict[str, Any]:
    """The multihead metadata of an exported file: ``taxonomy``, ``preprocessing``, ``trunk`` (dicts/JSON
    objects as the checkpoint stores them), ``joint``, ``heads_sha256``, ``opset`` and ``format_version``.

    Raises:
        ValueError: the file is missing, not ONNX, or not exported by multihead.
    """
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: ONNX file does not exist; write one with `multihead export MODEL --format onnx`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and onnx's own errors share no useful base
        raise ValueError(f"{path}: not a readable ONNX file ({type(err).__name__}: {err})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("multihead.format") != ONNX_FORMAT:
        raise ValueError(f"{path}: not exported by multihead (no 'multihead.format' in its metadata_props); "
                         "export the checkpoint with `multihead export MODEL --format onnx`")
    try:
        header = {
            "format_version": int(props["multihead.format_version"]),
            "taxonomy": props["multihead.taxonomy"],
            "preprocessing": props["multihead.preprocessing"],
            "trunk": json.loads(props["multihead.trunk"]),
            "joint": props["multihead.joint"],
            "heads_sha256": props["multihead.heads_sha256"],
            "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
        }
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: damaged multihead metadata ({type(err).__name__}: {err})") from None
    if header["format_version"] > ONNX_FORMAT_VERSION:
        raise ValueError(f"{path}: written in multihead ONNX format {header['format_version']}, this multihead reads "
                         f"up to {ONNX_FORMAT_VERSION}; upgrade multihead")
    return header


def check_onnx(path: str | os.PathLike, model: MultiHeadModel) -> dict[str, Any]:
    """Raise ``ValueError`` naming every difference unless ``path`` was exported from ``model``; the header back.

    Compares taxonomy, preprocessing, joint rule, trunk (name, weights fingerprint, stages) and the heads' checksum.
    """
    header = read_onnx_header(path)
    expected = _metadata(model)
    found = {"taxonomy": header["taxonomy"], "preprocessing": header["preprocessing"], "joint": header["joint"],
             "trunk": header["trunk"], "heads_sha256": header["heads_sha256"]}
    wanted = {"taxonomy": expected["multihead.taxonomy"], "preprocessing": expected["multihead.preprocessing"],
              "joint": expected["multihead.joint"], "trunk": json.loads(expected["multihead.trunk"]),
              "heads_sha256": expected["multihead.heads_sha256"]}
    wrong = [name for name in found if found[name] != wanted[name]]
    if wrong:
        raise ValueError(f"{path}: exported from a different model ({', '.join(wrong)} differ); export this "
                         "checkpoint again with `multihead export MODEL --format onnx`")
    return header
