"""Hand-worked expected values for the core that a silent bug would cost users most: the taxonomy, the
decision (organ, subtype, joint probability, status), and threshold fitting.

Written against the mutants mutmut left alive (benchmarks/results/mutation.json): each test pins a value that
a plausible one-token slip (``>`` for ``>=``, an off-by-one, a dropped argument) would change.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import multihead
from multihead import MULTI_CANCER, Taxonomy
from multihead.model.decision import Status, best_subtype, decide, organ_marginal, statuses, subtype_confidence
from multihead.taxonomy import Organ, Subtype

# --- taxonomy -------------------------------------------------------------------------------------------

SMALL = Taxonomy.from_dict({"lung": ["lung_aca", "lung_bnt"], "skin": ["mel", "nevus", "bcc"], "eye": ["dr"]},
                           name="small")


def test_small_taxonomy_layout_worked_by_hand():
    assert SMALL.organ_names == ("lung", "skin", "eye") and SMALL.num_organs == 3
    assert SMALL.subtype_names == ("lung_aca", "lung_bnt", "mel", "nevus", "bcc", "dr") and len(SMALL) == 6
    assert SMALL.num_subtypes == 6 and SMALL.head_sizes == (2, 3, 1)
    assert SMALL.head_offsets == (0, 2, 5) and SMALL.subtype_organ_indices == (0, 0, 1, 1, 1, 2)
    assert [SMALL.subtype_index(s) for s in ("lung_aca", "bcc", "dr")] == [0, 4, 5]
    assert [SMALL.organ_index(o) for o in ("lung", "skin", "eye")] == [0, 1, 2]
    assert SMALL.organ("skin").subtype_names == ("mel", "nevus", "bcc")
    assert [SMALL.organ_of(s) for s in ("lung_bnt", "mel", "bcc", "dr")] == ["lung", "skin", "skin", "eye"]
    assert repr(SMALL) == "Taxonomy(name='small', organs=3, subtypes=6)"


def test_display_names_default_to_the_name_and_are_found_per_subtype():
    assert Subtype("mel").display_name == "mel" and Subtype("mel", "Melanoma").display_name == "Melanoma"
    organ = Organ("skin", ("mel", Subtype("nevus", "Nevus")))
    assert organ.display_name == "skin" and organ.subtypes == (Subtype("mel"), Subtype("nevus", "Nevus"))
    assert Organ("skin", ("mel",), "Skin").display_name == "Skin"
    tax = Taxonomy((Organ("eye", ("dr",), "Eye"), organ))
    assert [tax.display_name(n) for n in ("eye", "dr", "skin", "mel", "nevus")] == ["Eye", "dr", "skin", "mel", "Nevus"]
    assert MULTI_CANCER.display_name("lung_scc") == "Lung: squamous cell carcinoma"
    with pytest.raises(ValueError, match="unknown subtype 'nope'"):
        tax.display_name("nope")


@pytest.mark.parametrize("name", ["", " a", "a ", "a/b", "a.b", 3, None])
def test_bad_names_are_refused_with_the_name(name):
    with pytest.raises(ValueError, match="subtype name must be a non-empty string"):
        Subtype(name)
    with pytest.raises(ValueError, match="organ name must be"):
        Organ(name, ("x",))


def test_an_organ_and_a_subtype_may_not_share_a_name():
    with pytest.raises(ValueError, match="'skin' appears twice"):
        Taxonomy.from_dict({"skin": ["skin"]})
    with pytest.raises(ValueError, match="'a' appears twice"):
        Taxonomy.from_dict({"a": ["x"], "b": ["a"]})


def test_json_is_stable_and_complete():
    tax = Taxonomy((Organ("eye", (Subtype("dr", "Diabetic"),), "Eye"),), name="eyes")
    assert json.loads(tax.to_json()) == {"name": "eyes", "organs": [
        {"name": "eye", "display_name": "Eye", "subtypes": [{"name": "dr", "display_name": "Diabetic"}]}]}
    assert tax.to_json() == json.dumps(json.loads(tax.to_json()), sort_keys=True, separators=(",", ":"))
    again = Taxonomy.from_json(tax.to_json())
    assert again == tax and again.name == "eyes" and again.organs[0].subtypes[0].display_name == "Diabetic"
    minimal = Taxonomy.from_json('{"organs": [{"name": "eye", "subtypes": [{"name": "dr"}]}]}')
    assert minimal.name == "custom" and minimal.organs[0].display_name == "eye"
    for text in ("not json", '{"organs": [{"subtypes": []}]}', '{"organs": 3}', "[]"):
        with pytest.raises(ValueError, match="not a valid taxonomy JSON"):
            Taxonomy.from_json(text)


def test_fingerprint_is_the_hash_of_the_ordered_layout():
    import hashlib

    expected = hashlib.sha256(json.dumps([["lung", ["lung_aca", "lung_bnt"]], ["skin", ["mel", "nevus", "bcc"]],
                                          ["eye", ["dr"]]]).encode()).hexdigest()
    assert SMALL.fingerprint() == expected
    renamed = Taxonomy.from_dict({"lung": ["lung_aca", "lung_bnt"], "skin": ["mel", "nevus", "bcc"], "eye": ["dr"]},
                                 name="other")
    assert renamed.fingerprint() == expected  # display names and the taxonomy's name are not the layout
    swapped = Taxonomy.from_dict({"skin": ["mel", "nevus", "bcc"], "lung": ["lung_aca", "lung_bnt"], "eye": ["dr"]})
    assert swapped.fingerprint() != expected


def test_unknown_names_name_the_input():
    with pytest.raises(ValueError, match=r"unknown organ 'lungs'; this taxonomy has \['lung', 'skin', 'eye'\]"):
        SMALL.organ("lungs")
    with pytest.raises(ValueError, match=r"unknown subtype 'melanoma'.*'lung_aca'"):
        SMALL.organ_of("melanoma")


# --- decision --------------------------------------------------------------------------------------------

ORGAN_OF = torch.tensor(SMALL.subtype_organ_indices)  # [0, 0, 1, 1, 1, 2]


def test_organ_marginal_sums_each_organs_subtypes():
    joint = torch.tensor([[0.1, 0.2, 0.3, 0.05, 0.05, 0.3], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([[0.3, 0.4, 0.3], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(organ_marginal(joint, ORGAN_OF, 3), expected)
    assert organ_marginal(joint, ORGAN_OF, 4).shape == (2, 4)  # an organ with no subtypes gets zero


def test_decision_takes_the_best_organ_then_its_best_subtype_not_the_best_joint():
    # the single most probable subtype is "dr" (0.35), but skin as a whole (0.45) beats eye (0.35)
    joint = torch.tensor([[0.1, 0.1, 0.15, 0.2, 0.1, 0.35]])
    organ, subtype = decide(joint, ORGAN_OF)
    assert organ.tolist() == [1] and subtype.tolist() == [3]
    # with log-probabilities the organ scores must be given; the argmax inside the organ is the same
    organ, subtype = decide(joint.log(), ORGAN_OF, organ_scores=torch.tensor([[0.0, 0.0, 5.0]]))
    assert organ.tolist() == [2] and subtype.tolist() == [5]
    organ, subtype = decide(joint.log(), ORGAN_OF, organ_scores=torch.tensor([[3.0, 0.0, 1.0]]))
    assert organ.tolist() == [0] and subtype.tolist() in ([0], [1])
    assert best_subtype(joint, torch.tensor([0]), ORGAN_OF).tolist() in ([0], [1])
    assert best_subtype(joint, torch.tensor([1]), ORGAN_OF).tolist() == [3]
    assert best_subtype(torch.tensor([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1]]), torch.tensor([2]), ORGAN_OF).tolist() == [5]


def test_subtype_confidence_is_the_conditional_probability():
    joint = torch.tensor([[0.1, 0.1, 0.15, 0.2, 0.1, 0.35]], dtype=torch.float64)
    organ_prob, conf = subtype_confidence(joint, ORGAN_OF, torch.tensor([1]), torch.tensor([3]))
    torch.testing.assert_close(organ_prob, torch.tensor([0.45], dtype=torch.float64))
    torch.testing.assert_close(conf, torch.tensor([0.2 / 0.45], dtype=torch.float64))
    zero = torch.zeros(1, 6)
    organ_prob, conf = subtype_confidence(zero, ORGAN_OF, torch.tensor([0]), torch.tensor([0]))
    assert organ_prob.item() == 0 and conf.item() == 0  # no division by zero


def test_statuses_at_and_around_the_thresholds():
    organ_prob = torch.tensor([0.5, 0.5, 0.49, 0.9, 0.9])
    conf = torch.tensor([0.8, 0.79, 0.99, 0.8, 0.8])
    ood = torch.tensor([False, False, False, False, True])
    got = statuses(organ_prob, conf, router_threshold=0.5, subtype_threshold=0.8, out_of_distribution=ood)
    assert got == [Status.ORGAN_AND_SUBTYPE, Status.ORGAN_ONLY, Status.UNCERTAIN, Status.ORGAN_AND_SUBTYPE,
                   Status.UNCERTAIN]
    assert statuses(organ_prob, conf, router_threshold=0.5, subtype_threshold=0.8)[4] == Status.ORGAN_AND_SUBTYPE
    assert [str(s) for s in got[:3]] == ["organ_and_subtype", "organ_only", "uncertain"]
    assert json.dumps([s.value for s in got[:2]]) == '["organ_and_subtype", "organ_only"]'


def test_model_decide_uses_the_router_for_the_organ(tiny_model):
    """MultiHeadModel.decide: the organ is the router's argmax, and the subtype the chosen organ's best."""
    out = tiny_model.forward_heads(torch.randn(16, tiny_model.num_features, generator=torch.Generator().manual_seed(1)))
    organ, subtype = tiny_model.decide(out)
    assert torch.equal(organ, out.router_logits.argmax(1))
    joint = out.joint_probs
    for row in range(16):
        members = [i for i, o in enumerate(MULTI_CANCER.subtype_organ_indices) if o == organ[row]]
        assert subtype[row].item() == members[int(joint[row, members].argmax())]
    # the joint is P(organ) * P(subtype | organ): the router's softmax times each head's own softmax
    router = out.router_logits.softmax(1)
    for o in range(MULTI_CANCER.num_organs):
        start, size = MULTI_CANCER.head_offsets[o], MULTI_CANCER.head_sizes[o]
        head = out.subtype_logits[:, start:start + size].softmax(1)
        torch.testing.assert_close(joint[:, start:start + size], router[:, o:o + 1] * head, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(joint.sum(1).detach().numpy(), 1.0, rtol=1e-5)


def test_taxonomy_defaults_and_immutability():
    """Killed mutants (mutation.json): the organs list is stored as a tuple, the default name is "custom",
    a missing subtype display name falls back to the name, and the bundled table's helper keeps every field."""
    from multihead.taxonomy import _organ

    listed = Taxonomy([Organ("eye", ("dr",))])  # a list in, a tuple kept: hashable and immutable
    assert listed.organs == (Organ("eye", ("dr",)),) and isinstance(listed.organs, tuple) and hash(listed)
    assert Taxonomy.from_dict({"eye": ["dr"]}).name == "custom"
    assert Taxonomy.from_dict({"eye": ["dr"]}, name="eyes").name == "eyes"
    plain = Taxonomy.from_json('{"organs": [{"name": "eye", "subtypes": [{"name": "dr"}]}]}')
    assert plain.organs[0].subtypes[0].display_name == "dr"
    assert _organ("eye", "Eye", [("dr", "Diabetic"), ("nr", "Normal")]) == Organ(
        "eye", (Subtype("dr", "Diabetic"), Subtype("nr", "Normal")), "Eye")
    with pytest.raises(ValueError, match=r"^a taxonomy needs at least one organ$"):
        Taxonomy(())


def test_decision_stays_on_the_inputs_device():
    """On the meta device (shapes only), a tensor created on the CPU by mistake cannot mix in: this stands
    in for a GPU, where the same mistake fails (killed mutants: ``device=None`` in organ_marginal, best_subtype)."""
    joint = torch.rand(3, 6, device="meta")
    organ, subtype = decide(joint, ORGAN_OF)
    assert organ.device.type == subtype.device.type == "meta" and organ.shape == subtype.shape == (3,)
    assert organ_marginal(joint, ORGAN_OF, 3).device.type == "meta"


# --- thresholds ------------------------------------------------------------------------------------------

def test_images_to_certify_and_the_safe_threshold_by_hand():
    from multihead.model.thresholds import images_to_certify, largest_safe_threshold

    # (1 - 0.95) ** (1 / n) >= 0.99  <=>  n >= log(0.05) / log(0.99) = 298.07
    assert images_to_certify(0.99, 0.95) == 299 and images_to_certify(0.95, 0.95) == 59
    assert images_to_certify(0.9, 0.5) == 7 and images_to_certify(1.0, 0.95) == 2**62
    assert largest_safe_threshold(np.array([]), np.array([]), 0.9, None) == 0.0
    conf, right = np.array([0.9, 0.8, 0.7]), np.array([1, 1, 0])
    assert largest_safe_threshold(conf, right, 0.99, None) == 0.8
    assert largest_safe_threshold(conf, right, 2 / 3, None) == 0.0  # all three kept: 2 of 3 is enough
    assert largest_safe_threshold(conf[::-1].copy(), right[::-1].copy(), 0.99, None) == 0.8  # input order is free
    # the Clopper-Pearson bound of 40 right out of 40 at 95 %: 0.05 ** (1 / 40) = 0.9279
    many = np.linspace(1.0, 0.5, 40)
    assert largest_safe_threshold(many, np.ones(40), 0.92, 0.95) == 0.0
    assert largest_safe_threshold(many, np.ones(40), 0.93, 0.95) == 1.0
    # 59 right at 95 % certify 95 % (0.05 ** (1 / 59) = 0.9505); one more image, wrong, does not
    conf = np.linspace(1.0, 0.4, 60)
    assert largest_safe_threshold(conf, np.r_[np.ones(59), 0], 0.95, 0.95) == pytest.approx(conf[58])


def test_abstention_thresholds_fit_rules_and_errors():
    from multihead.model.thresholds import RULE_BOUND, RULE_FALLBACK, AbstentionThresholds

    fresh = AbstentionThresholds()
    assert not fresh.fitted and (float(fresh.router), float(fresh.subtype)) == (0.0, 0.0)
    probs = torch.linspace(1.0, 0.5, 300)
    right = torch.ones(300, dtype=torch.bool)
    fitted = AbstentionThresholds().fit(probs, right, probs, right, target_accuracy=0.99)
    assert fitted.rules_ == {"router": RULE_BOUND, "subtype": RULE_BOUND}  # 300 >= 299 images: a bound
    assert not fitted.fitted  # every answer right: nothing withheld
    few = AbstentionThresholds().fit(probs[:298], right[:298], probs[:298], right[:298], target_accuracy=0.99)
    assert few.rules_ == {"router": RULE_FALLBACK, "subtype": RULE_FALLBACK}
    given = AbstentionThresholds().fit(probs, right, probs, right, router_threshold=0.3, subtype_threshold=1.0)
    assert given.rules_ == {"router": "given", "subtype": "given"} and given.fitted
    assert (float(given.router), float(given.subtype)) == (pytest.approx(0.3), 1.0)
    only_subtype = AbstentionThresholds().fit(probs[:0], right[:0], probs[:0], right[:0], router_threshold=0.0,
                                              subtype_threshold=0.5)
    assert only_subtype.fitted and float(only_subtype.router) == 0.0
    for options, message in [({"target_accuracy": 0.0}, r"target_accuracy must be in \(0, 1\], got 0.0"),
                             ({"target_accuracy": 1.5}, "target_accuracy must be in"),
                             ({"confidence_level": 1.0}, r"confidence_level must be in \(0, 1\) or None, got 1.0"),
                             ({"confidence_level": 0.0}, "confidence_level must be in"),
                             ({"router_threshold": -0.1}, r"router_threshold must be a probability in \[0, 1\]"),
                             ({"subtype_threshold": 1.01}, "subtype_threshold must be a probability")]:
        with pytest.raises(ValueError, match=message):
            AbstentionThresholds().fit(probs, right, probs, right, **options)
    with pytest.raises(ValueError, match="choosing thresholds needs validation images"):
        AbstentionThresholds().fit(probs[:0], right[:0], probs[:0], right[:0], router_threshold=0.5)


# --- out-of-distribution score ---------------------------------------------------------------------------

def _two_organs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 3.0, 0.5])
    a = rng.normal(0, 1, (n, 3)) * scale
    b = rng.normal(0, 1, (n, 3)) * scale + np.array([6.0, 0.0, 0.0])
    return torch.tensor(np.r_[a, b], dtype=torch.float32), torch.tensor([0] * n + [1] * n)


def test_ood_distances_are_mahalanobis_with_the_pooled_covariance():
    """Three features, all kept by the PCA: the distance is (x - mean)' (S + ridge)^-1 (x - mean), with S the
    covariance pooled within organs, as numpy computes it here."""
    from multihead.model.ood import _RIDGE, MahalanobisOOD

    features, organs = _two_organs()
    ood = MahalanobisOOD(num_features=3, num_organs=3, components=8)
    assert ood.projection.shape == (3, 3) and not ood.fitted and float(ood.threshold) == float("inf")
    mask = torch.tensor([True, True, False])
    ood.fit(features, organs, organ_mask=mask, tpr=0.9)
    x, o = features.double().numpy(), organs.numpy()
    means = np.stack([x[o == k].mean(0) for k in (0, 1)])
    residual = x - means[o]
    covariance = residual.T @ residual / (len(x) - 2)
    covariance += _RIDGE * np.trace(covariance) / 3 * np.eye(3)
    probe = np.array([[0.0, 0.0, 0.0], [6.0, 1.0, 0.0], [3.0, 0.0, 2.0]])
    inverse = np.linalg.inv(covariance)
    expected = np.stack([np.einsum("ij,jk,ik->i", probe - m, inverse, probe - m) for m in means], 1)
    got = ood.organ_distances(torch.tensor(probe, dtype=torch.float32))[:, :2].double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3)
    # no validation set: the threshold is the 90 % quantile of the training images' own scores
    scores = ood.score(features, mask)
    assert ood.fitted and float(ood.threshold) == pytest.approx(float(torch.quantile(scores.double(), 0.9)), rel=1e-5)
    flagged = ood.flag(scores)
    assert int(flagged.sum()) == 8  # 80 images, the top 10 % are above the 90 % quantile
    assert not bool(ood.flag(ood.threshold.reshape(1))[0])  # at the threshold: not flagged


def test_ood_score_uses_the_nearest_answered_organ_and_its_scale():
    from multihead.model.ood import MIN_SCALE_IMAGES, MahalanobisOOD

    features, organs = _two_organs(n=MIN_SCALE_IMAGES)
    ood = MahalanobisOOD(num_features=3, num_organs=3).fit(features, organs, organ_mask=torch.tensor([1, 1, 0]).bool())
    assert ood.scale_rules_ == {0: "own", 1: "own"}
    distances = ood.organ_distances(features)
    both = ood.score(features, torch.tensor([True, True, False]))
    torch.testing.assert_close(both, (distances[:, :2] * ood.organ_scale[:2]).min(1).values)
    only_b = ood.score(features, torch.tensor([False, True, False]))
    torch.testing.assert_close(only_b, distances[:, 1] * ood.organ_scale[1])
    # each organ's own 95 % quantile lands on the pooled one after scaling
    own = distances.double().gather(1, organs[:, None]).squeeze(1)
    pooled = torch.quantile(own, 0.95)
    for k in (0, 1):
        scaled = own[organs == k] * float(ood.organ_scale[k])
        assert float(torch.quantile(scaled, 0.95)) == pytest.approx(float(pooled), rel=1e-4)
    fewer = MahalanobisOOD(num_features=3, num_organs=3).fit(features[: MIN_SCALE_IMAGES - 1].repeat(2, 1),
                                                             torch.tensor([0] * (2 * MIN_SCALE_IMAGES - 2)),
                                                             features[:MIN_SCALE_IMAGES - 1],
                                                             torch.tensor([0] * (MIN_SCALE_IMAGES - 1)),
                                                             organ_mask=torch.tensor([True, False, False]))
    # issue 19: fewer validation images than MIN_SCALE_IMAGES: a scale shrunk toward 1 (tests/test_ood_small_organs.py)
    assert fewer.scale_rules_ == {0: "shrunk"} and fewer.organ_scale.tolist()[1:] == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"tpr must be in \(0, 1\), got 1.0"):
        MahalanobisOOD(num_features=3, num_organs=3).fit(features, organs, organ_mask=torch.ones(3).bool(), tpr=1.0)
    with pytest.raises(ValueError, match="needs training images; got 1"):
        MahalanobisOOD(num_features=3, num_organs=3).fit(features[:1], organs[:1], organ_mask=torch.ones(3).bool())


def test_ood_reading_the_first_features_equals_a_fit_on_those_features_alone():
    """``num_read=2`` of three features: the same distances as an estimator fitted on the two alone, whatever
    the third holds (issue 17: a tuned trunk's score reads the stages below its cut)."""
    from multihead.model.ood import MahalanobisOOD

    features, organs = _two_organs()
    noisy = torch.cat([features, 50 * torch.randn(len(features), 1)], 1)
    mask = torch.tensor([True, True, False])
    first = MahalanobisOOD(num_features=4, num_organs=3).fit(noisy, organs, organ_mask=mask, num_read=2)
    alone = MahalanobisOOD(num_features=2, num_organs=3).fit(features[:, :2], organs, organ_mask=mask)
    probe = torch.randn(5, 4) * 3
    # equal up to the ridge, which is relative to the mean variance over all components (two of them empty here)
    torch.testing.assert_close(first.organ_distances(probe), alone.organ_distances(probe[:, :2]), rtol=1e-3, atol=0)
    assert float(first.threshold) == pytest.approx(float(alone.threshold), rel=1e-3)
    assert torch.equal(first.mean[2:], torch.zeros(2)) and torch.equal(first.projection[2:], torch.zeros(2, 4))
    everything = MahalanobisOOD(num_features=4, num_organs=3).fit(noisy, organs, organ_mask=mask, num_read=4)
    assert torch.equal(everything.projection, MahalanobisOOD(4, 3).fit(noisy, organs, organ_mask=mask).projection)
    for wrong in (0, 5):
        with pytest.raises(ValueError, match=rf"num_read must be in \[1, 4\], got {wrong}"):
            MahalanobisOOD(num_features=4, num_organs=3).fit(noisy, organs, organ_mask=mask, num_read=wrong)
    # the smallest allowed: one feature read (a mutant refusing it survived the run after num_read came)
    one = MahalanobisOOD(num_features=4, num_organs=3).fit(noisy, organs, organ_mask=mask, num_read=1)
    assert torch.equal(one.projection[1:], torch.zeros(3, 4)) and float(one.projection.abs().sum()) > 0


def test_thresholds_edge_cases_worked_by_hand():
    """Killed mutants of the first run (mutation.json): an undefined bound counts as 0, not as reaching the
    target; exactly images_to_certify images use the bound; the bound, not the plain accuracy, is applied."""
    from multihead.model.thresholds import RULE_BOUND, AbstentionThresholds, largest_safe_threshold

    # no right answer at all: the Clopper-Pearson bound is undefined (nan) and must not pass
    assert largest_safe_threshold(np.array([0.9, 0.8]), np.array([0, 0]), 0.5, 0.95) == 1.0
    assert AbstentionThresholds().rules_ == {}
    probs = torch.linspace(1.0, 0.5, 299)
    right = torch.ones(299, dtype=torch.bool)
    right[-1] = False  # 298 of 299: plain accuracy 0.9967 >= 0.99, but its 95 % lower bound is below 0.99
    fitted = AbstentionThresholds().fit(probs, right, probs, right, target_accuracy=0.99)
    assert fitted.rules_["router"] == RULE_BOUND  # exactly 299 images: enough for a bound
    assert float(fitted.router) == 1.0  # nothing can be certified at 99 % with one mistake in 299
    plain = AbstentionThresholds().fit(probs, right, probs, right, target_accuracy=0.99, confidence_level=None)
    assert float(plain.router) == 0.0
    with pytest.raises(ValueError, match=r"^choosing thresholds needs validation images; the set is empty "
                                         r"\(or pass both thresholds\)$"):
        AbstentionThresholds().fit(probs[:0], right[:0], probs[:0], right[:0])


def test_ood_edges_worked_by_hand():
    """Killed mutants of the first run (mutation.json): float64 input, the smallest training set, an empty
    validation set, tpr = 0, and the scale rules before any fit."""
    from multihead.model.ood import MahalanobisOOD

    features, organs = _two_organs()
    mask = torch.tensor([True, True, False])
    assert MahalanobisOOD(num_features=3, num_organs=3).scale_rules_ == {}
    ood = MahalanobisOOD(num_features=3, num_organs=3).fit(features, organs, organ_mask=mask)
    torch.testing.assert_close(ood.organ_distances(features.double()), ood.organ_distances(features))
    two = MahalanobisOOD(num_features=3, num_organs=3).fit(features[:2], organs[:2], organ_mask=mask)
    assert two.fitted  # two images are enough
    empty = MahalanobisOOD(num_features=3, num_organs=3).fit(features, organs, features[:0], organs[:0],
                                                             organ_mask=mask)
    assert float(empty.threshold) == float(ood.threshold)  # no validation images: the training ones set it
    with pytest.raises(ValueError, match=r"tpr must be in \(0, 1\), got 0.0"):
        MahalanobisOOD(num_features=3, num_organs=3).fit(features, organs, organ_mask=mask, tpr=0.0)


def test_ood_pca_is_centred_before_keeping_components():
    """Two components of three, far from the origin: the kept plane is that of the centred data (numpy's
    PCA), not one pulled towards the offset, and distances are Mahalanobis within it."""
    from multihead.model.ood import _RIDGE, MahalanobisOOD

    features, organs = _two_organs()
    features = features + torch.tensor([0.0, 0.0, 100.0])
    ood = MahalanobisOOD(num_features=3, num_organs=2, components=2).fit(features, organs,
                                                                         organ_mask=torch.tensor([True, True]))
    x, o = features.double().numpy(), organs.numpy()
    centred = x - x.mean(0)
    basis = np.linalg.svd(centred, full_matrices=False)[2][:2].T
    z = centred @ basis
    means = np.stack([z[o == k].mean(0) for k in (0, 1)])
    covariance = (z - means[o]).T @ (z - means[o]) / (len(z) - 2)
    covariance += _RIDGE * np.trace(covariance) / 2 * np.eye(2)
    probe = np.array([[0.0, 0.0, 100.0], [6.0, 2.0, 101.0]])
    zp = (probe - x.mean(0)) @ basis
    inverse = np.linalg.inv(covariance)
    expected = np.stack([np.einsum("ij,jk,ik->i", zp - m, inverse, zp - m) for m in means], 1)
    got = ood.organ_distances(torch.tensor(probe, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3)


# --- post-hoc fitting (training/posthoc.py): the reports it returns -------------------------------------

@pytest.fixture(scope="module")
def posthoc_data(tiny_model):
    from multihead.training import TrainConfig, fit_heads

    from .test_round_trip import _features

    model = multihead.create_model(tiny_model.trunk, image_size=64, seed=0).eval()
    train = _features(model, n_per_class=25, seed=1)
    fit_heads(model, train, None, TrainConfig(epochs=20, lr=1e-2, views="identity", seed=0))
    val = _features(model, n_per_class=25, seed=2, noise=8.0)  # some router and subtype mistakes
    return model, train, val


def _fresh(model):
    import copy

    return copy.deepcopy(model)


def test_fit_ood_reports_what_it_fitted(posthoc_data):
    from multihead.training.posthoc import fit_ood

    trained, train, val = posthoc_data
    model = _fresh(trained)
    report = fit_ood(model, train, val, tpr=0.9)
    scores = model.ood_score(val.features[:, 0]).double()
    assert float(model.ood.threshold) == pytest.approx(float(torch.quantile(scores, 0.9)), rel=1e-5)
    trained_organs = ["all", "brain", "lymphoma"]
    assert report == {"score": "mahalanobis", "components": 64, "threshold": float(model.ood.threshold), "tpr": 0.9,
                      "fitted_on": 150, "threshold_from": "val", "features_read": model.trunk.num_features,
                      "organ_scale": {name: round(float(model.ood.organ_scale[MULTI_CANCER.organ_index(name)]), 4)
                                      for name in trained_organs},
                      "scale_rule": dict.fromkeys(trained_organs, "own")}  # 50 validation images each
    assert fit_ood(_fresh(trained), train)["threshold_from"] == "train"
    assert fit_ood(_fresh(trained), train, val.subset([]))["threshold_from"] == "train"
    small = fit_ood(_fresh(trained), train, val.subset(val.relpaths[:1]))
    assert small["threshold_from"] == "val" and small["scale_rule"] == dict.fromkeys(trained_organs, "shrunk")
    assert fit_ood(_fresh(trained), train, val)["tpr"] == 0.99  # DEFAULT_TPR (0.95 before issue 19)


def test_fit_thresholds_reports_its_rules_and_certification(posthoc_data):
    from multihead.training.posthoc import fit_thresholds

    trained, _, val = posthoc_data
    model = _fresh(trained)
    report = fit_thresholds(model, val, target_accuracy=0.9)
    assert report["rules"] == {"router": "confidence_bound", "subtype": "confidence_bound"}  # 150 >= 29 images
    assert (report["target_accuracy"], report["confidence_level"], report["images_to_certify"]) == (0.9, 0.95, 29)
    assert report["router_threshold"] == float(model.thresholds.router) and 0 < report["router_threshold"] < 1
    assert report["subtype_threshold"] == float(model.thresholds.subtype)
    plain = fit_thresholds(_fresh(trained), val, target_accuracy=0.9, confidence_level=None)
    assert plain["images_to_certify"] is None and plain["rules"]["router"] == "validation_accuracy"
    assert plain["router_threshold"] <= report["router_threshold"]  # the bound keeps no more than the plain rate


def test_fit_temperatures_and_fit_trust_pass_their_options_on(posthoc_data):
    from multihead.training.posthoc import fit_temperatures, fit_thresholds, fit_trust

    trained, train, val = posthoc_data
    with pytest.raises(ValueError, match=r"^temperature scaling needs validation images; the validation split is "
                                         r"empty$"):
        fit_temperatures(_fresh(trained), val.subset([]))
    one = fit_temperatures(_fresh(trained), val.subset(val.relpaths[:1]))  # one image: too few to fit, but no error
    assert one["router"] == 1.0 and "router" in one["skipped"]
    temperatures = fit_temperatures(_fresh(trained), val)
    assert set(temperatures["skipped"]) <= {"router", "all", "brain", "lymphoma"}  # untrained heads are not listed
    assert temperatures["router"] != 1.0
    model = _fresh(trained)
    result = fit_trust(model, train, val, target_accuracy=0.9, tpr=0.8)
    assert result["ood"]["tpr"] == 0.8 and result["ood"]["threshold_from"] == "val"
    again = fit_thresholds(_fresh(model), val, target_accuracy=0.9)
    assert json.dumps(result["selective"], sort_keys=True) == json.dumps(again, sort_keys=True)  # nan == nan here
    assert result["selective"]["rules"] == {"router": "confidence_bound", "subtype": "confidence_bound"}
    never = fit_trust(_fresh(trained), train, val, target_accuracy=0.9, abstain=False)
    assert (never["selective"]["router_threshold"], never["selective"]["subtype_threshold"]) == (0.0, 0.0)
    assert never["selective"]["rules"] == {"router": "given", "subtype": "given"}
    default = fit_trust(_fresh(trained), train, val, target_accuracy=0.9)
    assert default["selective"]["router_threshold"] > 0  # abstaining is the default
    assert "selective" not in fit_trust(_fresh(trained), train, val.subset([]))
