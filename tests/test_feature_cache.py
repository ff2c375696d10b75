"""The feature cache's key: an edited file is extracted again, other trunk weights, preprocessing, precision
or stages get another cache, a shard written by another model is ignored, and a damaged one is rebuilt."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import multihead
import multihead.features.extract as extract_module
from multihead.data.images import ImageError
from multihead.features import extract_features
from multihead.features.cache import FeatureCache, default_cache_dir, file_digest
from multihead.inference.config import InferenceConfig


def _model(seed: int, **options) -> multihead.MultiHeadModel:
    torch.manual_seed(seed)  # create_model seeds the heads only; random trunk weights come from torch's generator
    return multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=seed, **options).eval()


@pytest.fixture(scope="module")
def model():
    return _model(0)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"image-{index}.png")
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture
def runs(monkeypatch):
    """How many images the trunk ran on since the last ``clear()``."""
    calls: list[int] = []
    original = extract_module.run_features

    def counting(model, batch, config):
        calls.append(len(batch))
        return original(model, batch, config)

    monkeypatch.setattr(extract_module, "run_features", counting)
    return calls


def test_an_edited_file_at_the_same_path_is_extracted_again(model, images, tmp_path, runs):
    cache = tmp_path / "cache"
    first, ok, _ = extract_features(model, images, cache_dir=cache)
    assert ok == [0, 1, 2] and sum(runs) == 3
    runs.clear()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(images[1])  # new bytes, same path
    second, _, _ = extract_features(model, images, cache_dir=cache)
    assert runs == [1]  # only the edited file
    torch.testing.assert_close(second[[0, 2]], first[[0, 2]])
    fresh, _, _ = extract_features(model, [images[1]], cache_dir=tmp_path / "elsewhere")
    torch.testing.assert_close(second[1], fresh[0])
    assert not torch.allclose(second[1], first[1])
    runs.clear()
    images[2].rename(tmp_path / "renamed.png")  # a renamed file is still found
    extract_features(model, [tmp_path / "renamed.png"], cache_dir=cache)
    assert runs == []


def test_new_trunk_weights_give_a_new_cache(model, images, tmp_path, runs):
    other = _model(1)
    assert other.trunk.fingerprint != model.trunk.fingerprint
    cache = tmp_path / "cache"
    mine, _, _ = extract_features(model, images, cache_dir=cache)
    runs.clear()
    theirs, _, _ = extract_features(other, images, cache_dir=cache)
    assert sum(runs) == 3 and not torch.allclose(mine, theirs)
    def folder(m):
        return FeatureCache(cache, m, InferenceConfig()).directory

    assert folder(model) != folder(other) and len(list(cache.iterdir())) == 2
    same = _model(0)  # the same weights built again share the cache
    assert folder(same) == folder(model)
    # loading other weights into a trunk changes its fingerprint, hence its cache
    same.trunk.load_weights(other.trunk.network.state_dict())
    assert folder(same) == folder(other)


def test_a_shard_written_by_another_model_is_ignored(model, images, tmp_path, runs, caplog):
    other = _model(1)
    cache = tmp_path / "cache"
    extract_features(other, images, cache_dir=cache)
    (foreign,) = FeatureCache(cache, other, InferenceConfig()).directory.glob("*.safetensors")
    mine = FeatureCache(cache, model, InferenceConfig()).directory
    mine.mkdir(parents=True)
    (mine / foreign.name).write_bytes(foreign.read_bytes())  # the other model's features under my key
    with caplog.at_level("WARNING", logger="multihead.features.cache"):
        assert FeatureCache(cache, model, InferenceConfig()).entries == {}
    assert caplog.messages == [f"{mine / foreign.name} belongs to other trunk weights or preprocessing; ignored"]
    assert (mine / foreign.name).is_file()  # ignored, not deleted: it is no damage
    runs.clear()
    features, _, _ = extract_features(model, images, cache_dir=cache)
    assert sum(runs) == 3
    expected, _, _ = extract_features(model, images, cache_dir=tmp_path / "clean")
    torch.testing.assert_close(features, expected)


def test_a_damaged_shard_is_removed_and_extracted_again(model, images, tmp_path, runs, caplog):
    cache = tmp_path / "cache"
    first, _, _ = extract_features(model, images, cache_dir=cache, views=("identity", "hflip"))
    (shard,) = FeatureCache(cache, model, InferenceConfig()).directory.glob("*.safetensors")
    shard.write_bytes(shard.read_bytes()[:100])
    runs.clear()
    with caplog.at_level("WARNING", logger="multihead.features.cache"):
        again, _, _ = extract_features(model, images, cache_dir=cache, views=("identity", "hflip"))
    (message,) = caplog.messages
    prefix, suffix = f"damaged feature cache shard {shard} (", "); removed, its entries will be extracted again"
    assert message.startswith(prefix) and message.endswith(suffix)
    assert message[len(prefix):-len(suffix)] not in ("", "None")  # the reader's own error, saying what is wrong
    assert sum(runs) == 6 and torch.allclose(first, again)
    assert len(list(shard.parent.glob("*.safetensors"))) == 1
    runs.clear()
    extract_features(model, images, cache_dir=cache, views=("identity", "hflip"))
    assert runs == []


def test_the_key_is_trunk_preprocessing_precision_and_stages(model, tmp_path):
    cache = FeatureCache(tmp_path, model, InferenceConfig())
    identity = {"trunk": "resnet18", "fingerprint": model.trunk.fingerprint,
                "preprocessing": model.preprocessing.to_json(), "precision": "fp32"}
    assert cache.identity == identity
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    assert cache.directory == tmp_path / f"resnet18-{key}"  # the on-disk layout users' caches are in
    assert FeatureCache(tmp_path, model, InferenceConfig(precision="bf16")).directory != cache.directory
    bigger = multihead.create_model(model.trunk, image_size=96, seed=0)
    assert FeatureCache(tmp_path, bigger, InferenceConfig()).directory != cache.directory
    staged = _model(0, trunk_stages=["layer3"])
    assert FeatureCache(tmp_path, staged, InferenceConfig()).identity == {
        **identity, "fingerprint": staged.trunk.fingerprint, "stages": ["layer3"]}


def test_shards_carry_the_identity_and_a_name_from_their_keys(model, tmp_path):
    cache = FeatureCache(tmp_path, model, InferenceConfig())
    cache.add({})
    assert not cache.directory.exists()
    width = model.num_features  # entries are read back only if they are features of this trunk (issue 36)
    cache.add({"b/identity": torch.ones(width), "a/identity": torch.zeros(width)})
    name = hashlib.sha256(b"a/identityb/identity").hexdigest()[:16]
    shard = cache.directory / f"{name}.safetensors"
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as reader:
        assert json.loads(reader.metadata()["identity"]) == cache.identity
        assert sorted(reader.keys()) == ["a/identity", "b/identity"]
    again = FeatureCache(tmp_path, model, InferenceConfig()).entries
    assert sorted(again) == ["a/identity", "b/identity"] and torch.equal(again["b/identity"], torch.ones(width))
    save_file({"c/identity": torch.ones(width)}, str(cache.directory / "plain.safetensors"))  # no identity at all
    assert sorted(FeatureCache(tmp_path, model, InferenceConfig()).entries) == ["a/identity", "b/identity"]
    assert (cache.directory / "plain.safetensors").is_file()  # another's file, ignored, not removed as damaged
    # a foreign shard read first does not hide the shards after it
    save_file({"d/identity": torch.ones(width)}, str(cache.directory / "0000.safetensors"),
              metadata={"identity": "{}"})
    assert sorted(FeatureCache(tmp_path, model, InferenceConfig()).entries) == ["a/identity", "b/identity"]


def test_file_digest_and_the_default_folder(tmp_path, monkeypatch):
    big = tmp_path / "big.bin"
    data = np.random.default_rng(0).bytes((1 << 20) + 5)  # more than one read block
    big.write_bytes(data)
    assert file_digest(big) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageError, match=r"missing\.png: does not exist$"):
        file_digest(tmp_path / "missing.png")
    if hasattr(os, "mkfifo"):  # a FIFO is refused, not read (reading it would wait for a writer for ever)
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(ImageError, match=r"pipe\.png: is not a regular file$"):
            file_digest(tmp_path / "pipe.png")
    monkeypatch.setenv("MULTIHEAD_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("MULTIHEAD_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "multihead" / "features"
