import pytest
import torch

import multihead
from multihead import MULTI_CANCER, Taxonomy


def test_shapes(tiny_model):
    out = tiny_model(torch.randn(3, 3, 64, 64))
    assert out.router_logits.shape == (3, 8)
    assert out.subtype_logits.shape == (3, 26)
    assert out.joint_log_probs.shape == (3, 26)


def test_joint_sums_to_one_and_marginal_is_router_softmax(tiny_model):
    torch.manual_seed(1)
    out = tiny_model.forward_heads(torch.randn(5, tiny_model.num_features) * 3)
    joint = out.joint_probs.double()
    torch.testing.assert_close(joint.sum(1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-5)
    marginal = torch.zeros(5, 8, dtype=torch.float64).index_add_(1, tiny_model.subtype_organ, joint)
    torch.testing.assert_close(marginal, out.router_logits.double().softmax(1), rtol=0, atol=1e-5)


def test_conditional_is_softmax_of_each_head(tiny_model):
    features = torch.randn(4, tiny_model.num_features)
    out = tiny_model.forward_heads(features)
    for index, organ in enumerate(MULTI_CANCER.organs):
        start, size = MULTI_CANCER.head_offsets[index], len(organ.subtypes)
        head_alone = tiny_model.heads[organ.name](features).softmax(1)
        conditional = out.joint_probs[:, start:start + size] / out.router_logits.softmax(1)[:, index:index + 1]
        torch.testing.assert_close(conditional, head_alone, rtol=1e-4, atol=1e-5)


def test_predicted_subtype_belongs_to_predicted_organ(tiny_model):
    torch.manual_seed(2)
    out = tiny_model.forward_heads(torch.randn(64, tiny_model.num_features) * 5)
    organ, subtype = tiny_model.decide(out)
    assert torch.equal(tiny_model.subtype_organ[subtype], organ)
    assert torch.equal(organ, out.router_logits.argmax(1))


def test_state_dict_keys_read_well(tiny_model):
    keys = [k for k in tiny_model.state_dict() if not k.startswith("trunk.")]
    assert "router.weight" in keys and "heads.lung_colon.weight" in keys
    assert tiny_model.state_dict()["heads.lung_colon.weight"].shape == (5, 512)


def test_trunk_is_frozen_through_a_training_step():
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=0)
    model.train()
    assert not model.trunk.training and model.router.training
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    optimizer = torch.optim.Adam(model.head_parameters(), lr=1e-2)
    out = model(torch.randn(4, 3, 64, 64) * 3 + 1)  # BatchNorm would move its running stats in train mode
    loss = torch.nn.functional.cross_entropy(out.router_logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.trunk.parameters())
    assert not any(p.requires_grad for p in model.trunk.parameters())
    for key, value in model.trunk.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.router.weight.grad is not None


def test_unavailable_organs_get_zero_probability(tiny_model):
    model = multihead.create_model(tiny_model.trunk, taxonomy=MULTI_CANCER, seed=0)
    model.set_available_organs(["all", "brain"])
    out = model.forward_heads(torch.randn(8, model.num_features))
    organ, _ = model.decide(out)
    assert set(organ.tolist()) <= {0, 1}
    cervix = slice(MULTI_CANCER.head_offsets[3], MULTI_CANCER.head_offsets[3] + 5)
    assert out.joint_probs[:, cervix].sum() == 0
    torch.testing.assert_close(out.joint_probs.sum(1), torch.ones(8))


def test_custom_taxonomy_sizes_heads(tiny_model):
    tax = Taxonomy.from_dict({"skin": ["mel", "nevus", "bcc"], "eye": ["dr", "normal"]})
    model = multihead.create_model(tiny_model.trunk, taxonomy=tax)
    out = model.forward_heads(torch.randn(2, model.num_features))
    assert out.router_logits.shape == (2, 2) and out.joint_probs.shape == (2, 5)


def test_create_model_rejects_a_non_taxonomy():
    with pytest.raises(TypeError, match="Taxonomy"):
        multihead.create_model(trunk_weights=None, taxonomy={"a": ["b"]})
