"""Which precision a model runs at: the backends' precisions, the model's accuracy guard and what ``auto`` picks.

A model records, per reduced precision, how its answers compared with fp32 on its validation images (the *guard*,
``metadata["precision_guard"]``, written by ``multihead tune-precision``): the share of subtypes identical to
fp32's and the change in accuracy. ``InferenceConfig(precision="auto")`` (the default) takes the fastest precision
that this machine computes in hardware, that a backend installed here runs, and whose recorded agreement is at least
:data:`MIN_AGREEMENT` with an accuracy at most :data:`MAX_ACCURACY_DROP` below fp32's; otherwise fp32
(:func:`choose_precision`, which also says why).

The facts live here, below the inference layer, so that ``multihead info`` and the model card
(:mod:`multihead.model.card`) can say what ``auto`` picks on this machine from a checkpoint's header alone: which
precisions each backend runs (:data:`BACKEND_PRECISIONS`), which the CPU computes natively
(:func:`multihead._precision.native_cpu_precisions`), and whether the int8 graph the guard measured is cached here
(:func:`int8_graph_here`; :mod:`multihead.inference.quantize` makes it).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import file_sha256
from .._precision import missing_instructions, native_cpu_precisions
from .records import PrecisionGuard, PrecisionRow, read_guard

__all__ = ["AUTO_ORDER", "BACKENDS", "BACKEND_PRECISIONS", "GUARD_KEY", "MAX_ACCURACY_DROP", "MIN_AGREEMENT",
           "QUANTIZED_FORMAT", "SPEED_ORDER", "Choice", "check_precision", "choose_precision", "guard_rows",
           "installed_backends", "int8_graph_here", "native_precisions", "openvino_cache_dir", "openvino_precisions",
           "passes", "quantized_dir", "quantized_identity", "read_int8_manifest", "runnable_precisions"]

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
AUTO_ORDER = ("openvino", "onnxruntime")
"""What ``backend="auto"`` tries on the CPU, fastest first (measured: docs/benchmarks.md)."""
BACKEND_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16", "int8")}
"""What each backend runs; ``int8`` is the trunk quantised by NNCF (:mod:`multihead.inference.quantize`)."""
GUARD_KEY = "precision_guard"
"""Where a checkpoint's metadata keeps the guard table."""
MIN_AGREEMENT = 0.995
"""Least share of validation images whose subtype must equal fp32's for ``auto`` to take a precision."""
MAX_ACCURACY_DROP = 0.003
"""Largest drop in validation accuracy (a fraction: 0.3 points) for ``auto`` to take a precision."""
SPEED_ORDER = ("int8", "bf16", "fp16", "fp32")
"""Fastest first, by the hardware's rates (VNNI and AMX do twice as many int8 as bf16 operations a cycle); a guard
row's measured ``speed_vs_fp32`` comes first when it has one."""
QUANTIZED_FORMAT = 1
"""Version of the int8 cache's layout (:mod:`multihead.inference.quantize`)."""
_EPSILON = 1e-9  # a recorded 0.995 or -0.003 passes, whatever its last binary digit


# --- this machine -------------------------------------------------------------------------------------------

def installed_backends() -> tuple[str, ...]:
    """The backends this installation can run (``torch`` always; the others need ``onnx`` to export)."""
    has = {name: importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime", "openvino")}
    return ("torch", *(name for name in ("onnxruntime", "openvino") if has[name] and has["onnx"]))


@functools.lru_cache(maxsize=1)
def openvino_precisions() -> tuple[str, ...]:
    """The precisions OpenVINO runs on this CPU, from its ``OPTIMIZATION_CAPABILITIES``: ``fp32``, and ``bf16`` and
    ``int8`` where it reports them; empty without OpenVINO."""
    if importlib.util.find_spec("openvino") is None:
        return ()
    try:
        import openvino

        capabilities = set(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as err:  # OpenVINO raises its own RuntimeError types; without a CPU plugin nothing runs
        logger.warning("OpenVINO's CPU plugin cannot be queried (%s)", err)
        return ()
    return ("fp32", *(name for name, flag in (("bf16", "BF16"), ("int8", "INT8")) if flag in capabilities))


def runnable_precisions(backend: str, device: str = "cpu") -> tuple[str, ...]:
    """What ``backend`` can run on ``device`` here, natively or not (what an explicit ``precision=`` may ask for);
    empty when the backend is not installed or does not run on that device."""
    on_cpu = str(device).split(":")[0] == "cpu"
    if backend == "torch":
        return BACKEND_PRECISIONS["torch"]
    if not on_cpu or backend not in installed_backends():
        return ()
    if backend == "openvino":
        return tuple(p for p in BACKEND_PRECISIONS["openvino"] if p in openvino_precisions())
    return BACKEND_PRECISIONS[backend]


def native_precisions(backend: str, device: str = "cpu") -> tuple[str, ...]:
    """What ``backend`` runs on ``device`` at the hardware's speed: on the CPU, the precisions it runs that the CPU
    computes in hardware (bf16 and fp16 emulated, or int8 without VNNI, run slower or less exactly); on a GPU fp32.
    """
    runnable = runnable_precisions(backend, device)
    if str(device).split(":")[0] != "cpu":
        return tuple(p for p in runnable if p == "fp32")
    native = native_cpu_precisions()
    return tuple(p for p in runnable if p in native)


def check_precision(precision: str, backend: str = "auto", device: str = "cpu") -> None:
    """Raise ``ValueError`` (one sentence naming what can run) unless ``precision`` runs on ``backend`` here.

    Example:
        >>> check_precision("int8", "torch")
        Traceback (most recent call last):
        ValueError: precision 'int8' does not run on backend 'torch' here; it runs fp32, bf16 or fp16 (and auto)
    """
    if precision == "auto":
        return
    backends = [backend] if backend != "auto" else (
        [*(b for b in AUTO_ORDER if str(device).split(":")[0] == "cpu"), "torch"])
    if any(precision in runnable_precisions(name, device) for name in backends):
        return
    if backend != "auto":
        runs = runnable_precisions(backend, device)
        what = f"it runs {_or(runs)} (and auto)" if runs else "it is not installed or does not run on this device"
        raise ValueError(f"precision {precision!r} does not run on backend {backend!r} here; {what}")
    offers = {name: runnable_precisions(name, device) for name in backends}
    runs = [p for p in ("fp32", "bf16", "fp16", "int8") if any(p in found for found in offers.values())]
    need = " (int8 needs OpenVINO: pip install 'multihead[openvino]')" if precision == "int8" else ""
    raise ValueError(f"precision {precision!r} does not run on {device} here{need}; this machine runs {_or(runs)} "
                     "(and auto)")


def _or(names: tuple[str, ...] | list[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1] if names else "nothing"


# --- the int8 graph in the cache ----------------------------------------------------------------------------

def openvino_cache_dir() -> Path:
    """Where compiled and quantised graphs are kept: ``$MULTIHEAD_OPENVINO_CACHE``; else beside the feature cache,
    ``openvino/`` next to ``$MULTIHEAD_CACHE`` when that is set; else ``~/.cache/multihead/openvino``."""
    if os.environ.get("MULTIHEAD_OPENVINO_CACHE"):
        return Path(os.environ["MULTIHEAD_OPENVINO_CACHE"])
    if os.environ.get("MULTIHEAD_CACHE"):
        return Path(os.environ["MULTIHEAD_CACHE"]).parent / "openvino"
    return Path.home() / ".cache" / "multihead" / "openvino"


def quantized_identity(trunk: Mapping[str, Any], preprocessing: Any) -> dict[str, Any]:
    """What an int8 graph depends on: the trunk's name, weights fingerprint and pooled stages (from
    ``Trunk.spec()`` or a checkpoint's header) and the preprocessing (a :class:`Preprocessing`)."""
    return {"format": QUANTIZED_FORMAT, "name": trunk["name"], "fingerprint": trunk["fingerprint"],
            "stages": list(trunk.get("stages") or []), "preprocessing": preprocessing.to_json()}


def quantized_dir(trunk: Mapping[str, Any], preprocessing: Any, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of a trunk's int8 graph (it may not exist yet): ``<cache>/int8/<trunk>-<key>``."""
    identity = quantized_identity(trunk, preprocessing)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    folder = re.sub(r"[^\w.+-]", "_", str(trunk["name"]))  # hf-hub:ORG/NAME -> hf-hub_ORG_NAME, as the feature cache
    return Path(cache_dir or openvino_cache_dir()) / "int8" / f"{folder}-{key}"


def read_int8_manifest(folder: Path) -> dict[str, Any] | None:
    """A quantised cache folder's ``manifest.json``, or ``None`` when it is missing or unreadable."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def int8_graph_here(trunk: Mapping[str, Any], preprocessing: Any, row: PrecisionRow | None = None, *,
                    cache_dir: str | os.PathLike | None = None) -> str | None:
    """Why the int8 graph a guard ``row`` measured is not cached on this machine, or ``None`` when it is (made for
    this trunk, from the same calibration images, with the same quantizers taken out, its files intact). Without
    ``row``: whether any int8 graph of this trunk is cached. Cheap: files are hashed, nothing is compiled."""
    folder = quantized_dir(trunk, preprocessing, cache_dir)
    manifest = read_int8_manifest(folder)
    if manifest is None:
        return "no int8 graph of this model is cached on this machine (`multihead tune-precision MODEL DATA` makes one)"
    if manifest.get("identity") != json.loads(json.dumps(quantized_identity(trunk, preprocessing))):
        return "the cached int8 graph was made for another trunk"
    if row is not None and (manifest.get("calibration_sha256") != row.calibration_sha256 or (
            sorted(manifest.get("fp32_quantizers") or []) != sorted(row.fp32_quantizers or []))):
        return ("the cached int8 graph is not the one the guard measured (other calibration images or quantizers "
                "in fp32: run `multihead tune-precision` again)")
    for name, sha in (manifest.get("files") or {}).items():
        path = folder / str(name)
        if not path.is_file() or _sha256(path) != sha:
            return f"the cached int8 graph is damaged ({name})"
    return None


def _sha256(path: Path) -> str:
    """A file's sha256, remembered while its size and modification time stay the same (``auto`` asks per batch)."""
    stat = path.stat()
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: the cache key only
    return file_sha256(path)


# --- the guard ----------------------------------------------------------------------------------------------

def passes(row: PrecisionRow) -> bool:
    """Whether a guard row allows ``auto`` to take its precision: agreement with fp32 at least
    :data:`MIN_AGREEMENT`, accuracy at most :data:`MAX_ACCURACY_DROP` below fp32's."""
    return row.agreement >= MIN_AGREEMENT - _EPSILON and row.accuracy_change >= -MAX_ACCURACY_DROP - _EPSILON


def verdict(row: PrecisionRow) -> str:
    """``"passes"``, or ``"fails: agreement"`` / ``"fails: accuracy"`` / both, naming the rule broken."""
    if passes(row):
        return "passes"
    broken = [name for name, ok in (("agreement", row.agreement >= MIN_AGREEMENT - _EPSILON),
                                    ("accuracy", row.accuracy_change >= -MAX_ACCURACY_DROP - _EPSILON)) if not ok]
    return "fails: " + ", ".join(broken)


def guard_rows(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The guard table as rows (precision, backend, agreement, accuracy change, speed, verdict, notes), fastest
    precision first; empty when the model records no guard."""
    guard = read_guard(metadata) or PrecisionGuard(precisions={})
    rows = []
    for precision, row in guard.precisions.items():
        removed = row.fp32_quantizers or []
        rows.append({"precision": precision, "backend": row.backend, "agreement": row.agreement,
                     "accuracy": row.accuracy, "accuracy_change": row.accuracy_change,
                     "speed_vs_fp32": row.speed_vs_fp32, "verdict": verdict(row),
                     "note": f"mixed precision, {len(removed)} quantizers taken out" if removed else ""})
    for precision, why in (guard.not_measured or {}).items():
        rows.append({"precision": precision, "backend": None, "agreement": None, "accuracy": None,
                     "accuracy_change": None, "speed_vs_fp32": None, "verdict": "not measured", "note": str(why)})
    return sorted(rows, key=lambda r: SPEED_ORDER.index(r["precision"]) if r["precision"] in SPEED_ORDER else 9)


@dataclass(frozen=True)
class Choice:
    """What ``precision="auto"`` runs here, and why."""

    precision: str
    backend: str
    """The backend that runs it (``"auto"`` when the caller's backend decides, for fp32)."""
    reason: str

    def __str__(self) -> str:
        return f"{self.precision}" + (f" on {self.backend}" if self.backend != "auto" else "") + f" ({self.reason})"


def choose_precision(metadata: Mapping[str, Any], trunk: Mapping[str, Any], preprocessing: Any, *,
                     backend: str = "auto", device: str = "cpu",
                     cache_dir: str | os.PathLike | None = None) -> Choice:
    """What ``precision="auto"`` runs for a model (its metadata, trunk spec and preprocessing) on ``device`` here.

    The candidates are the guard's rows that pass (:func:`passes`), fastest first (their measured
    ``speed_vs_fp32``, else :data:`SPEED_ORDER`); the first one that ran faster than fp32 when measured, whose
    backend is installed (and is ``backend``, unless that is ``"auto"``), runs it natively on this CPU and, for
    int8, has the measured graph cached here is taken. Otherwise fp32, with the reasons each candidate was passed
    over.

    Example:
        >>> choose_precision({}, model.trunk.spec(), model.preprocessing).reason  # doctest: +SKIP
        'no accuracy guard recorded (`multihead tune-precision MODEL DATA` measures one)'
    """
    device = str(device)
    if str(device).split(":")[0] != "cpu":
        return Choice("fp32", "auto", f"auto takes reduced precision on the CPU only, this runs on {device}")
    guard = read_guard(metadata)
    if guard is None or not guard.precisions:
        return Choice("fp32", "auto", "no accuracy guard recorded (`multihead tune-precision MODEL DATA` measures one)")
    rows = guard.precisions
    skipped = [f"{p} fails the guard" for p, row in rows.items() if not passes(row)]
    candidates = sorted((p for p, row in rows.items() if passes(row) and p in SPEED_ORDER),
                        key=lambda p: (-(rows[p].speed_vs_fp32 or 0), SPEED_ORDER.index(p)))
    for precision in candidates:
        row = rows[precision]
        where = row.backend or "torch"
        speed = row.speed_vs_fp32
        if speed is not None and speed <= 1.0:
            skipped.append(f"{precision} ran no faster than fp32 (x{speed:.2f}) when measured")
        elif backend != "auto" and where != backend:
            skipped.append(f"{precision} was measured on {where}, not {backend}")
        elif precision not in runnable_precisions(where, device):
            skipped.append(f"{precision} was measured on {where}, which does not run it here")
        elif precision not in native_precisions(where, device):
            skipped.append(f"this CPU has no {missing_instructions(precision)} for {precision}")
        elif precision == "int8" and (problem := int8_graph_here(trunk, preprocessing, row, cache_dir=cache_dir)):
            skipped.append(f"int8: {problem}")
        else:
            passed_over = f" (passed over: {'; '.join(skipped)})" if skipped else ""
            return Choice(precision, where, f"{_agreement(row)}; fastest allowed here{passed_over}")
    if not candidates:
        return Choice("fp32", "auto", "no reduced precision passes the guard" + (
            f" ({'; '.join(skipped)})" if skipped else ""))
    return Choice("fp32", "auto", "; ".join(skipped))


def _agreement(row: PrecisionRow) -> str:
    return f"{row.agreement:.2%} of validation subtypes as fp32, accuracy {row.accuracy_change * 100:+.2f} points"
