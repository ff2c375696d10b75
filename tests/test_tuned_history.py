"""A model trained with ``--tune-from`` goes through every command that reads its history (issue 40): the tuning
epochs record a training loss but no training accuracy, and the report, ``info`` and the model card draw or list
them without that figure. An unexpected error in any command is one line and exit 1, a traceback only with
``--debug``."""

import importlib.util
import json

import pytest
from typer.testing import CliRunner

import multihead
import multihead.training.tune
from multihead.cli import app
from multihead.evaluation.plots import plot_history, pyplot

from .conftest import REPO, assert_handled_exit, copy_real_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tuned_model(tmp_path_factory, sample_dir):
    """A tuned model trained through the CLI on six real images per subtype of two organs."""
    root = tmp_path_factory.mktemp("tuned-history")
    data = copy_real_images(sample_dir, root / "data", ("all", "lymphoma"), 6)
    out = root / "tuned.safetensors"
    scores = iter(range(100))  # every epoch beats the last: a tuning epoch is kept, the trunk is tuned
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(multihead.training.tune, "_selection_score", lambda model, data: float(next(scores)))
        result = CliRunner().invoke(app, [
            "train", str(data), "--out", str(out), "--trunk-weights", "none", "--image-size", "64", "--epochs", "2",
            "--tune-from", "auto", "--tune-epochs", "2", "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    return out, data, root


def test_a_tuned_history_has_epochs_without_a_training_accuracy(tuned_model):
    """What the readers below must handle (if tuning epochs ever record it, this test says the cover is gone)."""
    out, _, _ = tuned_model
    history = multihead.read_header(out)["metadata"]["history"]
    tuning = [r for r in history if r["stage"] == "tune"]
    assert tuning and all("accuracy" not in r["train"] and "accuracy" in r["val"] for r in tuning)


def test_evaluate_report_draws_the_tuned_history(tuned_model):
    out, data, root = tuned_model
    report = root / "report"
    result = CliRunner().invoke(app, ["evaluate", str(out), str(data), "--split", str(out.with_suffix(".split.json")),
                                      "--report", str(report), "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    drawn = sorted(p.name for p in report.glob("history_*.png"))
    assert "history_tune_layer4.png" in drawn and "history_warm-up_multihead.png" in drawn
    assert (report / "report.md").exists() and json.loads((report / "report.json").read_text())["n_images"] > 0


def test_a_record_without_a_figure_is_drawn_without_it():
    """Train accuracy is missing from the tuning epochs: the validation line is drawn, the training one is not."""
    history = [{"epoch": 1, "part": "tune:layer4", "train": {"loss": 2.0}, "val": {"loss": 1.5, "accuracy": 0.5}},
               {"epoch": 2, "part": "tune:layer4", "train": {"loss": 1.0}, "val": {"loss": 1.2, "accuracy": 0.7}},
               {"epoch": 3, "part": "tune:layer4", "train": {"loss": 0.9}}]
    loss, accuracy = plot_history(history)
    try:
        assert {line.get_label(): list(line.get_ydata()) for line in loss.get_lines()} == {
            "train": [2.0, 1.0, 0.9], "val": [1.5, 1.2]}
        assert {line.get_label(): list(line.get_ydata()) for line in accuracy.get_lines()} == {"val": [0.5, 0.7]}
    finally:
        pyplot().close(loss.figure)


def test_info_and_the_model_card_read_a_tuned_model(tuned_model):
    out, _, _ = tuned_model
    result = CliRunner().invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert "tuned: the trunk's stages from layer4 up" in " ".join(result.stdout.split())
    card = multihead.model.model_card_data(out)
    assert card["training"]["tune_from"] == "auto" and card["test"] is None
    spec = importlib.util.spec_from_file_location("model_card", REPO / "recipes" / "model_card.py")
    renderer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(renderer)
    text = renderer.render(out)
    assert "No test report is recorded in this file." in text and '"tune_from": "auto"' in text


def test_an_unexpected_error_is_one_line_unless_debugging(tuned_model, monkeypatch):
    out, data, root = tuned_model

    def broken(*args, **kwargs):
        raise KeyError("accuracy")

    monkeypatch.setattr(multihead.evaluation.evaluate, "evaluate_folder", broken)
    command = ["evaluate", str(out), str(data), "--report", str(root / "broken")]
    result = CliRunner().invoke(app, command)
    assert_handled_exit(result, 1, "unexpected KeyError: 'accuracy'", "multihead --debug")
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) <= 2
    debugged = CliRunner().invoke(app, ["--debug", *command])
    assert isinstance(debugged.exception, KeyError)
