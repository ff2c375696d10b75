import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import multihead
from multihead.inference import run_batch
from multihead.model.checkpoint import CheckpointError, read_header


def _batch(seed=0, size=64, n=4):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_round_trip_gives_identical_probabilities(tiny_model, tmp_path):
    path = tmp_path / "model.safetensors"
    model = multihead.create_model(tiny_model.trunk, image_size=64, seed=0)  # the session's model stays as it is
    model.metadata = {"training": {"epochs": 1}}
    multihead.save(model, path)
    loaded = multihead.load(path)
    assert loaded.taxonomy == model.taxonomy
    assert loaded.preprocessing == model.preprocessing
    assert loaded.metadata == {"training": {"epochs": 1}}
    batch = _batch()
    assert torch.equal(run_batch(model, batch).joint_probs, run_batch(loaded, batch).joint_probs)
    header = read_header(path)
    assert header["trunk"]["embedded"] is True and header["trunk"]["fingerprint"] == tiny_model.trunk.fingerprint
    assert tiny_model.metadata == {}


def test_available_organs_survive_the_round_trip(tiny_model, tmp_path):
    model = multihead.create_model(tiny_model.trunk, image_size=64, seed=0)
    model.set_available_organs(["brain", "lymphoma"])
    multihead.save(model, tmp_path / "m.safetensors")
    assert multihead.load(tmp_path / "m.safetensors").available_organs == ("brain", "lymphoma")


def test_half_precision_trunk_is_smaller_and_verified(tiny_model, tmp_path):
    multihead.save(tiny_model, tmp_path / "fp32.safetensors")
    multihead.save(tiny_model, tmp_path / "fp16.safetensors", trunk_dtype="float16")
    assert (tmp_path / "fp16.safetensors").stat().st_size < 0.6 * (tmp_path / "fp32.safetensors").stat().st_size
    loaded = multihead.load(tmp_path / "fp16.safetensors")
    assert loaded.trunk.network.conv1.weight.dtype == torch.float32


def test_write_is_atomic(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    multihead.save(tiny_model, path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("multihead.model.checkpoint.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        multihead.save(tiny_model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_not_a_safetensors_file(tmp_path):
    (tmp_path / "x.safetensors").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        multihead.load(tmp_path / "x.safetensors")


def test_truncated_file(tiny_model, tmp_path):
    multihead.save(tiny_model, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        multihead.load(tmp_path / "cut.safetensors")


def _rewrite(src, dst, *, metadata_update=None, tensors_update=None, drop=()):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as reader:
        metadata = dict(reader.metadata())
    tensors = {k: v for k, v in load_file(str(src)).items() if k not in drop}
    metadata.update(metadata_update or {})
    tensors.update(tensors_update or {})
    save_file(tensors, str(dst), metadata=metadata)


def test_newer_format_version(tiny_model, tmp_path):
    multihead.save(tiny_model, tmp_path / "m.safetensors")
    _rewrite(tmp_path / "m.safetensors", tmp_path / "new.safetensors", metadata_update={"format_version": "99"})
    with pytest.raises(CheckpointError, match="upgrade multihead"):
        multihead.load(tmp_path / "new.safetensors")


def test_taxonomy_that_does_not_match_heads(tiny_model, tmp_path):
    multihead.save(tiny_model, tmp_path / "m.safetensors")
    header = json.loads(multihead.MULTI_CANCER.to_json())
    header["organs"][0]["subtypes"].append({"name": "all_extra", "display_name": "x"})
    _rewrite(tmp_path / "m.safetensors", tmp_path / "bad.safetensors", metadata_update={"taxonomy": json.dumps(header)})
    with pytest.raises(CheckpointError, match=r"heads\.all\.weight has shape \(4, 512\)"):
        multihead.load(tmp_path / "bad.safetensors")


def test_trunk_fingerprint_mismatch(tiny_model, tmp_path):
    multihead.save(tiny_model, tmp_path / "m.safetensors")
    conv = tiny_model.trunk.network.conv1.weight.detach().contiguous() + 1  # channels_last after a torch run
    _rewrite(tmp_path / "m.safetensors", tmp_path / "bad.safetensors", tensors_update={"trunk.conv1.weight": conv})
    with pytest.raises(CheckpointError, match="fingerprint"):
        multihead.load(tmp_path / "bad.safetensors")


def test_missing_tensor_is_named(tiny_model, tmp_path):
    multihead.save(tiny_model, tmp_path / "m.safetensors")
    _rewrite(tmp_path / "m.safetensors", tmp_path / "bad.safetensors", drop=("heads.oral.bias",))
    with pytest.raises(CheckpointError, match=r"heads\.oral\.bias"):
        multihead.load(tmp_path / "bad.safetensors")


def test_foreign_safetensors_file(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a multihead checkpoint"):
        multihead.load(tmp_path / "other.safetensors")


def test_referenced_trunk_is_not_embedded(tiny_model, tmp_path, monkeypatch):
    """A trunk with a published weights id is stored by reference; loading reads it by that id from torch's hub
    cache (never from the network)."""
    trunk = multihead.create_trunk("resnet18", weights=None)
    trunk.weights_id = "ResNet18_Weights.IMAGENET1K_V1"
    model = multihead.create_model(trunk, seed=0)
    multihead.save(model, tmp_path / "ref.safetensors")
    header = read_header(tmp_path / "ref.safetensors")
    assert header["trunk"]["embedded"] is False
    assert not any(k.startswith("trunk.") for k in header["keys"])
    # Loading resolves the id through torchvision to the file torch's hub cache holds: put this trunk's weights there.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    (tmp_path / "torch-home" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({**trunk.network.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)},
               tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    loaded = multihead.load(tmp_path / "ref.safetensors")
    assert loaded.trunk.fingerprint == trunk.fingerprint


def test_a_changed_head_tensor_is_detected(tiny_model, tmp_path):
    multihead.save(tiny_model, tmp_path / "m.safetensors")
    weight = tiny_model.heads["brain"].weight.detach().clone()
    weight[0, 0] += 0.5
    _rewrite(tmp_path / "m.safetensors", tmp_path / "bad.safetensors", tensors_update={"heads.brain.weight": weight})
    with pytest.raises(CheckpointError, match="checksum"):
        multihead.load(tmp_path / "bad.safetensors")
