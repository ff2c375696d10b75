"""Post-hoc fitting (multihead/training/posthoc.py) case by case: what each function fits on the model and what its
report says, written against the mutants that survived tests/test_trust.py and tests/test_mutation_core.py
(benchmarks/results/mutation.json). Every model is a fresh copy; the session's ``tiny_model`` is never changed.
"""

from __future__ import annotations

import copy

import pytest
import torch

import multihead
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
