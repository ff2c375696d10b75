"""Sharded classification gives exactly one process's results: single process, resume, and two gloo ranks."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.data.views import VIEWS
from multihead.distributed import classify_to_jsonl, extract_to_cache, part_path, rank_and_world, shard
from multihead.features import extract_features
from multihead.inference import InferenceConfig, classify_files

from .conftest import assert_handled_exit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, real_images):
    """Eight real images in two folders, and one unreadable file."""
    folder = tmp_path_factory.mktemp("images")
    for index, path in enumerate(real_images[:8]):
        target = folder / f"part{index % 2}" / f"{index:02d}{path.suffix}"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same(got, expected):
    assert [r["source"] for r in got] == [r["source"] for r in expected]
    for a, b in zip(got, expected):
        assert (a["error"] is None) == (b["error"] is None), a["source"]
        if a["error"] is None:
            assert (a["organ"], a["subtype"], a["status"]) == (b["organ"], b["subtype"], b["status"])
            for key in a["probabilities"]:
                assert a["probabilities"][key] == pytest.approx(b["probabilities"][key], abs=1e-6)


def test_shard_is_sorted_and_complete():
    items = ["d", "b", "a", "c", "e"]
    parts = [shard(items, r, 2) for r in range(2)]
    assert parts == [["a", "c", "e"], ["b", "d"]]
    with pytest.raises(ValueError, match="rank must be"):
        shard(items, 2, 2)
    with pytest.raises(ValueError, match="world must be"):
        shard(items, 0, 0)
    assert rank_and_world() == (0, 1)


def test_single_process_equals_classify_files(tiny_model, image_dir, tmp_path):
    files = _files(image_dir)
    out = tmp_path / "out.jsonl"
    summary = classify_to_jsonl(reversed(files), tiny_model, out, InferenceConfig(batch_size=3))
    expected = [r.to_dict() for r in classify_files(files, tiny_model, config=InferenceConfig(batch_size=3))]
    _assert_same(_read(out), expected)
    assert (summary.total, summary.failed, summary.resumed, summary.world) == (len(files), 1, 0, 1)
    assert not list(tmp_path.glob("*.part-*"))


def test_resume_skips_done_lines_and_drops_a_torn_one(tiny_model, image_dir, tmp_path):
    files = _files(image_dir)
    config = InferenceConfig(batch_size=4)
    clean = tmp_path / "clean.jsonl"
    classify_to_jsonl(files, tiny_model, clean, config)
    lines = clean.read_text().splitlines(keepends=True)
    out = tmp_path / "resumed.jsonl"
    part_path(out, 0, 1).write_text("".join(lines[:3]) + lines[3][:25])  # killed mid-line
    summary = classify_to_jsonl(files, tiny_model, out, config)
    assert summary.resumed == 3 and summary.total == len(files)
    _assert_same(_read(out), _read(clean))
    part_path(out, 0, 1).write_text(lines[1])  # a part from other inputs is refused, not merged
    with pytest.raises(ValueError, match="other inputs"):
        classify_to_jsonl(files, tiny_model, out, config)


def test_extract_to_cache_fills_the_cache(tiny_model, image_dir, tmp_path):
    files = _files(image_dir)
    summary = extract_to_cache(files, tiny_model, tmp_path / "cache")
    assert (summary.total, summary.failed) == (len(files), 1)
    assert summary.failures[0][0].endswith("broken.jpg")
    features, ok, _ = extract_features(tiny_model, files, cache_dir=tmp_path / "cache", num_workers=0)
    assert len(ok) == len(files) - 1 and features.shape[0] == len(ok)


def test_cli_extract_fills_the_cache_and_exits_3_for_the_broken_file(tiny_model, image_dir, tmp_path, monkeypatch):
    checkpoint = tmp_path / "m.safetensors"
    multihead.save(tiny_model, checkpoint)
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, ["extract", str(image_dir), "--model", str(checkpoint), "--cache-dir",
                                      str(cache), "--views", "dihedral", "--batch-size", "3"])
    assert_handled_exit(result, 3, "broken.jpg")
    assert "cached 8 of 9 files x 8 view(s) (1 process)" in result.stdout
    runs = []
    monkeypatch.setattr("multihead.features.extract.run_features", lambda *args: runs.append(args))
    features, ok, _ = extract_features(multihead.load(checkpoint), _files(image_dir), views=VIEWS, cache_dir=cache)
    assert runs == [] and features.shape == (8, 8, 512) and len(ok) == 8  # all of it came from the cache
    wrong = CliRunner().invoke(app, ["extract", str(image_dir), "--model", str(checkpoint), "--views", "all"])
    assert_handled_exit(wrong, 2, "'all' is not one of identity, dihedral")  # a wrong command line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


GLOO = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                          reason="torch.distributed with the gloo backend is not available in this torch build")


@GLOO
def test_two_gloo_ranks_each_exit_3_and_equal_one_process(tiny_model, image_dir, tmp_path):
    """Two ranks started with the environment torchrun gives them; each one's own exit code is checked."""
    files = _files(image_dir)
    checkpoint = tmp_path / "m.safetensors"
    multihead.save(tiny_model, checkpoint)
    out = tmp_path / "two.jsonl"
    base = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port())}
    command = [sys.executable, "-m", "multihead", "classify", str(image_dir), "--model", str(checkpoint),
               "--out", str(out), "--batch-size", "2"]
    ranks = [subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [rank.communicate(timeout=180) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [3, 3], [err[-2000:] for _, err in outputs]  # the broken file
    assert "9 files, 1 failed (2 processes)" in outputs[0][0] and outputs[1][0] == ""  # rank 0 reports
    expected = [r.to_dict() for r in classify_files(files, tiny_model)]
    _assert_same(_read(out), expected)
    assert not list(tmp_path.glob("*.part-*"))


@GLOO
@pytest.mark.slow
def test_torchrun_fails_when_a_rank_fails(tiny_model, image_dir, tmp_path):
    """The documented launcher: torchrun's own exit code is 1 when a worker exits non-zero (here 3)."""
    checkpoint = tmp_path / "m.safetensors"
    multihead.save(tiny_model, checkpoint)
    out = tmp_path / "two.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "multihead", "classify", str(image_dir), "--model", str(checkpoint), "--out", str(out),
               "--batch-size", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "9 files, 1 failed (2 processes)" in done.stdout
    _assert_same(_read(out), [r.to_dict() for r in classify_files(_files(image_dir), tiny_model)])
