"""Benchmark runners and the default inference path: shapes of the reports and parity, never timings."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from multihead.benchmark import (
    SYSTEMS,
    BenchSystem,
    benchmark_system,
    collect_outputs,
    compare_outputs,
    hardware_slug,
    run_benchmark,
    summarize,
)
from multihead.cli import app
from multihead.inference import InferenceConfig, run_batch

from .conftest import assert_handled_exit

ROW_KEYS = {"system", "precision", "channels_last", "compiled", "batch_size", "images_per_second", "latency_ms_p50",
            "latency_ms_min", "latency_ms_max", "spread_pct", "status", "num_params"}
SMALL = {"batch_sizes": [2], "image_size": 64, "repeats": 1, "warmup": 0}


@pytest.fixture(scope="module")
def small_report() -> dict:
    return run_benchmark(**SMALL)


def test_report_has_documented_keys_and_all_systems(small_report):
    assert {"device", "torch", "cpu_count", "date", "machine", "results"} <= small_report.keys()
    assert small_report["device"] == "cpu" and isinstance(small_report["cpu_count"], int)
    assert small_report["machine"]["cpu_model"]
    assert sorted(r["system"] for r in small_report["results"]) == sorted(SYSTEMS)
    for row in small_report["results"]:
        assert row.keys() >= ROW_KEYS, ROW_KEYS - row.keys()
        assert row["status"] == "ok" and row["images_per_second"] > 0 and row["batch_size"] == 2
    json.dumps(small_report)  # serialisable as is


def test_summary_gives_ratios_against_each_system(small_report):
    (entry,) = summarize(small_report)
    assert {f"multihead_over_{s}" for s in SYSTEMS[1:]} <= entry.keys()


def test_every_system_runs_each_setting():
    report = run_benchmark(systems=["multihead", "cascade"], precisions=["bf16"], channels_last=[True],
                           **{**SMALL, "image_size": 32})
    assert [(r["system"], r["precision"], r["channels_last"]) for r in report["results"]] == [
        ("multihead", "bf16", True), ("cascade", "bf16", True)]


def test_out_of_memory_is_recorded_not_raised():
    def step(batch, precision):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    row = benchmark_system(BenchSystem("multihead", step, 0, torch.nn.Identity()), batch_size=2, image_size=64,
                           repeats=1)
    assert row["status"] == "oom" and "out of memory" in row["error"] and "images_per_second" not in row


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"precisions": ["fp8"]}, "unknown precision 'fp8'"),
    ({"systems": ["nine_models"]}, "unknown system 'nine_models'"),
    ({"batch_sizes": [0]}, "batch sizes must be positive"),
])
def test_bad_settings_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_benchmark(**{**SMALL, **kwargs})


def test_hardware_slug_is_a_safe_file_name():
    assert re.fullmatch(r"[a-z0-9-]+", hardware_slug("cpu"))


def test_cli_benchmark_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["benchmark", "--batch-size", "2", "--image-size", "64", "--repeats", "1",
                                      "--warmup", "0", "--system", "multihead", "--system", "trunk_only",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "multihead" in result.output and "trunk_only" in result.output
    report = json.loads(out.read_text())
    # the torch rows, beside the backend classify runs (OpenVINO when installed), timed by default
    assert [r["system"] for r in report["results"] if r["backend"] == "torch"] == ["multihead", "trunk_only"]
    assert report["results"][0]["channels_last"] is True  # the library's CPU default


@pytest.mark.slow
def test_backends_time_multihead_and_trunk_only_baselines_stay_torch():
    report = run_benchmark(systems=["multihead", "eight_models", "trunk_only"], precisions=["fp32", "bf16"],
                           backends=["torch", "onnxruntime"], **{**SMALL, "image_size": 32})
    assert [(r["system"], r["backend"], r["precision"]) for r in report["results"]] == [  # interleaved per setting
        ("multihead", "torch", "fp32"), ("eight_models", "torch", "fp32"), ("trunk_only", "torch", "fp32"),
        ("multihead", "onnxruntime", "fp32"), ("trunk_only", "onnxruntime", "fp32"),  # onnxruntime runs fp32 only
        ("multihead", "torch", "bf16"), ("eight_models", "torch", "bf16"), ("trunk_only", "torch", "bf16")]
    onnx_entry = next(e for e in summarize(report) if e["backend"] == "onnxruntime")
    assert {"multihead_over_eight_models", "multihead_over_trunk_only"} <= onnx_entry.keys()
    with pytest.raises(ValueError, match="backend 'onnxruntime' runs fp32"):
        run_benchmark(precisions=["bf16"], backends=["onnxruntime"], **SMALL)


def test_cli_benchmark_bad_precision_is_one_line_error():
    result = CliRunner().invoke(app, ["benchmark", "--precision", "fp8", "--image-size", "64"])
    assert_handled_exit(result, 2, "'fp8' is not one of fp32, bf16, fp16")  # a wrong command line is code 2
    from multihead.benchmark import PRECISIONS

    assert PRECISIONS == ("fp32", "bf16", "fp16")  # the CLI's choices, kept free of a torch import


# --- the default inference path ------------------------------------------------------------------------

def test_default_config_resolves_per_device():
    assert InferenceConfig().resolve("cpu") == InferenceConfig(precision="fp32", channels_last=True, backend="openvino")
    assert InferenceConfig().resolve("cuda").backend == "torch"
    assert InferenceConfig().resolve("cuda").channels_last is False
    assert InferenceConfig(channels_last=False).resolve("cpu").channels_last is False
    with pytest.raises(ValueError, match="channels_last"):
        InferenceConfig(channels_last="yes")


def test_default_config_never_changes_the_model(tiny_model):
    before = {k: v.is_contiguous() for k, v in tiny_model.state_dict().items()}
    run_batch(tiny_model, torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert {k: v.is_contiguous() for k, v in tiny_model.state_dict().items()} == before


def _parity(model, batches):
    fp32_eager = collect_outputs(model, batches, InferenceConfig(precision="fp32", channels_last=False,
                                                                 backend="torch"))
    return compare_outputs(model, fp32_eager, collect_outputs(model, batches, InferenceConfig()))


def test_default_config_matches_fp32_eager_on_random_images(tiny_model):
    batches = list(torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8,
                                 generator=torch.Generator().manual_seed(0)).split(8))
    parity = _parity(tiny_model, batches)
    assert parity["images"] == 32 and parity["subtype_agreement"] == 1.0
    assert parity["max_abs_joint_prob_diff"] < 1e-5


def test_default_config_matches_fp32_eager_on_real_images(tiny_model, real_images):
    batch = torch.stack([tiny_model.preprocessing.load(path) for path in real_images])
    parity = _parity(tiny_model, [batch])
    assert parity["subtype_agreement"] == 1.0 and parity["organ_agreement"] == 1.0
    assert parity["max_abs_joint_prob_diff"] < 1e-5
