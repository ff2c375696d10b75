"""Post-hoc fitting (multihead/training/posthoc.py) case by case: what each function fits on the model and what its
report says, written against the mutants that survived tests/test_trust.py and tests/test_mutation_core.py
(benchmarks/results/mutation.json). Every model is a fresh copy; the session's ``tiny_model`` is never changed.
"""

from __future__ import annotations

import copy

import pytest
import torch

import multihead
from multihead.features import FeatureSet
from multihead.training import TrainConfig, fit_heads
from multihead.training.posthoc import fit_ood, fit_temperatures

from .test_round_trip import _features


@pytest.fixture(scope="module")
def flat_data(tiny_model):
    """A flat-joint model trained on three organs, and validation features noisy enough for mistakes."""
    model = multihead.create_model(tiny_model.trunk, image_size=64, seed=0).eval()
    model.joint = "flat"
    train = _features(model, n_per_class=20, seed=1)
    fit_heads(model, train, None, TrainConfig(method="flat", epochs=20, lr=1e-2, views="identity", seed=0))
    val = _features(model, n_per_class=25, seed=2, noise=8.0)
    return model, val


def test_a_flat_model_gets_one_temperature_for_all_subtypes(flat_data):
    trained, val = flat_data
    model = copy.deepcopy(trained)
    report = fit_temperatures(model, val)
    assert set(report) == {"flat", "skipped"} and report["skipped"] == {}
    flat = report["flat"]
    assert flat != 1.0
    scale = model.temperature.logit_scale
    organs = model.taxonomy.num_organs
    assert torch.equal(scale[:organs], torch.ones(organs))  # the flat model's router is a sum of subtype probabilities
    torch.testing.assert_close(scale[organs:], torch.full((model.taxonomy.num_subtypes,), 1 / flat), rtol=0, atol=0)


def test_an_organ_with_one_training_image_and_no_validation_image_keeps_the_pooled_scale(tiny_model):
    """Oral: one training image (no leave-one-out distance) and no validation image, so its scale stays 1 and the
    report names the rule "pooled"; the organs with validation images name theirs."""
    model = multihead.create_model(tiny_model.trunk, image_size=64, seed=0).eval()
    names = model.taxonomy.organ_names
    model.organ_mask.copy_(torch.tensor([name in ("all", "brain", "lymphoma", "oral") for name in names]))
    train = _features(model, n_per_class=12, seed=1)
    oral = model.taxonomy.subtype_names.index("oral_scc")
    extra = torch.randn(1, 1, model.num_features, generator=torch.Generator().manual_seed(5))
    organ = torch.tensor([names.index("oral")])
    train = FeatureSet(torch.cat([train.features, extra]), torch.cat([train.organs, organ]),
                       torch.cat([train.subtypes, torch.tensor([oral])]), [*train.relpaths, "oral-0"], train.views)
    val = _features(model, n_per_class=15, seed=2)  # 30 validation images an organ: each gets its own scale
    report = fit_ood(model, train, val)
    assert report["scale_rule"] == {"all": "own", "brain": "own", "lymphoma": "own", "oral": "pooled"}
    assert report["organ_scale"]["oral"] == 1.0
    assert all(report["organ_scale"][name] != 1.0 for name in ("all", "brain", "lymphoma"))


@pytest.mark.parametrize(("tuned_from", "read"), [(None, 960), ("layer3", 64 + 128), ("stem", 960)])
def test_fit_ood_reads_what_tuning_left_as_it_was(tuned_from, read):
    """A tuned trunk's score reads the pooled stages below its cut; a frozen one, and a stem-tuned one (nothing
    is left untuned there), read every feature."""
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64, trunk_stages="auto", seed=0)
    if tuned_from is not None:
        model.trunk.mark_tuned(tuned_from)
    report = fit_ood(model, _features(model, n_per_class=6, seed=1), _features(model, n_per_class=4, seed=2))
    assert report["features_read"] == read
    projection = model.ood.projection
    assert projection[:read].abs().sum(dim=1).min() > 0 and not projection[read:].any()
