"""Trust: abstention thresholds, the out-of-distribution score, test-time augmentation, and their CLI."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.data import VIEWS, apply_view
from multihead.evaluation.trust import ood_metrics, reliability, risk_coverage
from multihead.features import FeatureSet, extract_features
from multihead.inference import InferenceConfig, predict_batch, run_batch
from multihead.model.decision import Status
from multihead.model.thresholds import largest_safe_threshold
from multihead.training.posthoc import fit_ood, fit_thresholds, fit_trust

from .legacy_checkpoints import write_legacy

runner = CliRunner()
ORGANS = ("all", "brain", "lymphoma")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model():
    """A fresh tiny model per test: fitting writes its buffers (the shared ``tiny_model`` stays untouched). The
    seed of ``create_model`` is the heads'; the random trunk comes from torch's global generator, seeded here (drawn
    unseeded, one trunk in eight scored the noise images like the colour fields and failed the OOD test)."""
    torch.manual_seed(0)
    return multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=0).eval()


def clustered(model, n_per_subtype=12, *, spread=0.6, ambiguous=0.0, seed=0):
    """Features in clusters, one per subtype of three organs, and heads that read them (nearest mean).

    An ``ambiguous`` share of the images lies between its subtype and a sibling: the heads doubt those."""
    tax = model.taxonomy
    rng = np.random.default_rng(seed)
    subtypes = [tax.subtype_index(s) for o in ORGANS for s in tax.organ(o).subtype_names]
    centres = {s: rng.normal(0, 1, model.num_features) for s in subtypes}
    rows, labels = [], []
    for s in subtypes:
        rows.append(centres[s] + spread * rng.normal(0, 1, (n_per_subtype, model.num_features)))
        labels += [s] * n_per_subtype
    features = np.concatenate(rows)
    for i in np.flatnonzero(rng.random(len(labels)) < ambiguous):
        organ = tax.organs[tax.subtype_organ_indices[labels[i]]]
        sibling = tax.subtype_index(rng.choice([s for s in organ.subtype_names if tax.subtype_index(s) != labels[i]]))
        mix = rng.uniform(0.3, 0.7)
        features[i] = (1 - mix) * features[i] + mix * (centres[sibling] + spread * rng.normal(0, 1, model.num_features))
    features = torch.tensor(features, dtype=torch.float32)
    labels = torch.tensor(labels)
    organs = model.subtype_organ[labels]
    with torch.no_grad():
        model.router.weight.zero_(), model.router.bias.zero_()
        for s, c in centres.items():
            organ = tax.organs[tax.subtype_organ_indices[s]]
            head = model.heads[organ.name]
            local = s - tax.head_offsets[tax.organ_index(organ.name)]
            head.weight[local] = torch.tensor(c, dtype=torch.float32) * 0.05
            model.router.weight[tax.organ_index(organ.name)] += torch.tensor(c, dtype=torch.float32) * 0.05
    model.set_available_organs(ORGANS)
    data = FeatureSet(features.unsqueeze(1), organs, labels, [f"f{i}" for i in range(len(labels))], ("identity",))
    return data


def test_defaults_never_abstain_and_never_reject(tiny_model):
    assert float(tiny_model.thresholds.router) == 0.0 and not tiny_model.thresholds.subtype.any()
    assert not tiny_model.ood.fitted
    batch = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    for p in predict_batch(tiny_model, batch):
        assert p.status == "organ_and_subtype" and p.ood_score is None and not p.out_of_distribution
        assert p.subtype_confidence == pytest.approx(p.subtype_probability / p.organ_probability, rel=1e-6)
        record = json.loads(json.dumps(p.to_dict()))
        assert record["status"] == "organ_and_subtype" and record["out_of_distribution"] is False


def test_largest_safe_threshold_keeps_the_largest_accurate_set():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    right = np.array([1, 1, 1, 0, 1, 0], dtype=bool)
    assert largest_safe_threshold(conf, right, 1.0, None) == pytest.approx(0.9)
    assert largest_safe_threshold(conf, right, 0.8, None) == pytest.approx(0.7)
    assert largest_safe_threshold(conf, np.ones(6, bool), 1.0, None) == 0.0  # all right: keep all
    assert largest_safe_threshold(conf, np.zeros(6, bool), 0.5, None) == 1.0  # nothing is good enough
    # ties move together: 0.9 twice, one of them wrong, so the cut cannot fall between them
    assert largest_safe_threshold(np.array([0.99, 0.9, 0.9]), np.array([1, 1, 0], bool), 1.0, None) == 0.99
    # asking for confidence keeps fewer: 3 of 3 right proves little
    assert largest_safe_threshold(conf, right, 0.5, 0.95) > largest_safe_threshold(conf, right, 0.5, None)


def test_fit_thresholds_reaches_the_target_on_its_data(model):
    data = clustered(model, n_per_subtype=20, ambiguous=0.4)
    result = fit_thresholds(model, data, target_accuracy=0.95, confidence_level=None)
    per_organ = np.array([result["subtype_thresholds"].get(name, np.inf) for name in model.taxonomy.organ_names])
    np.testing.assert_allclose(model.thresholds.subtype.numpy(), per_organ, rtol=1e-6)
    assert result["accuracy_all"] < 0.95 and result["coverage"] < 1.0  # the data needed abstention
    # the kept answers, recounted by hand from the heads (not from the library's own accuracy_kept)
    with torch.no_grad():
        out = model.forward_heads(data.features[:, 0])
    joint = out.joint_probs.double().numpy()
    organ = out.router_logits.argmax(1).numpy()
    organ_of = np.array(model.taxonomy.subtype_organ_indices)
    in_organ = organ_of[None, :] == organ[:, None]
    organ_prob = (joint * in_organ).sum(1)
    subtype = np.where(in_organ, joint, -1).argmax(1)
    kept = (organ_prob >= result["router_threshold"]) & (
        joint[np.arange(len(joint)), subtype] / organ_prob >= per_organ[organ])
    right = subtype == data.subtypes.numpy()
    assert kept.any() and right[kept].mean() >= 0.95
    for index in np.unique(organ):  # each organ's kept answers reach the target on their own
        mine = kept & (organ == index)
        assert not mine.any() or right[mine].mean() >= 0.95, model.taxonomy.organ_names[index]
    assert result["accuracy_kept"] == pytest.approx(right[kept].mean())
    assert result["coverage"] == pytest.approx(kept.mean())
    assert result["coverage"] + result["organ_only_fraction"] + result["uncertain_fraction"] == pytest.approx(1.0)
    strict = fit_thresholds(model, data, target_accuracy=0.95)  # Clopper-Pearson: keeps no more
    assert strict["coverage"] <= result["coverage"]


def test_router_threshold_is_read_off_router_mistakes():
    """Worked by hand: the router is wrong at P(organ) 0.8 and 0.6, so at 100 % the router keeps 0.85 and up;
    among those, the subtype is wrong at 0.5, so the subtype threshold is 0.7 (the lowest kept one still right)."""
    from multihead.model.thresholds import RULE_FALLBACK, AbstentionThresholds

    organ_prob = torch.tensor([0.95, 0.9, 0.85, 0.8, 0.7, 0.6])
    organ_right = torch.tensor([True, True, True, False, True, False])
    subtype_conf = torch.tensor([0.9, 0.5, 0.7, 0.99, 0.99, 0.99])
    subtype_right = torch.tensor([True, False, True, False, True, False])
    organs = torch.zeros(6, dtype=torch.long)
    thresholds = AbstentionThresholds(1).fit(organ_prob, organ_right, subtype_conf, subtype_right, organs,
                                             target_accuracy=1.0, confidence_level=None, min_images=1)
    assert (float(thresholds.router), float(thresholds.subtype[0])) == (pytest.approx(0.85), pytest.approx(0.7))
    assert thresholds.rules_ == {"router": RULE_FALLBACK, "subtype": [RULE_FALLBACK]}
    assert thresholds.status(organ_prob, subtype_conf, organs) == [
        "organ_and_subtype", "organ_only", "organ_and_subtype", "uncertain", "uncertain", "uncertain"]
    # at 75 % the router may keep the mistake at 0.8 (4 of 5 right down to 0.7), not the one at 0.6 (4 of 6)
    lenient = AbstentionThresholds(1).fit(organ_prob, organ_right, subtype_conf, subtype_right, organs,
                                          target_accuracy=0.75, confidence_level=None, min_images=1)
    assert float(lenient.router) == pytest.approx(0.7)


def test_given_thresholds_are_used_and_bad_ones_refused(model):
    data = clustered(model)
    result = fit_thresholds(model, data, router_threshold=0.5, subtype_threshold=0.7)
    assert float(model.thresholds.router) == 0.5
    assert model.thresholds.subtype.tolist() == pytest.approx([0.7] * model.taxonomy.num_organs)
    assert result["router_threshold"] == 0.5
    empty = data.subset([])
    fit_thresholds(model, empty, router_threshold=0.1, subtype_threshold=0.2)  # nothing to fit: fine
    with pytest.raises(ValueError, match="validation images"):
        fit_thresholds(model, empty)
    with pytest.raises(ValueError, match="subtype_threshold must be a probability"):
        fit_thresholds(model, data, subtype_threshold=1.5)
    with pytest.raises(ValueError, match="target_accuracy"):
        fit_thresholds(model, data, target_accuracy=0)


def test_statuses_back_off_to_the_organ_then_abstain(model):
    model.thresholds.router.fill_(0.6)
    model.thresholds.subtype.fill_(0.8)
    organ = torch.tensor([0.9, 0.9, 0.5, 0.9])
    subtype = torch.tensor([0.9, 0.5, 0.9, 0.9])
    ood = torch.tensor([False, False, False, True])
    decided = torch.zeros(4, dtype=torch.long)
    assert model.thresholds.status(organ, subtype, decided, ood) == [
        "organ_and_subtype", "organ_only", "uncertain", "uncertain"]


def test_ood_score_separates_far_features_and_keeps_95_percent(model):
    data = clustered(model, n_per_subtype=40)
    val = clustered(model, n_per_subtype=40, seed=0)  # same centres, fresh noise below
    val.features = val.features + 0.6 * torch.randn(val.features.shape, generator=torch.Generator().manual_seed(1))
    info = fit_ood(model, data, val, tpr=0.95)
    assert model.ood.fitted and info["threshold"] == pytest.approx(float(model.ood.threshold))
    inside = model.ood_score(val.features[:, 0])
    assert (inside > model.ood.threshold).float().mean().item() == pytest.approx(0.05, abs=0.01)
    far = torch.randn(30, model.num_features) * 3 + 5
    blank = torch.zeros(5, model.num_features)
    outside = model.ood_score(torch.cat([far, blank]))
    metrics = ood_metrics(inside.numpy(), outside.numpy())
    assert metrics["auroc"] > 0.99 and metrics["fpr_at_95_tpr"] == 0.0
    assert bool((outside > model.ood.threshold).all())


def test_an_organ_without_enough_training_images_is_not_claimed(model):
    """Its images still go to the router (so they are not taken for another organ), but an answer naming it is
    uncertain: the organ's probability mass goes to "uncertain", not to the other organs."""
    data = clustered(model, n_per_subtype=20)
    few = data.subset([p for p, o in zip(data.relpaths, data.organs.tolist())
                       if o != model.taxonomy.organ_index("lymphoma")] + data.relpaths[-10:])
    report = fit_trust(model, few, data, target_accuracy=0.9, min_covered_images=20)["coverage"]
    assert report["covered"] == ["all", "brain"] and report["organs"]["lymphoma"] == 10
    assert model.covered_organs == ("all", "brain") and model.available_organs == ORGANS
    decided = model.decisions(data.features[:, 0])
    lymphoma = decided.organ == model.taxonomy.organ_index("lymphoma")
    assert lymphoma.any() and {str(s) for s, o in zip(decided.status, lymphoma.tolist()) if o} == {"uncertain"}
    prediction = predict_batch(model, torch.zeros(1, 3, 64, 64, dtype=torch.uint8))[0]
    assert prediction.covered_organs == ("all", "brain") and prediction.to_dict()["covered_organs"] == ["all", "brain"]


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_checkpoint_loads_with_one_threshold_for_every_organ_and_no_ood(model, tmp_path, version, caplog):
    data = clustered(model, n_per_subtype=20)
    fit_trust(model, data, data, target_accuracy=0.9)
    model.temperature.logit_scale.fill_(0.5)
    model.thresholds.router.fill_(0.3)
    model.thresholds.subtype.fill_(0.6)
    write_legacy(model, tmp_path / "old.safetensors", version)
    loaded = multihead.load(tmp_path / "old.safetensors")
    assert torch.equal(loaded.temperature.logit_scale, model.temperature.logit_scale)
    assert float(loaded.thresholds.router) == pytest.approx(0.3)
    assert loaded.thresholds.subtype.tolist() == pytest.approx([0.6] * loaded.taxonomy.num_organs)
    assert torch.equal(loaded.organ_covered, loaded.organ_mask) and loaded.covered_organs == ORGANS
    assert not loaded.ood.fitted and "no longer reads" in caplog.text
    assert multihead.classify(np.zeros((64, 64, 3), np.uint8), model=loaded).ood_score is None


def test_fitted_trust_travels_in_the_checkpoint(model, tmp_path):
    data = clustered(model, n_per_subtype=20)
    fit_trust(model, data, data, target_accuracy=0.9)
    path = tmp_path / "trusted.safetensors"
    multihead.save(model, path)
    loaded = multihead.load(path)
    for name in ("thresholds.router", "thresholds.subtype", "organ_covered", "ood.threshold", "ood.projection",
                 "ood.bank"):
        assert torch.equal(loaded.get_buffer(name), model.get_buffer(name)), name
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    prediction = multihead.classify(noise, model=loaded)
    assert prediction.ood_score is not None and prediction.ood_score > float(loaded.ood.threshold)
    assert prediction.out_of_distribution and prediction.status == "uncertain"


def test_tta_averages_the_eight_views(tiny_model):
    """Heads sharpened 40-fold make the views disagree, so the averaged decision is really tested."""
    model = copy.deepcopy(tiny_model)  # the session's model stays as it is
    with torch.no_grad():
        model.router.weight.mul_(40), model.router.bias.mul_(40)
        for head in model.heads.values():
            head.weight.mul_(40), head.bias.mul_(40)
    tiny_model = model
    batch = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    per_view = torch.stack([run_batch(tiny_model, apply_view(batch, v)).joint_probs.double() for v in VIEWS])
    assert any(len(set(per_view[:, row].argmax(1).tolist())) > 1 for row in range(6))  # the views disagree
    averaged = predict_batch(tiny_model, batch, InferenceConfig(tta=True))
    expected = per_view.mean(0)
    names = tiny_model.taxonomy.subtype_names
    organ_of = tiny_model.taxonomy.subtype_organ_indices
    for row, p in enumerate(averaged):
        assert [p.probabilities[s] for s in names] == pytest.approx(expected[row].tolist(), abs=1e-6)
        organ_sums = [float(expected[row, [i for i, o in enumerate(organ_of) if o == k]].sum()) for k in range(8)]
        organ = int(np.argmax(organ_sums))  # the best organ of the averaged joint, then its best subtype
        members = [i for i, o in enumerate(organ_of) if o == organ]
        assert (p.organ, p.subtype) == (tiny_model.taxonomy.organ_names[organ],
                                        names[members[int(expected[row, members].argmax())]])
        assert multihead.MULTI_CANCER.organ_of(p.subtype) == p.organ
    plain = predict_batch(tiny_model, batch)
    assert any((p.organ, p.subtype) != (q.organ, q.subtype) for p, q in zip(averaged, plain))  # averaging mattered
    # a picture every view leaves unchanged gets the plain answer
    flat = torch.full((1, 3, 64, 64), 90, dtype=torch.uint8)
    assert multihead.classify(flat[0], model=tiny_model, tta=True).probabilities == pytest.approx(
        multihead.classify(flat[0], model=tiny_model).probabilities, abs=1e-6)
    with pytest.raises(ValueError, match="tta must be True or False"):
        InferenceConfig(tta="yes")


def test_tta_takes_the_best_organ_of_the_average_not_the_best_single_subtype(tiny_model):
    """Worked by hand: P(cervix) = 0.30 spread over 5 subtypes (0.06 each), P(breast) = 0.25 with 0.9 of it on
    one subtype (0.225): the answer is cervix, although the single most probable subtype is a breast one."""
    model = copy.deepcopy(tiny_model)
    tax = model.taxonomy
    bias = torch.full((8,), -20.0)
    bias[tax.organ_index("cervix")], bias[tax.organ_index("breast")] = np.log(0.30), np.log(0.25)
    bias[tax.organ_index("all")] = np.log(0.45)  # the rest of the mass, on a head left flat (0.1125 each)
    with torch.no_grad():
        model.router.weight.zero_(), model.router.bias.copy_(bias)
        for head in model.heads.values():
            head.weight.zero_(), head.bias.zero_()
        model.heads["breast"].bias.copy_(torch.tensor([np.log(0.9), np.log(0.1)]))
    image = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (answer,) = predict_batch(model, image, InferenceConfig(tta=True))
    assert (answer.organ, answer.subtype_probability) == ("all", pytest.approx(0.1125, abs=1e-4))
    assert max(answer.probabilities, key=answer.probabilities.get) == "breast_benign"  # 0.225, another organ
    bias[tax.organ_index("all")] = -20.0  # now cervix (0.30 / 0.55) leads breast (0.25 / 0.55)
    with torch.no_grad():
        model.router.bias.copy_(bias)
    (answer,) = predict_batch(model, image, InferenceConfig(tta=True))
    assert answer.organ == "cervix" and max(answer.probabilities, key=answer.probabilities.get) == "breast_benign"


def test_risk_coverage_and_reliability():
    curve = risk_coverage(np.array([0.2, 0.9, 0.6]), np.array([0, 1, 1]))
    assert curve["coverage"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert curve["accuracy"] == pytest.approx([1.0, 1.0, 2 / 3])
    table = reliability(np.array([0.05, 0.1, 0.95]), np.array([0, 1, 1]), n_bins=10)
    assert table["count"] == [1, 1, 1] and table["accuracy"] == [0.0, 1.0, 1.0]


@pytest.fixture
def folders(tmp_path):
    """A tiny labelled folder (two organs, noise-free colour fields) and a folder of unknowns."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for organ, subtype, colour in (("all", "all_benign", (150, 80, 160)), ("brain", "brain_glioma", (90, 90, 90))):
        folder = data / organ / subtype
        folder.mkdir(parents=True)
        for i in range(6):
            image = np.clip(np.array(colour) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"{i}.png")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(unknown / f"noise{i}.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 255).save(unknown / "blank.png")
    return data, unknown


def test_evaluate_ood_and_classify_tta_from_the_cli(model, folders, tmp_path):
    data, unknown = folders
    paths = sorted(data.rglob("*.png"))
    features, _, _ = extract_features(model, paths, cache_dir=tmp_path / "cache")
    tax = model.taxonomy
    subtypes = torch.tensor([tax.subtype_index(p.parent.name) for p in paths])
    labelled = FeatureSet(features, model.subtype_organ[subtypes], subtypes, [str(p) for p in paths], ("identity",))
    model.set_available_organs(["all", "brain"])
    fit_ood(model, labelled, tpr=0.8)  # 12 images left one out: the 99 % quantile would be the farthest of them
    checkpoint = tmp_path / "m.safetensors"
    multihead.save(model, checkpoint)
    result = runner.invoke(app, ["evaluate", str(checkpoint), str(data), "--report", str(tmp_path / "report"),
                                 "--ood", str(unknown), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())["ood"]
    group = report["groups"]["unknown"]  # the images lying in the folder: one group named after it
    assert report["in_distribution"]["n"] == 12 and group["n_in"] == 12 and group["n_out"] == 4
    unknowns, _, _ = extract_features(model, sorted(unknown.glob("*.png")), cache_dir=tmp_path / "cache")
    with torch.no_grad():  # the AUROC recounted from the scores: the share of (in, out) pairs ranked right
        scores_in, scores_out = model.ood_score(features[:, 0]), model.ood_score(unknowns[:, 0])
    pairs = (scores_out[None, :] > scores_in[:, None]).double() + 0.5 * (scores_out[None, :] == scores_in[:, None])
    assert group["auroc"] == pytest.approx(float(pairs.mean()))
    flagged = float((scores_out > model.ood.threshold).double().mean())
    assert group["flagged"] == pytest.approx(flagged) and group["organ_claimed"] == pytest.approx(1 - flagged)
    assert "## Out of distribution" in result.output and "| unknown | 4 |" in result.output
    assert group["flagged"] > 0  # noise is like no colour field of the training set
    farthest = sorted(unknown.glob("*.png"))[int(scores_out.argmax())]
    classified = runner.invoke(app, ["classify", str(farthest), "--model", str(checkpoint), "--tta", "--json"])
    assert classified.exit_code == 0, classified.output
    record = json.loads(classified.output.strip().splitlines()[-1])
    assert record["ood_score"] == pytest.approx(float(scores_out.max()), abs=1e-3)  # the view as it is, not TTA's
    assert record["out_of_distribution"] is True and record["status"] == Status.UNCERTAIN.value


def test_a_near_ood_folder_is_measured_per_group_and_its_broken_files_are_listed(model, folders, tmp_path):
    """Each folder inside --ood is a group; an unreadable file, a 1x300 image and an empty group are listed or
    measured like any folder, never fatal (exit 3: some inputs failed)."""
    data, _ = folders
    near = tmp_path / "near"
    rng = np.random.default_rng(1)
    for group, count in (("noise", 3), ("stripes", 2)):
        (near / group).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(near / group / f"{i}.png")
    (near / "noise" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((1, 300, 3), np.uint8)).save(near / "stripes" / "thin.png")
    (near / "empty").mkdir()
    paths = sorted(data.rglob("*.png"))
    features, _, _ = extract_features(model, paths, cache_dir=tmp_path / "cache")
    subtypes = torch.tensor([model.taxonomy.subtype_index(p.parent.name) for p in paths])
    model.set_available_organs(["all", "brain"])
    fit_ood(model, FeatureSet(features, model.subtype_organ[subtypes], subtypes, [str(p) for p in paths],
                              ("identity",)), tpr=0.8)
    checkpoint = tmp_path / "m.safetensors"
    multihead.save(model, checkpoint)
    result = runner.invoke(app, ["evaluate", str(checkpoint), str(data), "--report", str(tmp_path / "report"),
                                 "--ood", str(near), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 3, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())["ood"]
    assert set(report["groups"]) == {"noise", "stripes"}  # the empty folder is no group
    assert (report["groups"]["noise"]["n_out"], report["groups"]["stripes"]["n_out"]) == (3, 3)
    assert [Path(path).name for path, _ in report["skipped"]] == ["broken.png"]
    assert "broken.png" in result.stderr and "| stripes | 3 |" in result.stdout


def test_evaluate_ood_needs_a_fitted_model(tiny_model, folders, tmp_path):
    data, unknown = folders
    checkpoint = tmp_path / "plain.safetensors"
    multihead.save(tiny_model, checkpoint)
    result = runner.invoke(app, ["evaluate", str(checkpoint), str(data), "--report", str(tmp_path / "r"),
                                 "--ood", str(unknown), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1 and "no fitted out-of-distribution score" in result.output


def test_training_fits_trust(folders, tmp_path):
    from multihead.training import TrainConfig
    from multihead.training.pipeline import train_from_folder

    data, _ = folders
    result = train_from_folder(data, trunk_weights=None, cache_dir=tmp_path / "cache",
                               config=TrainConfig(epochs=1, image_size=64, views="identity"))
    fitted = result.model.metadata["trust"]
    assert result.model.ood.fitted and fitted["ood"]["threshold"] == pytest.approx(float(result.model.ood.threshold))


def test_trust_figures_draw_from_numbers():
    from multihead.evaluation.trust_plots import plot_ood_scores, plot_reliability_diagram, plot_risk_coverage

    table = reliability(np.array([0.3, 0.8, 0.9]), np.array([0, 1, 1]))
    curve = risk_coverage(np.array([0.3, 0.8, 0.9]), np.array([0, 1, 1]))
    assert plot_reliability_diagram({"after": table}).get_title() == "reliability"
    ax = plot_risk_coverage({"joint": curve}, target=0.99, points={"chosen": (0.66, 1.0)})
    assert len(ax.lines) == 3
    ax = plot_ood_scores({"known": [1.0, 2.0, 3.0], "unknown": [50.0, 80.0]}, threshold=10.0)
    assert ax.get_xscale() == "log"
