"""The schema of a checkpoint's header: every field's type, required keys and bounds, checked on reading.

A checkpoint may come from anyone, so its header is data to validate before anything is built from it: a missing
``num_features``, ``counts`` given as a list, an ``image_size`` of 20000 or JSON nested ten thousand deep each get
one :class:`MetadataError` sentence naming the field, never a ``KeyError`` from wherever the value is first used.
Strings from a header are shown through :func:`printable`, which drops terminal control sequences.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["MAX_FEATURES", "MAX_IMAGE_SIZE", "MAX_JSON_DEPTH", "MAX_ORGANS", "MAX_SUBTYPES", "MetadataError",
           "check_metadata", "check_preprocessing", "check_taxonomy", "check_trunk", "parse_json", "printable"]

MAX_JSON_DEPTH = 32
"""Deepest nesting of a JSON field (real checkpoints use 6)."""
MAX_IMAGE_SIZE = 4096
"""Largest input side a checkpoint may ask for (a 4096 px float batch of one is 200 MB)."""
MAX_FEATURES = 65_536
"""Largest pooled feature width a trunk spec may declare."""
MAX_ORGANS, MAX_SUBTYPES = 1024, 16_384
STORED_DTYPES = ("float32", "float16", "bfloat16")
"""What an embedded trunk may be stored as (``STORAGE_DTYPES``, repeated here so this module needs no torch)."""
MAX_NAME = 200  # longest organ, subtype or trunk name, in characters

_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, erase
                      r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks
                      r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?")  # DCS, SOS, PM, APC strings
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


class MetadataError(ValueError):
    """A header field is missing, of the wrong type or out of range; the message names the field."""


def printable(text: object) -> str:
    """``text`` as one line safe for a terminal: escape sequences and control characters removed.

    Example:
        >>> printable("lung\\x1b[31m red\\x1b]0;title\\x07\\n")
        'lung red'
    """
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates cannot be printed
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def parse_json(text: object, field: str) -> Any:
    """A header field's JSON, refused when it is not a string, not JSON, or nested deeper than MAX_JSON_DEPTH."""
    if not isinstance(text, str):
        raise MetadataError(f"'{field}' must be a JSON string, got {type(text).__name__}")
    try:
        value = json.loads(text)
    except RecursionError:
        raise MetadataError(f"'{field}' is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as err:
        raise MetadataError(f"'{field}' is not valid JSON ({err})") from None
    stack = [(value, 1)]  # iterative: a recursive walk would hit the limit it is meant to enforce
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise MetadataError(f"'{field}' is nested deeper than {MAX_JSON_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return value


# --- small checks ----------------------------------------------------------------------------------------

def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MetadataError(f"'{where}' must be an object, got {_kind(value)}")
    return value


def _list(value: Any, where: str, *, most: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise MetadataError(f"'{where}' must be a list, got {_kind(value)}")
    if most is not None and len(value) > most:
        raise MetadataError(f"'{where}' has {len(value)} entries, at most {most} are allowed")
    return value


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MetadataError(f"'{where}' must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise MetadataError(f"'{where}' is {value}, it must lie in [{low}, {high}]")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetadataError(f"'{where}' must be a number, got {_kind(value)}")
    return float(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MetadataError(f"'{where}' must be a non-empty string, got {_kind(value)}")
    if len(value) > MAX_NAME:
        raise MetadataError(f"'{where}' is {len(value)} characters long, at most {MAX_NAME} are allowed")
    if printable(value) != value:
        raise MetadataError(f"'{where}' holds control characters: {printable(value)!r}")
    return value


# --- the fields ------------------------------------------------------------------------------------------

def check_trunk(value: Any) -> dict[str, Any]:
    """The ``trunk`` field: name, source, weights id, fingerprint, feature width, pooled stages, storage."""
    spec = _object(value, "trunk")
    for key in ("name", "embedded", "fingerprint", "num_features"):
        if key not in spec:
            raise MetadataError(f"'trunk.{key}' is missing")
        if key == "name":
            _name(spec["name"], "trunk.name")
        elif key == "embedded" and not isinstance(spec["embedded"], bool):
            raise MetadataError(f"'trunk.embedded' must be true/false, got {_kind(spec['embedded'])}")
        elif key == "fingerprint" and (not isinstance(spec["fingerprint"], str)
                                       or not re.fullmatch(r"[0-9a-f]{64}", spec["fingerprint"])):
            raise MetadataError("'trunk.fingerprint' must be 64 hexadecimal digits (a sha256)")
    _integer(spec["num_features"], "trunk.num_features", 1, MAX_FEATURES)
    if spec.get("source", "torchvision") not in ("torchvision", "timm"):
        raise MetadataError(f"'trunk.source' must be 'torchvision' or 'timm', got {printable(spec['source'])!r}")
    if spec.get("weights_id") is not None:
        _name(spec["weights_id"], "trunk.weights_id")
    for index, stage in enumerate(_list(spec.get("stages", []), "trunk.stages", most=64)):
        _name(stage, f"trunk.stages[{index}]")
    if spec.get("tuned_from") is not None:
        _name(spec["tuned_from"], "trunk.tuned_from")
    if spec.get("stored_dtype", "float32") not in STORED_DTYPES:
        raise MetadataError(f"'trunk.stored_dtype' must be one of {list(STORED_DTYPES)}")
    return spec


def check_preprocessing(value: Any) -> dict[str, Any]:
    """The ``preprocessing`` field: a bounded input size, finite means, positive finite standard deviations."""
    fields = _object(value, "preprocessing")
    if "image_size" in fields:
        _integer(fields["image_size"], "preprocessing.image_size", 8, MAX_IMAGE_SIZE)
    for key in ("mean", "std"):
        if key in fields:
            numbers = [_number(v, f"preprocessing.{key}") for v in _list(fields[key], f"preprocessing.{key}")]
            if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
                raise MetadataError(f"'preprocessing.{key}' must be 3 finite numbers, got {numbers[:4]}")
            if key == "std" and min(numbers) <= 0:
                raise MetadataError(f"'preprocessing.std' must be positive, got {numbers}")
    return fields


def check_taxonomy(value: Any) -> dict[str, Any]:
    """The ``taxonomy`` field: organs, each with named subtypes, within MAX_ORGANS and MAX_SUBTYPES."""
    taxonomy = _object(value, "taxonomy")
    organs = _list(taxonomy.get("organs"), "taxonomy.organs", most=MAX_ORGANS)
    total = 0
    for i, organ in enumerate(organs):
        organ = _object(organ, f"taxonomy.organs[{i}]")
        _name(organ.get("name"), f"taxonomy.organs[{i}].name")
        subtypes = _list(organ.get("subtypes"), f"taxonomy.organs[{i}].subtypes", most=MAX_SUBTYPES)
        total += len(subtypes)
        for j, subtype in enumerate(subtypes):
            _name(_object(subtype, f"taxonomy.organs[{i}].subtypes[{j}]").get("name"),
                  f"taxonomy.organs[{i}].subtypes[{j}].name")
    if total > MAX_SUBTYPES:
        raise MetadataError(f"'taxonomy' has {total} subtypes, at most {MAX_SUBTYPES} are allowed")
    return taxonomy


_OBJECTS = ("training", "split", "recipe")
_OBJECTS_OR_NULL = ("calibration", "trust", "test_report")


def _collect(problems: list[str], check: Any, *args: Any) -> Any:
    """Run one field's check, keeping its sentence (and going on) when it fails."""
    try:
        return check(*args)
    except MetadataError as err:
        problems.append(str(err))
        return None


def _mapping_of(value: Any, where: str, check: Any, problems: list[str]) -> None:
    """``value`` must be an object whose every value passes ``check(value, where.key)``."""
    entries = _collect(problems, _object, value, where)
    for key, item in (entries or {}).items():
        _collect(problems, check, item, f"{where}.{printable(key)}")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MetadataError(f"'{where}' must be a string, got {_kind(value)}")
    return value


def _optional(check: Any) -> Any:
    def optional(value: Any, where: str) -> Any:
        return None if value is None else check(value, where)
    return optional


def _count(value: Any, where: str) -> int:
    return _integer(value, where, 0, 2**62)


def _fields(value: Any, where: str, problems: list[str], checks: dict[str, Any],
            required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """An object (or null) whose listed keys, where present, pass their checks; every problem is kept."""
    if value is None:
        return None
    entries = _collect(problems, _object, value, where)
    if entries is None:
        return None
    for key in required:
        if key not in entries:
            problems.append(f"'{where}.{key}' is missing")
    for key, check in checks.items():
        if key in entries:
            check(entries[key], f"{where}.{key}")
    return entries


def _trust_problems(trust: Any) -> list[str]:
    """Every damaged field of ``metadata.trust`` (what :mod:`multihead.training.posthoc` writes: coverage, the
    out-of-distribution score and the selective thresholds), one sentence each."""
    problems: list[str] = []

    def keep(check: Any) -> Any:
        return lambda value, where: _collect(problems, check, value, where)

    def each(check: Any) -> Any:
        return lambda value, where: _mapping_of(value, where, check, problems)

    def names(value: Any, where: str) -> None:
        for index, item in enumerate(_collect(problems, _list, value, where) or []):
            _collect(problems, _text, item, f"{where}[{index}]")

    entries = _fields(trust, "metadata.trust", problems, {}) or {}
    _fields(entries.get("coverage"), "metadata.trust.coverage", problems, {
        "covered": names, "organs": each(_count), "subtypes": each(_count), "min_images": keep(_count)})
    _fields(entries.get("ood"), "metadata.trust.ood", problems, {
        "score": keep(_text), "threshold": keep(_number), "fitted_on": keep(_count), "tpr": keep(_number),
        "threshold_from": keep(_text), "components": keep(_count), "features_read": keep(_count),
        "organ_scale": each(_number), "scale_rule": each(_text)})
    selective = _fields(entries.get("selective"), "metadata.trust.selective", problems, {
        "router_threshold": keep(_number), "subtype_thresholds": each(_optional(_number)),
        "subtype_threshold": keep(_number), "target_accuracy": keep(_number),
        "confidence_level": keep(_optional(_number)), "images_to_certify": keep(_optional(_count)),
        "min_images": keep(_count), "n": keep(_count),
        **{key: keep(_number) for key in ("coverage", "organ_only_fraction", "uncertain_fraction", "accuracy_all",
                                          "accuracy_kept", "organ_accuracy_kept", "organ_coverage",
                                          "out_of_distribution_fraction")}},
        required=("router_threshold", "target_accuracy"))
    if selective is not None:
        if "subtype_thresholds" not in selective and "subtype_threshold" not in selective:
            problems.append("'metadata.trust.selective.subtype_thresholds' is missing")
        rules = _fields(selective.get("rules"), "metadata.trust.selective.rules", problems,
                        {"router": keep(_optional(_text))}) or {}
        subtype_rules = rules.get("subtype")
        if "subtype_thresholds" in selective and subtype_rules is not None:
            _mapping_of(subtype_rules, "metadata.trust.selective.rules.subtype", _optional(_text), problems)
        elif subtype_rules is not None:
            _collect(problems, _text, subtype_rules, "metadata.trust.selective.rules.subtype")
    return problems


def _calibration_problems(calibration: Any) -> list[str]:
    """Every damaged field of ``metadata.calibration`` (the temperatures and the heads skipped), one sentence each."""
    problems: list[str] = []
    _fields(calibration, "metadata.calibration", problems, {
        "heads": lambda value, where: _mapping_of(value, where, _optional(_number), problems),
        "router": lambda value, where: _collect(problems, _optional(_number), value, where),
        "flat": lambda value, where: _collect(problems, _number, value, where),
        "skipped": lambda value, where: None if value is None else _mapping_of(value, where, _text, problems)})
    return problems


GUARD_PRECISIONS = ("bf16", "fp16", "int8")
"""The precisions a guard table may hold rows for (:mod:`multihead.model.precision`)."""


def _fraction(value: Any, where: str) -> float:
    number = _number(value, where)
    if not 0.0 <= number <= 1.0:
        raise MetadataError(f"'{where}' is {number}, it must lie in [0, 1]")
    return number


def _change(value: Any, where: str) -> float:
    number = _number(value, where)
    if not -1.0 <= number <= 1.0:
        raise MetadataError(f"'{where}' is {number}, it must lie in [-1, 1]")
    return number


def _positive(value: Any, where: str) -> float:
    number = _number(value, where)
    if not (math.isfinite(number) and number > 0):
        raise MetadataError(f"'{where}' is {number}, it must be a positive finite number")
    return number


def _sha256_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise MetadataError(f"'{where}' must be 64 hexadecimal digits (a sha256)")
    return value


def _guard_problems(guard: Any) -> list[str]:
    """Every damaged field of ``metadata.precision_guard`` (what ``multihead tune-precision`` writes: per reduced
    precision its agreement with fp32, accuracy change, speed and, for int8, the graph measured), one sentence each."""
    problems: list[str] = []

    def keep(check: Any) -> Any:
        return lambda value, where: _collect(problems, check, value, where)

    def names(value: Any, where: str) -> None:
        for index, item in enumerate(_collect(problems, _list, value, where) or []):
            _collect(problems, _name, item, f"{where}[{index}]")

    where = "metadata.precision_guard"
    entries = _fields(guard, where, problems, {
        "images": keep(_count), "subset": keep(_text), "date": keep(_text), "data": names,
        "measured_on": keep(_object),
        "not_measured": lambda value, at: _mapping_of(value, at, _text, problems)},
        required=("precisions",)) or {}
    _fields(entries.get("reference"), f"{where}.reference", problems, {
        "precision": keep(_text), "backend": keep(_text), "accuracy": keep(_fraction)})
    for name, row in (_collect(problems, _object, entries.get("precisions", {}), f"{where}.precisions") or {}).items():
        at = f"{where}.precisions.{printable(name)}"
        if name not in GUARD_PRECISIONS:
            problems.append(f"'{at}' is not a precision the guard measures ({', '.join(GUARD_PRECISIONS)})")
            continue
        _fields(row, at, problems, {
            "backend": keep(_text), "agreement": keep(_fraction), "accuracy": keep(_fraction),
            "accuracy_change": keep(_change), "speed_vs_fp32": keep(_positive),
            "calibration_sha256": keep(_sha256_text), "calibration_images": keep(_count), "fp32_quantizers": names},
            required=("backend", "agreement", "accuracy_change") + (("calibration_sha256",) if name == "int8" else ()))
    return problems


def check_metadata(value: Any, *, organs: tuple[str, ...] = ()) -> dict[str, Any]:
    """The free-form ``metadata`` field: unknown keys pass, the ones multihead reads are typed (``trust``,
    ``calibration`` and ``precision_guard`` field by field, every damaged one named).

    Args:
        organs: the taxonomy's organ names; ``available_organs`` must be among them.
    """
    metadata = _object(value, "metadata")
    for key in _OBJECTS:
        if key in metadata:
            _object(metadata[key], f"metadata.{key}")
    for key in _OBJECTS_OR_NULL:
        if metadata.get(key) is not None:
            _object(metadata[key], f"metadata.{key}")
    problems = (_calibration_problems(metadata.get("calibration")) + _trust_problems(metadata.get("trust"))
                + _guard_problems(metadata.get("precision_guard")))
    if problems:  # one sentence per damaged field: all of them, so one edit fixes the file
        raise MetadataError("; ".join(problems))
    training = metadata.get("training", {})
    for key in ("config", "timings"):
        if training.get(key) is not None:
            _object(training[key], f"metadata.training.{key}")
    for key in ("history", "skipped"):
        if key in metadata:
            _list(metadata[key], f"metadata.{key}")
    for index, record in enumerate(metadata.get("history", [])):
        _object(record, f"metadata.history[{index}]")
    if "available_organs" in metadata:
        available = _list(metadata["available_organs"], "metadata.available_organs")
        unknown = [printable(o) for o in available if o not in organs] if organs else []
        if unknown or not all(isinstance(o, str) for o in available):
            raise MetadataError(f"'metadata.available_organs' names organs not in the taxonomy: {unknown[:5]}")
    if metadata.get("counts") is not None:
        for split, count in _object(metadata["counts"], "metadata.counts").items():
            _integer(count, f"metadata.counts.{printable(split)}", 0, 2**62)
    if metadata.get("metrics") is not None:
        for split, values in _object(metadata["metrics"], "metadata.metrics").items():
            where = f"metadata.metrics.{printable(split)}"
            values = _object(values, where)
            for key in ("router_accuracy", "accuracy"):
                if key not in values:
                    raise MetadataError(f"'{where}.{key}' is missing")
                _number(values[key], f"{where}.{key}")
    report = metadata.get("test_report") or {}
    for key in ("overall", "router", "organs"):
        if report.get(key) is not None:
            _object(report[key], f"metadata.test_report.{key}")
    for organ, entry in (report.get("organs") or {}).items():
        _object(entry, f"metadata.test_report.organs.{printable(organ)}")
    return metadata

