import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import multihead
from multihead.cli import app

from .conftest import assert_handled_exit


def test_every_input_type_gives_the_same_answer(tiny_model, real_images):
    path = real_images[0]
    pil = Image.open(path).convert("RGB")
    array = np.asarray(pil)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    answers = [multihead.classify(x, model=tiny_model) for x in (path, str(path), pil, array, tensor)]
    float_tensor = multihead.classify(tensor.float() / 255, model=tiny_model)
    for answer in [*answers, float_tensor]:
        assert answer.subtype == answers[0].subtype
        assert answer.subtype_probability == pytest.approx(answers[0].subtype_probability, abs=1e-6)


def test_grayscale_array_and_list_input(tiny_model):
    gray = np.random.default_rng(0).integers(0, 256, (50, 70), dtype=np.uint8)
    single = multihead.classify(gray, model=tiny_model)
    batch = multihead.classify([gray, np.stack([gray] * 3, axis=2)], model=tiny_model, batch_size=1)
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0].subtype == batch[1].subtype == single.subtype


def test_list_is_batched_and_matches_single(tiny_model, real_images):
    singles = [multihead.classify(p, model=tiny_model) for p in real_images]
    batched = multihead.classify(real_images, model=tiny_model, batch_size=4)
    for one, many in zip(singles, batched):
        assert one.subtype == many.subtype
        assert one.subtype_probability == pytest.approx(many.subtype_probability, abs=1e-4)


def test_prediction_is_consistent(tiny_model, real_images):
    for prediction in multihead.classify(real_images, model=tiny_model):
        assert multihead.MULTI_CANCER.organ_of(prediction.subtype) == prediction.organ
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert prediction.organ_probability == pytest.approx(
            sum(p for s, p in prediction.probabilities.items()
                if multihead.MULTI_CANCER.organ_of(s) == prediction.organ), abs=1e-6)
        data = prediction.to_dict()
        assert json.loads(json.dumps(data))["subtype"] == prediction.subtype


def test_model_as_path_and_from_environment(tiny_model, tmp_path, monkeypatch, real_images):
    path = tmp_path / "m.safetensors"
    multihead.save(tiny_model, path)
    expected = multihead.classify(real_images[0], model=tiny_model)
    assert multihead.classify(real_images[0], model=path).subtype == expected.subtype
    monkeypatch.setenv("MULTIHEAD_MODEL", str(path))
    assert multihead.classify(real_images[0]).subtype == expected.subtype


def test_a_caller_changing_its_model_leaves_the_next_classify_unchanged(tiny_model, tmp_path, real_images):
    """The load cache never hands out a module another caller changes: what the CLI or the server does to
    the model it resolved (restrict organs, move it, change a buffer) reaches nobody else's answers."""
    from multihead.inference import resolve_model

    path = tmp_path / "m.safetensors"
    multihead.save(tiny_model, path)
    before = multihead.classify(real_images[0], model=path)
    owned = resolve_model(path, device="cpu")
    owned.set_available_organs(["brain"])
    owned.temperature.logit_scale.fill_(0.01)
    owned.to(torch.float64)
    after = multihead.classify(real_images[0], model=path, device="cpu")
    assert after.probabilities == before.probabilities and after.organ == before.organ
    assert resolve_model(path) is not resolve_model(path)


def test_no_model_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr("multihead.model.locate.default_model_path", lambda: None)
    with pytest.raises(ValueError, match="multihead train"):
        multihead.classify(np.zeros((8, 8), dtype=np.uint8))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 4, 5), dtype=np.uint8), "HxW or HxWxC"),
    (np.zeros((4, 4, 2), dtype=np.uint8), "HxW or HxWxC"),
    (np.full((4, 4), 2.0), r"\[0, 1\]"),
    (np.full((4, 4), np.nan), "NaN"),
    (torch.zeros(5, 4, 4), "CxHxW"),
    (np.zeros((0, 4), dtype=np.uint8), "no pixels"),
    (12, "unsupported input type"),
])
def test_bad_arrays_raise_image_error(tiny_model, bad, message):
    with pytest.raises(multihead.ImageError, match=message):
        multihead.classify(bad, model=tiny_model)


def test_missing_file_is_named(tiny_model, tmp_path):
    with pytest.raises(multihead.ImageError, match="nope.jpg"):
        multihead.classify(tmp_path / "nope.jpg", model=tiny_model)


# --- CLI --------------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture()
def model_file(tiny_model, tmp_path):
    path = tmp_path / "model.safetensors"
    multihead.save(tiny_model, path)
    return path


def test_cli_classify_table_and_json(model_file, real_images):
    result = runner.invoke(app, ["classify", str(real_images[0]), "--model", str(model_file)])
    assert result.exit_code == 0, result.output
    assert any(s in result.output for s in multihead.MULTI_CANCER.subtype_names)
    result = runner.invoke(app, ["classify", *map(str, real_images[:3]), "-m", str(model_file), "--json", "-k", "3"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3 and all(len(r["top_k"]) == 3 and r["error"] is None for r in records)


def test_cli_folder_with_a_broken_file_keeps_going(model_file, real_images, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in real_images[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / ".hidden.jpg").write_bytes(b"ignored")
    result = runner.invoke(app, ["classify", str(folder), "-m", str(model_file), "--json"])
    assert result.exit_code == 3
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    broken = [r for r in records if r["source"].endswith("broken.jpg")]
    assert broken and "not an image" in broken[0]["error"]
    assert sum(r["error"] is None for r in records) == 2


def test_cli_bad_model_is_one_line(tmp_path, real_images):
    (tmp_path / "x.safetensors").write_text("junk")
    result = runner.invoke(app, ["classify", str(real_images[0]), "-m", str(tmp_path / "x.safetensors")])
    assert_handled_exit(result, 1, "x.safetensors")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_info(model_file):
    result = runner.invoke(app, ["info", str(model_file)])
    assert result.exit_code == 0, result.output
    assert "resnet18" in result.output and "lung_colon" in result.output


def test_prediction_names_untrained_organs(tiny_model, real_images):
    model = multihead.create_model(tiny_model.trunk, image_size=64, seed=0)
    model.set_available_organs(["all", "brain"])
    prediction = multihead.classify(real_images[0], model=model)
    assert prediction.organ in ("all", "brain")
    assert "cervix" in prediction.untrained_organs and "brain" not in prediction.untrained_organs
    assert prediction.to_dict()["untrained_organs"] == list(prediction.untrained_organs)
    assert prediction.probabilities["cervix_dyk"] == 0.0
