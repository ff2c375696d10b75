"""Tuning the top of the shared trunk: the split is exact, the map cache is keyed right, tuning moves only the
top, and a tuned model saves, loads and classifies like any other (tiny random-weight trunks, real pixels)."""

import json
import re
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import multihead
from multihead._precision import native_bf16
from multihead.cli import app
from multihead.data import scan_dataset
from multihead.data.splits import make_split
from multihead.features.maps import MapCache, labelled_maps
from multihead.model.trunk import create_trunk
from multihead.model.trunk_split import AUTO_TUNE_FROM, split_trunk, untuned_features
from multihead.training import TrainConfig
from multihead.training.pipeline import train_from_folder
from multihead.training.tune import _augment, _schedule, _tuning_loss

from .conftest import assert_handled_exit, copy_real_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"image_size": 64, "epochs": 2, "tune_epochs": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, sample_dir):
    """Five real images per subtype of two organs."""
    return copy_real_images(sample_dir, tmp_path_factory.mktemp("tune-data"), ("all", "lymphoma"), 5)


@pytest.mark.parametrize(("name", "cut", "below", "above"), [
    ("resnet18", "auto", ("layer1", "layer2", "layer3"), ()),
    ("resnet18", "layer3", ("layer1", "layer2"), ("layer3",)),
    ("resnet18", "stem", (), ("layer1", "layer2", "layer3")),
    ("mobilenet_v2", "auto", ("features.3", "features.6", "features.10", "features.13"),
     ("features.16", "features.17")),
    ("mobilenet_v2", "features.18", ("features.3", "features.6", "features.10", "features.13", "features.16",
                                     "features.17"), ()),
])
def test_bottom_then_top_gives_exactly_the_trunks_features(name, cut, below, above):
    torch.manual_seed(0)
    trunk = create_trunk(name, weights=None, stages="auto")
    parts = split_trunk(trunk, cut)
    assert (parts.stages_below, parts.stages_above) == (below, above)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(parts.top_forward(*parts.bottom_forward(images)), trunk(images))


def test_auto_cuts_are_the_documented_ones():
    assert AUTO_TUNE_FROM["mobilenet_v2"] == "features.14" and AUTO_TUNE_FROM["resnet18"] == "layer4"
    assert split_trunk(create_trunk("mobilenet_v2", weights=None), "auto").cut == "features.14"


def test_the_top_shares_the_trunks_weights():
    """Tuning the top must tune the one trunk that inference runs, not a copy."""
    trunk = create_trunk("resnet18", weights=None)
    parts = split_trunk(trunk, "layer4")
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = trunk(images)
        parts.top_parameters()[0].add_(1.0)
        assert not torch.equal(trunk(images), before)
    assert all(p.data_ptr() != q.data_ptr() for p in parts.bottom.parameters() for q in parts.top_parameters())


@pytest.mark.parametrize(("cut", "message"), [
    ("layer4.1.conv2", "2 values cross the cut"),
    ("layer9", "has no module 'layer9'"),
    ("none", "nothing to split"),
])
def test_bad_cuts_are_refused_with_the_reason(cut, message):
    with pytest.raises(ValueError, match=message):
        split_trunk(create_trunk("resnet18", weights=None), cut)


def test_a_cut_around_a_pooled_stage_is_refused():
    trunk = create_trunk("resnet18", weights=None, stages=("layer3.1",))
    with pytest.raises(ValueError, match="pooled stages \\['layer3.1'\\] lie inside it"):
        split_trunk(trunk, "layer3")


@pytest.mark.parametrize(("changes", "message"), [
    ({"method": "per-organ", "tune_from": "auto"}, "one tuned trunk cannot serve them"),
    ({"views": "augmented", "tune_from": "auto"}, "tune_views"),
    ({"tune_batchnorm": "sometimes"}, "tune_batchnorm"),
    ({"tune_views": "rotations"}, "tune_views"),
    ({"tune_epochs": 0}, "tune_epochs"),
    ({"tune_lr": 0.0}, "tune_lr"),
    ({"tune_precision": "fp16"}, "tune_precision"),
    ({"tune_label_smoothing": 1.0}, "tune_label_smoothing"),
])
def test_config_refuses_what_cannot_be_tuned(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_frozen_stays_the_default():
    assert TrainConfig().tune_from == "none"
    from multihead.training import PRESETS

    assert PRESETS["paper"].tune_from == "none"


def test_map_cache_is_read_back_memory_mapped_and_keyed_by_file_and_cut(tiny_data, tmp_path, monkeypatch):
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64, trunk_stages="auto")
    parts = split_trunk(model.trunk, "auto")
    scan = scan_dataset(tiny_data)
    files = [r.relpath for r in scan.records[:6]]
    calls = []
    real_bottom = parts.bottom_forward
    monkeypatch.setattr(parts, "bottom_forward", lambda images: calls.append(len(images)) or real_bottom(images))
    first, failed = labelled_maps(model, parts, scan, files, cache_dir=tmp_path, backend="torch")
    assert failed == [] and sum(calls) == 6
    maps, pooled = first.cache.gather(first.locations)
    assert isinstance(first.cache._shards[0][0], np.memmap) and first.cache._shards[0][0].dtype == np.float16
    with torch.no_grad():
        expected_maps, expected_pooled = real_bottom(model.preprocessing.normalize(
            torch.stack([model.preprocessing.load(scan.records[i].path) for i in range(6)])))
    torch.testing.assert_close(maps, expected_maps.half().float())
    torch.testing.assert_close(pooled, expected_pooled)

    calls.clear()
    again, _ = labelled_maps(model, parts, scan, files, cache_dir=tmp_path)  # a fresh cache object reads the disk
    assert calls == [] and again.relpaths == first.relpaths

    edited = scan.records[0].path  # the same path with other bytes: computed again
    original = edited.read_bytes()
    try:
        shutil.copy(scan.records[7].path, edited)
        labelled_maps(model, parts, scan, files, cache_dir=tmp_path, backend="torch")
        assert calls == [1]
    finally:
        edited.write_bytes(original)

    other_cut = split_trunk(model.trunk, "layer3")  # another cut: another cache folder, nothing shared
    assert MapCache(tmp_path, model, other_cut).directory != first.cache.directory


@pytest.mark.parametrize(("name", "cut"), [("mobilenet_v2", "auto"), ("resnet18", "layer1")])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_maps_from_a_cpu_runtime_are_torchs_maps(tiny_data, tmp_path, backend, name, cut):
    """The bottom on ONNX Runtime or OpenVINO (what "auto" takes when installed) fills the cache with the maps and
    pooled stages PyTorch computes, up to the cache's float16 rounding; a cut with no pooled stage below too."""
    pytest.importorskip(backend)
    model = multihead.create_model(name, trunk_weights=None, image_size=64, trunk_stages="auto")
    parts = split_trunk(model.trunk, cut)
    scan = scan_dataset(tiny_data)
    files = [r.relpath for r in scan.records[:5]]
    on_torch, _ = labelled_maps(model, parts, scan, files, cache_dir=tmp_path / "torch", backend="torch")
    on_runtime, failed = labelled_maps(model, parts, scan, files, cache_dir=tmp_path / backend, backend=backend)
    assert failed == [] and on_runtime.relpaths == on_torch.relpaths
    expected, found = on_torch.cache.gather(on_torch.locations), on_runtime.cache.gather(on_runtime.locations)
    assert found[0].shape == expected[0].shape and found[1].shape == expected[1].shape
    assert (found[1].shape[1] == 0) == (cut == "layer1")
    torch.testing.assert_close(found[0], expected[0], rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(found[1], expected[1], rtol=1e-4, atol=1e-4)


def test_auto_maps_fall_back_to_torch_when_the_runtime_fails(tiny_data, tmp_path, monkeypatch, caplog):
    import multihead.features.maps as maps_module
    import multihead.inference.backends as backends

    def broken(*args, **kwargs):
        raise RuntimeError("openvino (fp32) maps differ from PyTorch's by 1 (relative)")

    monkeypatch.setattr(maps_module, "resolve_backend", lambda backend, precision, device: "openvino")
    monkeypatch.setattr(backends, "_cache", OrderedDict())
    monkeypatch.setattr(backends, "open_bottom_runtime", broken)
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64)
    parts = split_trunk(model.trunk, "auto")
    scan = scan_dataset(tiny_data)
    data, failed = labelled_maps(model, parts, scan, [r.relpath for r in scan.records[:2]], cache_dir=tmp_path)
    assert failed == [] and len(data) == 2
    labelled_maps(model, parts, scan, [r.relpath for r in scan.records[2:3]], cache_dir=tmp_path)
    assert caplog.text.count("the bottom runs in PyTorch") == 1  # the failure is remembered, not retried
    assert "differ from PyTorch's" in caplog.text
    with pytest.raises(RuntimeError, match="differ from PyTorch's"):  # asked for by name: no silent fallback
        labelled_maps(model, parts, scan, [r.relpath for r in scan.records[3:5]], cache_dir=tmp_path,
                      backend="openvino")


def test_one_bottom_is_compiled_once_for_every_part_of_a_run(tiny_data, tmp_path, monkeypatch):
    """The training, validation and test maps of a run share one compiled bottom; another cut gets its own."""
    pytest.importorskip("onnxruntime")
    import multihead.inference.backends as backends

    built, compile_bottom = [], backends.open_bottom_runtime
    monkeypatch.setattr(backends, "_cache", OrderedDict())
    monkeypatch.setattr(backends, "open_bottom_runtime",
                        lambda *args, **kwargs: built.append(args[1].cut) or compile_bottom(*args, **kwargs))
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64)
    scan = scan_dataset(tiny_data)
    parts = split_trunk(model.trunk, "auto")
    for part in (scan.records[:2], scan.records[2:4], scan.records[4:5]):  # train, validation, test: cold each
        labelled_maps(model, parts, scan, [r.relpath for r in part], cache_dir=tmp_path, backend="onnxruntime")
    labelled_maps(model, split_trunk(model.trunk, "layer3"), scan, [scan.records[0].relpath], cache_dir=tmp_path,
                  backend="onnxruntime")
    assert built == [parts.cut, "layer3"]


def test_a_shard_of_another_bottom_or_a_damaged_one_is_not_used(tiny_data, tmp_path, caplog):
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64)
    parts = split_trunk(model.trunk, "auto")
    scan = scan_dataset(tiny_data)
    files = [r.relpath for r in scan.records[:3]]
    data, _ = labelled_maps(model, parts, scan, files, cache_dir=tmp_path)
    listing = next(data.cache.directory.glob("*.json"))
    info = json.loads(listing.read_text())
    info["identity"]["bottom_fingerprint"] = "0" * 64
    listing.write_text(json.dumps(info))
    assert MapCache(tmp_path, model, parts).index == {}
    assert "belongs to another trunk bottom" in caplog.text
    listing.write_text("{not json")
    assert MapCache(tmp_path, model, parts).index == {}
    assert not listing.exists() and "damaged map cache shard" in caplog.text


def test_map_augmentation_keeps_content_and_covers_the_dihedral_group():
    maps = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3).repeat(64, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(_augment(maps, "none", generator), maps)
    flipped = _augment(maps, "flips", generator)
    assert torch.equal(flipped.flatten(1).sort(1).values, maps.flatten(1).sort(1).values)
    seen = {tuple(m.flatten().tolist()) for m in _augment(maps[::2], "dihedral", generator)}
    assert len(seen) == 8  # all eight symmetries of a square map with distinct values
    assert len({tuple(m.flatten().tolist()) for m in flipped[::2]}) == 4


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_tuning_loss_is_torchs_weighted_label_smoothed_cross_entropy(smoothing):
    torch.manual_seed(0)
    joint = torch.randn(6, 26).log_softmax(1)
    targets, weights = torch.randint(0, 26, (6,)), torch.rand(6) + 0.5
    per_image = torch.nn.functional.cross_entropy(joint, targets, reduction="none", label_smoothing=smoothing)
    expected = (per_image * weights).sum() / weights.sum()
    assert torch.allclose(_tuning_loss(joint, targets, weights, smoothing), expected, atol=1e-6)


def test_schedule_warms_up_then_decays_to_zero():
    factor = _schedule(200)
    values = [factor(step) for step in range(201)]
    assert values[0] == pytest.approx(1 / 20)
    assert values[:20] == sorted(values[:20]) and values[19:] == sorted(values[19:], reverse=True)  # up, then down
    assert values[19] == pytest.approx(0.98, abs=0.01) and values[100] == pytest.approx(0.5) and values[200] == 0.0


def _always_better():
    """A selection score that rises every epoch: the last tuning epoch is kept (a tiny validation split
    cannot be relied on to prefer tuning)."""
    scores = iter(range(100))
    return lambda model, data: float(next(scores))


@pytest.fixture(scope="module")
def tuned(tiny_data, tmp_path_factory):
    torch.manual_seed(0)
    cache = tmp_path_factory.mktemp("tune-cache")
    config = TrainConfig(tune_from="layer4", **TINY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(multihead.training.tune, "_selection_score", _always_better())
        result = train_from_folder(tiny_data, config=config, trunk="resnet18", trunk_weights=None, cache_dir=cache)
    return result, cache


@pytest.mark.parametrize("batchnorm", ["train", "adapted"])
def test_when_no_tuning_epoch_wins_the_trunk_stays_published(tiny_data, tmp_path, monkeypatch, batchnorm):
    """Adapted statistics included: the published top competes with its own statistics and heads."""
    scores = iter([1.0, 0.5, 0.4])  # the warmed-up frozen top, then two worse epochs
    monkeypatch.setattr(multihead.training.tune, "_selection_score", lambda model, data: next(scores))
    torch.manual_seed(0)
    config = TrainConfig(tune_from="layer4", tune_batchnorm=batchnorm, **TINY)
    result = train_from_folder(tiny_data, config=config, trunk="resnet18", trunk_weights=None, cache_dir=tmp_path)
    torch.manual_seed(0)
    fresh = multihead.create_model("resnet18", trunk_weights=None, image_size=64, trunk_stages="auto")
    assert result.model.trunk.tuned_from is None
    for key, value in result.model.trunk.network.state_dict().items():
        assert torch.equal(value, fresh.trunk.network.state_dict()[key]), key


@pytest.mark.parametrize(("patience", "epochs_run", "kept"), [(None, 6, [3, 6]), (2, 5, [3])])
def test_patience_counts_the_tunings_own_progress_not_the_frozen_top(tiny_data, tmp_path, monkeypatch, patience,
                                                                     epochs_run, kept):
    """Every run first dips below the warmed-up frozen top; patience must not stop it there (counted against the
    frozen top, patience 2 stopped this run after epoch 2 with the frozen top kept)."""
    scores = iter([0.9, 0.5, 0.6, 0.95, 0.7, 0.8, 0.99])  # the frozen top, then six tuning epochs
    monkeypatch.setattr(multihead.training.tune, "_selection_score", lambda model, data: next(scores))
    torch.manual_seed(0)
    config = TrainConfig(tune_from="layer4", **{**TINY, "tune_epochs": 6}, tune_patience=patience)
    result = train_from_folder(tiny_data, config=config, trunk="resnet18", trunk_weights=None, cache_dir=tmp_path)
    tuning = [r for r in result.history if r["stage"] == "tune"]
    assert {r["stage"] for r in result.history} == {"warm-up", "tune"}  # each epoch says what it trained
    assert all(r["part"].startswith("warm-up:") for r in result.history if r["stage"] == "warm-up")
    assert len(tuning) == epochs_run and [r["epoch"] for r in tuning if r.get("best")] == kept
    assert result.model.trunk.tuned_from == "layer4"


@pytest.mark.parametrize(("avx512_bf16", "amx", "native"), [(False, False, False), (True, False, True),
                                                         (False, True, True)])
def test_native_bf16_on_the_cpu_means_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bf16(torch.device("cpu")) is native
    assert native_bf16(torch.device("meta")) is False


def test_tuning_precision_auto_is_bf16_only_where_the_hardware_computes_it(tiny_data, tmp_path, monkeypatch):
    """``auto`` follows :func:`native_bf16`; what ran is recorded per epoch, and bf16 really changes the steps'
    arithmetic (the tuned weights differ from fp32's)."""
    def tuned(precision: str, native: bool) -> tuple[set[object], dict[str, torch.Tensor]]:
        monkeypatch.setattr(multihead.training.tune, "native_bf16", lambda device: native)
        monkeypatch.setattr(multihead.training.tune, "_selection_score", _always_better())  # the last epoch is kept
        torch.manual_seed(0)
        config = TrainConfig(tune_from="layer4", **TINY, tune_precision=precision)
        result = train_from_folder(tiny_data, config=config, trunk="resnet18", trunk_weights=None, cache_dir=tmp_path)
        ran = {r["precision"] for r in result.history if str(r["part"]).startswith("tune")}
        return ran, result.model.trunk.network.layer4.state_dict()

    fp32, weights_fp32 = tuned("fp32", native=True)
    auto_without, weights_without = tuned("auto", native=False)
    auto_with, weights_with = tuned("auto", native=True)
    assert (fp32, auto_without, auto_with) == ({"fp32"}, {"fp32"}, {"bf16"})
    assert all(torch.equal(weights_without[k], weights_fp32[k]) for k in weights_fp32)
    assert not all(torch.equal(weights_with[k], weights_fp32[k]) for k in weights_fp32)


def test_tuning_moves_the_top_only_and_is_recorded(tuned, tiny_data):
    result, _ = tuned
    model = result.model
    torch.manual_seed(0)
    fresh = multihead.create_model("resnet18", trunk_weights=None, image_size=64, trunk_stages="auto")
    before, after = fresh.trunk.network.state_dict(), model.trunk.network.state_dict()
    changed = {k.split(".")[0] for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"layer4"}  # weights and BatchNorm statistics of layer4; nothing below it
    assert model.trunk.tuned_from == "layer4" and model.trunk.weights_id is None
    assert not any(p.requires_grad for p in model.trunk.parameters())
    tuning = [r for r in result.history if str(r["part"]).startswith("tune")]
    assert [r["epoch"] for r in tuning] == [1, 2] and all("val" in r for r in tuning) and tuning[-1]["best"]
    assert any(str(r["part"]).startswith("warm-up") for r in result.history)
    assert set(result.timings) >= {"maps_s", "tune_s"}
    assert model.metadata["trust"] is not None and model.metadata["training"]["config"]["tune_from"] == "layer4"


@pytest.mark.parametrize(("tuned_from", "expected"), [(None, 960), ("layer4", 64 + 128 + 256), ("layer3", 64 + 128),
                                                   ("stem", 0)])
def test_untuned_features_are_the_pooled_stages_below_the_cut(tuned_from, expected):
    trunk = create_trunk("resnet18", weights=None, stages="auto")
    if tuned_from is not None:
        trunk.mark_tuned(tuned_from)
    assert untuned_features(trunk) == expected


def test_a_tuned_models_ood_score_reads_only_the_untuned_features(tuned):
    """The tuned stages lose what tells an unknown image from a slide (docs/trust.md): the OOD score must not
    read them, so changing them leaves every score as it was."""
    model = tuned[0].model
    below = untuned_features(model.trunk)
    assert model.metadata["trust"]["ood"]["features_read"] == below < model.trunk.num_features
    unread = model.ood.projection[below:]
    assert model.ood.fitted and torch.equal(unread, torch.zeros_like(unread))
    assert model.ood.projection[:below].abs().sum() > 0
    features = torch.randn(4, model.trunk.num_features)
    moved = features.clone()
    moved[:, below:] += 100.0
    with torch.no_grad():
        assert torch.equal(model.ood_score(features), model.ood_score(moved))


def test_adapted_statistics_are_the_training_maps_own(tiny_data, tmp_path):
    """adapt_batchnorm: the first BatchNorm of the top gets the mean and variance of its inputs over the training
    maps (a cumulative average of the batches), weights and the bottom untouched, momentum restored."""
    from multihead.training.tune import adapt_batchnorm

    torch.manual_seed(0)
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64, trunk_stages="auto")
    parts = split_trunk(model.trunk, "layer4")
    scan = scan_dataset(tiny_data)
    maps, _ = labelled_maps(model, parts, scan, [r.relpath for r in scan.records],
                            cache_dir=tmp_path)
    before = {k: v.clone() for k, v in model.trunk.network.state_dict().items()}
    inputs = []
    first = model.trunk.network.layer4[0].bn1
    hook = model.trunk.network.layer4[0].conv1.register_forward_hook(lambda m, i, out: inputs.append(out.detach()))
    adapt_batchnorm(parts, maps, model, batch_size=8)
    hook.remove()
    seen = torch.cat(inputs)
    batches = seen.split(8)
    # momentum None: the plain mean over the batches of each batch's mean and unbiased variance
    expected_mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(first.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    expected_var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(first.running_var, expected_var, rtol=1e-4, atol=1e-5)
    assert first.momentum == 0.1 and not first.training
    after = model.trunk.network.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("layer4.") and ("running_" in k or k.endswith("num_batches_tracked"))
                           for k in changed)


def test_adapted_batchnorm_warms_the_heads_up_again(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(multihead.training.tune, "_selection_score", _always_better())
    torch.manual_seed(0)
    config = TrainConfig(tune_from="layer4", tune_batchnorm="adapted", **TINY)
    result = train_from_folder(tiny_data, config=config, trunk="resnet18", trunk_weights=None, cache_dir=tmp_path)
    parts = [str(r["part"]) for r in result.history]
    assert any(p.startswith("warm-up") for p in parts) and any(p.startswith("adapted warm-up") for p in parts)
    assert parts.index(next(p for p in parts if p.startswith("adapted"))) < parts.index(
        next(p for p in parts if p.startswith("tune")))
    assert result.model.trunk.tuned_from == "layer4"
    with pytest.raises(ValueError, match="tune_batchnorm must be one of 'train', 'frozen', 'adapted'"):
        TrainConfig(tune_from="layer4", tune_batchnorm="recomputed")


def test_batchnorm_frozen_keeps_the_statistics(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(multihead.training.tune, "_selection_score", _always_better())
    torch.manual_seed(0)
    config = TrainConfig(tune_from="layer4", tune_batchnorm="frozen", **TINY)
    model = train_from_folder(tiny_data, config=config, trunk="resnet18", trunk_weights=None,
                              cache_dir=tmp_path).model
    torch.manual_seed(0)
    fresh = multihead.create_model("resnet18", trunk_weights=None, image_size=64, trunk_stages="auto")
    for key, value in model.trunk.network.state_dict().items():
        if "running_" in key:
            assert torch.equal(value, fresh.trunk.network.state_dict()[key]), key


def test_a_tuned_model_saves_loads_and_classifies_the_same(tuned, tmp_path, real_images):
    model = tuned[0].model.eval()
    path = tmp_path / "tuned.safetensors"
    multihead.save(model, path)
    header = multihead.model.checkpoint.read_header(path)
    assert header["trunk"]["embedded"] and header["trunk"]["tuned_from"] == "layer4"
    loaded = multihead.load(path)
    assert loaded.trunk.tuned_from == "layer4" and loaded.trunk.fingerprint == model.trunk.fingerprint
    ours = multihead.classify(real_images[:3], model=model)
    theirs = multihead.classify(real_images[:3], model=loaded)
    assert [p.to_dict() for p in ours] == [p.to_dict() for p in theirs]
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 0 and "stages from layer4 up were trained" in result.output


def test_the_stem_tunes_the_whole_trunk_without_a_cache(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(multihead.training.tune, "_selection_score", _always_better())
    torch.manual_seed(0)
    config = TrainConfig(tune_from="stem", **{**TINY, "tune_epochs": 1})
    model = train_from_folder(tiny_data, config=config, trunk="resnet18", trunk_weights=None,
                              cache_dir=tmp_path).model
    assert model.trunk.tuned_from == "stem"
    assert not list(tmp_path.glob("*-maps-*"))  # nothing below the cut: images are read live
    torch.manual_seed(0)
    fresh = multihead.create_model("resnet18", trunk_weights=None, image_size=64, trunk_stages="auto")
    assert not torch.equal(model.trunk.network.conv1.weight, fresh.trunk.network.conv1.weight)


def test_cli_train_with_tune_from(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(multihead.training.tune, "_selection_score", _always_better())
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(app, [
        "train", str(tiny_data), "--out", str(out), "--trunk-weights", "none", "--image-size", "64", "--epochs", "2",
        "--tune-from", "auto", "--tune-epochs", "1", "--tune-batchnorm", "adapted", "--tune-views", "dihedral",
        "--tune-head-lr", "3e-4", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "tuning trunk 'resnet18' from 'layer4' up" in result.stderr
    header = multihead.model.checkpoint.read_header(out)
    assert header["trunk"]["tuned_from"] == "layer4"
    config = header["metadata"]["training"]["config"]
    assert (config["tune_batchnorm"], config["tune_views"], config["tune_head_lr"]) == ("adapted", "dihedral", 3e-4)
    # the option reached the tuning, not only the recorded config; each warm-up's epochs are named as such
    assert re.search(r"(?m)^warm-up:multihead epoch 2", result.stderr)
    assert re.search(r"(?m)^adapted warm-up:multihead epoch 2", result.stderr)
    wrong = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(out), "--tune-from", "auto",
                                     "--tune-batchnorm", "sometimes"])
    assert_handled_exit(wrong, 2, "'sometimes' is not one of train, frozen, adapted")
    bad = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(out), "--trunk-weights", "none",
                                   "--method", "per-organ", "--tune-from", "auto"])
    assert_handled_exit(bad, 2, "one tuned trunk cannot serve them")


def test_split_is_reused_for_tuning(tiny_data, tuned):
    """The tuned run trained on the leak-free split like a frozen one: same files, no overlap."""
    result, _ = tuned
    split, _ = make_split(scan_dataset(tiny_data), seed=0)
    assert result.split.assignment == split.assignment


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_tuned_model_exports_and_explains_like_any_other(tuned, tmp_path, real_images, backend):
    """The bundled model's CPU path is the exported graph: a tuned trunk must give torch's outputs there too."""
    from multihead.inference import InferenceConfig, run_batch, run_features
    from multihead.inference.backends import open_runtime
    from multihead.inference.export import export_onnx

    path = tmp_path / "tuned.safetensors"
    multihead.save(tuned[0].model, path)
    model = multihead.load(path)
    images = torch.stack([model.preprocessing.load(p) for p in real_images[:4]])
    outputs = open_runtime(model, backend, onnx_file=export_onnx(model, tmp_path / "tuned.onnx")).run(images)
    torch.testing.assert_close(outputs["features"], run_features(model, images, InferenceConfig(backend="torch")),
                               rtol=1e-4, atol=1e-4)
    expected = run_batch(model, images, InferenceConfig(backend="torch", channels_last=False))
    torch.testing.assert_close(outputs["joint_log_probs"], expected.joint_log_probs, rtol=1e-4, atol=1e-4)
    explanation = multihead.explain(real_images[0], model=model)
    assert explanation.organ_map.max() == pytest.approx(1.0)


def test_the_epoch_score_pools_organs_too_small_to_weigh(monkeypatch):
    """Two validation images of an organ must not swing the epoch's score by a sixth each."""
    import multihead.training.tune as tune

    per_organ = {"all": (1.0, 100), "brain": (0.5, 100), "breast": (0.0, 2), "oral": (1.0, 2)}
    monkeypatch.setattr(tune, "organ_accuracies", lambda model, data: per_organ)
    assert tune.organ_balanced_accuracy(None, None) == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    per_organ = {"breast": (1.0, 2), "oral": (0.0, 4)}  # nothing large: every organ alike
    assert tune.organ_balanced_accuracy(None, None) == pytest.approx(0.5)


def test_unfolding_the_standardisation_is_the_inverse_of_folding_it(tiny_model):
    """Tuning continues the heads in the standardised space they were warmed up in, and folds them back."""
    import copy

    from multihead.training.heads import fold_standardization, unfold_standardization

    model = copy.deepcopy(tiny_model)
    mean, std = torch.randn(model.num_features), torch.rand(model.num_features) + 0.5
    features = torch.randn(4, model.num_features)
    before = model.head_logits(features)
    unfold_standardization(model, mean, std)
    torch.testing.assert_close(model.head_logits((features - mean) / std), before, rtol=1e-5, atol=1e-5)
    fold_standardization(model, mean, std)
    torch.testing.assert_close(model.head_logits(features), before, rtol=1e-5, atol=1e-5)


def test_a_tuned_trunk_with_published_weights_is_embedded_not_referenced(tmp_path):
    """Published weights are referenced by id; once tuned they are not those weights any more."""
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64)
    model.trunk.weights_id = "ResNet18_Weights.IMAGENET1K_V1"  # as if loaded from torchvision's published file
    before = model.trunk.fingerprint
    with torch.no_grad():
        model.trunk.network.layer4[1].conv2.weight.add_(0.01)
    model.trunk.mark_tuned("layer4")
    assert model.trunk.weights_id is None and model.trunk.fingerprint != before
    multihead.save(model, tmp_path / "m.safetensors")
    header = multihead.model.checkpoint.read_header(tmp_path / "m.safetensors")
    assert header["trunk"]["embedded"] and header["trunk"]["tuned_from"] == "layer4"
