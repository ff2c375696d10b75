"""Issue 19: an organ with few images gets its out-of-distribution scale from its own images, shrunk toward the
pooled one, so that its own images pass while unknown images are still flagged; the threshold keeps 99 %."""

import pytest
import torch

import multihead
from multihead.inference import default_model_path
from multihead.model.ood import DEFAULT_TPR, MIN_SCALE_IMAGES, SCALE_QUANTILE, MahalanobisOOD

from .conftest import REPO

MASK = torch.tensor([True, True])


def _cloud(n: int, centre: torch.Tensor, spread: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian images with a per-image scale (heavier tails, as real features have)."""
    scale = torch.exp(0.5 * torch.randn(n, 1, generator=generator))
    return centre + spread * scale * torch.randn(n, len(centre), generator=generator)


def _two_organs(spread_small: float, seed: int = 0):
    """A large organ (300 training, 100 validation images) and a small one that spreads ``spread_small`` times as
    wide (9 training, 2 validation images, 200 new ones), 12 features; 100 unknown images far from both."""
    g = torch.Generator().manual_seed(seed)
    large, small, elsewhere = torch.zeros(12), torch.zeros(12), torch.zeros(12)
    small[0], elsewhere[1] = 25.0, 40.0
    train = torch.cat([_cloud(300, large, 1.0, g), _cloud(9, small, spread_small, g)])
    train_organs = torch.tensor([0] * 300 + [1] * 9)
    val = torch.cat([_cloud(100, large, 1.0, g), _cloud(2, small, spread_small, g)])
    val_organs = torch.tensor([0] * 100 + [1] * 2)
    new_small = _cloud(200, small, spread_small, g)
    unknown = torch.cat([_cloud(50, elsewhere, 1.0, g), 40 * torch.randn(50, 12, generator=g)])
    return train, train_organs, val, val_organs, new_small, unknown


@pytest.mark.parametrize("spread", [2.0, 0.01])  # 0.01: its distances are far below 1, the floor must not bite
def test_a_small_organs_scale_is_its_median_on_the_pooled_median_shrunk_by_its_image_count(spread):
    train, organs, val, val_organs, _, _ = _two_organs(spread)
    ood = MahalanobisOOD(12, 2, components=12).fit(train, organs, val, val_organs, organ_mask=MASK)
    assert ood.scale_rules_ == {0: "own", 1: "shrunk"}
    own = lambda x, o: ood.organ_distances(x).double().gather(1, o[:, None]).squeeze(1)  # noqa: E731
    val_own, train_own = own(val, val_organs), own(train, organs)
    pooled = torch.quantile(val_own, SCALE_QUANTILE)
    large_scale = pooled / torch.quantile(val_own[val_organs == 0], SCALE_QUANTILE)
    assert float(ood.organ_scale[0]) == pytest.approx(float(large_scale), rel=1e-5)
    # the small organ: its 2 validation distances and its 9 training ones left one out, n = 11
    left_out = train_own[organs == 1] * (9 / 8) ** 2
    sample = torch.cat([val_own[val_organs == 1], left_out])
    expected = ((val_own[val_organs == 0] * large_scale).median() / sample.median()) ** (11 / (11 + MIN_SCALE_IMAGES))
    assert float(ood.organ_scale[1]) == pytest.approx(float(expected), rel=1e-5)
    assert (0.0 < float(ood.organ_scale[1]) < 1.0) == (spread > 1)  # wider: its distances count for less
    # the threshold keeps DEFAULT_TPR (99 %) of the validation scores
    scores = ood.score(val, MASK).double()
    assert DEFAULT_TPR == 0.99 and float(ood.threshold) == pytest.approx(float(torch.quantile(scores, 0.99)), rel=1e-5)


def test_leaving_an_image_out_is_the_distance_times_n_over_n_minus_one_squared():
    """The rule's left-out distances, checked against the distance to the mean of the other eight images."""
    train, organs, val, val_organs, _, _ = _two_organs(2.0)
    ood = MahalanobisOOD(12, 2, components=12).fit(train, organs, val, val_organs, organ_mask=MASK)
    z = (train[organs == 1] - ood.mean) @ ood.projection
    for i in range(len(z)):
        others = torch.cat([z[:i], z[i + 1:]]).mean(0)
        direct = float((z[i] - others).square().sum())
        assert direct == pytest.approx(float(ood.organ_distances(train[organs == 1][i:i + 1])[0, 1]) * (9 / 8) ** 2,
                                       rel=1e-4)


def test_without_validation_images_a_small_organ_uses_its_training_images_left_one_out():
    train, organs, _, _, _, _ = _two_organs(2.0)
    ood = MahalanobisOOD(12, 2, components=12).fit(train, organs, organ_mask=MASK)
    assert ood.scale_rules_ == {0: "own", 1: "shrunk"}
    one = MahalanobisOOD(12, 2, components=12).fit(train[:301], organs[:301], organ_mask=MASK)
    assert one.scale_rules_ == {0: "own"} and float(one.organ_scale[1]) == 1.0  # one image: nothing to leave out


def test_a_tight_large_organs_scale_is_the_pooled_quantile_on_its_own_however_small():
    """An organ with its own scale (at least MIN_SCALE_IMAGES validation images) whose distances are all far
    below 1: the ratio is taken as it is (the floor only guards against zero)."""
    g = torch.Generator().manual_seed(1)
    tight = torch.zeros(12)
    tight[2] = 25.0
    train = torch.cat([_cloud(300, torch.zeros(12), 1.0, g), _cloud(100, tight, 0.01, g)])
    organs = torch.tensor([0] * 300 + [1] * 100)
    val = torch.cat([_cloud(100, torch.zeros(12), 1.0, g), _cloud(40, tight, 0.01, g)])
    val_organs = torch.tensor([0] * 100 + [1] * 40)
    ood = MahalanobisOOD(12, 2, components=12).fit(train, organs, val, val_organs, organ_mask=MASK)
    assert ood.scale_rules_ == {0: "own", 1: "own"}
    own = ood.organ_distances(val).double().gather(1, val_organs[:, None]).squeeze(1)
    tight_quantile = torch.quantile(own[val_organs == 1], SCALE_QUANTILE)
    assert tight_quantile < 0.1
    expected = torch.quantile(own, SCALE_QUANTILE) / tight_quantile
    assert float(ood.organ_scale[1]) == pytest.approx(float(expected), rel=1e-5)


def test_two_training_images_are_enough_to_leave_one_out_and_an_organ_without_any_does_not_stop_the_others():
    """Organ 1 has two training images (each left out against the other), organ 2 one (nothing to leave out: it
    keeps the pooled scale), organ 3 nine; none has validation images. Organ 2 must not end the loop."""
    g = torch.Generator().manual_seed(2)
    centres = torch.zeros(4, 12)
    centres[1, 0], centres[2, 1], centres[3, 2] = 25.0, 30.0, 35.0
    counts = (300, 2, 1, 9)
    train = torch.cat([_cloud(n, centres[o], 1.0, g) for o, n in enumerate(counts)])
    organs = torch.cat([torch.full((n,), o) for o, n in enumerate(counts)])
    ood = MahalanobisOOD(12, 4, components=12).fit(train, organs, organ_mask=torch.ones(4, dtype=torch.bool))
    assert ood.scale_rules_ == {0: "own", 1: "shrunk", 3: "shrunk"}
    assert float(ood.organ_scale[2]) == 1.0
    assert float(ood.organ_scale[1]) != 1.0 and float(ood.organ_scale[3]) != 1.0


def test_a_small_organ_that_spreads_wider_keeps_its_images_and_unknowns_are_still_flagged():
    """Before issue 19 a small organ kept the pooled scale (1): its own images took the flags."""
    train, organs, val, val_organs, new_small, unknown = _two_organs(2.5)
    ood = MahalanobisOOD(12, 2, components=12).fit(train, organs, val, val_organs, organ_mask=MASK)
    pooled = MahalanobisOOD(12, 2, components=12)
    pooled.load_state_dict(ood.state_dict())
    pooled.organ_scale[1] = 1.0  # the rule before: the pooled scale, threshold refitted the same way
    pooled.threshold.fill_(float(torch.quantile(pooled.score(val, MASK).double(), DEFAULT_TPR)))
    flagged = lambda o, x: o.flag(o.score(x, MASK)).double().mean().item()  # noqa: E731
    assert flagged(pooled, new_small) > 0.2  # 23.5 % of the small organ's new images with the pooled scale
    assert flagged(ood, new_small) < 0.5 * flagged(pooled, new_small)  # 11 % with its own, shrunk
    assert flagged(ood, train[organs == 1]) == 0.0
    assert flagged(ood, unknown) == 1.0 and flagged(ood, val[val_organs == 0]) <= 0.02


def test_the_bundled_model_flags_none_of_its_shipped_examples():
    """Real pixels: one of the four examples (WBC-Malignant-Pro-005.jpg, score 170.7 against 145.5) was flagged
    by the bundled model's old OOD fit; its small organs' scales now come from the shrunk rule."""
    model = multihead.load(default_model_path())
    ood = model.metadata["trust"]["ood"]
    assert ood["tpr"] == DEFAULT_TPR
    assert {organ: ood["scale_rule"][organ] for organ in ("breast", "kidney", "oral")} == dict.fromkeys(
        ("breast", "kidney", "oral"), "shrunk")
    examples = sorted((REPO / "multihead" / "examples").glob("*.jpg"))
    predictions = multihead.classify(examples, model=model)
    assert len(predictions) == 4
    assert not any(p.out_of_distribution for p in predictions), [(p.source, p.ood_score) for p in predictions]
    assert all(p.ood_score < 0.8 * float(model.ood.threshold) for p in predictions)  # with room to spare
