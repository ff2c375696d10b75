"""The checkpoint reader and writer, case by case: what a user sees when a file does not fit (every message names
the file and the mismatch, in full), format 1 files and fields added after a format was fixed, embedded and
referenced trunks, the fingerprint and size checks. Written against the mutants that survived
tests/test_checkpoint.py and tests/test_round_trip.py (benchmarks/results/mutation.json).

The files are made from one small MobileNetV3 model (1.5 million trunk parameters) and rewritten field by field;
neither it nor the session's ``tiny_model`` is ever changed.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import multihead
from multihead.inference import run_batch
from multihead.model import checkpoint, checkpoint_checks
from multihead.model.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    model_header,
    read_header,
)
from multihead.model.checkpoint_checks import FORMAT_1_KEYS

from .legacy_checkpoints import write_legacy

TRUNK = "mobilenet_v3_small"
TRUNK_PARAMETERS = 1_530_002  # its feature extractor's state dict, buffers included
DROP = object()  # a field to remove


@pytest.fixture(scope="module")
def small() -> multihead.MultiHeadModel:
    torch.manual_seed(0)
    return multihead.create_model(TRUNK, trunk_weights=None, image_size=64, seed=0).eval()


@pytest.fixture(scope="module")
def base(small, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checkpoints") / "base.safetensors"
    multihead.save(small, path)
    return path


def _copy(model: multihead.MultiHeadModel) -> multihead.MultiHeadModel:
    """Fresh heads and estimators on the same (never changed) trunk."""
    return multihead.create_model(model.trunk, image_size=64, seed=0).eval()


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as reader:
        return dict(reader.metadata()), {k: reader.get_tensor(k) for k in reader.keys()}  # noqa: SIM118


def _rewrite(src: Path, dst: Path, *, fields: dict | None = None, trunk: dict | None = None,
             tensors: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """``src`` with header fields, trunk spec entries and tensors replaced (``DROP`` removes one)."""
    metadata, stored = _read(src)
    for key, value in (fields or {}).items():
        metadata.pop(key) if value is DROP else metadata.__setitem__(key, value)
    if trunk:
        spec = json.loads(metadata["trunk"])
        for key, value in trunk.items():
            spec.pop(key) if value is DROP else spec.__setitem__(key, value)
        metadata["trunk"] = json.dumps(spec)
    stored = {k: v for k, v in stored.items() if k not in drop}
    stored.update(tensors or {})
    save_file(stored, str(dst), metadata=metadata)
    return dst


def _message(path: Path, **load_options) -> str:
    with pytest.raises(CheckpointError) as caught:
        multihead.load(path, **load_options)
    return str(caught.value)


def _batch(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 64, 64), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)


def _assert_same_model(a: multihead.MultiHeadModel, b: multihead.MultiHeadModel) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        assert torch.equal(state_b[key], value), key
    assert a.joint == b.joint and a.taxonomy == b.taxonomy and a.preprocessing == b.preprocessing
    batch = _batch()
    assert torch.equal(run_batch(a, batch).joint_probs, run_batch(b, batch).joint_probs)


# --- writing -------------------------------------------------------------------------------------------

def test_a_model_of_another_architecture_comes_back(small, base):
    """Not a ResNet18 (the default trunk name): the header's trunk name is what gets built."""
    loaded = multihead.load(base)
    assert loaded.trunk.name == TRUNK and loaded.trunk.fingerprint == small.trunk.fingerprint
    _assert_same_model(small, loaded)


def test_save_refuses_a_storage_dtype_it_does_not_know(small, tmp_path):
    with pytest.raises(ValueError) as caught:
        multihead.save(small, tmp_path / "m.safetensors", trunk_dtype="int8")
    assert str(caught.value) == "trunk_dtype must be one of ['bfloat16', 'float16', 'float32'], got 'int8'"
    assert not (tmp_path / "m.safetensors").exists()


def test_save_refuses_what_is_not_a_model(small, tmp_path):
    with pytest.raises(TypeError) as caught:
        multihead.save(small.state_dict(), tmp_path / "m.safetensors")
    assert str(caught.value) == "save writes a MultiHeadModel, got OrderedDict"


def test_metadata_that_json_cannot_write_is_stored_as_text(small, tmp_path):
    model = _copy(small)
    model.metadata = {"trained_on": datetime.date(2026, 11, 29), "data": Path("data/train")}
    multihead.save(model, tmp_path / "m.safetensors")
    assert multihead.load(tmp_path / "m.safetensors").metadata == {"trained_on": "2026-11-29", "data": "data/train"}


def test_model_header_describes_the_models_own_trunk(small):
    """What exported ONNX graphs carry and check: without a spec given, the model's trunk as it is."""
    trunk = json.loads(model_header(small)["trunk"])
    assert trunk == {"name": TRUNK, "source": "torchvision", "weights_id": None, "fingerprint": small.trunk.fingerprint,
                     "num_features": 1024, "stages": []}


def test_a_trunk_with_published_weights_can_still_be_embedded(small, tmp_path):
    """``embed_trunk=True`` stores the weights even with a weights id: loading then needs no download (which
    the tests refuse)."""
    trunk = multihead.create_trunk(TRUNK, weights=None)
    trunk.weights_id = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    model = multihead.create_model(trunk, image_size=64, seed=0).eval()
    multihead.save(model, tmp_path / "m.safetensors", embed_trunk=True)
    header = read_header(tmp_path / "m.safetensors")
    assert header["trunk"]["embedded"] is True and header["trunk"]["weights_id"] == trunk.weights_id
    assert sum(k.startswith("trunk.") for k in header["keys"]) == len(trunk.network.state_dict())
    loaded = multihead.load(tmp_path / "m.safetensors")
    assert loaded.trunk.fingerprint == trunk.fingerprint
    _assert_same_model(model, loaded)


def test_a_tuned_trunk_comes_back_tuned_and_an_untuned_one_does_not(small, base, tmp_path):
    """``trunk.tuned_from`` (the cut a tuned trunk was trained from) survives the round trip: ``info`` reads it
    from the loaded model. A file without it (every frozen model) loads as not tuned."""
    trunk = multihead.create_trunk(TRUNK, weights=None)
    trunk.network.load_state_dict(small.trunk.network.state_dict())
    trunk.mark_tuned("features.9")
    model = multihead.create_model(trunk, image_size=64, seed=0).eval()
    multihead.save(model, tmp_path / "tuned.safetensors")
    assert read_header(tmp_path / "tuned.safetensors")["trunk"]["tuned_from"] == "features.9"
    assert multihead.load(tmp_path / "tuned.safetensors").trunk.tuned_from == "features.9"
    assert multihead.load(base).trunk.tuned_from is None


def test_a_random_trunk_stored_by_reference_does_not_come_back_with_other_weights(small, tmp_path):
    path = tmp_path / "m.safetensors"
    multihead.save(small, path, embed_trunk=False)
    header = read_header(path)
    assert header["trunk"]["embedded"] is False and not any(k.startswith("trunk.") for k in header["keys"])
    message = _message(path)
    assert message.startswith(f"{path}: trunk {TRUNK!r} weights have fingerprint ")
    assert f"the checkpoint was trained on {small.trunk.fingerprint[:12]}...;" in message


# --- referenced trunks ----------------------------------------------------------------------------------

def test_a_referenced_trunk_is_fetched_by_its_own_weights_id(tmp_path, monkeypatch):
    """MobileNetV2's IMAGENET1K_V1, not its default (V2): the id in the file is the one read, from torch's hub cache
    (loading never downloads)."""
    trunk = multihead.create_trunk("mobilenet_v2", weights=None)
    trunk.weights_id = "MobileNet_V2_Weights.IMAGENET1K_V1"
    model = multihead.create_model(trunk, image_size=64, seed=0).eval()
    multihead.save(model, tmp_path / "ref.safetensors")
    full = {**trunk.network.state_dict(), "classifier.1.weight": torch.zeros(1000, 1280),
            "classifier.1.bias": torch.zeros(1000)}
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(full, cache / "mobilenet_v2-b0353104.pth")  # IMAGENET1K_V1's file; V2's is not there
    loaded = multihead.load(tmp_path / "ref.safetensors")
    assert loaded.trunk.fingerprint == trunk.fingerprint
    _assert_same_model(model, loaded)


def test_a_referenced_timm_trunk_is_fetched_as_timms_pretrained_weights(tmp_path, monkeypatch):
    """timm trunks are referenced as ``timm/<hub id>`` and come back through timm's own pretrained weights, read
    from the Hugging Face cache (loading never downloads)."""
    import huggingface_hub
    import timm
    from safetensors.torch import save_file

    trunk = multihead.create_trunk("test_resnet", weights=None)
    trunk.weights_id = "timm/test_resnet.r160_in1k"
    model = multihead.create_model(trunk, image_size=64, seed=0).eval()
    multihead.save(model, tmp_path / "timm.safetensors")
    assert read_header(tmp_path / "timm.safetensors")["trunk"]["source"] == "timm"
    full = timm.create_model("test_resnet", pretrained=False)  # as published: with its classifier
    full.load_state_dict(trunk.network.state_dict(), strict=False)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "model.safetensors"))
    asked = []

    def in_cache(repo_id, filename, **kwargs):  # the Hugging Face cache holding these weights
        asked.append((repo_id, filename))
        return str(tmp_path / "model.safetensors") if filename == "model.safetensors" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", in_cache)
    loaded = multihead.load(tmp_path / "timm.safetensors")
    assert ("timm/test_resnet.r160_in1k", "model.safetensors") in asked
    assert loaded.trunk.fingerprint == trunk.fingerprint
    _assert_same_model(model, loaded)


def test_an_unknown_weights_id_is_named(small, tmp_path):
    trunk = multihead.create_trunk(TRUNK, weights=None)
    trunk.weights_id = "MobileNet_V3_Small_Weights.NOPE"
    multihead.save(multihead.create_model(trunk, image_size=64, seed=0), tmp_path / "m.safetensors")
    message = _message(tmp_path / "m.safetensors")
    assert message.startswith(f"{tmp_path / 'm.safetensors'}: the model its metadata describes cannot be built "
                              "(unknown trunk weights 'MobileNet_V3_Small_Weights.NOPE': expected 'imagenet'")


# --- the header ----------------------------------------------------------------------------------------

def test_a_missing_file_is_named(tmp_path):
    path = tmp_path / "absent.safetensors"
    assert _message(path) == f"{path}: checkpoint file does not exist"


@pytest.mark.parametrize(("version", "shown"), [(DROP, "None"), ("one", "'one'")])
def test_a_format_version_that_is_not_an_integer(base, tmp_path, version, shown):
    path = _rewrite(base, tmp_path / "m.safetensors", fields={"format_version": version})
    assert _message(path) == f"{path}: format_version {shown} is not an integer"


@pytest.mark.parametrize(("version", "advice"), [(0, ""), (FORMAT_VERSION + 1, "; upgrade multihead")])
def test_a_format_outside_the_readable_range(base, tmp_path, version, advice):
    """Only a newer format is worth an upgrade; format 0 never existed."""
    path = _rewrite(base, tmp_path / "m.safetensors", fields={"format_version": str(version)})
    assert _message(path) == (f"{path}: written in checkpoint format {version}, this multihead reads 1 to "
                              f"{FORMAT_VERSION}{advice}")


@pytest.mark.parametrize("field", ["taxonomy", "trunk", "preprocessing", "metadata"])
def test_a_field_that_is_not_json_is_named(base, tmp_path, field):
    path = _rewrite(base, tmp_path / "m.safetensors", fields={field: "{not json"})
    assert _message(path).startswith(f"{path}: damaged metadata: '{field}' is not valid JSON (")


def test_available_organs_must_be_in_the_taxonomy(base, tmp_path):
    path = _rewrite(base, tmp_path / "m.safetensors", fields={"metadata": json.dumps({"available_organs": ["spleen"]})})
    assert _message(path) == (f"{path}: damaged metadata: 'metadata.available_organs' names organs not in the "
                              "taxonomy: ['spleen']")


def test_a_taxonomy_that_cannot_be_built_is_named(base, tmp_path):
    taxonomy = json.loads(multihead.MULTI_CANCER.to_json())
    taxonomy["organs"][0]["name"] = "brain"  # two organs called brain
    path = _rewrite(base, tmp_path / "m.safetensors", fields={"taxonomy": json.dumps(taxonomy)})
    assert _message(path) == (f"{path}: damaged metadata (ValueError: name 'brain' appears twice in the taxonomy; "
                              "organ and subtype names must differ)")


@pytest.mark.parametrize(("field", "value"), [("metadata", {}), ("joint", "hierarchical")])
def test_fields_older_files_lack_take_their_defaults(small, base, tmp_path, field, value):
    path = _rewrite(base, tmp_path / "m.safetensors", fields={field: DROP})
    loaded = multihead.load(path)
    assert getattr(loaded, field) == value
    _assert_same_model(small, loaded)


@pytest.mark.parametrize(("key", "value"), [("stages", []), ("stored_dtype", "float32")])
def test_trunk_entries_older_files_lack_take_their_defaults(small, base, tmp_path, key, value):
    path = _rewrite(base, tmp_path / "m.safetensors", trunk={key: DROP})
    assert key not in read_header(path)["trunk"]
    loaded = multihead.load(path)
    assert loaded.trunk.spec()["stages"] == [] and loaded.trunk.fingerprint == small.trunk.fingerprint
    _assert_same_model(small, loaded)


# --- formats 1 and 2 -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibrated(small) -> multihead.MultiHeadModel:
    """Every buffer format 1 stored under another name, set to a value no default has."""
    model = _copy(small)
    generator = torch.Generator().manual_seed(1)
    for new in FORMAT_1_KEYS.values():
        if new.startswith("ood."):  # the Mahalanobis score's buffers: gone since format 3
            continue
        buffer = model.get_buffer(new)
        buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_file_loads_with_its_keys_mapped_and_its_ood_score_left_out(calibrated, tmp_path, version):
    path = tmp_path / "old.safetensors"
    write_legacy(calibrated, path, version)
    assert ("logit_scale" in read_header(path)["keys"]) == (version == 1)
    assert read_header(path)["format_version"] == version
    loaded = multihead.load(path)
    assert torch.equal(loaded.temperature.logit_scale, calibrated.temperature.logit_scale)
    assert torch.equal(loaded.thresholds.router, calibrated.thresholds.router)
    assert torch.equal(loaded.thresholds.subtype, calibrated.thresholds.subtype[:1].expand(8))
    assert not loaded.ood.fitted and torch.equal(loaded.organ_covered, loaded.organ_mask)
    for key, value in calibrated.state_dict().items():  # heads and trunk come back as they were
        if not key.startswith(("ood.", "thresholds.", "organ_covered")):
            assert torch.equal(loaded.state_dict()[key], value), key


def test_a_format_1_file_from_before_organ_scales_still_loads(calibrated, tmp_path):
    path = tmp_path / "old.safetensors"
    write_legacy(calibrated, path, 1, drop=("ood_organ_scale",))
    assert "ood_organ_scale" not in read_header(path)["keys"] and not multihead.load(path).ood.fitted


def test_a_format_3_file_must_hold_its_bank(base, tmp_path):
    """Only formats 1 and 2 predate it: a format 3 file without it is damaged, not old."""
    path = _rewrite(base, tmp_path / "m.safetensors", drop=("ood.bank",))
    assert _message(path) == f"{path}: tensors do not match its metadata: missing ['ood.bank'], unexpected []"


def test_a_bank_larger_than_the_limit_is_refused_before_loading(base, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_checks, "MAX_BANK", 3)
    path = _rewrite(base, tmp_path / "m.safetensors", tensors={"ood.bank": torch.zeros(4, 256, dtype=torch.float16)})
    assert _message(path) == (f"{path}: ood.bank has shape (4, 256), it must be [images, components] with at most "
                              "3 images")


# --- the architecture ----------------------------------------------------------------------------------

def test_an_unknown_trunk_is_named(base, tmp_path):
    path = _rewrite(base, tmp_path / "m.safetensors", trunk={"name": "resnet9000"})
    assert _message(path).startswith(f"{path}: the model its metadata describes cannot be built (unknown trunk "
                                     "'resnet9000': not a torchvision classification model")


def test_a_trunk_that_cannot_be_built_on_the_meta_device(tmp_path):
    """RegNet computes its widths from tensors as it is built, which the meta device cannot: such a file is
    refused by default (its size cannot be checked first) and loads once it is trusted."""
    torch.manual_seed(0)
    model = multihead.create_model("regnet_y_400mf", trunk_weights=None, image_size=64, seed=0).eval()
    path = tmp_path / "regnet.safetensors"
    multihead.save(model, path)
    assert _message(path) == (f"{path}: trunk 'regnet_y_400mf' cannot be checked before it is built "
                              "(NotImplementedError: Cannot copy out of meta tensor; no data!); pass "
                              "max_trunk_parameters=None if the file is trusted")
    _assert_same_model(model, multihead.load(path, max_trunk_parameters=None))


def test_a_trunk_over_the_parameter_limit_is_refused_unbuilt(base, tmp_path, monkeypatch):
    """A file naming a bigger trunk than the limit allows is refused with its size, and the trunk is only ever
    built on the meta device (shapes, no memory)."""
    path = _rewrite(base, tmp_path / "m.safetensors", trunk={"name": "resnet152"})
    built = []

    def create_trunk(*args, **kwargs):
        trunk = multihead.create_trunk(*args, **kwargs)
        built.append({p.device.type for p in trunk.parameters()})
        return trunk

    monkeypatch.setattr(checkpoint, "create_trunk", create_trunk)
    assert _message(path, max_trunk_parameters=10_000_000) == (
        f"{path}: trunk 'resnet152' has 58,295,387 parameters (0.2 GiB as float32), more than the limit of "
        "10,000,000; pass max_trunk_parameters=None if the file is trusted")
    assert built == [{"meta"}]


def test_the_parameter_limit_is_inclusive(small, base):
    _assert_same_model(small, multihead.load(base, max_trunk_parameters=TRUNK_PARAMETERS))
    assert _message(base, max_trunk_parameters=TRUNK_PARAMETERS - 1).startswith(
        f"{base}: trunk {TRUNK!r} has 1,530,002 parameters (0.0 GiB as float32), more than the limit of 1,530,001;")


def test_a_feature_width_that_does_not_fit_the_trunk(base, tmp_path):
    path = _rewrite(base, tmp_path / "m.safetensors", trunk={"num_features": 999})
    assert _message(path) == f"{path}: trunk {TRUNK!r} gives 1024 features, its metadata says 999"


def test_missing_and_unexpected_tensors_are_named_five_at_most(base, tmp_path):
    drop = ("heads.all.bias", "heads.all.weight", "heads.brain.bias", "heads.brain.weight", "heads.breast.bias",
            "heads.breast.weight")
    extra = {f"extra.{i}": torch.zeros(1) for i in range(6)}
    path = _rewrite(base, tmp_path / "m.safetensors", drop=drop, tensors=extra)
    assert _message(path) == (f"{path}: tensors do not match its metadata: missing {list(drop[:5])}, "
                              f"unexpected {[f'extra.{i}' for i in range(5)]}")


def test_a_head_tensor_of_the_wrong_dtype_is_named(small, base, tmp_path):
    weight = small.heads["brain"].weight.detach().double()
    path = _rewrite(base, tmp_path / "m.safetensors", tensors={"heads.brain.weight": weight})
    assert _message(path) == (f"{path}: tensors do not fit the taxonomy in its metadata: heads.brain.weight is "
                              "stored as F64, needs F32")


def test_head_shapes_that_do_not_fit_the_taxonomy_are_named_five_at_most(base, tmp_path):
    taxonomy = json.loads(multihead.MULTI_CANCER.to_json())
    for organ in taxonomy["organs"]:
        organ["subtypes"].append({"name": f"{organ['name']}_extra", "display_name": "x"})
    path = _rewrite(base, tmp_path / "m.safetensors", fields={"taxonomy": json.dumps(taxonomy)})
    message = _message(path)
    prefix = f"{path}: tensors do not fit the taxonomy in its metadata: "
    assert message.startswith(prefix)
    problems = message[len(prefix):].split("; ")
    assert problems == ["heads.all.weight has shape (4, 1024), needs (5, 1024)",
                        "heads.all.bias has shape (4,), needs (5,)",
                        "heads.brain.weight has shape (3, 1024), needs (4, 1024)",
                        "heads.brain.bias has shape (3,), needs (4,)",
                        "heads.breast.weight has shape (2, 1024), needs (3, 1024)"]


def test_embedded_trunk_tensors_of_the_wrong_shape_are_named(small, base, tmp_path):
    state = small.trunk.network.state_dict()
    first, second = "features.0.0.weight", "features.0.1.weight"
    path = _rewrite(base, tmp_path / "m.safetensors", tensors={f"trunk.{first}": torch.zeros(16, 3, 5, 5),
                                                             f"trunk.{second}": torch.zeros(17)})
    assert _message(path) == (
        f"{path}: embedded trunk weights do not fit trunk {TRUNK!r}: trunk.{first} has shape (16, 3, 5, 5), needs "
        f"{tuple(state[first].shape)}; trunk.{second} has shape (17,), needs {tuple(state[second].shape)}")


def test_an_embedded_trunk_stored_in_another_dtype_than_its_header_says(small, tmp_path):
    """Half-precision weights under a header saying float32: refused, five of the tensors named."""
    half = tmp_path / "half.safetensors"
    multihead.save(small, half, trunk_dtype="float16")
    path = _rewrite(half, tmp_path / "m.safetensors", trunk={"stored_dtype": "float32"})
    message = _message(path)
    prefix = f"{path}: embedded trunk weights do not fit trunk {TRUNK!r}: "
    assert message.startswith(prefix)
    problems = message[len(prefix):].split("; ")
    assert len(problems) == 5
    assert all(re.fullmatch(r"trunk\.\S+ is stored as F16, needs F32", p) for p in problems), problems


def test_a_trunk_fingerprint_mismatch_names_both_fingerprints(small, base, tmp_path):
    weight = small.trunk.network.state_dict()["features.0.0.weight"] + 1
    path = _rewrite(base, tmp_path / "m.safetensors", tensors={"trunk.features.0.0.weight": weight})
    assert re.fullmatch(
        re.escape(f"{path}: trunk {TRUNK!r} weights have fingerprint ") + r"[0-9a-f]{12}"
        + re.escape(f"..., the checkpoint was trained on {small.trunk.fingerprint[:12]}...; its heads do not fit "
                    "these trunk weights"), _message(path))


# --- reading the tensors -------------------------------------------------------------------------------

def test_a_file_cut_while_it_is_loaded_is_named(base, tmp_path, monkeypatch):
    """The header is read and checked first; a file truncated before its tensors are read fails cleanly."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(base.read_bytes())
    opened = []

    def safe_open_cutting(name, **kwargs):
        opened.append(name)
        if len(opened) == 2:  # the tensors, after the header was read and checked
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return safe_open(name, **kwargs)

    monkeypatch.setattr(checkpoint, "safe_open", safe_open_cutting)
    assert _message(path).startswith(f"{path}: tensors cannot be read, the file may be truncated (")


def test_load_puts_the_model_on_the_device_asked_for(base):
    """The meta device stands in for a GPU."""
    loaded = multihead.load(base, device="meta")
    assert {t.device.type for t in [*loaded.parameters(), *loaded.buffers()]} == {"meta"}
    assert not loaded.training
