import json
import math
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.evaluation import (
    PAPER_TEST_ACCURACY,
    EvaluationData,
    bootstrap_interval,
    expected_calibration_error,
    metrics_report,
)

from .conftest import assert_handled_exit
from .test_training import small_dataset  # noqa: F401  (module-scoped fixture reused)

TAX = multihead.MULTI_CANCER


def _data(subtypes, predicted, given=None, confidence=0.9):
    subtypes, predicted = np.array(subtypes), np.array(predicted)
    organ_of = np.array(TAX.subtype_organ_indices)
    joint = np.full((len(subtypes), 26), (1 - confidence) / 25)
    joint[np.arange(len(subtypes)), predicted] = confidence
    return EvaluationData(subtypes, joint, organ_of[predicted], predicted,
                          np.array(given if given is not None else predicted), [f"f{i}" for i in range(len(subtypes))])


def test_report_shape_and_values():
    # all: 0,1 right; brain (4): wrong organ; lung_colon (16): right organ, wrong subtype but right given organ
    data = _data([0, 1, 4, 16], [0, 1, 16, 17], given=[0, 1, 4, 16])
    report = metrics_report(TAX, data, n_resamples=200)
    assert report["n_images"] == 4
    assert report["router"]["accuracy"] == pytest.approx(0.75)
    assert report["overall"]["accuracy"] == pytest.approx(0.5)
    organs = report["organs"]
    assert set(organs) == set(TAX.organ_names)
    assert organs["all"]["n"] == 2 and organs["all"]["accuracy"] == 1.0
    assert organs["brain"]["accuracy"] == 0.0 and organs["brain"]["accuracy_given_organ"] == 1.0
    assert organs["lung_colon"]["accuracy"] == 0.0 and organs["lung_colon"]["accuracy_given_organ"] == 1.0
    assert organs["cervix"] == {"n": 0}
    # macro over the subtypes that have images: "all" has all_benign and all_early, both right (2 more absent)
    assert {k: organs["all"][k] for k in ("precision", "recall", "f1")} == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert {k: organs["lung_colon"][k] for k in ("precision", "recall", "f1")} == {"precision": 0, "recall": 0, "f1": 0}
    assert report["router"]["macro_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)  # all, brain, lung_colon
    assert report["paper"] == PAPER_TEST_ACCURACY
    assert report["subtypes"]["all_benign"]["support"] == 1
    assert np.array(report["router"]["confusion_matrix"]).shape == (8, 8)
    json.dumps(report)


def test_bootstrap_interval_brackets_the_mean():
    correct = np.array([1.0] * 90 + [0.0] * 10)
    low, high = bootstrap_interval(correct, n_resamples=500)
    assert low < 0.9 < high and low > 0.8 and high <= 1.0
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([])))


def test_expected_calibration_error():
    assert expected_calibration_error(np.full(10, 0.9), np.array([1.0] * 9 + [0.0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(4, 1.0), np.zeros(4)) == pytest.approx(1.0)


runner = CliRunner()


@pytest.mark.slow  # trains twice and evaluates four times
def test_evaluate_cli_writes_report_and_figures(small_dataset, tmp_path):  # noqa: F811
    model_path = tmp_path / "m.safetensors"
    common = ["--trunk-weights", "none", "--image-size", "64", "--epochs", "2", "--views", "identity",
              "--cache-dir", str(tmp_path / "cache")]
    assert runner.invoke(app, ["train", str(small_dataset), "--out", str(model_path), *common]).exit_code == 0
    flat = tmp_path / "flat.safetensors"
    split = tmp_path / "m.split.json"
    result = runner.invoke(app, ["train", str(small_dataset), "--out", str(flat), *common, "--method", "flat",
                                 "--split", str(split)])
    assert result.exit_code == 0, result.output
    report_dir = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", str(model_path), str(small_dataset), "--split", str(split),
                                 "--report", str(report_dir), "--compare", str(flat),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    assert report["organs"]["cervix"]["n"] == 0 and report["organs"]["brain"]["n"] > 0
    confusion = np.array(report["router"]["confusion_matrix"])
    test_files = [f for f, s in json.loads(split.read_text())["files"].items() if s == "test"]
    assert report["n_images"] == confusion.sum() == len(test_files)
    assert report["router"]["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert "flat" in next(iter(report["compare"]))
    markdown = (report_dir / "report.md").read_text()
    assert "paper test accuracy" in markdown and "| brain |" in markdown
    for name in ("confusion_router.png", "confusion_subtypes.png", "confusion_brain.png", "history_multihead.png"):
        assert (report_dir / name).stat().st_size > 1000, name
    # without a split every image is evaluated
    result = runner.invoke(app, ["evaluate", str(model_path), str(small_dataset), "--report", str(tmp_path / "all"),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0
    assert json.loads((tmp_path / "all" / "report.json").read_text())["n_images"] == 60
    # an unreadable image: the others are evaluated, it is listed, and the exit code is 3
    broken = tmp_path / "with-broken"
    shutil.copytree(small_dataset, broken)
    (broken / "Brain Cancer" / "brain_glioma" / "cut.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    result = runner.invoke(app, ["evaluate", str(model_path), str(broken), "--report", str(tmp_path / "broken"),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert_handled_exit(result, 3)
    written = (tmp_path / "broken" / "report.json").read_text()
    assert json.loads(written)["n_images"] == 60 and "brain_glioma/cut.jpg" in written


def test_classify_plot(tiny_model, real_images, tmp_path):
    model_path = tmp_path / "m.safetensors"
    multihead.save(tiny_model, model_path)
    out = tmp_path / "prediction.png"
    result = runner.invoke(app, ["classify", str(real_images[0]), "-m", str(model_path), "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
