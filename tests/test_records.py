"""The checkpoint's metadata records (issue 39): the schema check comes from the dataclasses' types, training writes
through them, and readers get the same values typed."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
from safetensors import safe_open

from multihead.model.locate import default_model_path
from multihead.model.metadata import MetadataError
from multihead.model.records import (
    Calibration,
    EpochRecord,
    ModelMetadata,
    PrecisionGuard,
    Selective,
    Trust,
    check_metadata,
    read_metadata,
    read_record,
    to_dict,
)

RECORDS = [cls for cls in vars(__import__("multihead.model.records", fromlist=["x"])).values()
           if dataclasses.is_dataclass(cls) and cls.__module__ == "multihead.model.records"]


def _bundled_metadata() -> dict:
    with safe_open(str(default_model_path()), "pt") as f:
        return json.loads(f.metadata()["metadata"])


def _wrong_kind(tp: typing.Any) -> object:
    """A value no annotation of ``tp``'s kind accepts (a set is never JSON; a string is no number or object)."""
    hints = typing.get_args(tp)
    if tp is str or str in hints or typing.get_origin(tp) is typing.Literal:
        return 12
    return "text" if tp is not typing.Any else None


def _minimal(cls: type) -> dict:
    """The smallest valid dict for ``cls``: its required fields with a value of their type."""
    sample = {float: 0.5, int: 3, str: "x", bool: True}
    given = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for item in dataclasses.fields(cls):
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            base = hints[item.name]
            while typing.get_origin(base) is typing.Annotated:
                base = typing.get_args(base)[0]
            given[item.name] = {} if typing.get_origin(base) is dict else sample[base]
    if cls is Selective:
        given["subtype_thresholds"] = {}
    return given


@pytest.mark.parametrize("cls", RECORDS, ids=lambda cls: cls.__name__)
def test_every_declared_field_is_checked_by_its_type(cls):
    """The schema is generated: each field of each record refuses a value of the wrong kind, naming the field."""
    read_record(cls, _minimal(cls), "m")  # the minimal dict is valid
    hints = typing.get_type_hints(cls, include_extras=True)
    for item in dataclasses.fields(cls):
        wrong = _wrong_kind(hints[item.name])
        if wrong is None:
            continue
        with pytest.raises(MetadataError, match=rf"'m\.{item.name}' must be "):
            read_record(cls, {**_minimal(cls), item.name: wrong}, "m")


@pytest.mark.parametrize("cls", RECORDS, ids=lambda cls: cls.__name__)
def test_required_fields_are_those_without_a_default(cls):
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for name in required:
        with pytest.raises(MetadataError, match=rf"'m\.{name}' is missing"):
            read_record(cls, {k: v for k, v in _minimal(cls).items() if k != name}, "m")


def test_the_bundled_model_reads_typed_and_writes_back_the_same_dicts():
    metadata = _bundled_metadata()
    record = read_metadata(metadata)
    assert record.trust.selective.rules.subtype["oral"] == "too_few_images"
    assert record.calibration.skipped["oral"] == "2 validation images, fewer than 30"
    assert [(s.name, s.images) for s in record.training.data] == [("multi-cancer-sample", 4907),
                                                                  ("multi-cancer-extra", 1567)]
    assert record.metrics["test"].router_accuracy == 1.0 and record.counts == {"train": 4534, "val": 956, "test": 984}
    for key in ("trust", "calibration"):  # what training wrote is what the records write
        assert to_dict(getattr(record, key)) == metadata[key]
    assert to_dict(record.training)["data"] == metadata["training"]["data"]


def test_unknown_keys_pass_and_are_not_read():
    record = read_metadata({"near_ood": {"anything": [1]}, "trust": {"ood": {"threshold": 0.1, "later": "x"}}})
    assert record.trust.ood.threshold == 0.1 and not hasattr(record.trust.ood, "later")


def test_every_damaged_field_is_named_once_in_one_message():
    with pytest.raises(MetadataError) as error:
        read_metadata({"counts": {"train": -1, "val": "many"}, "history": [{"stage": "pretrain"}],
                       "calibration": {"heads": {"all": "1.2"}, "flat": None},
                       "trust": {"selective": {"router_threshold": 0.5}}})
    message = str(error.value)
    for sentence in ("'metadata.counts.train' is -1, it must lie in [0, ",
                     "'metadata.counts.val' must be an integer, got a string",
                     "'metadata.history[0].stage' must be one of heads, warm-up, tune, got 'pretrain'",
                     "'metadata.calibration.heads.all' must be a number, got a string",
                     "'metadata.trust.selective.target_accuracy' is missing",
                     "'metadata.trust.selective.subtype_thresholds' is missing"):
        assert sentence in message
    assert message.count("'metadata.") == 6


def test_bounds_come_from_the_annotations():
    guard = {"precisions": {"bf16": {"backend": "openvino", "agreement": 1.2, "accuracy_change": -2.0,
                                     "speed_vs_fp32": 0, "fp32_quantizers": [""]}}}
    with pytest.raises(MetadataError) as error:
        read_record(PrecisionGuard, guard, "g")
    for sentence in ("'g.precisions.bf16.agreement' is 1.2, it must lie in [0, 1]",
                     "'g.precisions.bf16.accuracy_change' is -2, it must lie in [-1, 1]",
                     "'g.precisions.bf16.speed_vs_fp32' is 0, it must be a positive finite number",
                     "'g.precisions.bf16.fp32_quantizers[0]' must be a non-empty string"):
        assert sentence in str(error.value)


def test_to_dict_leaves_out_optional_fields_that_are_none():
    assert to_dict(Calibration(flat=1.3, skipped={})) == {"flat": 1.3, "skipped": {}}
    assert to_dict(Trust()) == {}
    assert to_dict(EpochRecord(epoch=1, stage="tune")) == {"epoch": 1, "stage": "tune"}


def test_available_organs_are_checked_against_the_taxonomy():
    check_metadata({"available_organs": ["all"]}, organs=("all", "brain"))
    with pytest.raises(MetadataError, match=r"names organs not in the taxonomy: \['spleen'\]"):
        check_metadata({"available_organs": ["spleen"]}, organs=("all", "brain"))


def test_the_top_record_declares_what_multihead_reads():
    assert {f.name for f in dataclasses.fields(ModelMetadata)} >= {
        "training", "history", "calibration", "trust", "metrics", "counts", "precision_guard", "available_organs"}
