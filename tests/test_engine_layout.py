"""Issue 19: the torch CPU path lays out the trunk's weights channels_last as well as the input (as timm's
benchmark does), with the same answers as fp32 eager, and without changing the model in any way but strides."""

import copy
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import multihead
from multihead.inference import InferenceConfig, run_batch, run_features
from multihead.inference.shared_weights import match_weight_layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CL = InferenceConfig(backend="torch", channels_last=True)
EAGER = InferenceConfig(backend="torch", channels_last=False)


@pytest.fixture
def model():
    return multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=0).eval()


def _conv_weights(model):
    return [p for p in model.trunk.parameters() if p.dim() == 4 and p.shape[-1] > 1]


def _images(n=4, size=64):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_the_channels_last_path_lays_out_the_weights_too_and_answers_as_fp32_eager(model):
    reference = copy.deepcopy(model)
    assert all(p.is_contiguous() for p in _conv_weights(model))
    expected = run_batch(reference, _images(), EAGER)
    got = run_batch(model, _images(), CL)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in _conv_weights(model))
    assert all(p.is_contiguous() for p in _conv_weights(reference))  # the eager path leaves them contiguous
    torch.testing.assert_close(got.joint_log_probs, expected.joint_log_probs, rtol=1e-4, atol=1e-5)
    assert torch.equal(model.decide(got)[1], reference.decide(expected)[1])


def test_nothing_but_the_strides_changes(model, tmp_path):
    parameters = {name: p for name, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    requires_grad = {name: p.requires_grad for name, p in parameters.items()}
    fingerprint = model.trunk.fingerprint
    multihead.save(model, tmp_path / "before.safetensors")
    assert match_weight_layout(model, True) and not match_weight_layout(model, True)  # converted once
    assert {name: p for name, p in model.named_parameters()} == parameters  # the same Parameter objects
    assert all(p.requires_grad == requires_grad[name] for name, p in model.named_parameters())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert all(after[k].dtype == v.dtype and after[k].device == v.device for k, v in before.items())
    model.trunk._fingerprint = None
    assert model.trunk.fingerprint == fingerprint
    multihead.save(model, tmp_path / "after.safetensors")
    files = [tmp_path / "before.safetensors", tmp_path / "after.safetensors"]
    headers = [safe_open(str(f), "pt").metadata() for f in files]  # the same header (its key order is not fixed)
    assert headers[0] == headers[1]
    saved = [load_file(str(f)) for f in files]
    assert saved[0].keys() == saved[1].keys() and all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
    assert match_weight_layout(model, False)  # and back, for a call without channels_last
    assert all(p.is_contiguous() for p in _conv_weights(model))


def test_converting_inside_inference_mode_leaves_weights_that_autograd_can_use(model):
    with torch.inference_mode():
        run_features(model, _images(), CL)  # converts here, under the caller's inference_mode
    assert not any(p.is_inference() for p in model.parameters())
    images = model.preprocessing.normalize(_images(2)).requires_grad_(True)
    model.forward_features(images).sum().backward()  # what Grad-CAM needs
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_threads_share_one_model_while_it_is_converted(model):
    expected = run_features(copy.deepcopy(model), _images(), EAGER)
    results, errors = [], []

    def work():
        try:
            results.append(run_features(model, _images(), CL))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for r in results:
        torch.testing.assert_close(r, expected, rtol=1e-4, atol=1e-5)
