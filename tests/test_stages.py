"""Pooled features from earlier trunk stages, and the standardisation folded into the heads."""

import copy
import pickle
import threading

import pytest
import torch

import multihead
from multihead.features import FeatureCache, FeatureSet
from multihead.inference import InferenceConfig
from multihead.model.checkpoint import CheckpointError
from multihead.model.trunk import create_trunk
from multihead.training import TrainConfig, fit_heads
from multihead.training.heads import fold_standardization


def test_auto_stages_append_the_pooled_stage_outputs():
    plain = create_trunk("resnet18", weights=None)
    staged = create_trunk("resnet18", weights=None, stages="auto")
    staged.network.load_state_dict(plain.network.state_dict())
    assert staged.stages == ("layer1", "layer2", "layer3")
    assert staged.num_features == 64 + 128 + 256 + 512
    images = torch.randn(2, 3, 64, 64)
    net = plain.network
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        l1 = net.layer1(x)
        l2 = net.layer2(l1)
        l3 = net.layer3(l2)
        expected = torch.cat([l1.mean((2, 3)), l2.mean((2, 3)), l3.mean((2, 3)), plain(images)], 1)
        got = staged(images)
    torch.testing.assert_close(got, expected)


def test_unknown_stage_names_are_refused():
    with pytest.raises(ValueError, match="no module 'layer9'"):
        create_trunk("resnet18", weights=None, stages=("layer9",))
    with pytest.raises(ValueError, match=r"cannot pool stages \['fc'\]"):
        create_trunk("resnet18", weights=None, stages=("fc",))  # the classifier's place: no feature maps
    with pytest.raises(ValueError, match="no automatic stages for trunk 'vgg11'"):
        create_trunk("vgg11", weights=None, stages="auto")


def test_a_staged_trunk_copies_pickles_and_serves_threads():
    trunk = create_trunk("resnet18", weights=None, stages=("layer2",))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = trunk(images)
        for clone in (copy.deepcopy(trunk), pickle.loads(pickle.dumps(trunk))):
            torch.testing.assert_close(clone(images), reference)
    results: list[torch.Tensor] = []

    def work() -> None:
        with torch.no_grad():
            results.append(trunk(images))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(torch.equal(r, reference) for r in results)


def test_stages_survive_the_checkpoint_and_key_the_cache(tmp_path):
    model = multihead.create_model("resnet18", trunk_weights=None, trunk_stages="auto", image_size=64, seed=0).eval()
    multihead.save(model, tmp_path / "staged.safetensors")
    loaded = multihead.load(tmp_path / "staged.safetensors")
    assert loaded.trunk.stages == model.trunk.stages
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).joint_log_probs, model(images).joint_log_probs)
    plain = multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=0)
    plain.trunk.network.load_state_dict(model.trunk.network.state_dict())
    config = InferenceConfig()
    assert FeatureCache(tmp_path, plain, config).directory != FeatureCache(tmp_path, model, config).directory


def test_damaged_stage_metadata_is_a_checkpoint_error(tiny_model, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    multihead.save(tiny_model, path)
    with safe_open(str(path), framework="pt") as reader:
        metadata, tensors = reader.metadata(), {k: reader.get_tensor(k) for k in reader.keys()}  # noqa: SIM118
    trunk = json.loads(metadata["trunk"])
    trunk["stages"] = "layer1"
    metadata["trunk"] = json.dumps(trunk)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="stages"):
        multihead.load(path)


def test_folding_the_standardisation_keeps_every_output(tiny_model):
    model = copy.deepcopy(tiny_model)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(8, model.num_features, generator=generator) * 50 + 3
    mean, std = features.mean(0), features.std(0)
    with torch.no_grad():
        on_standardized = model.forward_heads((features - mean) / std).joint_log_probs
        fold_standardization(model, mean, std)
        on_raw = model.forward_heads(features).joint_log_probs
    torch.testing.assert_close(on_raw, on_standardized, rtol=1e-4, atol=1e-4)


def test_standardised_training_copes_with_features_on_wildly_different_scales(tiny_model):
    """Stages pool to very different magnitudes; trained on raw features Adam steps too far on the big ones."""
    generator = torch.Generator().manual_seed(0)
    n, dims = 1024, tiny_model.num_features
    subtypes = torch.randint(0, 4, (n,), generator=generator)  # the first organ's four subtypes
    directions = torch.randn(4, dims, generator=generator)
    features = (torch.randn(n, 1, dims, generator=generator) + 0.2 * directions[subtypes][:, None])
    features = features * torch.logspace(-2, 3, dims)
    train = FeatureSet(features[:512], torch.zeros(512, dtype=torch.long), subtypes[:512],
                       [f"{i}.png" for i in range(512)], ("identity",))
    accuracy = {}
    for standardize in (True, False):
        model = copy.deepcopy(tiny_model)
        fit_heads(model, train, None, TrainConfig(epochs=5, standardize=standardize))
        with torch.no_grad():
            _, predicted = model.decide(model.forward_heads(features[512:, 0]))
        accuracy[standardize] = float((predicted == subtypes[512:]).float().mean())
    assert accuracy[True] > 0.9 and accuracy[True] > accuracy[False] + 0.1, accuracy
