import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.data import scan_dataset
from multihead.data.splits import Split, dihedral_hashes, group_near_duplicates, make_split
from multihead.evaluation import feature_metrics
from multihead.features import FeatureSet, extract_features
from multihead.training import TrainConfig, fit_heads

from .conftest import assert_handled_exit, copy_real_images


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, sample_dir):
    """Six real images per subtype of three organs, in the Kaggle layout (long organ folder names)."""
    organs = {"all": "ALL", "brain": "Brain Cancer", "lymphoma": "Lymphoma"}
    return copy_real_images(sample_dir, tmp_path_factory.mktemp("data"), organs, 6)


def test_scan_matches_organs_through_subtype_folders(small_dataset):
    scan = scan_dataset(small_dataset)
    assert len(scan.records) == 6 * 10
    assert {r.organ for r in scan.records} == {"all", "brain", "lymphoma"}
    assert scan.counts["brain_glioma"] == 6 and scan.counts["lung_aca"] == 0
    assert set(scan.empty_organs) == {"breast", "cervix", "kidney", "lung_colon", "oral"}


def test_scan_reports_unknown_subtypes_and_odd_files(tmp_path):
    (tmp_path / "Skin" / "melanoma").mkdir(parents=True)
    (tmp_path / "Skin" / "nevus").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "Skin" / "melanoma" / "a.png")
    with pytest.raises(ValueError, match="Skin/melanoma, Skin/nevus"):
        scan_dataset(tmp_path)
    (tmp_path / "Skin" / "melanoma" / "notes.txt").write_text("x")
    (tmp_path / "Skin" / "melanoma" / ".hidden.png").write_bytes(b"")
    (tmp_path / "Skin" / "melanoma" / "deeper").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "Skin" / "melanoma" / "deeper" / "b.png")
    scan = scan_dataset(tmp_path, "from-folders")
    assert scan.taxonomy.organ_names == ("Skin",) and scan.taxonomy.organ("Skin").subtype_names == ("melanoma", "nevus")
    assert [r.relpath for r in scan.records] == ["Skin/melanoma/a.png"]
    reasons = dict(scan.skipped)
    assert "not an image extension" in reasons["Skin/melanoma/notes.txt"]
    assert "below the subtype level" in reasons["Skin/melanoma/deeper/b.png"]


def test_dihedral_hash_groups_rotated_and_flipped_copies(real_images):
    image = Image.open(real_images[0])
    views = [image, image.transpose(Image.Transpose.ROTATE_90), image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
             image.transpose(Image.Transpose.TRANSPOSE), Image.open(real_images[5])]
    groups = group_near_duplicates(np.stack([dihedral_hashes(v) for v in views]))
    assert len(set(groups[:4].tolist())) == 1
    assert groups[4] != groups[0]


def test_split_is_stratified_seeded_and_never_splits_a_group(small_dataset, tmp_path):
    folder = small_dataset / "Brain Cancer" / "brain_glioma"
    original = sorted(folder.iterdir())[0]
    copy = folder / "rotated_copy.png"
    Image.open(original).transpose(Image.Transpose.ROTATE_270).save(copy)
    try:
        scan = scan_dataset(small_dataset)
        split, unreadable = make_split(scan, fractions=(0.5, 0.25, 0.25), seed=3)
        again, _ = make_split(scan, fractions=(0.5, 0.25, 0.25), seed=3)
    finally:
        copy.unlink()
    assert not unreadable and split.assignment == again.assignment
    relative = original.relative_to(small_dataset).as_posix()
    assert split.assignment[relative] == split.assignment["Brain Cancer/brain_glioma/rotated_copy.png"]
    assert split.info["grouped_files"] >= 2
    for subtype in ("all_pro", "lymph_fl"):
        assigned = [s for p, s in split.assignment.items() if f"/{subtype}/" in p]
        assert sorted(set(assigned)) == ["test", "train", "val"]
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json").assignment == split.assignment


def test_combined_loss_is_router_plus_true_head_cross_entropy(tiny_model):
    features = torch.randn(6, tiny_model.num_features)
    subtypes = torch.tensor([0, 5, 9, 17, 20, 25])
    out = tiny_model.forward_heads(features)
    joint_nll = F.nll_loss(out.joint_log_probs, subtypes, reduction="none")
    tax = multihead.MULTI_CANCER
    organs = torch.tensor([tax.subtype_organ_indices[s] for s in subtypes.tolist()])
    router_ce = F.cross_entropy(out.router_logits, organs, reduction="none")
    head_ce = torch.stack([
        F.cross_entropy(tiny_model.heads[tax.organ_names[o]](features[i:i + 1]),
                        torch.tensor([s - tax.head_offsets[o]]))
        for i, (o, s) in enumerate(zip(organs.tolist(), subtypes.tolist()))
    ])
    torch.testing.assert_close(joint_nll, router_ce + head_ce, rtol=1e-5, atol=1e-5)


def _separable_features(n_per_class=12, dim=512, seed=0, subtypes=(0, 1, 4, 5, 21, 22)):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(26, dim, generator=generator) * 2
    labels = torch.tensor(subtypes).repeat_interleave(n_per_class)
    features = centers[labels] + 0.5 * torch.randn(len(labels), dim, generator=generator)
    organs = torch.tensor([multihead.MULTI_CANCER.subtype_organ_indices[s] for s in labels.tolist()])
    return FeatureSet(features[:, None], organs, labels, [f"f{i}" for i in range(len(labels))], ("identity",))


@pytest.mark.parametrize("method", ["multihead", "per-organ", "flat"])
def test_every_method_learns_and_only_answers_trained_organs(tiny_model, method):
    model = multihead.create_model(tiny_model.trunk, seed=0)
    train, val = _separable_features(seed=0), _separable_features(seed=0, n_per_class=4)
    config = TrainConfig(method=method, epochs=8, views="identity", seed=0)
    history = fit_heads(model, train, val, config)
    assert history and all("val" in h for h in history)
    metrics = feature_metrics(model, val)
    assert metrics["accuracy"] >= 0.9 and metrics["router_accuracy"] >= 0.9
    assert model.available_organs == ("all", "brain", "lymphoma")
    out = model.forward_heads(torch.randn(10, model.num_features))
    assert torch.allclose(out.joint_probs.sum(1), torch.ones(10), atol=1e-5)
    assert model.joint == ("flat" if method == "flat" else "hierarchical")


def test_training_is_seeded(tiny_model):
    runs = []
    for _ in range(2):
        model = multihead.create_model(tiny_model.trunk, seed=0)
        fit_heads(model, _separable_features(), None, TrainConfig(epochs=2, views="identity", seed=7))
        runs.append(model.router.weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_feature_cache_extracts_once_and_rebuilds_damage(tiny_model, real_images, tmp_path, monkeypatch):
    calls = []
    import multihead.features.extract as features_module

    original = features_module.run_features

    def counting(model, batch, config):
        calls.append(len(batch))
        return original(model, batch, config)

    monkeypatch.setattr(features_module, "run_features", counting)
    paths = real_images[:5]
    first, ok, failures = extract_features(tiny_model, paths, views=("identity", "hflip"), cache_dir=tmp_path)
    assert first.shape == (5, 2, 512) and ok == list(range(5)) and not failures and sum(calls) == 10
    calls.clear()
    second, _, _ = extract_features(tiny_model, paths, views=("identity", "hflip"), cache_dir=tmp_path)
    assert calls == [] and torch.equal(first, second)
    for shard in tmp_path.rglob("*.safetensors"):
        shard.write_bytes(shard.read_bytes()[:100])
    third, _, _ = extract_features(tiny_model, paths, views=("identity", "hflip"), cache_dir=tmp_path)
    assert sum(calls) == 10 and torch.allclose(first, third)


def test_unreadable_files_are_skipped_and_listed(tiny_model, real_images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    features, ok, failures = extract_features(tiny_model, [real_images[0], broken, real_images[1]],
                                              cache_dir=tmp_path / "cache")
    assert ok == [0, 2] and features.shape[0] == 2
    assert failures[0][0] == 1 and "broken.jpg" in failures[0][1]


runner = CliRunner()


def test_train_cli_end_to_end(small_dataset, tmp_path):
    out = tmp_path / "model.safetensors"
    args = ["train", str(small_dataset), "--out", str(out), "--trunk-weights", "none", "--image-size", "64",
            "--epochs", "2", "--views", "identity", "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    model = multihead.load(out)
    assert model.available_organs == ("all", "brain", "lymphoma")
    meta = model.metadata
    assert meta["training"]["config"]["epochs"] == 2 and len(meta["history"]) == 2
    assert set(meta["metrics"]) == {"train", "val", "test"}
    split_file = tmp_path / "model.split.json"
    assert json.loads(split_file.read_text())["files"] == meta["split"]["files"]
    # reusing the split and the cache re-extracts nothing and gives the same split
    again = runner.invoke(app, [*args, "--split", str(split_file), "--method", "per-organ"])
    assert again.exit_code == 0, again.output
    assert multihead.load(out).metadata["split"]["files"] == meta["split"]["files"]


def test_train_cli_rejects_unknown_options(small_dataset, tmp_path):
    result = runner.invoke(app, ["train", str(small_dataset), "--out", str(tmp_path / "m.safetensors"),
                                 "--method", "nine-models", "--trunk-weights", "none"])
    assert_handled_exit(result, 2, "'nine-models' is not one of multihead, per-organ, flat")
    from multihead.training.config import METHODS

    assert METHODS == ("multihead", "per-organ", "flat")  # the CLI's choices, kept free of a torch import


def test_temperature_scaling_changes_no_prediction_and_lowers_nll(tiny_model):
    from multihead.training.posthoc import fit_temperatures

    model = multihead.create_model(tiny_model.trunk, seed=0)
    train = _separable_features(seed=0, n_per_class=8)
    val = _separable_features(seed=1, n_per_class=40)
    val.features += 3 * torch.randn(val.features.shape, generator=torch.Generator().manual_seed(2))  # some mistakes
    fit_heads(model, train, None, TrainConfig(epochs=30, lr=1e-2, views="identity"))  # over-confident
    before = model.forward_heads(val.features[:, 0])
    nll_before = feature_metrics(model, val)["loss"]
    temperatures = fit_temperatures(model, val)
    after = model.forward_heads(val.features[:, 0])
    assert temperatures["heads"]["cervix"] == 1.0  # no validation images
    assert any(t != 1.0 for t in temperatures["heads"].values())
    assert torch.equal(model.decide(before)[1], model.decide(after)[1])
    assert feature_metrics(model, val)["loss"] <= nll_before + 1e-6
    torch.testing.assert_close(after.joint_probs.sum(1), torch.ones(len(val)))


def test_augmented_views_are_seeded_and_differ(tiny_model, real_images, tmp_path):
    from multihead.features import augmented_features

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nothing")
    paths = [real_images[0], broken, real_images[1]]
    first, ok, failures = augmented_features(tiny_model, paths, n_views=3, seed=5, num_workers=0)
    again, _, _ = augmented_features(tiny_model, paths, n_views=3, seed=5, num_workers=0)
    assert first.shape == (2, 3, 512) and ok == [0, 2] and failures[0][0] == 1
    assert torch.equal(first, again)
    assert not torch.allclose(first[:, 0], first[:, 1])


def test_online_mode_trains_from_folder(small_dataset, tmp_path):
    from multihead.training.pipeline import train_from_folder

    config = TrainConfig(epochs=2, views="augmented", image_size=64)
    result = train_from_folder(small_dataset, config=config, trunk_weights=None, cache_dir=tmp_path)
    assert result.model.metadata["training"]["config"]["views"] == "augmented"
    assert len(result.history) == 2 and result.model.available_organs == ("all", "brain", "lymphoma")
