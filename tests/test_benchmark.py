"""Benchmark runners and the default inference path: shapes of the reports and parity, never timings."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

import multihead
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
                                      "--precision", "fp32", "--no-end-to-end", "--json", str(out)])
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
    assert_handled_exit(result, 2, "'fp8' is not one of fp32, bf16, fp16, int8")  # a wrong command line is code 2
    from multihead.benchmark import PRECISIONS

    assert PRECISIONS == ("fp32", "bf16", "fp16", "int8")  # the CLI's choices, kept free of a torch import
    result = CliRunner().invoke(app, ["benchmark", "--precision", "int8", "--backend", "torch"])
    assert_handled_exit(result, 2, "'int8' runs on none of the backends timed here (torch)")


# --- what it says while and after it runs (issue 39) ----------------------------------------------------------

SMALL_CLI = ["benchmark", "--batch-size", "2", "--image-size", "32", "--repeats", "1", "--warmup", "0", "--rounds", "1",
             "--precision", "fp32"]


def test_cli_benchmark_names_what_it_timed_and_reads_at_80_columns():
    result = CliRunner().invoke(app, [*SMALL_CLI, "--system", "multihead", "--system", "eight_models",
                                      "--backend", "torch", "--no-end-to-end"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "ResNet18 with random weights (not the bundled model), 32 px, batch 2" in out
    assert "ResNet18, random weights, 32 px" in out  # the table's title
    assert "…" not in out and "eight_models │ torch" in out  # names folded, never cut; the backend per row
    assert max(len(line) for line in out.splitlines() if "│" in line or "━" in line) <= 80
    assert "multihead on torch (fp32, batch 2) over eight_models on torch x" in out
    assert "building eight_models (torch, channels_last)" in result.stderr
    assert "round 1/1: eight_models on torch fp32, batch 2:" in result.stderr
    assert "this CPU computes" in result.stderr


def test_progress_lines_reach_a_pipe_while_it_runs(tmp_path):
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "multihead", *SMALL_CLI, "--no-end-to-end", "--rounds", "3",
                                "--repeats", "2", "--image-size", "64", "--system", "multihead", "--system",
                                "trunk_only", "--backend", "torch"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in process.stderr:  # a pipe, not a terminal: each line comes as soon as it is written
            seen.append(line)
            if line.startswith("round 1/3:"):
                process.kill()  # rounds 2 and 3 are still to come: the run is stopped in the middle
                break
        seen += process.stderr.read().splitlines()  # what was written before the kill
        process.wait(timeout=600)
    finally:
        process.kill()
    assert any(line.startswith("round 1/3:") for line in seen), seen
    assert not any(line.startswith("round 3/3:") for line in seen), "the lines came only when the run was over"


def test_int8_rows_run_on_openvino_on_a_trunk_quantised_for_timing(tmp_path, monkeypatch):
    pytest.importorskip("nncf")
    monkeypatch.setenv("MULTIHEAD_OPENVINO_CACHE", str(tmp_path))
    lines: list[str] = []
    report = run_benchmark(systems=["multihead", "eight_models", "trunk_only"], precisions=["fp32", "int8"],
                           backends=["torch", "openvino"], rounds=1, on_progress=lines.append,
                           **{**SMALL, "image_size": 32})
    assert [(r["system"], r["backend"], r["precision"]) for r in report["results"]] == [
        ("multihead", "torch", "fp32"), ("eight_models", "torch", "fp32"), ("trunk_only", "torch", "fp32"),
        ("multihead", "openvino", "fp32"), ("trunk_only", "openvino", "fp32"),
        ("multihead", "openvino", "int8"), ("trunk_only", "openvino", "int8")]
    assert all(r["status"] == "ok" for r in report["results"])
    assert "int8 trunk of multihead: quantised on 16 random images" in lines
    assert "int8 trunk of trunk_only: cached" in lines  # the same random trunk: quantised once
    assert report["trunk"] == "resnet18" and "not the bundled model" in report["weights"]


def test_time_classify_gives_files_per_second_and_agreement(tiny_model, real_images):
    from multihead.benchmark import time_classify

    labels = [path.parent.name for path in real_images]
    lines: list[str] = []
    report = time_classify(real_images, tiny_model, {"fp32": InferenceConfig(precision="fp32", backend="torch"),
                                                     "auto": InferenceConfig(backend="torch")},
                           rounds=2, labels=labels, on_progress=lines.append)
    assert report["files"] == len(real_images) and report["decode_files_per_second"] > 0
    fp32, auto = report["rows"]
    assert (fp32["name"], auto["name"], auto["precision"], auto["backend"]) == ("fp32", "auto", "fp32", "torch")
    assert auto["agreement"] == 1.0 and auto["accuracy"] == fp32["accuracy"] and fp32["over_reference"] == 1.0
    assert len(auto["round_files_per_second"]) == 2 and auto["files_per_second"] > 0
    assert "round 2/2: classify at auto:" in " ".join(lines)
    with pytest.raises(ValueError, match="at least one file"):
        time_classify([], tiny_model, {"fp32": InferenceConfig()})


def test_cli_benchmark_times_classify_end_to_end_with_a_real_model(tiny_model, tmp_path, real_images):
    path = tmp_path / "tiny.safetensors"
    multihead.save(tiny_model, path)
    result = CliRunner().invoke(app, [*SMALL_CLI, "--system", "multihead", "--backend", "torch", "--model", str(path),
                                      "--images", str(real_images[0]), "--images", str(real_images[1]),
                                      "--files", "3", "--json", str(tmp_path / "bench.json")])
    assert result.exit_code == 0, result.output
    assert "classify end to end: tiny.safetensors (resnet18, 64 px), 3 files from 2" in result.stdout
    assert "decoding and resizing alone:" in result.stdout
    assert "auto picks here: fp32 (no accuracy guard recorded" in result.stdout
    report = json.loads((tmp_path / "bench.json").read_text())["end_to_end"]
    assert report["files"] == 3 and [row["name"] for row in report["rows"]] == ["fp32", "auto"]


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


def test_on_a_cpu_without_the_instructions_benchmark_times_fp32_and_says_auto_keeps_it(monkeypatch):
    import multihead._precision as hardware
    from multihead import benchmark
    from multihead.model import precision as policy

    monkeypatch.setattr(hardware, "native_cpu_precisions", lambda flags=None: ("fp32",))
    monkeypatch.setattr(policy, "native_cpu_precisions", lambda flags=None: ("fp32",))
    seen = {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        return {"machine": {"cpu_model": "x", "gpu": None}, "cpu_count": 2, "torch": "t", "results": [],
                "warnings": []}

    monkeypatch.setattr(benchmark, "run_benchmark", fake_run)
    result = CliRunner().invoke(app, ["benchmark", "--image-size", "32", "--no-end-to-end"])
    assert result.exit_code == 0, result.output
    assert seen["precisions"] == ["fp32"]
    assert "this CPU computes no reduced precision in hardware (no AVX-512 BF16 or AMX-BF16 for bf16;" in (
        result.stderr)
    assert "no AVX-512 VNNI, AVX-VNNI or AMX-INT8 for int8): auto keeps fp32" in result.stderr
