"""Issue 36, files and the command line: what an attacker still got through after issue 20, each attack kept as a
test. Thin strips, checkpoints naming trunks that are not here or inputs too large for memory, headers edited
after saving, FIFOs and ``/dev/zero`` in data folders, damaged and hostile ``trust`` metadata, the default batch's
memory, NaN weights, the permissions of saved models, and tampered feature and map caches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.data.images import MAX_SIDE, ImageError, read_image
from multihead.data.preprocessing import Preprocessing
from multihead.inference.config import InferenceConfig
from multihead.model import checkpoint as checkpoint_module
from multihead.model.checkpoint import CheckpointError, header_checksum, read_header, trunk_parameter_limit
from multihead.model.memory import MEMORY_BUDGET, image_memory
from multihead.model.trunk import fingerprint_state_dict

from .conftest import assert_handled_exit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
EXAMPLES = Path(multihead.__file__).parent / "examples"


def strip_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of ``width`` x ``height`` zeros, written by hand: 1x39,999,999 is 78 KB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = (b"\x00" * (1 + width)) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("round2") / "m.safetensors"
    multihead.save(tiny_model, path)
    return path


def _rewrite(src: Path, dst: Path, *, fields: dict | None = None, metadata: dict | None = None,
             tensors: dict | None = None, drop: tuple[str, ...] = (), resign: bool = False) -> Path:
    """``src`` with header fields (raw strings) replaced or dropped, metadata entries updated, tensors replaced;
    with ``resign``, every checksum recomputed, as an attacker who knows the format would."""
    with safe_open(str(src), "pt") as reader:
        header = dict(reader.metadata())
    if metadata is not None:
        header["metadata"] = json.dumps({**json.loads(header["metadata"]), **metadata})
    header.update(fields or {})
    for key in drop:
        header.pop(key, None)
    state = {**load_file(str(src)), **(tensors or {})}
    if resign:
        trunk = json.loads(header["trunk"])
        trunk["fingerprint"] = fingerprint_state_dict({k[6:]: v for k, v in state.items() if k.startswith("trunk.")})
        header["trunk"] = json.dumps(trunk)
        header["heads_sha256"] = fingerprint_state_dict({k: v for k, v in state.items()
                                                         if not k.startswith("trunk.")})
        parsed = read_header(src)
        header["header_sha256"] = header_checksum(parsed["taxonomy"], trunk, parsed["preprocessing"],
                                                  parsed["joint"], header["heads_sha256"])
    save_file(state, str(dst), metadata=header)
    return dst


@contextmanager
def time_limit(seconds: int):
    """A hang (a FIFO opened, ``/dev/zero`` read) fails the test instead of blocking the run for ever."""

    def expire(*_args: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: something opened a FIFO or read /dev/zero")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- 2 and 3. thin strips ---------------------------------------------------------------------------------------

def test_a_thin_strip_is_refused_from_its_header_and_the_longest_side_allowed_still_reads(tmp_path):
    tall = tmp_path / "tall.png"
    tall.write_bytes(strip_png(1, 39_999_999))
    assert tall.stat().st_size < 100_000
    with pytest.raises(ImageError, match=rf"tall.png: 1x39999999 pixels has a side longer than {MAX_SIDE:,} "
                                         r"pixels, too thin a strip to resize; cut it into tiles$"):
        read_image(tall, max_pixels=40_000_000)
    longest = tmp_path / "longest.png"
    longest.write_bytes(strip_png(MAX_SIDE, 1))
    assert tuple(Preprocessing(image_size=64).load(longest).shape) == (3, 64, 64)


def test_a_folder_run_lists_a_thin_strip_as_unreadable_and_classifies_the_rest(saved, tmp_path):
    """Before: exit 1 and no result for the good files (a 102 GB allocation); now exit 3 and one line for it."""
    folder = tmp_path / "slides"
    folder.mkdir()
    good = sorted(EXAMPLES.glob("*.jpg"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    (folder / "strip.png").write_bytes(strip_png(1, 39_999_999))
    result = runner.invoke(app, ["classify", "--json", "--model", str(saved), str(folder)])
    assert_handled_exit(result, 3)
    records = {Path(r["source"]).name: r for r in map(json.loads, result.stdout.strip().splitlines())}
    assert sorted(records) == sorted([p.name for p in good] + ["strip.png"])
    assert all(records[p.name]["organ"] and records[p.name]["error"] is None for p in good)
    assert f"strip.png: 1x39999999 pixels has a side longer than {MAX_SIDE:,} pixels" in records["strip.png"]["error"]
    assert "1 of 3 files could not be classified" in result.stderr


def test_thin_strips_resize_within_memory():
    """A 3x60000x1 tensor (no header to check) resized to 640 px: before, squashing it held a 60000x640 image first
    (+160 MB), cropping it asked for 640 x 38 million pixels (73 GB)."""
    code = (
        "import resource, torch\n"
        "from multihead.data.preprocessing import Preprocessing\n"
        "tall = torch.full((3, 60000, 1), 100, dtype=torch.uint8)\n"
        "for mode in ('squash', 'crop'):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    shapes = [tuple(Preprocessing(image_size=640, resize_mode=mode).resize(x).shape)\n"
        "              for x in (tall, tall.transpose(1, 2).contiguous())]\n"
        "    print(mode, shapes, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in done.stdout.strip().splitlines():
        mode, rest = line.split(" ", 1)
        shapes, grew = rest.rsplit(" ", 1)
        assert shapes == "[(3, 640, 640), (3, 640, 640)]", line
        assert int(grew) < 64, f"{mode}: resizing took {grew} MB more"


# --- 6. checkpoints naming trunks that are not here ------------------------------------------------------------

def _referenced(path: Path, name: str, *, weights_id: str, source: str = "torchvision") -> Path:
    """A small checkpoint whose trunk ``name`` is stored by reference (zero heads of the right shapes)."""
    from multihead.model.heads import MultiHeadModel

    preprocessing = Preprocessing(image_size=224)
    with torch.device("meta"):
        trunk = multihead.create_trunk(name, weights=None)
        skeleton = MultiHeadModel(trunk, multihead.MULTI_CANCER, preprocessing=preprocessing)
    heads = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in skeleton.state_dict().items()
             if not k.startswith("trunk.")}
    spec = {"name": name, "source": source, "weights_id": weights_id, "fingerprint": "0" * 64,
            "num_features": trunk.num_features, "stages": [], "embedded": False, "stored_dtype": "float32"}
    save_file(heads, str(path), metadata={
        "format": "multihead", "format_version": "3", "taxonomy": multihead.MULTI_CANCER.to_json(),
        "trunk": json.dumps(spec), "preprocessing": preprocessing.to_json(), "joint": "hierarchical",
        "heads_sha256": fingerprint_state_dict(heads), "metadata": "{}"})
    return path


@pytest.fixture
def built_for_real(monkeypatch):
    """Every trunk ``load`` builds off the meta device, recorded."""
    real, built = checkpoint_module.create_trunk, []

    def spy(name, **kwargs):
        if torch.empty(0).device.type != "meta":
            built.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(checkpoint_module, "create_trunk", spy)
    return built


def test_a_referenced_trunk_that_is_not_here_is_named_not_downloaded(tmp_path, built_for_real, monkeypatch):
    """A 2.8 MB file naming torchvision's ViT-H/14 (632 million parameters) by reference: before, 2.5 GB were built
    and the internet tried; now one sentence names the file to provide, and nothing is built or fetched."""
    import torchvision

    weights_id = "ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1"
    fetched = []
    monkeypatch.setattr(torchvision.models.ViT_H_14_Weights, "get_state_dict",
                        lambda self, **kwargs: fetched.append(str(self)) or {})
    monkeypatch.setattr(checkpoint_module, "machine_memory", lambda: 64 * 2**30)  # under the memory limit here
    path = _referenced(tmp_path / "vit.safetensors", "vit_h_14", weights_id=weights_id)
    assert path.stat().st_size < 4 * 2**20
    url = torchvision.models.get_weight(weights_id).url
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    with pytest.raises(CheckpointError) as caught:
        multihead.load(path)
    assert str(caught.value) == (
        f"{path}: its trunk is stored by reference, not embedded, and loading never downloads: the published weights "
        f"{weights_id} of trunk 'vit_h_14' are not on this machine: copy {target.name} (from {url}) to {target}")
    assert built_for_real == [] and fetched == []
    result = runner.invoke(app, ["classify", "--model", str(path), str(sorted(EXAMPLES.glob("*.jpg"))[0])])
    assert_handled_exit(result, 1, f"copy {target.name} (from {url}) to")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("memory_gib", [16, 64])
def test_a_referenced_timm_trunk_is_refused_by_memory_or_named_unbuilt(tmp_path, built_for_real, monkeypatch,
                                                                       memory_gib):
    """timm's ConvNeXt-XXLarge (846 million parameters, under the old fixed cap of a billion) by reference: past a
    quarter of the machine's memory it is refused from its size; under it, the Hugging Face file is named."""
    import timm.models

    monkeypatch.setattr(checkpoint_module, "machine_memory", lambda: memory_gib * 2**30)
    hub_id = timm.models.get_pretrained_cfg("convnext_xxlarge").hf_hub_id
    path = _referenced(tmp_path / "convnext.safetensors", "convnext_xxlarge", source="timm",
                       weights_id=f"timm/{hub_id}")
    with pytest.raises(CheckpointError) as caught:
        multihead.load(path)
    message = str(caught.value)
    if memory_gib * 2**30 // 32 < 846_000_000:
        assert f"more than the limit of {trunk_parameter_limit(memory_gib * 2**30):,} (a quarter of this " \
               f"machine's {memory_gib:.1f} GiB of memory, at 8 bytes a parameter to load)" in message
    else:
        assert message.endswith(f"the published weights of timm trunk 'convnext_xxlarge' are not on this machine: "
                                f"put model.safetensors of the Hugging Face repository {hub_id} in its cache "
                                f"(huggingface-cli download {hub_id} model.safetensors)")
    assert built_for_real == []


# --- 7. the header's preprocessing is covered, and sizes are checked against memory -------------------------------

def test_an_edited_preprocessing_is_caught_by_the_header_checksum(saved, tmp_path):
    preprocessing = json.loads(read_header(saved)["preprocessing"].to_json())
    edited = _rewrite(saved, tmp_path / "edited.safetensors",
                      fields={"preprocessing": json.dumps({**preprocessing, "image_size": 128})})
    with pytest.raises(CheckpointError, match=r"its header \(taxonomy, trunk, preprocessing or joint rule\) does not "
                                              r"match the checksum saved with it \(header_sha256\)"):
        multihead.load(edited)
    taxonomy = json.loads(multihead.MULTI_CANCER.to_json())
    taxonomy["organs"][0]["display_name"] = "Something else"
    renamed = _rewrite(saved, tmp_path / "renamed.safetensors", fields={"taxonomy": json.dumps(taxonomy)})
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        multihead.load(renamed)
    assert multihead.load(saved).preprocessing.image_size == 64  # the file as saved loads


def test_an_input_size_beyond_the_memory_budget_is_refused_at_loading(saved, tmp_path):
    """A header without a checksum (as every file before issue 36) asking for 4096 px: over 6 GB for one image
    through the bundled model before; now refused from its size, before anything is built for real."""
    preprocessing = json.loads(read_header(saved)["preprocessing"].to_json())
    big = _rewrite(saved, tmp_path / "big.safetensors", drop=("header_sha256",),
                   fields={"preprocessing": json.dumps({**preprocessing, "image_size": 4096})})
    needed = image_memory("resnet18", 4096)
    assert needed > MEMORY_BUDGET
    with pytest.raises(CheckpointError) as caught:
        multihead.load(big)
    assert str(caught.value) == (
        f"{big}: its preprocessing asks for 4096x4096 px inputs, which would take about {needed / 2**30:.1f} GiB per "
        f"image through trunk 'resnet18', more than the memory budget of {MEMORY_BUDGET / 2**30:.1f} GiB; pass "
        "memory_budget=None if the file is trusted")
    assert multihead.load(big, memory_budget=None).preprocessing.image_size == 4096  # a trusted file still loads


def test_the_bundled_model_with_a_4096_px_header_is_refused(tmp_path):
    from multihead.model.locate import default_model_path

    bundled = default_model_path()
    if bundled is None:
        pytest.skip("this installation has no bundled model")
    preprocessing = json.loads(read_header(bundled)["preprocessing"].to_json())
    edited = _rewrite(bundled, tmp_path / "bundled-4096.safetensors",
                      fields={"preprocessing": json.dumps({**preprocessing, "image_size": 4096})})
    with pytest.raises(CheckpointError, match="does not match the checksum|more than the memory budget"):
        multihead.load(edited)


def test_a_damaged_header_checksum_is_damaged_metadata(saved, tmp_path):
    bad = _rewrite(saved, tmp_path / "bad.safetensors", fields={"header_sha256": "not a checksum"})
    with pytest.raises(CheckpointError, match="damaged metadata: 'header_sha256' must be 64 hexadecimal digits"):
        read_header(bad)


# --- 8. FIFOs and /dev/zero in folders ---------------------------------------------------------------------------

@pytest.fixture
def hostile_data(tmp_path, sample_dir) -> Path:
    """<organ>/<subtype>/ with real images, a FIFO named like an image and a link to /dev/zero."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    data = tmp_path / "data"
    for subtype in ("all_benign", "all_early"):
        (data / "all" / subtype).mkdir(parents=True)
        for path in sorted((sample_dir / "all" / subtype).iterdir())[:2]:
            shutil.copy(path, data / "all" / subtype / path.name)
    os.mkfifo(data / "all" / "all_benign" / "stuck.png")
    os.symlink("/dev/zero", data / "all" / "all_early" / "zero.jpg")
    return data


def test_extract_skips_fifos_and_devices_with_a_line(saved, hostile_data, tmp_path):
    fifo = hostile_data / "all" / "all_benign" / "stuck.png"
    with time_limit(60):
        result = runner.invoke(app, ["extract", "--model", str(saved), "--cache-dir", str(tmp_path / "cache"),
                                     str(hostile_data), str(fifo)])
    assert_handled_exit(result, 3)
    lines = [line.strip() for line in result.stderr.splitlines() if "not a regular file" in line]
    assert sorted(lines) == sorted([f"{fifo}: is not a regular file", f"{fifo}: is not a regular file",
                                    f"{hostile_data / 'all' / 'all_early' / 'zero.jpg'}: is not a regular file"])
    assert "cached 4 of 7 files" in result.stdout


def test_evaluate_skips_fifos_and_devices_with_a_line(saved, hostile_data, tmp_path):
    with time_limit(60):
        result = runner.invoke(app, ["evaluate", str(saved), str(hostile_data), "--report", str(tmp_path / "report"),
                                     "--cache-dir", str(tmp_path / "cache")])
    assert_handled_exit(result, 3)
    stderr = " ".join(result.stderr.split())
    for relpath in ("all/all_benign/stuck.png", "all/all_early/zero.jpg"):
        assert f"skipped {relpath}: not a regular file (a FIFO, a device or a broken link): not read" in stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n_images"] == 4 and len(report["skipped"]) == 2


def test_train_skips_fifos_and_devices_with_a_line(hostile_data, sample_dir, tmp_path):
    for subtype in ("all_pre", "all_pro"):  # enough images for a split
        (hostile_data / "all" / subtype).mkdir()
        for path in sorted((sample_dir / "all" / subtype).iterdir())[:2]:
            shutil.copy(path, hostile_data / "all" / subtype / path.name)
    with time_limit(120):
        result = runner.invoke(app, ["train", str(hostile_data), "--out", str(tmp_path / "m.safetensors"),
                                     "--trunk-weights", "none", "--image-size", "64", "--epochs", "1", "--views",
                                     "identity", "--cache-dir", str(tmp_path / "cache")])
    assert_handled_exit(result, 0)
    stderr = " ".join(result.stderr.split())
    assert "skipped 2 unreadable files:" in stderr
    for relpath in ("all/all_benign/stuck.png", "all/all_early/zero.jpg"):
        assert f"{relpath}: not a regular file (a FIFO, a device or a broken link): not read" in stderr


# --- 9 and 10. damaged and hostile trust metadata -------------------------------------------------------------------

TRUST = {
    "coverage": {"min_images": 50, "covered": ["all"], "organs": {"all": 60}, "subtypes": {"all_benign": 15}},
    "ood": {"score": "nearest_neighbour", "components": 64, "features_read": 512, "threshold": 0.25, "tpr": 0.99,
            "fitted_on": 60, "threshold_from": "val"},
    "selective": {"router_threshold": 0.5, "subtype_thresholds": {"all": 0.9}, "target_accuracy": 0.99,
                  "confidence_level": 0.95, "rules": {"router": "confidence_bound", "subtype": {"all": "given"}},
                  "images_to_certify": 299, "min_images": 10, "n": 20, "coverage": 0.5, "organ_only_fraction": 0.3,
                  "uncertain_fraction": 0.2},
}
CALIBRATION = {"heads": {"all": 1.2}, "router": 1.1, "skipped": {"brain": "4 validation images, fewer than 30"}}


def test_well_formed_trust_metadata_is_shown(saved, tmp_path):
    good = _rewrite(saved, tmp_path / "good.safetensors", metadata={"trust": TRUST, "calibration": CALIBRATION})
    result = runner.invoke(app, ["info", str(good)], env={"COLUMNS": "200"})
    assert_handled_exit(result, 0)
    assert "distance to the nearest of 60 training images" in result.stdout
    assert "skipped brain (T=1): 4 validation images, fewer than 30" in result.stdout


DAMAGED = {
    "ood a list": ({"trust": {**TRUST, "ood": [1, 2]}}, ["'metadata.trust.ood' must be an object, got a list"]),
    "selective a string": ({"trust": {**TRUST, "selective": "high"}},
                           ["'metadata.trust.selective' must be an object, got a string"]),
    "skipped a list": ({"calibration": {**CALIBRATION, "skipped": ["brain"]}},
                       ["'metadata.calibration.skipped' must be an object, got a list"]),
    "all three": ({"trust": {**TRUST, "ood": [1], "selective": "high"}, "calibration": {**CALIBRATION, "skipped": []}},
                  ["'metadata.calibration.skipped' must be an object, got a list",
                   "'metadata.trust.ood' must be an object, got a list",
                   "'metadata.trust.selective' must be an object, got a string"]),
    "numbers as text": ({"trust": {**TRUST, "ood": {**TRUST["ood"], "threshold": "low"},
                                   "selective": {**TRUST["selective"], "router_threshold": None}}},
                        ["'metadata.trust.ood.threshold' must be a number, got a string",
                         "'metadata.trust.selective.router_threshold' must be a number, got null"]),
    "deeper": ({"trust": {**TRUST, "coverage": {**TRUST["coverage"], "covered": "all", "organs": {"all": "many"}},
                          "selective": {**TRUST["selective"], "rules": {"subtype": ["given"]},
                                        "subtype_thresholds": {"all": "0.9"}}},
                "calibration": {**CALIBRATION, "heads": [1.0]}},
               ["'metadata.calibration.heads' must be an object, got a list",
                "'metadata.trust.coverage.covered' must be a list, got a string",
                "'metadata.trust.coverage.organs.all' must be an integer, got a string",
                "'metadata.trust.selective.subtype_thresholds.all' must be a number, got a string",
                "'metadata.trust.selective.rules.subtype' must be an object or a string, got a list"]),
    "missing": ({"trust": {**TRUST, "selective": {"n": 3}}},
                ["'metadata.trust.selective.router_threshold' is missing",
                 "'metadata.trust.selective.target_accuracy' is missing",
                 "'metadata.trust.selective.subtype_thresholds' is missing"]),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_info_names_every_damaged_trust_field_in_one_line(saved, tmp_path, case):
    change, sentences = DAMAGED[case]
    bad = _rewrite(saved, tmp_path / "bad.safetensors", metadata=change)
    result = runner.invoke(app, ["info", str(bad)], env={"COLUMNS": "400"})
    assert_handled_exit(result, 1, *sentences)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert " ".join(result.stderr.split()).count("'metadata.") == len(sentences)


OSC52 = "\x1b]52;c;ZWNobyBwd25lZA==\x07"  # writes "echo pwned" to the clipboard
CLEAR = "\x1b[2J\x1b[H"


def test_terminal_escapes_in_trust_strings_never_reach_the_terminal(saved, tmp_path):
    hostile = _rewrite(saved, tmp_path / "hostile.safetensors", metadata={
        "calibration": {**CALIBRATION, "skipped": {f"brain{OSC52}": f"{CLEAR}few images{OSC52}"}},
        "trust": {**TRUST, "ood": {**TRUST["ood"], "threshold_from": f"val{OSC52}", "score": "nearest_neighbour"},
                  "coverage": {**TRUST["coverage"], "covered": [f"all{CLEAR}"]}}})
    result = runner.invoke(app, ["info", str(hostile)], env={"COLUMNS": "300"})
    assert_handled_exit(result, 0)
    assert "skipped brain]52;c;ZWNobyBwd25lZA== (T=1)" not in result.stdout  # the sequence is gone, not mangled
    assert "skipped brain (T=1): few images" in result.stdout and "keeps 99% of the val images" in result.stdout
    for code in ("\x1b", "\x07", "\x9b"):
        assert code not in result.output
    fitted_on = _rewrite(saved, tmp_path / "fitted.safetensors",
                         metadata={"trust": {**TRUST, "ood": {**TRUST["ood"], "fitted_on": f"{OSC52}60"}}})
    result = runner.invoke(app, ["info", str(fitted_on)])
    assert_handled_exit(result, 1, "'metadata.trust.ood.fitted_on' must be an integer, got a string")
    assert "\x1b" not in result.output and "\x07" not in result.output


# --- 11. the default batch is chosen from a memory budget ----------------------------------------------------------

def test_the_default_batch_fits_the_memory_budget(tiny_model):
    bundled = Preprocessing(image_size=640)
    model = multihead.create_model("mobilenet_v2", trunk_weights=None, preprocessing=bundled)
    assert InferenceConfig().batch_size is None
    chosen = InferenceConfig().batch_for(model)
    assert chosen == MEMORY_BUDGET // image_memory("mobilenet_v2", 640) and chosen < 64
    assert InferenceConfig(batch_size=3).batch_for(model) == 3  # overridable
    assert InferenceConfig().batch_for(tiny_model) == 64  # small inputs keep the largest batch


def test_classify_and_extract_take_the_memory_batch_unless_told(saved, tmp_path, monkeypatch):
    import multihead.features.extract as extract_module
    import multihead.inference.predict as predict_module

    model = multihead.create_model("resnet18", trunk_weights=None, image_size=640, seed=0)
    sizes = []
    real = extract_module.load_batches

    def spy(*args, batch_size, **kwargs):
        sizes.append(batch_size)
        return real(*args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(extract_module, "load_batches", spy)
    monkeypatch.setattr(predict_module, "load_batches", spy)
    files = sorted(EXAMPLES.glob("*.jpg"))[:2]
    multihead.features.extract_features(model, files, cache_dir=tmp_path / "cache")  # as training extracts
    list(multihead.classify_files(files, model))
    expected = MEMORY_BUDGET // image_memory("resnet18", 640)
    assert sizes == [expected, expected] and expected < 64
    result = runner.invoke(app, ["classify", "--model", str(saved), "--batch-size", "3", str(files[0])])
    assert_handled_exit(result, 0)
    assert sizes[-1] == 3


@pytest.mark.slow  # the bundled model on 32 images, in a process of its own
def test_classify_of_many_images_stays_under_2_5_gb(tmp_path):
    """``classify`` of 64 small images at the defaults peaked at 6.9 GB (batches of 64 at 640 px)."""
    from multihead.model.locate import default_model_path

    if default_model_path() is None:
        pytest.skip("this installation has no bundled model")
    folder = tmp_path / "images"
    folder.mkdir()
    examples = sorted(EXAMPLES.glob("*.jpg"))
    for index in range(32):
        shutil.copy(examples[index % len(examples)], folder / f"{index:02d}.jpg")
    # VmHWM, not ru_maxrss: Linux keeps a process's ru_maxrss across exec, so a child started from a big pytest
    # process would report the parent's size at the fork
    code = ("import re, sys\n"
            "from multihead.inference.predict import classify_files\n"
            "results = list(classify_files(sorted(__import__('pathlib').Path(sys.argv[1]).iterdir())))\n"
            "assert all(r.error is None for r in results) and len(results) == 32\n"
            "status = open('/proc/self/status').read()\n"
            "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) // 1024)\n")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) < 2500, f"peak {done.stdout.split()[-1]} MB"


# --- 12. NaN and infinite weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [
    ("trunk.fc.weight", float("nan")),  # resnet18's last layer is dropped: use a real one below
    ("ood.threshold", float("nan")),
    ("router.weight", float("inf")),
    ("thresholds.subtype", float("-inf")),
])
def test_nan_or_infinite_tensors_are_refused_at_loading(saved, tmp_path, key, value):
    state = load_file(str(saved))
    if key == "trunk.fc.weight":
        key = "trunk.layer4.1.conv2.weight"
    tensor = state[key].clone()
    tensor.view(-1)[0] = value
    bad = _rewrite(saved, tmp_path / "bad.safetensors", tensors={key: tensor}, resign=True)
    read_header(bad)  # a well-formed file, every checksum right
    with pytest.raises(CheckpointError) as caught:
        multihead.load(bad)
    assert str(caught.value) == (f"{bad}: {key} holds NaN or infinite values, which no trained model has; the file "
                                 "is damaged")


def test_infinity_where_it_means_something_still_loads(saved, tmp_path):
    """+inf is an unfitted out-of-distribution threshold, or an organ whose subtypes are withheld."""
    state = load_file(str(saved))
    withheld = state["thresholds.subtype"].clone()
    withheld[1] = float("inf")
    good = _rewrite(saved, tmp_path / "inf.safetensors", resign=True,
                    tensors={"ood.threshold": torch.tensor(float("inf")), "thresholds.subtype": withheld})
    loaded = multihead.load(good)
    assert torch.equal(loaded.thresholds.subtype, withheld) and not loaded.ood.fitted


# --- 13. saved models follow the umask ------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_saved_files_follow_the_umask(tiny_model, tmp_path, umask):
    from multihead.features.cache import FeatureCache

    previous = os.umask(umask)
    try:
        multihead.save(tiny_model, tmp_path / "m.safetensors")
        cache = FeatureCache(tmp_path / "cache", tiny_model, InferenceConfig())
        cache.add({f"{'0' * 64}/identity": torch.zeros(tiny_model.num_features)})
        shard = next(cache.directory.glob("*.safetensors"))
    finally:
        os.umask(previous)
    for path in (tmp_path / "m.safetensors", shard):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# --- 14. tampered feature and map caches -----------------------------------------------------------------------------

def _one_shard(folder: Path, pattern: str) -> Path:
    shards = sorted(folder.rglob(pattern))
    assert len(shards) == 1, shards
    return shards[0]


@pytest.mark.parametrize("tamper", ["huge", "width", "nan"])
def test_a_tampered_feature_shard_is_rebuilt(tiny_model, real_images, tmp_path, tamper, caplog):
    from multihead.features import extract_features

    files = real_images[:3]
    cache = tmp_path / "cache"
    features, ok, _ = extract_features(tiny_model, files, cache_dir=cache)
    shard = _one_shard(cache, "*.safetensors")
    with safe_open(str(shard), "pt") as reader:
        metadata = reader.metadata()
    state = load_file(str(shard))
    key = sorted(state)[0]
    state[key] = {"huge": state[key] * 0 + 1e30, "width": state[key][:100].clone(),
                  "nan": state[key] * float("nan")}[tamper]
    save_file(state, str(shard), metadata=metadata)
    again, ok_again, failures = extract_features(tiny_model, files, cache_dir=cache)
    assert ok_again == ok and failures == []
    torch.testing.assert_close(again, features)  # extracted again, not read back tampered
    assert "damaged feature cache shard" in caplog.text
    assert load_file(str(_one_shard(cache, "*.safetensors")))[key].shape == (tiny_model.num_features,)


@pytest.mark.parametrize("tamper", ["nan", "huge", "width"])
def test_a_tampered_map_shard_is_rebuilt(tmp_path, sample_dir, tamper, caplog):
    from multihead.data import scan_dataset
    from multihead.features.maps import labelled_maps
    from multihead.model.trunk_split import split_trunk

    data = tmp_path / "data"
    (data / "all" / "all_benign").mkdir(parents=True)
    for path in sorted((sample_dir / "all" / "all_benign").iterdir())[:3]:
        shutil.copy(path, data / "all" / "all_benign" / path.name)
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64, trunk_stages="auto", seed=0)
    parts = split_trunk(model.trunk, "auto")
    scan = scan_dataset(data)
    files = [r.relpath for r in scan.records]
    first, _ = labelled_maps(model, parts, scan, files, cache_dir=tmp_path / "cache", backend="torch")
    maps, pooled = first.cache.gather(first.locations)
    stored = _one_shard(tmp_path / "cache", "*.maps.npy")
    array = np.load(stored)
    if tamper == "width":
        array = array[:, :, :-1]
    else:
        array[1, 0, 0, 0] = np.nan if tamper == "nan" else np.inf  # 1e30, written as float16
    np.save(stored, array)
    again, failed = labelled_maps(model, parts, scan, files, cache_dir=tmp_path / "cache", backend="torch")
    assert failed == [] and "damaged map cache shard" in caplog.text
    maps_again, pooled_again = again.cache.gather(again.locations)
    torch.testing.assert_close(maps_again, maps)
    torch.testing.assert_close(pooled_again, pooled)


# --- the reader of stdout leaves early ------------------------------------------------------------------------------

def test_a_reader_that_leaves_early_ends_classify_quietly(tiny_model, real_images, tmp_path):
    """`multihead classify ... --json | head` printed "error: [Errno 32] Broken pipe" and exited 1: the pipe closing
    is no error of the user's. Now nothing is printed and the exit status is 141 (128 + SIGPIPE), as for cat."""
    path = tmp_path / "tiny.safetensors"
    multihead.save(tiny_model, path)
    files = [str(real_images[0])] * 300  # about 300 KB of JSON lines: more than a pipe holds, so writing blocks
    process = subprocess.Popen([sys.executable, "-m", "multihead", "classify", *files, "--model", str(path), "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.read(10) == b'{"source":'
    process.stdout.close()  # the reader leaves
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr
    assert "Broken pipe" not in stderr and "Traceback" not in stderr and "error" not in stderr
