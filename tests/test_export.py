"""ONNX export and the ONNX Runtime / OpenVINO backends: same outputs and Predictions as PyTorch, checked files."""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections import OrderedDict

import onnx
import pytest
import torch
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.inference import InferenceConfig, backends, predict_batch, run_batch, run_features
from multihead.inference.backends import open_runtime, resolve_backend
from multihead.inference.export import (
    OUTPUTS,
    MissingDependencyError,
    check_onnx,
    export_onnx,
    read_onnx_header,
    require,
)

from .conftest import assert_handled_exit

RUNTIMES = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def onnx_file(tiny_model, tmp_path_factory):
    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", RUNTIMES)
def test_exported_graph_gives_torch_outputs(tiny_model, onnx_file, images, backend, one_torch_thread):
    outputs = open_runtime(tiny_model, backend, onnx_file=onnx_file).run(images)
    expected = run_batch(tiny_model, images, InferenceConfig(backend="torch", channels_last=False))
    assert set(outputs) == set(OUTPUTS)
    torch.testing.assert_close(outputs["features"], run_features(tiny_model, images, InferenceConfig(backend="torch")),
                               rtol=1e-4, atol=1e-4)
    for name in ("router_logits", "subtype_logits", "joint_log_probs"):
        torch.testing.assert_close(outputs[name], getattr(expected, name), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def staged_model():
    """A trunk that also pools an inner stage, as the bundled model's does: the default CPU path is ONNX."""
    torch.manual_seed(0)
    return multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=0,
                                  trunk_stages=["layer3"]).eval()


@pytest.mark.parametrize("backend", RUNTIMES)
def test_a_staged_trunk_gives_torch_outputs_on_both_runtimes(staged_model, images, backend, tmp_path,
                                                             one_torch_thread):
    path = export_onnx(staged_model, tmp_path / "staged.onnx")
    assert json.loads(json.dumps(check_onnx(path, staged_model)["trunk"]["stages"])) == ["layer3"]
    outputs = open_runtime(staged_model, backend, onnx_file=path).run(images)
    torch_features = run_features(staged_model, images, InferenceConfig(backend="torch"))
    assert outputs["features"].shape == torch_features.shape == (6, 512 + 256)
    torch.testing.assert_close(outputs["features"], torch_features, rtol=1e-4, atol=1e-4)
    expected = run_batch(staged_model, images, InferenceConfig(backend="torch", channels_last=False))
    for name in ("router_logits", "subtype_logits", "joint_log_probs"):
        torch.testing.assert_close(outputs[name], getattr(expected, name), rtol=1e-4, atol=1e-4)


def test_metadata_describes_the_checkpoint(tiny_model, onnx_file):
    header = check_onnx(onnx_file, tiny_model)
    assert header["trunk"]["fingerprint"] == tiny_model.trunk.fingerprint
    assert header["taxonomy"] == tiny_model.taxonomy.to_json() and header["opset"] == 18
    assert header["preprocessing"] == tiny_model.preprocessing.to_json()


def test_a_graph_from_another_model_is_refused(tiny_model, onnx_file):
    retrained = copy.deepcopy(tiny_model)
    retrained.reset_heads(seed=1)
    with pytest.raises(ValueError, match=r"tiny\.onnx: exported from a different model \(heads_sha256 differ\)"):
        open_runtime(retrained, "onnxruntime", onnx_file=onnx_file)
    resized = copy.deepcopy(tiny_model)
    resized.preprocessing = tiny_model.preprocessing.with_size(96)
    with pytest.raises(ValueError, match="preprocessing differ"):
        check_onnx(onnx_file, resized)


def test_missing_corrupt_and_foreign_files_are_named(tmp_path, onnx_file):
    with pytest.raises(ValueError, match=r"nothing\.onnx: ONNX file does not exist"):
        read_onnx_header(tmp_path / "nothing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(onnx_file.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"corrupt\.onnx: not a readable ONNX file"):
        read_onnx_header(corrupt)
    foreign = onnx.load(str(onnx_file))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match=r"foreign\.onnx: not exported by multihead"):
        read_onnx_header(tmp_path / "foreign.onnx")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an uninstalled package looks like to import
    with pytest.raises(MissingDependencyError, match=r"pip install 'multihead\[onnx\]'"):
        require("onnxruntime")
    assert issubclass(MissingDependencyError, RuntimeError)  # the CLI's one-line error, exit code 1


def test_bad_opset_and_precision_are_value_errors(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="opset must be an integer from 18 to 20"):
        export_onnx(tiny_model, tmp_path / "m.onnx", opset=17)
    with pytest.raises(ValueError, match="onnxruntime' runs precision fp32"):
        InferenceConfig(backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        InferenceConfig(backend="tensorrt")


@pytest.mark.parametrize(("backend", "precision"), [("onnxruntime", "fp32"), ("openvino", "fp32"),
                                                    ("openvino", "bf16")])
def test_backend_predictions_equal_torch_predictions(tiny_model, images, backend, precision, one_torch_thread):
    model = copy.deepcopy(tiny_model)  # with an out-of-distribution score, so features reach it too
    generator = torch.Generator().manual_seed(0)
    model.ood.projection.copy_(torch.randn(model.ood.projection.shape, generator=generator) / 30)
    model.ood.threshold.fill_(1.0)
    expected = predict_batch(model, images, InferenceConfig(backend="torch", precision=precision))
    found = predict_batch(model, images, InferenceConfig(backend=backend, precision=precision))
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    for want, got in zip(expected, found, strict=True):
        assert (got.organ, got.subtype, got.status) == (want.organ, want.subtype, want.status)
        assert got.subtype_probability == pytest.approx(want.subtype_probability, abs=tolerance)
        assert got.ood_score == pytest.approx(want.ood_score, rel=tolerance)


def test_auto_picks_an_installed_backend_on_the_cpu_only():
    assert resolve_backend("auto", "fp32", "cpu") == "openvino"  # both are in the dev extra
    assert resolve_backend("auto", "fp16", "cpu") == "torch"  # neither runs fp16 on this CPU
    assert resolve_backend("auto", "fp32", "cuda") == "torch"
    assert InferenceConfig().resolve("cpu").backend == "openvino"


def test_auto_falls_back_to_torch_and_says_why(tiny_model, images, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("trunk 'resnet18' could not be exported to ONNX")

    monkeypatch.setattr(backends, "_cache", OrderedDict())
    monkeypatch.setattr(backends, "open_runtime", broken)
    with caplog.at_level(logging.WARNING, logger="multihead.inference.backends"):
        features = run_features(tiny_model, images, InferenceConfig())
        run_features(tiny_model, images, InferenceConfig())  # the failure is remembered, not retried
    torch.testing.assert_close(features, run_features(tiny_model, images, InferenceConfig(backend="torch")))
    assert [r.message for r in caplog.records].count(
        "backend 'auto': openvino is not used, the trunk runs in PyTorch "
        "(trunk 'resnet18' could not be exported to ONNX)") == 1
    with pytest.raises(RuntimeError, match="could not be exported"):  # an explicit backend does not fall back
        run_features(tiny_model, images, InferenceConfig(backend="openvino"))


_run = backends._OnnxRuntime.run


def _zeros(self, batch, outputs=OUTPUTS):
    """A runtime that answers zeros of the right shapes: a graph that converted wrongly."""
    return {name: value * 0 for name, value in _run(self, batch, outputs).items()}


def _wrong_shape(self, batch, outputs=OUTPUTS):
    return {name: torch.zeros(len(batch), 3) for name in outputs}


def test_a_runtime_that_disagrees_with_torch_is_refused(tiny_model, onnx_file, monkeypatch):
    monkeypatch.setattr(backends._OnnxRuntime, "run", _zeros)
    with pytest.raises(RuntimeError, match="features differ from PyTorch's"):
        open_runtime(tiny_model, "onnxruntime", onnx_file=onnx_file)


def test_a_bottom_runtime_that_disagrees_with_torch_is_refused(monkeypatch):
    """The map cache's bottom graph gets the same check: maps that differ from PyTorch's are refused."""
    from multihead.model.trunk_split import split_trunk

    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64, trunk_stages="auto")
    parts = split_trunk(model.trunk, "auto")
    assert set(backends.open_bottom_runtime(model, parts, "onnxruntime").run(
        torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ("maps", "pooled"))) == {"maps", "pooled"}
    monkeypatch.setattr(backends._OnnxRuntime, "run", _zeros)
    with pytest.raises(RuntimeError, match="maps differ from PyTorch's by 1"):
        backends.open_bottom_runtime(model, parts, "onnxruntime")
    monkeypatch.setattr(backends._OnnxRuntime, "run", _wrong_shape)
    with pytest.raises(RuntimeError, match=r"maps differ from PyTorch's in shape: \(2, 3\) against \(2, 256"):
        backends.open_bottom_runtime(model, parts, "onnxruntime")


def test_cli_export_writes_a_checked_graph(tiny_model, tmp_path):
    checkpoint = tmp_path / "tiny.safetensors"
    multihead.save(tiny_model, checkpoint)
    result = CliRunner().invoke(app, ["export", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert "tiny.onnx" in result.output and "opset 18" in result.output
    check_onnx(tmp_path / "tiny.onnx", tiny_model)
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--format", "tflite"])
    assert_handled_exit(result, 2, "'tflite' is not one of onnx")  # a wrong command line is code 2
