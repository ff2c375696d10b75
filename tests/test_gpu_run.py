"""The prepared GPU run (benchmarks/gpu) in smoke mode: the files it leaves, every section with its keys and
status, rows that really ran, and the targets and summary logic on made-up GPU results.

A GPU is lent rarely and for minutes, so the one script that runs there must work the first time: this runs
the same code on the CPU at tiny sizes (about half a minute on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_DIR = REPO / "benchmarks" / "gpu"
SECTIONS = ["preflight", "weights_cache", "model_only_headline", "end_to_end", "features", "parity",
            "model_only_grid"]
SYSTEMS = {"multihead", "trunk_only", "eight_models", "cascade"}
ROW_STATUSES = {"ok", "oom", "error", "skipped"}
FAKE_WEIGHTS = b"not really resnet18 weights, but hashed like them" * 1000


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """One smoke run, with a fake torch hub cache holding a well-named and a misnamed resnet18 file."""
    out, cache = tmp_path_factory.mktemp("gpu-smoke"), tmp_path_factory.mktemp("cache")
    checkpoints = cache / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    prefix = hashlib.sha256(FAKE_WEIGHTS).hexdigest()[:8]
    (checkpoints / f"resnet18-{prefix}.pth").write_bytes(FAKE_WEIGHTS)
    (checkpoints / "resnet18-00000000.pth").write_bytes(b"wrong")
    env = {**os.environ, "PYTHON": sys.executable, "TORCH_HOME": str(cache / "torch"), "HF_HOME": str(cache / "hf"),
           "HOME": str(cache)}
    done = subprocess.run(["bash", str(GPU_DIR / "run.sh"), str(out), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=600)
    data = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    return out, data, done


def test_the_run_completes_and_leaves_its_files(smoke):
    out, data, done = smoke
    assert done.returncode == 0, done.stdout[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert {"results.json", "summary.md", "run.log"} <= set(files)
    assert len(files) <= 8 and all((out / f).stat().st_size < 16 * 2**20 for f in files), files
    assert data["status"] == "complete" and data["mode"] == "smoke"
    assert "== model_only_headline" in (out / "run.log").read_text()


def test_every_section_ran_in_order_with_a_status(smoke):
    _, data, _ = smoke
    assert [s["name"] for s in data["sections"]] == SECTIONS
    for section in data["sections"]:
        assert section["status"] in ("ok", "partial"), section
        assert section["wall_s"] >= 0 and section["budget_s"] > 0
    for key in ("preflight", "weights_cache", "model_only", "end_to_end", "features", "parity", "targets",
                "recommendation", "ratios", "device", "flags", "config"):
        assert key in data, key
    assert set(data["model_only"]["phases"]) == {"model_only_headline", "model_only_grid"}


def test_preflight_and_device_are_recorded(smoke):
    _, data, _ = smoke
    preflight = data["preflight"]
    assert preflight["multihead"]["ok"], preflight["multihead"]
    assert preflight["missing_required"] == [] and preflight["measurements_possible"]
    assert preflight["data_images"] > 0 and preflight["data_source"]
    device = data["device"]
    assert device["cpu_model"] and device["torch"] and "available" in device["nvidia_smi"]
    assert {"cudnn_benchmark", "cudnn_allow_tf32", "cuda_matmul_allow_tf32"} <= data["flags"].keys()


def test_weights_cache_checks_the_hash_and_copies_in_parts(smoke):
    out, data, _ = smoke
    cache = data["weights_cache"]
    by_name = {Path(f["path"]).name: f for f in cache["torchvision"]}
    assert by_name["resnet18-00000000.pth"]["hash_matches_name"] is False
    good = next(f for name, f in by_name.items() if name != "resnet18-00000000.pth")
    assert good["hash_matches_name"] is True
    parts = cache["copied"]["parts"]
    assert b"".join((out / p["file"]).read_bytes() for p in parts) == FAKE_WEIGHTS


def test_model_only_rows_ran_or_say_why(smoke):
    _, data, _ = smoke
    rows = data["model_only"]["rows"]
    assert rows
    for row in rows:
        assert row["status"] in ROW_STATUSES, row
        if row["status"] == "ok":
            assert row["images_per_second"] > 0 and row["ms_p50"] > 0 and row["image_size"] > 0, row
        elif row["status"] == "skipped":
            assert row["reason"], row
        else:
            assert row["error"], row
    headline = [r for r in rows if r["phase"] == "headline"]
    assert all(r["status"] == "ok" for r in headline), [r for r in headline if r["status"] != "ok"]
    ran = {(r["system"], r["compile"]) for r in headline if r["model"] == "resnet18"}
    assert {(s, c) for s in SYSTEMS for c in ("none", "default")} <= ran
    assert {r["model"] for r in headline} == {"resnet18", "bundled"}
    assert any(r["phase"] == "grid" and r["status"] == "skipped" for r in rows)  # the smoke subset


def test_end_to_end_times_each_stage(smoke):
    _, data, _ = smoke
    e2e = data["end_to_end"]
    gpu = e2e["gpu_decode"]
    assert gpu["status"] == "ok", gpu
    for stage in ("decode", "resize_normalise", "model", "end_to_end"):
        assert gpu[stage]["images_per_second"] > 0 and gpu[stage]["images"] == e2e["items"]
    assert gpu["bound_by"] in ("decode", "resize_normalise", "model")
    assert e2e["cpu_loader"]["status"] == "ok" and e2e["cpu_loader"]["end_to_end"]["images_per_second"] > 0


def test_features_and_parity(smoke):
    _, data, _ = smoke
    rows = data["features"]["rows"]
    assert rows and all(r["status"] == "ok" and r["images_per_second"] > 0 for r in rows)
    parity = {(r["model"], r["candidate"]): r for r in data["parity"]["rows"]}
    assert {m for m, _ in parity} == {"bundled", "resnet18"}
    for (_, candidate), row in parity.items():
        if row["status"] == "skipped":  # a compiled option model_only did not build at that precision
            assert "compiled" in candidate or "cudagraphs" in candidate, row
            assert row["reason"]
            continue
        assert row["status"] == "ok", row
        assert 0.0 <= row["subtype_agreement"] <= 1.0 and row["images"] > 0
    assert parity[("resnet18", "bf16_channels_last_compiled")]["status"] == "ok"
    for model in ("bundled", "resnet18"):  # fp32 on the CPU: the same answers as the reference
        assert parity[(model, "fp32_tf32")]["subtype_agreement"] == 1.0
        assert parity[(model, "fp32_tf32")]["max_abs_joint_prob_diff"] < 1e-5


def test_targets_are_not_judged_in_smoke_mode_and_summary_has_every_table(smoke):
    out, data, _ = smoke
    assert len(data["targets"]) == 4
    assert all(t["verdict"] == "not applicable (smoke)" for t in data["targets"])
    assert data["recommendation"]["applicable"] is False
    summary = (out / "summary.md").read_text()
    for heading in ("## Targets", "## Sections", "## Model-only throughput", "## End to end", "## Feature extraction",
                    "## Parity", "## ResNet18 ImageNet weights"):
        assert heading in summary, heading


@pytest.fixture()
def summary_module(monkeypatch):
    monkeypatch.syspath_prepend(str(GPU_DIR))
    import summary

    return summary


def _row(system: str, ips: float, **kw) -> dict:
    return {"model": "resnet18", "system": system, "precision": "bf16", "channels_last": True, "compile": "none",
            "batch_size": 512, "status": "ok", "images_per_second": ips, **kw}


def test_targets_and_recommendation_on_made_up_gpu_results(summary_module, tmp_path):
    data = {"mode": "gpu", "status": "running", "config": {"headline_batch": 512},
            "sections": [{"name": "preflight", "status": "ok"}, {"name": "parity", "status": "running"}],
            "planned_sections": ["preflight", "parity", "model_only_grid"],
            "model_only": {"rows": [_row("multihead", 64000.0), _row("eight_models", 8000.0),
                                    _row("trunk_only", 68000.0), _row("cascade", 30000.0),
                                    _row("multihead", 40000.0, precision="fp32", channels_last=False),
                                    _row("multihead", 61000.0, precision="fp16", model="bundled")]},
            "end_to_end": {"gpu_decode": {"end_to_end": {"images_per_second": 9000.0}},
                           "cpu_loader": {"end_to_end": {"images_per_second": 3000.0}}},
            "parity": {"status": "running", "rows": [
                {"model": "bundled", "candidate": "fp16", "precision": "fp16", "channels_last": True,
                 "compile": "none", "status": "ok", "passes": True, "subtype_agreement": 1.0,
                 "max_abs_joint_prob_diff": 1e-3},
                {"model": "resnet18", "candidate": "bf16_channels_last", "precision": "bf16", "channels_last": True,
                 "compile": "none", "status": "ok", "passes": False, "subtype_agreement": 0.98,
                 "max_abs_joint_prob_diff": 1e-2}]}}
    (tmp_path / "results.json").write_text(json.dumps(data))
    result = summary_module.finalize(tmp_path)
    assert result["status"] == "killed"
    assert [(s["name"], s["status"]) for s in result["sections"]] == [
        ("preflight", "ok"), ("parity", "killed"), ("model_only_grid", "not reached")]
    verdicts = {t["name"]: (t["measured"], t["verdict"]) for t in result["targets"]}
    assert verdicts["multihead model-only images/s, bf16, batch >= 512"] == (64000.0, "pass")
    assert verdicts["end to end from JPEG bytes, images/s"] == (9000.0, "fail")
    assert verdicts["multihead / eight_models"] == (8.0, "pass")
    assert verdicts["multihead / trunk_only"][1] == "fail"
    assert result["recommendation"]["recommended_cuda_default"] == "fp16"
    assert result["recommendation"]["per_model"]["resnet18"]["fastest_passing"] is None
    assert "**fail**" in (tmp_path / "summary.md").read_text()


def test_summary_survives_a_run_that_never_started(summary_module, tmp_path):
    result = summary_module.finalize(tmp_path)
    assert result["status"] == "failed_to_start"
    assert (tmp_path / "summary.md").is_file()
