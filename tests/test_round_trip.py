"""Everything a checkpoint holds comes back: the flat joint rule, fitted temperatures, abstention thresholds and
the out-of-distribution score, pooled trunk stages, and the metadata (compared with a fresh literal, not with
the object it was written from). Each model is built here; the session's ``tiny_model`` is never changed."""

from __future__ import annotations

import json

import pytest
import torch

import multihead
from multihead.features import FeatureSet
from multihead.inference import run_batch
from multihead.model.checkpoint import read_header
from multihead.training import TrainConfig, fit_heads
from multihead.training.posthoc import fit_temperatures, fit_trust

SUBTYPES = (0, 1, 4, 5, 21, 22)  # all_benign, all_early, brain_glioma, brain_menin, lymph_cll, lymph_fl


def _features(model, *, n_per_class: int, seed: int, noise: float = 0.5) -> FeatureSet:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(26, model.num_features, generator=torch.Generator().manual_seed(0)) * 2
    labels = torch.tensor(SUBTYPES).repeat_interleave(n_per_class)
    features = centers[labels] + noise * torch.randn(len(labels), model.num_features, generator=generator)
    organs = torch.tensor([multihead.MULTI_CANCER.subtype_organ_indices[s] for s in labels.tolist()])
    return FeatureSet(features[:, None], organs, labels, [f"f{i}" for i in range(len(labels))], ("identity",))


def _model(tiny_model, **options) -> multihead.MultiHeadModel:
    return multihead.create_model(tiny_model.trunk, image_size=64, seed=0, **options).eval()


def _batch(n=6):
    return torch.randint(0, 256, (n, 3, 64, 64), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


def _same_predictions(a, b):
    batch = _batch()
    out_a, out_b = run_batch(a, batch), run_batch(b, batch)
    torch.testing.assert_close(out_a.joint_probs, out_b.joint_probs, rtol=0, atol=0)
    torch.testing.assert_close(out_a.router_logits, out_b.router_logits, rtol=0, atol=0)


@pytest.fixture(scope="module")
def calibrated(tiny_model):
    """Trained on three organs, temperatures, thresholds and the OOD score fitted, metadata set."""
    model = _model(tiny_model)
    train = _features(model, n_per_class=20, seed=1)
    val = _features(model, n_per_class=40, seed=2, noise=8.0)  # noisy enough for router mistakes (93 % right)
    fit_heads(model, train, None, TrainConfig(epochs=20, lr=1e-2, views="identity", seed=0))
    temperatures = fit_temperatures(model, val)
    trust = fit_trust(model, train, val, target_accuracy=0.9)
    model.metadata = {"training": {"epochs": 20}, "trust": {"target": 0.9}}
    return model, temperatures, trust, val


def test_a_calibrated_model_comes_back_whole(calibrated, tmp_path):
    model, temperatures, trust, val = calibrated
    assert temperatures["router"] > 1.5  # fitted: the over-confident router is softened
    assert model.thresholds.fitted and model.ood.fitted
    multihead.save(model, tmp_path / "m.safetensors")
    loaded = multihead.load(tmp_path / "m.safetensors")
    assert loaded.metadata == {"training": {"epochs": 20}, "trust": {"target": 0.9}}
    assert loaded.available_organs == ("all", "brain", "lymphoma")
    torch.testing.assert_close(loaded.temperature.logit_scale, model.temperature.logit_scale, rtol=0, atol=0)
    assert float(loaded.thresholds.router) == trust["selective"]["router_threshold"] > 0
    assert torch.equal(loaded.thresholds.subtype, model.thresholds.subtype)
    assert torch.equal(loaded.organ_covered, model.organ_covered)
    assert float(loaded.ood.threshold) == trust["ood"]["threshold"]
    for name, tensor in model.ood.state_dict().items():
        torch.testing.assert_close(loaded.ood.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    _same_predictions(model, loaded)
    features = val.features[:, 0]
    torch.testing.assert_close(loaded.ood_score(features), model.ood_score(features), rtol=0, atol=0)
    statuses = [p.status for p in multihead.classify(list(_batch()), model=loaded)]
    assert statuses == [p.status for p in multihead.classify(list(_batch()), model=model)]


def test_dropping_the_calibration_is_noticed(calibrated, tmp_path):
    """The round trip above has teeth: an uncalibrated copy of the same heads predicts differently."""
    model, *_ = calibrated
    plain = multihead.create_model(model.trunk, image_size=64, seed=0).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("temperature.", "ood."))},
                          strict=False)
    with pytest.raises(AssertionError):
        _same_predictions(model, plain)


def test_a_flat_joint_model_comes_back_flat(tiny_model, tmp_path):
    model = _model(tiny_model)
    model.joint = "flat"
    train = _features(model, n_per_class=10, seed=1)
    fit_heads(model, train, None, TrainConfig(method="flat", epochs=5, views="identity", seed=0))
    assert model.joint == "flat"
    multihead.save(model, tmp_path / "flat.safetensors")
    assert read_header(tmp_path / "flat.safetensors")["joint"] == "flat"
    loaded = multihead.load(tmp_path / "flat.safetensors")
    assert loaded.joint == "flat"
    _same_predictions(model, loaded)
    hierarchical = _model(tiny_model)
    hierarchical.load_state_dict(model.state_dict())
    with pytest.raises(AssertionError):  # the same tensors read under the other rule answer differently
        _same_predictions(model, hierarchical)


def test_a_staged_trunk_comes_back_with_its_stages(tiny_model, tmp_path):
    torch.manual_seed(0)
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=0,
                                   trunk_stages=["layer3"]).eval()
    assert model.num_features == 512 + 256
    multihead.save(model, tmp_path / "staged.safetensors")
    loaded = multihead.load(tmp_path / "staged.safetensors")
    assert loaded.trunk.stages == ("layer3",) and loaded.num_features == 768
    assert json.loads(json.dumps(read_header(tmp_path / "staged.safetensors")["trunk"]["stages"])) == ["layer3"]
    _same_predictions(model, loaded)
