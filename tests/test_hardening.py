"""Issue 20: hostile checkpoints are checked before anything is built, their strings are data, and the CLI
answers every damaged header with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.model import checkpoint as checkpoint_module
from multihead.model.checkpoint import CheckpointError, read_header
from multihead.model.metadata import MAX_IMAGE_SIZE, printable

runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hardening") / "m.safetensors"
    multihead.save(tiny_model, path)
    return path


def _rewrite(src, dst, *, fields=None, metadata=None, trunk=None, tensors=None):
    """Copy a checkpoint with header fields replaced (raw strings), or JSON fields updated."""
    with safe_open(str(src), "pt") as reader:
        header = dict(reader.metadata())
    if metadata is not None:
        header["metadata"] = json.dumps({**json.loads(header["metadata"]), **metadata})
    if trunk is not None:
        spec = {**json.loads(header["trunk"]), **trunk}
        header["trunk"] = json.dumps({k: v for k, v in spec.items() if v is not ...})
    header.update(fields or {})
    state = load_file(str(src)) if tensors is None else tensors
    save_file(state, str(dst), metadata=header)
    return dst


@pytest.fixture
def built_off_meta(monkeypatch):
    """Every trunk ``load`` builds on a real device, recorded (and refused for a 7B one, whatever the code)."""
    real = checkpoint_module.create_trunk
    built = []

    def spy(name, **kwargs):
        device = torch.empty(0).device
        if device.type != "meta":
            if name.startswith("vit_7b"):
                raise MemoryError("the test refuses to build a 7B trunk for real")
            built.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(checkpoint_module, "create_trunk", spy)
    return built


def test_a_huge_trunk_named_in_a_small_file_is_refused_before_it_is_built(saved, tmp_path, built_off_meta):
    bad = _rewrite(saved, tmp_path / "vit7b.safetensors",
                   trunk={"name": "vit_7b_patch16_dinov3", "source": "timm", "num_features": 4096, "stages": []})
    assert bad.stat().st_size < 50 * 2**20
    with pytest.raises(CheckpointError, match=r"6,716,030,976 parameters .* more than the limit"):
        multihead.load(bad)
    assert built_off_meta == []


def test_tensors_of_another_architecture_are_refused_before_it_is_built(saved, tmp_path, built_off_meta):
    """A header naming resnet50 over resnet18 tensors: compared on the meta device, never built for real."""
    bad = _rewrite(saved, tmp_path / "r50.safetensors", trunk={"name": "resnet50", "num_features": 2048})
    with pytest.raises(CheckpointError, match="tensors do not match its metadata: missing"):
        multihead.load(bad)
    assert built_off_meta == []


def test_feature_width_that_the_architecture_does_not_give_is_named(saved, tmp_path):
    bad = _rewrite(saved, tmp_path / "nf.safetensors", trunk={"num_features": 640})
    with pytest.raises(CheckpointError, match="gives 512 features, its metadata says 640"):
        multihead.load(bad)


def test_a_tensor_stored_in_another_dtype_is_named(saved, tmp_path):
    state = load_file(str(saved))
    state["router.weight"] = state["router.weight"].double()
    bad = _rewrite(saved, tmp_path / "f64.safetensors", tensors=state)
    with pytest.raises(CheckpointError, match="router.weight is stored as F64, needs F32"):
        multihead.load(bad)


def test_image_size_is_bounded(saved, tmp_path):
    with safe_open(str(saved), "pt") as reader:
        preprocessing = json.loads(reader.metadata()["preprocessing"])
    bad = _rewrite(saved, tmp_path / "big.safetensors",
                   fields={"preprocessing": json.dumps({**preprocessing, "image_size": 20000})})
    with pytest.raises(CheckpointError, match=rf"image_size' is 20000, it must lie in \[8, {MAX_IMAGE_SIZE}\]"):
        read_header(bad)


def test_deeply_nested_json_is_a_checkpoint_error(saved, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    bad = _rewrite(saved, tmp_path / "deep.safetensors", fields={"metadata": json.dumps({"x": 1})[:-1] +
                                                                  f', "deep": {deep}}}'})
    with pytest.raises(CheckpointError, match="nested deeper"):
        multihead.load(bad)


DAMAGED = {
    "missing num_features": ({"trunk": {"num_features": ...}}, "'trunk.num_features' is missing"),
    "training as a list": ({"metadata": {"training": [1, 2]}}, "'metadata.training' must be an object, got a list"),
    "counts as a list": ({"metadata": {"counts": [1, 2]}}, "'metadata.counts' must be an object, got a list"),
    "metrics without keys": ({"metadata": {"metrics": {"test": {"loss": 0.1}}}},
                             "'metadata.metrics.test.router_accuracy' is missing"),
    "string count": ({"metadata": {"counts": {"test": "many"}}}, "'metadata.counts.test' must be an integer"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_info_prints_one_line_for_a_damaged_header(saved, tmp_path, case):
    change, message = DAMAGED[case]
    bad = _rewrite(saved, tmp_path / "bad.safetensors", **change)
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in result.output.replace("\n", " ")
    with pytest.raises(CheckpointError, match="damaged metadata"):
        read_header(bad)


def test_checkpoint_strings_are_data_in_info(saved, tmp_path):
    taxonomy = json.loads(multihead.MULTI_CANCER.to_json())
    taxonomy["organs"][0]["display_name"] = "[red]Leuk\x1b]0;pwned\x07aemia\x1b[2J[/red]"
    bad = _rewrite(saved, tmp_path / "markup.safetensors", fields={"taxonomy": json.dumps(taxonomy)},
                   metadata={"training": {"config": {"note": "\x1b[31mred\x9b"}}})
    result = runner.invoke(app, ["info", str(bad)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\x9b" not in result.output
    assert "[red]Leukaemia[/red]" in result.output  # the markup is shown as text, not applied


def test_control_characters_in_a_taxonomy_name_are_refused(saved, tmp_path):
    taxonomy = json.loads(multihead.MULTI_CANCER.to_json())
    taxonomy["organs"][0]["name"] = "al\x1b[2Jl"
    bad = _rewrite(saved, tmp_path / "esc.safetensors", fields={"taxonomy": json.dumps(taxonomy)})
    with pytest.raises(CheckpointError, match="control characters"):
        read_header(bad)


def test_printable_removes_escape_sequences():
    assert printable("a\x1b[1;31mb\x1b]8;;http://x\x1b\\c\x07d\u202ee") == "abcde"
    assert printable("caf\udce9") == "caf\\udce9"  # a file name's undecodable byte, printable in any terminal


def test_model_card_strings_are_plain(saved, tmp_path):
    from multihead.model.card import model_card_data

    bad = _rewrite(saved, tmp_path / "card.safetensors", metadata={"training": {"config": {"note": "x\x1b[2Jy"}}})
    assert model_card_data(bad)["training"] == {"note": "xy"}


def test_classify_json_writes_null_for_nan(saved, monkeypatch):
    from multihead.inference.predict import FileResult

    original = FileResult.to_dict
    monkeypatch.setattr(FileResult, "to_dict", lambda self: {**original(self), "ood_score": float("nan")})
    example = Path(multihead.__file__).parent / "examples" / "WBC-Benign-020.jpg"
    result = runner.invoke(app, ["classify", "--json", "--model", str(saved), str(example)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])  # strict JSON: NaN would not parse in many readers
    assert record["ood_score"] is None and "NaN" not in result.output
