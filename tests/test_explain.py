"""Grad-CAM on the shared trunk: the layer is found for any architecture, maps are sane, nothing changes."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.evaluation.plots import plot_explanation
from multihead.inference.explain import explain, find_target_layer, grad_cam

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    picture = np.zeros((80, 96, 3), np.uint8) + 40
    picture[20:50, 30:70] = rng.integers(100, 256, (30, 40, 3))
    return picture


def test_target_layer_is_found_generically(tiny_model):
    assert find_target_layer(tiny_model)[0] == "layer4"
    mobile = multihead.create_model("mobilenet_v2", trunk_weights=None, image_size=64, seed=0)
    assert find_target_layer(mobile)[0] == "features"


def test_maps_are_normalised_and_the_model_is_left_alone(tiny_model, image):
    before = multihead.classify(image, model=tiny_model)
    explanation = explain(image, model=tiny_model)
    size = tiny_model.preprocessing.image_size
    assert explanation.image.shape == (size, size, 3) and explanation.image.dtype == np.uint8
    for heat in (explanation.organ_map, explanation.subtype_map):
        assert heat.shape == (size, size) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6
    assert explanation.layer == "layer4"
    assert explanation.prediction.subtype == before.subtype
    assert not any(p.requires_grad or p.grad is not None for p in tiny_model.trunk.parameters())
    assert all(p.grad is None for p in tiny_model.head_parameters())
    assert multihead.classify(image, model=tiny_model).probabilities == before.probabilities
    assert not tiny_model.trunk.network.layer4._forward_hooks  # the hook is gone


def test_organ_and_subtype_maps_answer_different_questions(tiny_model, image):
    batch = tiny_model.preprocessing.load(image).unsqueeze(0)
    organ_map, subtype_map, _ = grad_cam(tiny_model, batch, organ=0, subtype=5)
    assert not np.allclose(organ_map, subtype_map)
    with pytest.raises(ValueError, match="one uint8 image"):
        grad_cam(tiny_model, torch.zeros(2, 3, 64, 64, dtype=torch.uint8), 0, 0)


def test_plot_and_cli_write_the_figure(tiny_model, image, tmp_path):
    figure = plot_explanation(explain(image, model=tiny_model))
    assert len(figure.axes) == 3
    path = tmp_path / "in.png"
    Image.fromarray(image).save(path)
    checkpoint = tmp_path / "m.safetensors"
    multihead.save(tiny_model, checkpoint)
    out = tmp_path / "figures" / "cam.png"
    result = runner.invoke(app, ["explain", str(path), "--model", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] > Image.open(out).size[1]  # three panels side by side
    missing = runner.invoke(app, ["explain", str(tmp_path / "nope.png"), "--model", str(checkpoint), "--out",
                                  str(out)])
    assert missing.exit_code == 2
