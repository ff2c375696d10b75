"""The checkpoint's metadata as typed records: what training writes, what ``info``, the model card and the trust
lines read, and the schema a header is checked against, all from the same dataclasses.

Metadata is stored as one JSON string (safetensors: string to string), so a record travels as a plain dict
(:func:`to_dict`) and comes back typed (:func:`read_metadata`). The check is generated from each field's type:
``float``, ``int`` (a count, 0 or more), ``str``, ``bool``, ``list[T]``, ``dict[str, T]``, ``T | None``, a nested
record, and ``Annotated[T, check]`` for bounds. A field without a default is required. Keys a record does not
declare pass (a newer multihead may add some); every damaged field gets one :class:`MetadataError` sentence, all
of them in one message, so one edit fixes the file.
"""

from __future__ import annotations

import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Annotated, Any, Literal, TypeVar

from .metadata import MetadataError, _kind, _name, printable

__all__ = ["GUARD_PRECISIONS", "Calibration", "Coverage", "DataSource", "EpochRecord", "ModelMetadata", "OodFit",
           "PrecisionGuard", "PrecisionReference", "PrecisionRow", "Selective", "SelectiveRules", "SplitMetrics",
           "TestReport", "TrainingRecord", "Trust", "check_metadata", "read_guard", "read_metadata", "read_record",
           "to_dict"]

Record = TypeVar("Record")
_COUNT_LIMIT = 2**62


# --- bounds, used as Annotated[T, check] -----------------------------------------------------------------------

def _fraction(value: float, where: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise MetadataError(f"'{where}' is {value:g}, it must lie in [0, 1]")


def _change(value: float, where: str) -> None:
    if not -1.0 <= value <= 1.0:
        raise MetadataError(f"'{where}' is {value:g}, it must lie in [-1, 1]")


def _positive(value: float, where: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise MetadataError(f"'{where}' is {value:g}, it must be a positive finite number")


def _sha256(value: str, where: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise MetadataError(f"'{where}' must be 64 hexadecimal digits (a sha256)")


Fraction = Annotated[float, _fraction]
Change = Annotated[float, _change]
Positive = Annotated[float, _positive]
Sha256 = Annotated[str, _sha256]
Name = Annotated[str, _name]


# --- the records -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSource:
    """One data folder a model was trained on, by name and image count (never by path)."""
    name: str
    images: int


@dataclass(frozen=True)
class TrainingRecord:
    """How the model was trained: the settings (``TrainConfig.to_dict()``), the trunk's weights, the data, the time."""
    config: dict[str, Any] | None = None
    trunk_weights: str | None = None
    data: list[DataSource] = field(default_factory=list)
    timings: dict[str, float] | None = None


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of the history: its ``stage`` says what was trained (the heads, a warm-up, the tuned top);
    ``part`` names it for tables and plots. Records written before the stage was kept have ``stage`` None."""
    epoch: int | None = None
    part: str | None = None
    stage: Literal["heads", "warm-up", "tune"] | None = None
    best: bool | None = None


@dataclass(frozen=True)
class SplitMetrics:
    """A split's end-to-end scores at training time."""
    router_accuracy: float
    accuracy: float
    accuracy_given_organ: float | None = None
    loss: float | None = None


@dataclass(frozen=True)
class Calibration:
    """The temperatures fitted on validation logits, by head (or one ``flat`` one), and the heads left at T = 1
    with why (``skipped`` None: written before skipped heads were recorded)."""
    heads: dict[str, float | None] | None = None
    router: float | None = None
    flat: float | None = None
    skipped: dict[str, str] | None = None


@dataclass(frozen=True)
class Coverage:
    """The organs the model claims (enough training images) and the training images per organ and subtype."""
    min_images: int | None = None
    covered: list[str] | None = None
    organs: dict[str, int] = field(default_factory=dict)
    subtypes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OodFit:
    """The out-of-distribution score as fitted; ``score`` other than ``"nearest_neighbour"`` is an older one."""
    score: str | None = None
    threshold: float | None = None
    tpr: float = 0.99
    fitted_on: int | None = None
    threshold_from: str | None = None
    components: int | None = None
    features_read: int | None = None
    organ_scale: dict[str, float] | None = None  # Mahalanobis, before issue 35
    scale_rule: dict[str, str] | None = None


@dataclass(frozen=True)
class SelectiveRules:
    """How each threshold was chosen (:data:`multihead.model.thresholds.RULES`); ``subtype`` is one rule per organ,
    or one rule for every organ in checkpoints before issue 35."""
    router: str | None = None
    subtype: dict[str, str | None] | str | None = None


@dataclass(frozen=True)
class Selective:
    """The abstention thresholds, how they were chosen, and what they keep on the validation images."""
    router_threshold: float
    target_accuracy: float
    subtype_thresholds: dict[str, float | None] | None = None
    subtype_threshold: float | None = None  # one for every organ, before issue 35
    small_data: str | None = None  # what small organs aimed at (SMALL_DATA), before issue 39: the target
    subtype_targets: dict[str, float | None] | None = None  # the accuracy each organ's threshold aimed at
    confidence_level: float | None = None
    images_to_certify: int | None = None
    min_images: int | None = None
    rules: SelectiveRules | None = None
    n: int | None = None
    coverage: float | None = None
    accuracy_kept: float | None = None
    organ_only_fraction: float | None = None
    organ_accuracy_organ_only: float | None = None
    uncertain_fraction: float | None = None
    organ_coverage: float | None = None
    organ_accuracy_kept: float | None = None
    accuracy_all: float | None = None
    out_of_distribution_fraction: float | None = None

    @staticmethod
    def _problems(entries: Mapping[str, Any], where: str) -> list[str]:
        if "subtype_thresholds" not in entries and "subtype_threshold" not in entries:
            return [f"'{where}.subtype_thresholds' is missing"]
        return []


@dataclass(frozen=True)
class Trust:
    """What post-hoc fitting recorded: coverage, the out-of-distribution score, the abstention thresholds."""
    coverage: Coverage | None = None
    ood: OodFit | None = None
    selective: Selective | None = None


@dataclass(frozen=True)
class TestReport:
    """The headline of an evaluation report kept in the checkpoint (the report itself is free-form)."""
    n_images: int | None = None
    overall: dict[str, Any] | None = None
    router: dict[str, Any] | None = None
    organs: dict[str, dict[str, Any]] | None = None


GUARD_PRECISIONS = ("bf16", "fp16", "int8")
"""The precisions a guard table may hold rows for (:mod:`multihead.model.precision`)."""


@dataclass(frozen=True)
class PrecisionRow:
    """One reduced precision against fp32 on the validation images; int8 names the graph it measured."""
    backend: str
    agreement: Fraction
    accuracy_change: Change
    accuracy: Fraction | None = None
    speed_vs_fp32: Positive | None = None
    calibration_sha256: Sha256 | None = None
    calibration_images: int | None = None
    fp32_quantizers: list[Name] | None = None


@dataclass(frozen=True)
class PrecisionReference:
    precision: str | None = None
    backend: str | None = None
    accuracy: Fraction | None = None


@dataclass(frozen=True)
class PrecisionGuard:
    """What ``multihead tune-precision`` writes: per reduced precision, how it compared with fp32."""
    precisions: dict[str, PrecisionRow]
    images: int | None = None
    subset: str | None = None
    date: str | None = None
    data: list[Name] | None = None
    measured_on: dict[str, Any] | None = None
    not_measured: dict[str, str] | None = None
    reference: PrecisionReference | None = None

    @staticmethod
    def _problems(entries: Mapping[str, Any], where: str) -> list[str]:
        rows = entries.get("precisions")
        if not isinstance(rows, dict):
            return []
        problems = [f"'{where}.precisions.{printable(name)}' is not a precision the guard measures "
                    f"({', '.join(GUARD_PRECISIONS)})" for name in rows if name not in GUARD_PRECISIONS]
        if isinstance(rows.get("int8"), dict) and "calibration_sha256" not in rows["int8"]:
            problems.append(f"'{where}.precisions.int8.calibration_sha256' is missing")
        return problems


@dataclass(frozen=True)
class ModelMetadata:
    """The ``metadata`` field of a checkpoint, as multihead reads it (other keys are kept in the file, unread)."""
    training: TrainingRecord | None = None
    history: list[EpochRecord] | None = None
    split: dict[str, Any] | None = None
    available_organs: list[str] | None = None
    counts: dict[str, int] | None = None
    metrics: dict[str, SplitMetrics] | None = None
    skipped: list[Any] | None = None
    calibration: Calibration | None = None
    trust: Trust | None = None
    test_report: TestReport | None = None
    precision_guard: PrecisionGuard | None = None
    recipe: dict[str, Any] | None = None


# --- the check, generated from the types -------------------------------------------------------------------------

@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


_KINDS = {dict: "an object", list: "a list", str: "a string", float: "a number", int: "an integer", bool: "true/false"}


def _base(tp: Any) -> Any:
    """The plain type a value is sorted by: ``dict`` for ``dict[str, T]`` and records, ``float`` for ``Fraction``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _base(typing.get_args(tp)[0])
    if origin is Literal:
        return type(typing.get_args(tp)[0])
    if is_dataclass(tp):
        return dict
    return origin or tp


def _is_kind(base: Any, value: Any) -> bool:
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)


def _value(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    """``value`` read as ``tp`` (records built, the rest as is), or None with a sentence in ``problems``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        before = len(problems)
        read = _value(args[0], value, where, problems)
        for check in tp.__metadata__:
            if len(problems) == before and read is not None:
                try:
                    check(read, where)
                except MetadataError as err:
                    problems.append(str(err))
        return read
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        choices = [arg for arg in args if arg is not type(None)]
        for arg in choices:
            if _is_kind(_base(arg), value):
                return _value(arg, value, where, problems)
        wanted = " or ".join(dict.fromkeys(_KINDS.get(_base(arg), str(arg)) for arg in choices))
        problems.append(f"'{where}' must be {wanted}, got {_kind(value)}")
        return None
    if origin is Literal:
        if value not in args:
            problems.append(f"'{where}' must be one of {', '.join(map(str, args))}, got {printable(value)!r}")
            return None
        return value
    if is_dataclass(tp):
        return read_record(tp, value, where, problems)
    base = origin or tp
    if not _is_kind(base, value):
        problems.append(f"'{where}' must be {_KINDS.get(base, base.__name__)}, got {_kind(value)}")
        return None
    if base is list:
        return [_value(args[0], item, f"{where}[{i}]", problems) for i, item in enumerate(value)] if args else value
    if base is dict:
        return {key: _value(args[1], item, f"{where}.{printable(key)}", problems) for key, item in value.items()
                } if args else value
    if base is int and not 0 <= value <= _COUNT_LIMIT:
        problems.append(f"'{where}' is {value}, it must lie in [0, {_COUNT_LIMIT}]")
        return None
    return float(value) if base is float else value


def read_record(cls: type[Record], value: Any, where: str, problems: list[str] | None = None) -> Record | None:
    """``value`` (a dict from JSON) as a ``cls`` record; each damaged field adds one sentence to ``problems``
    (raised as one :class:`MetadataError` when no list is given). None when ``value`` cannot be read.

    Example:
        >>> read_record(DataSource, {"name": "multi-cancer-sample", "images": 4907}, "data[0]")
        DataSource(name='multi-cancer-sample', images=4907)
    """
    own = problems is None
    problems = [] if problems is None else problems
    before = len(problems)
    record = None
    if not isinstance(value, dict):
        problems.append(f"'{where}' must be an object, got {_kind(value)}")
    else:
        hints, given = _hints(cls), {}
        for item in fields(cls):
            if item.name in value:
                given[item.name] = _value(hints[item.name], value[item.name], f"{where}.{item.name}", problems)
            elif item.default is MISSING and item.default_factory is MISSING:
                problems.append(f"'{where}.{item.name}' is missing")
        problems += getattr(cls, "_problems", lambda entries, at: [])(value, where)
        if len(problems) == before:
            record = cls(**given)
    if own and problems:
        raise MetadataError("; ".join(problems))
    return record


def to_dict(record: Any) -> Any:
    """A record as the plain dict the checkpoint stores; optional fields that are None are left out."""
    if is_dataclass(record):
        return {item.name: to_dict(getattr(record, item.name)) for item in fields(record)
                if not (getattr(record, item.name) is None and item.default is None)}
    if isinstance(record, dict):
        return {key: to_dict(value) for key, value in record.items()}
    if isinstance(record, (list, tuple)):
        return [to_dict(value) for value in record]
    return record


def check_metadata(value: Any, *, organs: tuple[str, ...] = ()) -> dict[str, Any]:
    """The free-form ``metadata`` field, checked against :class:`ModelMetadata`: unknown keys pass, the ones
    multihead reads are typed, every damaged one named. Returns the dict as it was.

    Args:
        organs: the taxonomy's organ names; ``available_organs`` must be among them.
    """
    read_metadata(value)
    available = value.get("available_organs") or []
    unknown = [printable(organ) for organ in available if organ not in organs] if organs else []
    if unknown:
        raise MetadataError(f"'metadata.available_organs' names organs not in the taxonomy: {unknown[:5]}")
    return value


def read_metadata(value: Any) -> ModelMetadata:
    """A model's ``metadata`` dict, typed (raises :class:`MetadataError` naming every damaged field).

    Example:
        >>> read_metadata({"counts": {"train": 4534}}).counts
        {'train': 4534}
    """
    return typing.cast(ModelMetadata, read_record(ModelMetadata, value, "metadata"))


def read_guard(metadata: Mapping[str, Any]) -> PrecisionGuard | None:
    """Only the precision guard of a model's ``metadata`` (what ``precision="auto"`` reads on every call), typed;
    None when it has none.

    Example:
        >>> read_guard({}) is None
        True
    """
    value = metadata.get("precision_guard")
    return None if value is None else read_record(PrecisionGuard, value, "metadata.precision_guard")

