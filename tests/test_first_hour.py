"""A user's first hour (issue 19): the Kaggle download as it unpacks, small data sets and honest trust,
a fast and readable CLI, reports and the benchmark."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import multihead
from multihead.cli import app, predicting
from multihead.data import scan_dataset
from multihead.evaluation.reports import markdown_report
from multihead.evaluation.trust_state import describe_trust
from multihead.model.thresholds import (
    RULE_BOUND,
    RULE_FALLBACK,
    RULE_SMALL,
    AbstentionThresholds,
    images_to_certify,
)

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

KAGGLE_ORGANS = {"all": "ALL", "brain": "Brain Cancer", "breast": "Breast Cancer", "cervix": "Cervical Cancer",
                 "kidney": "Kidney Cancer", "lung_colon": "Lung and Colon Cancer", "lymphoma": "Lymphoma",
                 "oral": "Oral Cancer"}


def _kaggle_download(root, per_subtype=1, organs=KAGGLE_ORGANS, size=16, seed=0):
    """The Multi Cancer Dataset as Kaggle, kagglehub and the zip unpack it:
    ``<download>/Multi Cancer/Multi Cancer/<Organ>/<class>/<class>_NNNN.jpg``. Each class one colour, so a
    random trunk separates them (the real files are 512x512; the size does not matter to the layout)."""
    rng = np.random.default_rng(seed)
    data = root / "Multi Cancer" / "Multi Cancer"
    for index, subtype in enumerate(multihead.MULTI_CANCER.subtype_names):
        organ = multihead.MULTI_CANCER.organ_of(subtype)
        if organ not in organs:
            continue
        folder = data / organs[organ] / subtype
        folder.mkdir(parents=True)
        colour = np.array([(index * 37) % 256, (index * 91) % 256, (index * 151) % 256])
        for n in range(per_subtype):
            pixels = np.clip(colour + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{subtype}_{n + 1:04d}.jpg")
    return data


# --- the dataset as it is downloaded ---------------------------------------------------------------------------

def test_the_download_folder_itself_is_accepted_and_named(tmp_path):
    data = _kaggle_download(tmp_path / "download")
    scan = scan_dataset(tmp_path / "download")
    assert scan.root == data and scan.given_root == tmp_path / "download"
    assert len(scan.records) == 26 and not scan.empty_organs
    assert scan.records[0].relpath == "ALL/all_benign/all_benign_0001.jpg"
    assert scan_dataset(data).given_root is None  # the data folder itself: nothing walked


def test_a_one_organ_folder_is_not_taken_for_a_wrapper(tmp_path):
    _kaggle_download(tmp_path, organs={"brain": "Brain Cancer"})
    scan = scan_dataset(tmp_path / "Multi Cancer" / "Multi Cancer")
    assert {r.organ for r in scan.records} == {"brain"} and scan.given_root is None


def test_an_unrecognised_layout_says_which_folder_to_point_at(tmp_path):
    data = _kaggle_download(tmp_path / "download")
    (tmp_path / "download" / "multi-cancer.zip").write_bytes(b"")  # a second entry: no longer a wrapper
    with pytest.raises(ValueError, match=f"point at {data}") as err:
        scan_dataset(tmp_path / "download")
    assert "from-folders" not in str(err.value)
    with pytest.raises(ValueError, match=f"point at {data}"):  # one organ's folder: its parent
        scan_dataset(data / "Brain Cancer")


# --- small data sets and honest trust ----------------------------------------------------------------------------

def test_too_few_validation_images_fall_back_instead_of_withholding_everything():
    assert images_to_certify(0.99, 0.95) == 299
    perfect = torch.linspace(0.5, 1.0, 64)
    organs = torch.zeros(64, dtype=torch.long)
    thresholds = AbstentionThresholds(1).fit(perfect, torch.ones(64, dtype=torch.bool), perfect,
                                             torch.ones(64, dtype=torch.bool), organs)
    assert float(thresholds.router) < 1.0 and float(thresholds.subtype[0]) < 1.0
    assert thresholds.rules_ == {"router": RULE_FALLBACK, "subtype": [RULE_SMALL]}
    statuses = thresholds.status(perfect, perfect, organs)
    assert all(s == multihead.Status.ORGAN_AND_SUBTYPE for s in statuses)
    many = torch.linspace(0.5, 1.0, 400)
    big = AbstentionThresholds(1).fit(many, torch.ones(400, dtype=torch.bool), many, torch.ones(400, dtype=torch.bool),
                                      torch.zeros(400, dtype=torch.long))
    assert big.rules_ == {"router": RULE_BOUND, "subtype": [RULE_BOUND]}


def test_a_small_organ_aims_at_half_its_validation_mistakes():
    """Issue 39: 40 answers of one organ, 35 right, a confident mistake second. Asking 99 % of them (strict) keeps
    only the first answer; following the organ's accuracy (87.5 %: aim at 93.75 %) keeps the 35 most confident."""
    from multihead.model.thresholds import small_data_target

    confidence = torch.linspace(1.0, 0.61, 40)
    right = torch.ones(40, dtype=torch.bool)
    right[[1, 32, 35, 37, 39]] = False
    organs = torch.zeros(40, dtype=torch.long)
    ones = torch.ones(40)  # the router: sure and right, so every answer reaches the subtype threshold
    follow = AbstentionThresholds(1).fit(ones, right | True, confidence, right, organs)
    strict = AbstentionThresholds(1).fit(ones, right | True, confidence, right, organs, small_data="strict")
    assert follow.rules_["subtype"] == [RULE_SMALL] and strict.rules_["subtype"] == [RULE_FALLBACK]
    assert follow.targets_ == [pytest.approx(small_data_target(35 / 40, 0.99))] == [pytest.approx(0.9375)]
    kept_follow = confidence >= follow.subtype[0]
    kept_strict = confidence >= strict.subtype[0]
    assert int(kept_strict.sum()) == 1 and int(kept_follow.sum()) == 35  # 33 of 35 right: 94.3 %
    assert right[kept_follow].float().mean() >= 0.9375
    assert small_data_target(0.999, 0.99) == 0.99  # never more than the target asked
    with pytest.raises(ValueError, match="small_data must be one of follow, strict"):
        AbstentionThresholds(1).fit(ones, right, confidence, right, organs, small_data="loose")
    metadata = {"trust": {"selective": {"router_threshold": 0.0, "target_accuracy": 0.99, "confidence_level": 0.95,
                                        "subtype_thresholds": {"all": float(follow.subtype[0])},
                                        "subtype_targets": {"all": 0.9375}, "images_to_certify": 299,
                                        "rules": {"router": RULE_FALLBACK, "subtype": {"all": RULE_SMALL}}}}}
    text = " ".join(describe_trust(metadata))
    assert "(small: half its validation mistakes, target 93.8%)" in text and "--small-data strict" in text


def test_trust_state_says_the_fallback_and_skipped_heads_and_matches_the_statuses():
    metadata = {
        "calibration": {"router": 1.0, "heads": {"all": 0.8, "breast": 1.0}, "skipped": {
            "router": "no validation mistake", "breast": "2 validation images, fewer than 30"}},
        "available_organs": ["all", "breast"],
        "trust": {"ood": {"score": "nearest_neighbour", "threshold": 0.12, "tpr": 0.95, "fitted_on": 100,
                          "threshold_from": "val"},
                  "coverage": {"min_images": 50, "covered": ["all"], "organs": {"all": 80, "breast": 6}},
                  "selective": {"router_threshold": 0.0, "subtype_thresholds": {"all": 0.5, "breast": None},
                                "target_accuracy": 0.99, "confidence_level": 0.95,
                                "rules": {"router": RULE_FALLBACK, "subtype": {"all": RULE_FALLBACK,
                                                                              "breast": "too_few_images"}},
                                "images_to_certify": 299, "n": 64, "coverage": 0.9, "organ_only_fraction": 0.05,
                                "uncertain_fraction": 0.05}}}
    text = "\n".join(describe_trust(metadata))
    assert "a confidence bound needs at least 299" in text and "--no-abstain" in text
    assert "all >= 0.500 (by plain validation accuracy), breast withheld (too few validation images" in text
    assert "covers: all (80 training images)" in text
    assert "not claimed (fewer than 50 training images): breast (6)" in text
    assert "90.0% organ_and_subtype, 5.0% organ_only, 5.0% uncertain" in text
    assert "skipped breast (T=1): 2 validation images" in text and "calibrated all T=0.80" in text
    assert "distance to the nearest of 100 training images, threshold 0.120" in text
    assert describe_trust({})[0] == "thresholds: never abstain (not fitted)"
    older = {"trust": {"ood": {"score": "mahalanobis", "threshold": 12.0},  # a checkpoint of before issue 35
                       "selective": {"router_threshold": 0.0, "subtype_threshold": 0.5, "target_accuracy": 0.99,
                                     "rules": {"router": RULE_FALLBACK, "subtype": RULE_FALLBACK}}}}
    text = "\n".join(describe_trust(older))
    assert "every organ >= 0.500" in text and "older multihead (Mahalanobis), not read" in text


@pytest.fixture(scope="module")
def small_download(tmp_path_factory):
    """30 images a subtype of three organs, in the download's layout (the issue's small data set)."""
    root = tmp_path_factory.mktemp("download")
    _kaggle_download(root, per_subtype=30, organs={k: KAGGLE_ORGANS[k] for k in ("all", "brain", "lymphoma")})
    return root


TRAIN = ["--trunk-weights", "none", "--image-size", "32", "--epochs", "15", "--views", "identity", "--stages", "none"]


@pytest.fixture(scope="module")
def small_model(small_download, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model.safetensors"
    result = runner.invoke(app, ["train", str(small_download), "--out", str(out), *TRAIN,
                                 "--cache-dir", str(out.parent / "cache")])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_training_on_the_download_with_little_data_answers_and_says_why(small_model, small_download):
    out, output = small_model
    assert f"using {small_download / 'Multi Cancer' / 'Multi Cancer'}, the data folder inside" in output
    assert "a confidence bound needs at least 299 validation answers" in " ".join(output.split())
    assert "features train:" in output  # plain progress lines: CliRunner's output is no terminal
    model = multihead.load(out)
    selective = model.metadata["trust"]["selective"]
    assert selective["rules"]["router"] == RULE_FALLBACK and float(model.thresholds.router) < 1.0
    # what the training output announced is what predictions then say
    images = sorted((small_download / "Multi Cancer" / "Multi Cancer" / "Lymphoma" / "lymph_fl").iterdir())[:5]
    statuses = {str(p.status) for p in multihead.classify(images, model=model)}
    assert "organ_and_subtype" in statuses
    assert f"{selective['coverage']:.1%} organ_and_subtype" in output
    info = runner.invoke(app, ["info", str(out)])
    assert "a confidence bound needs at least" in " ".join(info.output.split())
    assert "temperature scaling" in info.output


def test_no_abstain_and_target_accuracy_are_the_users_choice(small_model, small_download, tmp_path):
    out = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["train", str(small_download), "--out", str(out), *TRAIN, "--no-abstain",
                                 "--target-accuracy", "0.9", "--cache-dir", str(small_model[0].parent / "cache")])
    assert result.exit_code == 0, result.output
    model = multihead.load(out)
    assert float(model.thresholds.router) == 0.0 and not model.thresholds.subtype.any()
    assert model.metadata["training"]["config"]["target_accuracy"] == 0.9
    assert "thresholds: off (trained with --no-abstain)" in result.output


def test_temperature_scaling_skipped_is_said_per_head(small_model):
    model = multihead.load(small_model[0])
    skipped = model.metadata["calibration"]["skipped"]
    assert skipped and all("fewer than 30" in r or "no validation mistake" in r for r in skipped.values())
    assert "cervix" not in skipped  # an organ without images is no head to calibrate
    for head in skipped:
        assert f"skipped {head} (T=1)" in small_model[1]


# --- a fast, readable CLI ------------------------------------------------------------------------------------------

def test_help_and_version_need_no_torch():
    code = ("import sys; from typer.testing import CliRunner; from multihead.cli import app; "
            "r = CliRunner().invoke(app, ['--version']); print(r.output.strip()); "
            "CliRunner().invoke(app, ['--help']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == f"multihead {multihead.__version__}" and out[1] == "False"


def test_classify_table_names_files_relative_and_folds_at_80_columns(tmp_path, tiny_model, monkeypatch, real_images):
    folder = tmp_path / "slides"
    (folder / "deep").mkdir(parents=True)
    for i, path in enumerate(real_images[:3]):
        Image.open(path).convert("RGB").save(folder / "deep" / f"a_rather_long_file_name_for_a_slide_{i}.png")
    model_path = tmp_path / "tiny.safetensors"
    multihead.save(tiny_model, model_path)
    out = io.StringIO()
    monkeypatch.setattr(predicting, "console", Console(file=out, width=80, force_terminal=False))
    err = io.StringIO()
    monkeypatch.setattr(predicting, "err_console", Console(file=err, width=80, force_terminal=True))
    result = runner.invoke(app, ["classify", str(folder), "-m", str(model_path), "-k", "2"])
    assert result.exit_code == 0, result.output
    table = out.getvalue()
    assert all(len(line) <= 80 for line in table.splitlines())
    assert "…" not in table and str(tmp_path) not in table
    assert "deep/a_rather" in table
    statuses = {p.status for p in multihead.classify(sorted((folder / "deep").iterdir()), model=tiny_model)}
    assert {str(s) for s in statuses} <= set(table.replace("\n", " ").split()) | {"uncertain"}
    assert " ok " not in table
    assert "classifying" in err.getvalue()  # the progress bar, drawn on a terminal


def test_status_cell_uses_the_status_names(tiny_model, real_images):
    prediction = multihead.classify(real_images[0], model=tiny_model)
    assert str(prediction.status) in predicting._status(prediction)
    ok = prediction.__class__(**{**prediction.__dict__, "status": multihead.Status.ORGAN_AND_SUBTYPE,
                                 "out_of_distribution": False})
    assert "organ_and_subtype" in predicting._status(ok) and predicting._status(ok) != "ok"


def test_classify_takes_a_batch_tensor_and_top_k_and_prints_one_line(tiny_model):
    batch = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8)
    predictions = multihead.classify(batch, model=tiny_model, top_k=3)
    assert isinstance(predictions, list) and len(predictions) == 3
    one = multihead.classify(batch[1], model=tiny_model)
    assert predictions[1].subtype == one.subtype
    assert len(predictions[0].alternatives) == 3 and predictions[0].to_dict()["top_k"][0][0] == \
        predictions[0].top_k(1)[0][0]
    line = str(one)
    assert "\n" not in line and len(line) < 120
    assert one.organ in line and one.subtype in line and str(one.status) in line
    assert f"{one.subtype_probability:.3f}" in line
    with pytest.raises(ValueError, match="top_k"):
        multihead.classify(batch, model=tiny_model, top_k=0)


# --- reports ---------------------------------------------------------------------------------------------------

def test_report_says_n_a_for_classes_without_images_and_the_status_breakdown():
    empty = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    report = {"n_images": 4, "organs": {}, "router": {"accuracy": 1.0, "accuracy_ci95": [1.0, 1.0], "macro_f1": 1.0},
              "overall": {"accuracy": 0.5, "macro_f1": 0.5, "ece": 0.1},
              "subtypes": {"lung_aca": {"precision": 0.5, "recall": 1.0, "f1": 0.667, "support": 4},
                           "cervix_dyk": empty},
              "trust": {"n": 4, "coverage": 0.5, "accuracy_kept": 1.0, "organ_only_fraction": 0.25,
                        "uncertain_fraction": 0.25, "organ_coverage": 0.75, "organ_accuracy_kept": 1.0,
                        "accuracy_all": 0.5, "out_of_distribution_fraction": 0.0, "state": ["thresholds: x"]}}
    text = markdown_report(report)
    assert "| cervix_dyk | n/a | n/a | n/a | 0 |" in text and "| lung_aca | 0.500 | 1.000 | 0.667 | 4 |" in text
    assert "50.0% organ_and_subtype, 25.0% organ_only, 25.0% uncertain" in text and "Coverage" in text


def test_report_md_links_its_figures(tmp_path):
    from multihead.evaluation.reports import write_report

    cm = [[1]]
    report = {"router": {"confusion_matrix": [[1] * 8] * 8}, "overall": {"confusion_matrix": [[0] * 26] * 26},
              "organs": {o: {"n": 0, "confusion_matrix": cm} for o in multihead.MULTI_CANCER.organ_names}}
    write_report(tmp_path, report, multihead.MULTI_CANCER, markdown="# x\n")
    text = (tmp_path / "report.md").read_text()
    assert "(confusion_router.png)" in text and "(confusion_subtypes.png)" in text
    assert json.loads((tmp_path / "report.json").read_text())["router"]


# --- a benchmark a user can trust --------------------------------------------------------------------------------

def test_benchmark_interleaves_rounds_reports_ratio_ranges_and_warns_when_busy(monkeypatch):
    from multihead import benchmark
    from multihead.benchmark import runner as benchmark_runner

    real = benchmark.machine_info
    monkeypatch.setattr(benchmark_runner, "machine_info",
                        lambda device="cpu": {**real(device), "load_average_1m": 99.0})
    report = benchmark.run_benchmark(systems=["multihead", "trunk_only"], batch_sizes=[1], image_size=32,
                                     repeats=1, warmup=0, rounds=3, channels_last=[True])
    rows = report["results"]
    assert all(len(r["round_images_per_second"]) == 3 and r["channels_last_weights"] for r in rows)
    entry = benchmark.summarize(report)[0]
    low, high = entry["multihead_over_trunk_only_range"]
    assert low <= entry["multihead_over_trunk_only"] <= high
    assert report["warnings"] and "busy" in report["warnings"][0]


def test_benchmark_cli_times_the_classify_backend_by_default(monkeypatch):
    from multihead import benchmark

    seen = {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        return {"machine": {"cpu_model": "x", "gpu": None}, "cpu_count": 2, "torch": "t", "results": [],
                "warnings": []}

    monkeypatch.setattr(benchmark, "run_benchmark", fake_run)
    result = runner.invoke(app, ["benchmark", "--image-size", "32", "-b", "1", "--no-end-to-end"])
    assert result.exit_code == 0, result.output
    from multihead.inference.config import InferenceConfig

    expected = InferenceConfig().resolve("cpu").backend
    assert seen["backends"] == ["torch"] + ([expected] if expected != "torch" else []) and seen["rounds"] == 3


def test_the_small_data_choices_are_the_thresholds_own():
    """TrainConfig repeats the choices (its module stays free of torch for --help); they must not drift."""
    from multihead.model.thresholds import SMALL_DATA
    from multihead.training.config import option_specs

    spec = next(s for s in option_specs(cli_only=False) if s.name == "small_data")
    assert tuple(spec.choices) == SMALL_DATA
