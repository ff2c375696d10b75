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
    from multihead.model.thresholds import RULE_BOUND, RULE_FALLBACK, RULE_SMALL, RULE_TOO_FEW, AbstentionThresholds

    fresh = AbstentionThresholds(num_organs=3)
    assert not fresh.fitted and float(fresh.router) == 0.0 and fresh.subtype.tolist() == [0.0, 0.0, 0.0]
    probs = torch.linspace(1.0, 0.5, 300)
    right = torch.ones(300, dtype=torch.bool)
    one_organ = torch.zeros(300, dtype=torch.long)
    fitted = AbstentionThresholds(1).fit(probs, right, probs, right, one_organ, target_accuracy=0.99)
    assert fitted.rules_ == {"router": RULE_BOUND, "subtype": [RULE_BOUND]}  # 300 >= 299 images: a bound
    assert not fitted.fitted  # every answer right: nothing withheld
    few = AbstentionThresholds(1).fit(probs[:298], right[:298], probs[:298], right[:298], one_organ[:298],
                                      target_accuracy=0.99)
    assert few.rules_ == {"router": RULE_FALLBACK, "subtype": [RULE_SMALL]}  # the router asks the target itself
    strict = AbstentionThresholds(1).fit(probs[:298], right[:298], probs[:298], right[:298], one_organ[:298],
                                         target_accuracy=0.99, small_data="strict")
    assert strict.rules_ == {"router": RULE_FALLBACK, "subtype": [RULE_FALLBACK]} and strict.targets_ == [0.99]
    # per organ: 291 answers name organ 0, 9 name organ 1 (one short of MIN_THRESHOLD_IMAGES), none organ 2
    organs = torch.tensor([0] * 290 + [1] * 9 + [0])
    split = AbstentionThresholds(3).fit(probs, right, probs, right, organs, target_accuracy=0.99)
    assert split.rules_["subtype"] == [RULE_SMALL, RULE_TOO_FEW, None]  # 291 answers: too few for a bound
    assert split.subtype.tolist() == [0.0, float("inf"), float("inf")]
    assert AbstentionThresholds(3).fit(probs, right, probs, right, organs, min_images=9).rules_["subtype"][1] == (
        RULE_SMALL)
    given = AbstentionThresholds(2).fit(probs, right, probs, right, one_organ, router_threshold=0.3,
                                        subtype_threshold=1.0)
    assert given.rules_ == {"router": "given", "subtype": ["given", "given"]} and given.fitted
    assert float(given.router) == pytest.approx(0.3) and given.subtype.tolist() == [1.0, 1.0]
    only_subtype = AbstentionThresholds(1).fit(probs[:0], right[:0], probs[:0], right[:0], one_organ[:0],
                                               router_threshold=0.0, subtype_threshold=0.5)
    assert only_subtype.fitted and float(only_subtype.router) == 0.0
    for options, message in [({"target_accuracy": 0.0}, r"target_accuracy must be in \(0, 1\], got 0.0"),
                             ({"target_accuracy": 1.5}, "target_accuracy must be in"),
                             ({"confidence_level": 1.0}, r"confidence_level must be in \(0, 1\) or None, got 1.0"),
                             ({"confidence_level": 0.0}, "confidence_level must be in"),
                             ({"router_threshold": -0.1}, r"router_threshold must be a probability in \[0, 1\]"),
                             ({"subtype_threshold": 1.01}, "subtype_threshold must be a probability")]:
        with pytest.raises(ValueError, match=message):
            AbstentionThresholds(1).fit(probs, right, probs, right, one_organ, **options)
    with pytest.raises(ValueError, match="choosing thresholds needs validation images"):
        AbstentionThresholds(1).fit(probs[:0], right[:0], probs[:0], right[:0], one_organ[:0], router_threshold=0.5)


def test_per_organ_thresholds_give_each_organ_its_own_status():
    from multihead.model.thresholds import AbstentionThresholds

    thresholds = AbstentionThresholds(3)
    thresholds.subtype.copy_(torch.tensor([0.5, 0.9, float("inf")]))
    conf = torch.tensor([0.6, 0.6, 0.95, 1.0])
    organ = torch.tensor([0, 1, 1, 2])
    assert thresholds.status(torch.ones(4), conf, organ) == [Status.ORGAN_AND_SUBTYPE, Status.ORGAN_ONLY,
                                                             Status.ORGAN_AND_SUBTYPE, Status.ORGAN_ONLY]
    covered = torch.tensor([True, False, True])
    assert thresholds.status(torch.ones(4), conf, organ, covered=covered) == [
        Status.ORGAN_AND_SUBTYPE, Status.UNCERTAIN, Status.UNCERTAIN, Status.ORGAN_ONLY]
    with pytest.raises(ValueError, match="per-organ subtype thresholds need the decided organ"):
        statuses(torch.ones(4), conf, router_threshold=0.0, subtype_threshold=thresholds.subtype)


# --- out-of-distribution score ---------------------------------------------------------------------------

def _clouds(n=40, seed=0):
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 3.0, 0.5])
    a = rng.normal(0, 1, (n, 3)) * scale
    b = rng.normal(0, 1, (n, 3)) * scale + np.array([6.0, 0.0, 0.0])
    return torch.tensor(np.r_[a, b], dtype=torch.float32)


def _by_hand(x: np.ndarray, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy's nearest-neighbour score of ``probe`` against training features ``x`` (all components kept), and
    each training image's distance to its nearest other one."""
    basis = np.linalg.svd(x, full_matrices=False)[2].T  # the features as they are: not centred, not scaled
    bank = x @ basis
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    q = probe @ basis
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    similarity = bank @ bank.T
    np.fill_diagonal(similarity, -np.inf)
    return 1 - (q @ bank.T).max(1), 1 - similarity.max(1)


def test_ood_score_is_the_cosine_distance_to_the_nearest_training_image():
    """Three features, all kept: project on the training features' right singular vectors (a rotation when all
    are kept), make unit length, and take one minus the largest cosine similarity with a training image."""
    from multihead.model.ood import NearestNeighbourOOD

    features = _clouds() + torch.tensor([0.0, 0.0, 4.0])  # off the origin: centring would change every angle
    ood = NearestNeighbourOOD(num_features=3, components=8)
    assert ood.projection.shape == (3, 3) and not ood.fitted and float(ood.threshold) == float("inf")
    assert torch.equal(ood.score(features), torch.zeros(80))  # unfitted: nothing is far
    ood.fit(features, tpr=0.9)
    probe = np.array([[1.0, 0.0, 0.0], [6.0, 1.0, 4.0], [3.0, -2.0, 6.0], [-20.0, 9.0, -4.0]])
    expected, left_out = _by_hand(features.double().numpy(), probe)
    got = ood.score(torch.tensor(probe, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3)  # the bank is stored in float16
    plain = 1 - (probe / np.linalg.norm(probe, axis=1, keepdims=True)) @ (
        features.double().numpy() / np.linalg.norm(features.double().numpy(), axis=1, keepdims=True)).T
    np.testing.assert_allclose(got, plain.min(1), atol=2e-3)  # all components kept: the cosine of the features
    # no validation set: each training image against the others (left one out), its 90 % quantile
    assert float(ood.threshold) == pytest.approx(np.quantile(left_out, 0.9), abs=2e-3)
    assert ood.bank.shape == (80, 3) and ood.bank.dtype == torch.float16
    scores = torch.tensor(left_out)
    assert int(ood.flag(scores).sum()) == int((scores > ood.threshold).sum()) == 8
    assert not bool(ood.flag(ood.threshold.reshape(1))[0])  # at the threshold: not flagged


def test_ood_threshold_from_validation_and_its_refusals():
    from multihead.model.ood import MAX_BANK, NearestNeighbourOOD

    features = _clouds()
    val = _clouds(seed=1)
    ood = NearestNeighbourOOD(3).fit(features, val, tpr=0.8)
    assert float(ood.threshold) == pytest.approx(float(torch.quantile(ood.score(val).double(), 0.8)), rel=1e-5)
    empty = NearestNeighbourOOD(3).fit(features, val[:0])
    assert float(empty.threshold) == float(NearestNeighbourOOD(3).fit(features).threshold)  # training, left out
    assert NearestNeighbourOOD(3).fit(features[:2]).fitted  # two images are enough
    for options, message in [({"tpr": 1.0}, r"tpr must be in \(0, 1\), got 1.0"),
                             ({"tpr": 0.0}, r"tpr must be in \(0, 1\), got 0.0"),
                             ({"num_read": 0}, r"num_read must be in \[1, 3\], got 0"),
                             ({"num_read": 4}, r"num_read must be in \[1, 3\], got 4")]:
        with pytest.raises(ValueError, match=message):
            NearestNeighbourOOD(3).fit(features, **options)
    with pytest.raises(ValueError, match="needs training images; got 1"):
        NearestNeighbourOOD(3).fit(features[:1])
    with pytest.raises(ValueError, match=f"may hold 0 to {MAX_BANK} images, got {MAX_BANK + 1}"):
        NearestNeighbourOOD(3).resize_bank(MAX_BANK + 1)


def test_ood_reading_the_first_features_equals_a_fit_on_those_features_alone():
    """``num_read=2`` of four features: the same scores as an estimator fitted on the two alone, whatever the others
    hold (issue 17: a tuned trunk's score reads the stages below its cut)."""
    from multihead.model.ood import NearestNeighbourOOD

    features = _clouds()[:, :2]
    noisy = torch.cat([features, 50 * torch.randn(len(features), 2)], 1)
    first = NearestNeighbourOOD(num_features=4).fit(noisy, num_read=2)
    alone = NearestNeighbourOOD(num_features=2).fit(features)
    probe = torch.randn(5, 4) * 3
    torch.testing.assert_close(first.score(probe), alone.score(probe[:, :2]), rtol=0, atol=1e-5)
    assert float(first.threshold) == pytest.approx(float(alone.threshold), abs=1e-5)
    assert torch.equal(first.projection[2:], torch.zeros(2, 4))
    one = NearestNeighbourOOD(num_features=4).fit(noisy, num_read=1)  # the smallest allowed
    assert torch.equal(one.projection[1:], torch.zeros(3, 4)) and float(one.projection.abs().sum()) > 0


def test_thresholds_edge_cases_worked_by_hand():
    """An undefined bound counts as 0, not as reaching the target; exactly images_to_certify images use the bound;
    where no bound can be met, the plain accuracy decides (and says so)."""
    from multihead.model.thresholds import RULE_BOUND, RULE_FALLBACK, AbstentionThresholds, largest_safe_threshold

    # no right answer at all: the Clopper-Pearson bound is undefined (nan) and must not pass
    assert largest_safe_threshold(np.array([0.9, 0.8]), np.array([0, 0]), 0.5, 0.95) == 1.0
    assert AbstentionThresholds().rules_ == {}
    probs = torch.linspace(1.0, 0.5, 299)
    right = torch.ones(299, dtype=torch.bool)
    organs = torch.zeros(299, dtype=torch.long)
    bound = AbstentionThresholds(1).fit(probs, right, probs, right, organs, target_accuracy=0.99)
    assert bound.rules_["router"] == RULE_BOUND and float(bound.router) == 0.0  # exactly 299 right: certified
    right[-1] = False  # 298 of 299: plain accuracy 0.9967 >= 0.99, but its 95 % lower bound is below 0.99
    fitted = AbstentionThresholds(1).fit(probs, right, probs, right, organs, target_accuracy=0.99)
    assert fitted.rules_["router"] == RULE_FALLBACK  # no bound can be met: plain accuracy
    assert float(fitted.router) == 0.0
    right[:3] = False  # the three most confident answers wrong: no set from the top reaches 99 %, not even plainly
    hopeless = AbstentionThresholds(1).fit(probs, right, probs, right, organs, target_accuracy=0.99)
    assert hopeless.rules_["router"] == RULE_FALLBACK and float(hopeless.router) == 1.0
    with pytest.raises(ValueError, match=r"^choosing thresholds needs validation images; the set is empty "
                                         r"\(or pass both thresholds\)$"):
        AbstentionThresholds(1).fit(probs[:0], right[:0], probs[:0], right[:0], organs[:0])


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
    assert report == {"score": "nearest_neighbour", "components": 512, "threshold": float(model.ood.threshold),
                      "tpr": 0.9, "fitted_on": 150, "threshold_from": "val",
                      "features_read": model.trunk.num_features}
    assert model.ood.bank.shape == (150, 512)
    assert fit_ood(_fresh(trained), train)["threshold_from"] == "train (left one out)"
    assert fit_ood(_fresh(trained), train, val.subset([]))["threshold_from"] == "train (left one out)"
    assert fit_ood(_fresh(trained), train, val)["tpr"] == 0.99  # DEFAULT_TPR


def test_fit_thresholds_reports_its_rules_and_certification(posthoc_data):
    from multihead.training.posthoc import fit_thresholds

    trained, _, val = posthoc_data
    model = _fresh(trained)
    report = fit_thresholds(model, val, target_accuracy=0.9)
    assert report["rules"]["router"] == "confidence_bound"  # 150 >= 29 images
    assert set(report["rules"]["subtype"]) == set(report["subtype_thresholds"]) == set(model.available_organs)
    assert (report["target_accuracy"], report["confidence_level"], report["images_to_certify"]) == (0.9, 0.95, 29)
    assert report["router_threshold"] == float(model.thresholds.router) and 0 < report["router_threshold"] < 1
    for organ, value in report["subtype_thresholds"].items():
        stored = float(model.thresholds.subtype[model.taxonomy.organ_index(organ)])
        assert (value is None and stored == float("inf")) or value == stored, organ
    plain = fit_thresholds(_fresh(trained), val, target_accuracy=0.9, confidence_level=None)
    assert plain.get("images_to_certify") is None and plain["rules"]["router"] == "validation_accuracy"
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
    assert result["selective"]["rules"]["router"] == "confidence_bound"
    assert result["coverage"]["covered"] == ["all", "brain", "lymphoma"]  # 50 training images each
    never = fit_trust(_fresh(trained), train, val, target_accuracy=0.9, abstain=False)
    assert never["selective"]["router_threshold"] == 0.0
    assert set(never["selective"]["subtype_thresholds"].values()) == {0.0}
    assert never["selective"]["rules"] == {"router": "given", "subtype": dict.fromkeys(["all", "brain", "lymphoma"],
                                                                                       "given")}
    assert fit_trust(_fresh(trained), train, val, min_covered_images=51)["coverage"]["covered"] == []
    default = fit_trust(_fresh(trained), train, val, target_accuracy=0.9)
    assert default["selective"]["router_threshold"] > 0  # abstaining is the default
    assert "selective" not in fit_trust(_fresh(trained), train, val.subset([]))
