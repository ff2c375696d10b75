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
from multihead.training.posthoc import fit_temperatures

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
