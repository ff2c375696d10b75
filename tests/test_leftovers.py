"""The small leftovers of a user's first hour (issue 39): an epoch printed once when piped, the command line's own
words in the CLI's advice, no tuning settings listed for an untuned model, and null scores for absent classes."""

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.evaluation.metrics import EvaluationData, metrics_report

from .conftest import assert_handled_exit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("leftovers")
    for subtype in multihead.MULTI_CANCER.organ("lymphoma").subtype_names:
        (root / "data" / "lymphoma" / subtype).mkdir(parents=True)
        for path in sorted((sample_dir / "lymphoma" / subtype).iterdir())[:6]:
            shutil.copy(path, root / "data" / "lymphoma" / subtype / path.name)
    out = root / "m.safetensors"
    result = runner.invoke(app, ["train", str(root / "data"), "--out", str(out), "--trunk-weights", "none",
                                 "--image-size", "32", "--epochs", "2", "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    return out, result


def test_a_piped_training_prints_each_epoch_once(trained):
    _, result = trained
    assert result.output.count("multihead epoch 1:") == 1 and result.output.count("multihead epoch 2:") == 1
    assert "train loss" in result.output and "┃" not in result.output  # the lines, not the table as well


def test_info_lists_no_tuning_settings_for_a_frozen_trunk(trained):
    out, _ = trained
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert '"tune_from": "none"' in result.stdout and "tune_lr" not in result.stdout


def test_weights_that_cannot_be_downloaded_are_explained_in_the_cli_s_words(trained, tmp_path):
    data = trained[0].parent / "data"
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "m.safetensors"), "--image-size", "32"])
    assert result.exit_code == 1
    assert "--trunk-weights 'path/to/weights.pth'" in result.stderr and "trunk_weights=" not in result.stderr


def test_a_subtype_without_images_has_no_scores_not_zeros():
    taxonomy = multihead.MULTI_CANCER
    subtypes = np.array([taxonomy.subtype_index("lymph_cll")] * 3)
    data = EvaluationData(subtypes, np.eye(taxonomy.num_subtypes)[subtypes], np.array([5] * 3), subtypes, subtypes,
                          ["a", "b", "c"])
    report = metrics_report(taxonomy, data, n_resamples=10)
    assert report["subtypes"]["lymph_cll"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3}
    assert report["subtypes"]["lymph_fl"] == {"precision": None, "recall": None, "f1": None, "support": 0}


def test_each_training_setting_is_declared_once_and_the_command_line_is_made_from_it(tmp_path):
    """TrainConfig's declarations give the checks, the options of `multihead train` and their help (issue 39)."""
    import inspect

    from multihead.cli.training import train
    from multihead.training.config import TrainConfig, option_specs

    parameters = inspect.signature(train).parameters
    declared = option_specs()
    assert [spec.name for spec in declared] == [name for name in parameters if name in {s.name for s in declared}]
    assert "weight_decay" not in parameters and "tune_label_smoothing" not in parameters  # kept to Python
    for spec in declared:
        assert spec.help and spec.help in str(parameters[spec.name].annotation.__metadata__[0].help)
    for changes, message in [({"epochs": 1.5}, "epochs must be an integer, got 1.5"),
                             ({"abstain": "yes"}, "abstain must be True or False, got 'yes'"),
                             ({"views": "sideways"}, "views must be one of 'identity', 'dihedral', 'augmented'"),
                             ({"target_accuracy": 0.0}, r"target_accuracy must be in \(0, 1\], got 0.0"),
                             ({"lr": -1.0}, "lr must be positive, got -1.0"),
                             ({"image_size": 4}, "image_size must be at least 8, got 4")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**changes)
    assert TrainConfig(image_size=None, tune_patience=None).image_size is None  # the two that may be unset
    result = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "m.safetensors"),
                                 "--views", "sideways"])
    assert_handled_exit(result, 2, "'sideways' is not one of identity, dihedral, augmented")
