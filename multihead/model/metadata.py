"""The schema of a checkpoint's header fields (trunk, preprocessing, taxonomy), checked on reading; the free-form
``metadata`` field's schema is generated from its records (:mod:`multihead.model.records`).

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
           "check_preprocessing", "check_taxonomy", "check_trunk", "parse_json", "printable"]

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
