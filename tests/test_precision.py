"""Reduced precision (issue 37): the accuracy guard, what ``auto`` picks, the cached int8 trunk, the CLI's
``--precision`` and ``tune-precision``. Never timings: speeds appear only as recorded fields."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.data.splits import Split
from multihead.features.cache import FeatureCache
from multihead.inference import InferenceConfig, run_features
from multihead.model import precision as policy
from multihead.model.metadata import MetadataError
from multihead.model.records import PrecisionRow, check_metadata

from .conftest import assert_handled_exit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHA = "ab" * 32
REAL_INT8_GRAPH_HERE = policy.int8_graph_here  # the real check, before the `machine` fixture stands in for it


def _guard(**rows) -> dict:
    return {"precision_guard": {"precisions": rows, "images": 100, "subset": "val",
                                "reference": {"precision": "fp32", "backend": "openvino", "accuracy": 0.9}}}


def _row(agreement=0.999, change=0.0, backend="openvino", speed=None, **more) -> dict:
    row = {"backend": backend, "agreement": agreement, "accuracy": 0.9 + change, "accuracy_change": change, **more}
    if speed is not None:
        row["speed_vs_fp32"] = speed
    return row


@pytest.fixture
def machine(monkeypatch):
    """This machine as the test says: which backends are installed, what OpenVINO runs, what the CPU computes."""
    def set_machine(*, backends=("torch", "openvino"), openvino=("fp32", "bf16", "int8"),
                    native=("fp32", "bf16", "int8"), int8_here=None):
        monkeypatch.setattr(policy, "installed_backends", lambda: tuple(backends))
        monkeypatch.setattr(policy, "openvino_precisions", lambda: tuple(openvino) if "openvino" in backends else ())
        monkeypatch.setattr(policy, "native_cpu_precisions", lambda: tuple(native))
        monkeypatch.setattr(policy, "int8_graph_here", lambda *args, **kwargs: int8_here)
    return set_machine


def _choose(metadata, model, **kwargs):
    return policy.choose_precision(metadata, model.trunk.spec(), model.preprocessing, **kwargs)


# --- the rule -----------------------------------------------------------------------------------------------

def test_the_guard_rule_is_99_5_percent_agreement_and_0_3_points(tiny_model):
    def row(**values):
        return PrecisionRow(**_row(**values))

    assert policy.passes(row(agreement=0.995, change=-0.003))
    assert not policy.passes(row(agreement=0.9949, change=0.0))
    assert not policy.passes(row(agreement=1.0, change=-0.0031))
    assert policy.verdict(row(agreement=0.99, change=-0.01)) == "fails: agreement, accuracy"
    assert policy.verdict(row(agreement=0.999, change=-0.01)) == "fails: accuracy"


def test_auto_without_a_guard_runs_fp32_and_says_why(tiny_model, machine):
    machine()
    choice = _choose({}, tiny_model)
    assert (choice.precision, "tune-precision") == ("fp32", "tune-precision") and "no accuracy guard" in choice.reason
    assert InferenceConfig().resolve("cpu", tiny_model).precision == "fp32"
    assert InferenceConfig().resolve("cpu").precision == "fp32"  # without a model: fp32
    on_gpu = _choose(_guard(bf16=_row()), tiny_model, device="cuda")
    assert on_gpu.precision == "fp32" and "on the CPU only, this runs on cuda" in on_gpu.reason


def test_auto_takes_the_fastest_passing_precision_the_cpu_computes(tiny_model, machine):
    metadata = _guard(bf16=_row(), int8=_row(calibration_sha256=SHA), fp16=_row(agreement=0.9, backend="torch"))
    machine()
    assert (_choose(metadata, tiny_model).precision, _choose(metadata, tiny_model).backend) == ("int8", "openvino")
    machine(native=("fp32", "bf16"))  # no VNNI, no AMX: int8 is not native, bf16 is next
    choice = _choose(metadata, tiny_model)
    assert choice.precision == "bf16" and "AVX-512 VNNI, AVX-VNNI or AMX-INT8 for int8" in choice.reason
    machine(native=("fp32",))
    choice = _choose(metadata, tiny_model)
    assert choice.precision == "fp32" and "AVX-512 BF16 or AMX-BF16 for bf16" in choice.reason
    assert "fp16 fails the guard" in choice.reason


def test_auto_orders_by_the_recorded_speed_and_skips_what_was_not_faster(tiny_model, machine):
    machine()
    metadata = _guard(bf16=_row(speed=3.0), int8=_row(calibration_sha256=SHA, speed=2.0))
    assert _choose(metadata, tiny_model).precision == "bf16"
    metadata = _guard(bf16=_row(speed=0.8))
    choice = _choose(metadata, tiny_model)
    assert choice.precision == "fp32" and "no faster than fp32" in choice.reason


def test_auto_needs_the_backend_measured_and_the_int8_graph_measured(tiny_model, machine):
    metadata = _guard(int8=_row(calibration_sha256=SHA))
    machine(backends=("torch",))
    choice = _choose(metadata, tiny_model)
    assert choice.precision == "fp32" and "measured on openvino, which does not run it here" in choice.reason
    machine(int8_here="no int8 graph of this model is cached on this machine")
    choice = _choose(metadata, tiny_model)
    assert choice.precision == "fp32" and "int8: no int8 graph" in choice.reason
    machine()
    assert _choose(metadata, tiny_model, backend="torch").precision == "fp32"  # the caller's backend decides


def test_a_precision_this_machine_cannot_run_is_refused_naming_what_it_can(machine, tiny_model):
    machine(backends=("torch",))
    with pytest.raises(ValueError, match=r"precision 'int8' does not run on cpu here .*this machine runs fp32, bf16 "
                                         r"or fp16"):
        policy.check_precision("int8")
    with pytest.raises(ValueError, match="int8.* runs on openvino only, which is not installed"):
        InferenceConfig(precision="int8").resolve("cpu", tiny_model)
    with pytest.raises(ValueError, match="backend 'torch' runs precision fp32 or bf16 or fp16, got 'int8'"):
        InferenceConfig(precision="int8", backend="torch")
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'fp32', 'bf16', 'fp16', 'int8'"):
        InferenceConfig(precision="fp8")
    machine()
    policy.check_precision("int8")  # OpenVINO that reports INT8: runs


def test_classify_refuses_a_precision_it_cannot_run_with_exit_2(machine, tiny_model, tmp_path, real_images):
    path = tmp_path / "tiny.safetensors"
    multihead.save(tiny_model, path)
    machine(backends=("torch",))
    result = CliRunner().invoke(app, ["classify", str(real_images[0]), "--model", str(path), "--precision", "int8"])
    assert_handled_exit(result, 2, "precision 'int8' does not run on cpu here", "this machine runs fp32, bf16 or fp16")
    result = CliRunner().invoke(app, ["classify", str(real_images[0]), "--model", str(path), "--precision", "fp8"])
    assert_handled_exit(result, 2, "'fp8' is not one of auto, fp32, bf16, fp16, int8")


# --- the schema and what shows it ---------------------------------------------------------------------------

def test_the_header_schema_names_each_damaged_guard_field():
    good = _guard(bf16=_row(speed=1.5), int8=_row(calibration_sha256=SHA, calibration_images=300,
                                                  fp32_quantizers=["/conv/fq_output_0"]))
    check_metadata(good)
    bad = copy.deepcopy(good)
    rows = bad["precision_guard"]["precisions"]
    rows["bf16"]["agreement"] = 1.5
    rows["int8"].pop("calibration_sha256")
    rows["int8"]["speed_vs_fp32"] = -1
    rows["fp8"] = _row()
    with pytest.raises(MetadataError) as error:
        check_metadata(bad)
    for field in ("'metadata.precision_guard.precisions.bf16.agreement' is 1.5",
                  "'metadata.precision_guard.precisions.int8.calibration_sha256' is missing",
                  "'metadata.precision_guard.precisions.int8.speed_vs_fp32' is -1",
                  "'metadata.precision_guard.precisions.fp8' is not a precision"):
        assert field in str(error.value)
    with pytest.raises(MetadataError, match="'metadata.precision_guard.precisions' is missing"):
        check_metadata({"precision_guard": {}})


def test_info_and_the_model_card_show_the_guard_and_what_auto_picks(tiny_model, tmp_path, machine):
    machine(native=("fp32", "bf16"))
    model = copy.deepcopy(tiny_model)
    model.metadata = _guard(bf16=_row(agreement=0.9975, change=-0.001, speed=1.8),
                            int8=_row(agreement=0.97, change=-0.02, calibration_sha256=SHA))
    path = tmp_path / "guarded.safetensors"
    multihead.save(model, path)
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "precision guard: 100 val images" in result.output
    assert "99.75%" in result.output and "-0.10 pt" in result.output and "x1.80" in result.output
    assert "fails: agreement, accuracy" in result.output
    assert "auto picks here: bf16 on openvino" in result.output
    card = multihead.model.model_card_data(path)["precision"]
    assert [row["precision"] for row in card["guard"]] == ["int8", "bf16"]
    assert card["auto_here"]["precision"] == "bf16"


# --- the int8 trunk -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_cache(tiny_model, tmp_path_factory):
    """``tiny_model``'s trunk quantised once on 8 random images, in a cache folder of this module's."""
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    from multihead.inference.quantize import quantize_trunk

    folder = tmp_path_factory.mktemp("openvino")
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    quantized = quantize_trunk(tiny_model, list(images), cache_dir=folder)
    return folder, quantized


@pytest.fixture
def cache_copy(int8_cache, tmp_path, monkeypatch):
    """A copy of the module's int8 cache, used by default (a test may damage it)."""
    folder = tmp_path / "openvino"
    shutil.copytree(int8_cache[0], folder)
    monkeypatch.setenv("MULTIHEAD_OPENVINO_CACHE", str(folder))
    return folder


def _probe():
    return torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))


def test_the_int8_trunk_is_cached_per_trunk_and_runs_the_int8_graph(tiny_model, cache_copy, int8_cache):
    from multihead.inference.quantize import cached_trunk, quantized_dir

    found = cached_trunk(tiny_model)
    assert found is not None and found.xml.name == int8_cache[1].xml.name
    assert found.xml.parent == quantized_dir(tiny_model) and found.calibration_images == 8
    images = _probe()
    fp32 = run_features(tiny_model, images, InferenceConfig(precision="fp32", backend="openvino"))
    int8 = run_features(tiny_model, images, InferenceConfig(precision="int8"))
    assert int8.shape == fp32.shape and not torch.equal(int8, fp32)  # the quantised graph ran
    cosine = torch.nn.functional.cosine_similarity(int8, fp32).min()
    assert cosine > 0.9, cosine
    other = multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=1).eval()
    assert cached_trunk(other) is None  # keyed by the trunk's weights: another model has none


def _manifest(folder: Path) -> tuple[Path, dict]:
    path = next(folder.glob("int8/*/manifest.json"))
    return path, json.loads(path.read_text())


def test_a_damaged_int8_graph_is_rebuilt_never_used(tiny_model, cache_copy, caplog):
    from multihead.inference.quantize import cached_trunk

    path, manifest = _manifest(cache_copy)
    before = cached_trunk(tiny_model)
    weights = path.parent / manifest["xml"].replace(".xml", ".bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    rebuilt = cached_trunk(tiny_model)
    assert "is missing or damaged" in caplog.text and rebuilt is not None
    assert REAL_INT8_GRAPH_HERE(tiny_model.trunk.spec(), tiny_model.preprocessing, cache_dir=cache_copy) is None
    _, after = _manifest(cache_copy)
    assert after["calibration_sha256"] == manifest["calibration_sha256"]  # from the cached calibration images
    np.testing.assert_allclose(rebuilt.probe, before.probe, rtol=1e-5, atol=1e-5)  # the same graph again


def test_a_stale_or_moved_int8_graph_is_rebuilt_and_without_its_images_not_used(tiny_model, cache_copy, caplog):
    from multihead.inference.quantize import cached_trunk

    path, manifest = _manifest(cache_copy)
    manifest["identity"]["fingerprint"] = "0" * 64  # made for other weights
    path.write_text(json.dumps(manifest))
    assert cached_trunk(tiny_model) is not None and "made for another trunk" in caplog.text
    path, manifest = _manifest(cache_copy)
    probe = path.parent / manifest["probe"]
    np.save(probe, np.load(probe) * 2)  # features that moved since it was made (its sha updated too)
    manifest["files"][manifest["probe"]] = policy._sha256(probe)
    path.write_text(json.dumps(manifest))
    caplog.clear()
    assert cached_trunk(tiny_model) is not None and "features of the probe images moved" in caplog.text
    shutil.rmtree(path.parent / "calibration")
    path, manifest = _manifest(cache_copy)
    manifest["identity"]["fingerprint"] = "0" * 64
    path.write_text(json.dumps(manifest))
    caplog.clear()
    assert cached_trunk(tiny_model) is None and "its calibration images are gone too" in caplog.text
    with pytest.raises(RuntimeError, match="no int8 trunk of this model on this machine"):
        run_features(tiny_model, _probe(), InferenceConfig(precision="int8"))


def test_auto_runs_int8_only_with_the_graph_its_guard_measured(tiny_model, cache_copy, machine, int8_cache,
                                                              monkeypatch):
    machine()
    monkeypatch.setattr(policy, "int8_graph_here", REAL_INT8_GRAPH_HERE)
    model = copy.deepcopy(tiny_model)
    row = _row(calibration_sha256=int8_cache[1].calibration_sha256, fp32_quantizers=[])
    model.metadata = _guard(int8=row)
    assert InferenceConfig().resolve("cpu", model).precision == "int8"
    features = run_features(model, _probe(), InferenceConfig())
    torch.testing.assert_close(features, run_features(model, _probe(), InferenceConfig(precision="int8")))
    model.metadata = _guard(int8={**row, "calibration_sha256": SHA})  # another calibration: not this graph
    choice = _choose(model.metadata, model)
    assert choice.precision == "fp32" and "not the one the guard measured" in choice.reason


def test_the_feature_cache_keys_by_the_precision_auto_resolves_to(tiny_model, tmp_path, machine):
    machine()
    model = copy.deepcopy(tiny_model)
    plain = FeatureCache(tmp_path, model, InferenceConfig()).identity
    assert plain["precision"] == "fp32"  # no guard: the caches of before stay valid
    model.metadata = _guard(bf16=_row())
    assert FeatureCache(tmp_path, model, InferenceConfig()).identity["precision"] == "bf16"
    assert FeatureCache(tmp_path, model, InferenceConfig(precision="fp32")).identity == plain


# --- measuring the guard: tune-precision ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, sample_dir):
    """A random-weight model (64 px) beside its split of a small real data folder: 4 training and 2 validation
    images per subtype of two organs."""
    root = tmp_path_factory.mktemp("tune-precision")
    assignment = {}
    for organ in ("all", "lymphoma"):
        for subtype in multihead.MULTI_CANCER.organ(organ).subtype_names:
            (root / "data" / organ / subtype).mkdir(parents=True)
            for index, path in enumerate(sorted((sample_dir / organ / subtype).iterdir())[:6]):
                shutil.copy(path, root / "data" / organ / subtype / path.name)
                assignment[f"{organ}/{subtype}/{path.name}"] = "train" if index < 4 else "val"
    torch.manual_seed(0)
    model = multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=0).eval()
    model.metadata = {"training": {"config": {"seed": 0}}, "counts": {"train": 28, "val": 14}}
    multihead.save(model, root / "model.safetensors")
    Split(assignment, {"seed": 0}).save(root / "model.split.json")
    return root


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_the_split_is_the_given_one_then_the_one_beside_then_the_recorded_one(tiny_run, tmp_path):
    from multihead.evaluation.precision import model_split

    beside = Split.load(tiny_run / "model.split.json")
    assert model_split(tiny_run / "model.safetensors").assignment == beside.assignment
    given = Split({"all/x.jpg": "val"}, {})
    given.save(tmp_path / "given.json")
    assert model_split(tiny_run / "model.safetensors", tmp_path / "given.json").assignment == given.assignment
    lonely = tmp_path / "lonely.safetensors"
    shutil.copy(tiny_run / "model.safetensors", lonely)
    with pytest.raises(ValueError, match="no split found .*--split SPLIT.json"):
        model_split(lonely)
    model = multihead.load(lonely)
    model.metadata = {"split": {"info": {}, "files": beside.assignment}}
    multihead.save(model, lonely)
    assert model_split(lonely).assignment == beside.assignment


def test_calibration_images_come_from_the_training_split_spread_over_subtypes(tiny_run):
    from multihead.data.scan import scan_dataset
    from multihead.evaluation.precision import calibration_files

    scan = scan_dataset(tiny_run / "data")
    split = Split.load(tiny_run / "model.split.json")
    chosen = calibration_files(scan, split.files("train"), 7)
    relpaths = {p.relative_to(tiny_run / "data").as_posix() for p in chosen}
    assert len(chosen) == 7 and relpaths <= set(split.files("train"))
    assert len({p.parent.name for p in chosen}) == 7  # one of each subtype first (there are 7)
    assert calibration_files(scan, split.files("train"), 7) == chosen  # seeded
    assert len(calibration_files(scan, split.files("train"), 1000)) == len(split.files("train"))


def test_tune_precision_records_the_guard_and_changes_nothing_else(tiny_run, tmp_path, machine):
    machine(native=("fp32", "bf16"))  # bf16 measured as where the CPU computes it; int8 not native here
    out = tmp_path / "guarded.safetensors"
    result = CliRunner().invoke(app, ["tune-precision", str(tiny_run / "model.safetensors"), str(tiny_run / "data"),
                                      "--out", str(out), "--rounds", "1"])
    assert result.exit_code == 0, result.output
    guard = multihead.read_header(out)["metadata"]["precision_guard"]
    assert guard["images"] == 14 and guard["subset"] == "val" and guard["data"] == ["data"]
    row = guard["precisions"]["bf16"]
    assert row["backend"] == "openvino" and 0 <= row["agreement"] <= 1 and row["speed_vs_fp32"] > 0
    assert abs(row["accuracy"] - guard["reference"]["accuracy"] - row["accuracy_change"]) < 1e-12
    assert "AVX-512 VNNI" in guard["not_measured"]["int8"] and "fp16" in guard["not_measured"]
    assert "precision guard: 14 val images" in result.output and "auto picks here:" in result.output
    before, after = multihead.read_header(tiny_run / "model.safetensors"), multihead.read_header(out)
    assert after["header_sha256"] == before["header_sha256"]
    old, new = _tensors(tiny_run / "model.safetensors"), _tensors(out)
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    assert {k: v for k, v in after["metadata"].items() if k != "precision_guard"} == before["metadata"]


def test_tune_precision_measures_int8_on_the_graph_it_caches(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("nncf")
    if "int8" not in policy.native_precisions("openvino"):
        pytest.skip("this CPU has no VNNI or AMX: int8 is not measured here")
    monkeypatch.setenv("MULTIHEAD_OPENVINO_CACHE", str(tmp_path / "openvino"))
    out = tmp_path / "guarded.safetensors"
    result = CliRunner().invoke(app, ["tune-precision", str(tiny_run / "model.safetensors"), str(tiny_run / "data"),
                                      "--out", str(out), "--precision", "int8", "--calibration-images", "12",
                                      "--no-mixed-precision", "--rounds", "0"])
    assert result.exit_code == 0, result.output
    header = multihead.read_header(out)
    row = header["metadata"]["precision_guard"]["precisions"]["int8"]
    assert row["calibration_images"] == 12 and row["fp32_quantizers"] == [] and "speed_vs_fp32" not in row
    measured = PrecisionRow(**row)  # the graph it measured is the one cached
    assert REAL_INT8_GRAPH_HERE(header["trunk"], header["preprocessing"], measured) is None
    model = multihead.load(out)
    from multihead.data.scan import scan_dataset
    from multihead.evaluation.precision import _labelled_batches

    split = Split.load(tiny_run / "model.split.json")
    batches, _, _ = _labelled_batches(model, scan_dataset(tiny_run / "data"), split.files("val"), 8)
    subtypes = {p: torch.cat([model.decisions(run_features(model, b, InferenceConfig(precision=p))).subtype
                              for b in batches]) for p in ("fp32", "int8")}
    assert float((subtypes["int8"] == subtypes["fp32"]).double().mean()) == pytest.approx(row["agreement"])


@pytest.mark.slow
def test_mixed_precision_takes_quantizers_out_until_the_agreement_holds(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("nncf")
    from multihead.data.scan import scan_dataset
    from multihead.evaluation.precision import _labelled_batches, calibration_files
    from multihead.inference.mixed_precision import find_fp32_quantizers
    from multihead.inference.quantize import quantize_trunk

    monkeypatch.setenv("MULTIHEAD_OPENVINO_CACHE", str(tmp_path / "openvino"))
    model = multihead.load(tiny_run / "model.safetensors")
    scan, split = scan_dataset(tiny_run / "data"), Split.load(tiny_run / "model.split.json")
    calibration = calibration_files(scan, split.files("train"), 12)
    batches, _, _ = _labelled_batches(model, scan, split.files("val"), 6)
    reference = [model.decisions(run_features(model, b, InferenceConfig(precision="fp32"))).subtype for b in batches]

    def agreement() -> float:
        found = [model.decisions(run_features(model, b, InferenceConfig(precision="int8"))).subtype for b in batches]
        return float(torch.cat([f == r for f, r in zip(found, reference)]).double().mean())

    quantize_trunk(model, calibration)
    full = agreement()
    out = find_fp32_quantizers(model, calibration, list(zip(batches, reference)), max_drop=0.0,
                               metric=lambda features, wanted: (model.decisions(features).subtype == wanted).double())
    quantized = quantize_trunk(model, calibration, fp32_quantizers=out)
    assert quantized.fp32_quantizers == tuple(out)
    assert agreement() == 1.0 and (full < 1.0) == bool(out)
    everything = quantize_trunk(model, calibration).manifest["quantizers"]
    assert everything and set(out) <= set(everything)
    bare = quantize_trunk(model, calibration, fp32_quantizers=everything)  # every quantizer out: fp32 again
    assert bare.manifest["quantizers"] == []
    images = torch.cat(batches)
    torch.testing.assert_close(run_features(model, images, InferenceConfig(precision="int8")),
                               run_features(model, images, InferenceConfig(precision="fp32", backend="openvino")),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not in the quantised graph"):
        quantize_trunk(model, calibration, fp32_quantizers=["/no/such/fq_output_0"])


def test_when_autos_choice_cannot_be_built_it_runs_fp32_and_says_why(tiny_model, machine, tmp_path, monkeypatch,
                                                                       caplog):
    machine()  # the guard's int8 graph looks cached, but the cache is empty: compiling it fails
    monkeypatch.setenv("MULTIHEAD_OPENVINO_CACHE", str(tmp_path))
    from multihead.inference import backends

    monkeypatch.setattr(backends, "_cache", type(backends._cache)())
    model = copy.deepcopy(tiny_model)
    model.metadata = _guard(int8=_row(calibration_sha256=SHA))
    assert InferenceConfig().resolve("cpu", model).precision == "int8"
    features = run_features(model, _probe(), InferenceConfig())
    assert "the int8 trunk is not used, the trunk runs in fp32" in caplog.text
    torch.testing.assert_close(features, run_features(model, _probe(), InferenceConfig(precision="fp32")))
    with pytest.raises(RuntimeError, match="no int8 trunk of this model"):  # asked for by name: no fallback
        run_features(model, _probe(), InferenceConfig(precision="int8"))


def test_without_nncf_int8_is_not_measured_and_says_how_to_get_it(tiny_run, tmp_path, monkeypatch):
    from multihead.evaluation import precision as measuring
    from multihead.inference.export import MissingDependencyError

    def require(package):
        if package == "nncf":
            raise MissingDependencyError("nncf is not installed")
        return __import__(package)

    monkeypatch.setattr(measuring, "require", require)
    out = tmp_path / "guarded.safetensors"
    result = CliRunner().invoke(app, ["tune-precision", str(tiny_run / "model.safetensors"), str(tiny_run / "data"),
                                      "--out", str(out), "--precision", "int8", "--rounds", "0"])
    assert result.exit_code == 0, result.output
    guard = multihead.read_header(out)["metadata"]["precision_guard"]
    assert guard["precisions"] == {} and guard["not_measured"]["int8"] == (
        "int8 needs nncf: pip install 'multihead[openvino]'")
    assert "auto picks here: fp32" in result.output
