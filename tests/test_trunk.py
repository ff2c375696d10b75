import pytest
import torch
from safetensors.torch import save_file

import multihead
from multihead.model.trunk import WeightsUnavailableError, create_trunk


def test_random_trunk_is_frozen_and_reports_features():
    trunk = create_trunk("resnet18", weights=None)
    assert trunk.num_features == 512 and trunk.weights_id is None
    assert not any(p.requires_grad for p in trunk.parameters())
    trunk.train()
    assert not trunk.training
    assert trunk(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_imagenet_without_network_says_where_to_put_the_file():
    with pytest.raises(WeightsUnavailableError, match=r"resnet18-f37072fd\.pth"):
        create_trunk("resnet18", weights="imagenet")


def test_unknown_trunk_and_weights_raise_value_errors():
    with pytest.raises(ValueError, match="unknown trunk"):
        create_trunk("resnet_nonexistent")
    with pytest.raises(ValueError, match="unknown trunk weights"):
        create_trunk("resnet18", weights="NOPE_Weights.X")


def test_local_pth_and_safetensors_files_load(tmp_path):
    source = create_trunk("resnet18", weights=None)
    full = {**source.network.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(full, tmp_path / "r18.pth")
    save_file(dict(source.network.state_dict()), str(tmp_path / "r18.safetensors"))
    for name in ("r18.pth", "r18.safetensors"):
        loaded = create_trunk("resnet18", weights=tmp_path / name)
        assert loaded.fingerprint == source.fingerprint
        assert loaded.weights_id is None  # a local file travels inside checkpoints


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"conv1.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        create_trunk("resnet18", weights=tmp_path / "evil.pth")


def test_weights_that_do_not_fit_are_named(tmp_path):
    save_file({"conv1.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="missing keys"):
        create_trunk("resnet18", weights=tmp_path / "bad.safetensors")


def test_shared_imagenet_mobilenet_loads_offline(mobilenet_weights):
    trunk = create_trunk("mobilenet_v2", weights=mobilenet_weights)
    assert trunk.num_features == 1280
    model = multihead.create_model(trunk)
    assert model(torch.zeros(1, 3, 64, 64)).router_logits.shape == (1, 8)


def test_timm_trunks_work_too():
    trunk = create_trunk("resnet10t", weights=None)
    assert trunk.source == "timm"
    assert trunk(torch.zeros(1, 3, 64, 64)).shape == (1, trunk.num_features)
