"""The bundled default model: present, offline, and reproducible by recipes/default_model.py."""

import json

import pytest
import torch
from safetensors.torch import load_file

import multihead
from multihead.data import scan_dataset
from multihead.data.splits import Split, make_split
from multihead.evaluation import evaluate_folder
from multihead.inference import default_model_path
from multihead.model.checkpoint import read_header
from multihead.model.trunk import fingerprint_state_dict

from .conftest import REPO, require_shared

EXAMPLES = sorted((REPO / "multihead" / "examples").glob("*.jpg"))
EXPECTED = {"WBC-Benign-020.jpg": "all_benign", "WBC-Malignant-Early-011.jpg": "all_early",
            "WBC-Malignant-Pre-005.jpg": "all_pre", "WBC-Malignant-Pro-005.jpg": "all_pro"}


@pytest.fixture(scope="module")
def header():
    path = default_model_path()
    assert path is not None, "multihead/weights/default.safetensors is missing: run recipes/default_model.py"
    return read_header(path)


def test_default_model_classifies_the_examples_offline(header):
    assert [p.name for p in EXAMPLES] == sorted(EXPECTED)
    predictions = multihead.classify(EXAMPLES)  # no model argument: the bundled file
    assert all(p.organ == "all" for p in predictions)
    assert "cervix" in predictions[0].untrained_organs
    correct = sum(p.subtype == EXPECTED[p.source.rsplit("/", 1)[-1]] for p in predictions)
    assert correct >= 3, [(p.source, p.subtype) for p in predictions]


def test_default_model_metadata_describes_what_it_knows(header):
    assert header["taxonomy"] == multihead.MULTI_CANCER
    assert header["trunk"]["name"] == "mobilenet_v2" and header["trunk"]["embedded"] is True
    metadata = header["metadata"]
    assert "cervix" not in metadata["available_organs"]
    assert metadata["recipe"]["script"] == "recipes/default_model.py"
    assert metadata["test_report"]["router"]["accuracy"] >= 0.99


def test_trunk_fingerprint_matches_the_shared_weights(header, mobilenet_weights):
    dtype = {"float16": torch.float16, "float32": torch.float32}[header["trunk"]["stored_dtype"]]
    trunk = multihead.create_trunk("mobilenet_v2", weights=None)
    shared = load_file(str(mobilenet_weights))
    state = {k: shared[k].to(dtype).to(v.dtype) if v.is_floating_point() else shared[k].to(v.dtype)
             for k, v in trunk.network.state_dict().items()}
    assert fingerprint_state_dict(state) == header["trunk"]["fingerprint"]


def test_default_model_names_its_folders_never_a_path_of_the_machine(header):
    """Issue 34: trained on both shared folders, recorded by name and image count."""
    metadata = header["metadata"]
    assert metadata["training"]["data"] == [{"name": "multi-cancer-sample", "images": 4907},
                                            {"name": "multi-cancer-extra", "images": 1567}]
    assert metadata["recipe"]["data"] == ["multi-cancer-sample", "multi-cancer-extra"]
    text = json.dumps(metadata)
    assert str(REPO.parent) not in text and '"/' not in text  # no absolute path anywhere in the metadata
    assert metadata["test_report"]["organs"]["kidney"]["n"] >= 30  # kidney is measured now


@pytest.mark.slow  # re-measures the 984 test images at 640 px: minutes on a 2-core CPU
def test_split_and_test_metrics_reproduce(header, sample_dir):
    """The recipe's split comes back from the same seed, and the shipped file scores what it says."""
    recorded = header["metadata"]["split"]["files"]
    folders = [sample_dir.parent / folder["name"] for folder in header["metadata"]["training"]["data"]]
    for folder in folders:
        require_shared(folder, f"the shared data folder {folder.name}")
    split, unreadable = make_split(scan_dataset(folders), seed=header["metadata"]["training"]["config"]["seed"])
    assert not unreadable and split.assignment == recorded
    model = multihead.load(default_model_path())
    report, failures = evaluate_folder(model, folders, split=Split(recorded, {}), subset="test", n_resamples=10)
    shipped = header["metadata"]["test_report"]
    assert not failures and report["n_images"] == shipped["n_images"]
    assert report["router"]["accuracy"] == pytest.approx(shipped["router"]["accuracy"], abs=0.003)
    assert report["overall"]["accuracy"] == pytest.approx(shipped["overall"]["accuracy"], abs=0.005)
    json.dumps(report)


def test_model_card_is_rendered_from_the_shipped_file(header):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "recipes" / "model_card.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bundled_model_ships_its_precision_guard(header):
    """Issue 37: the guard is measured on the shipped file, and the card shows its table."""
    from multihead.model.precision import GUARD_KEY, guard_rows

    guard = header["metadata"][GUARD_KEY]
    assert guard["images"] > 0 and guard["reference"]["precision"] == "fp32"
    measured = [row["precision"] for row in guard_rows(header["metadata"]) if row["agreement"] is not None]
    assert measured, "tune-precision measured no reduced precision"
    card = (REPO / "docs" / "model-card.md").read_text()
    assert "\n## Precision\n" in card and all(f"| {precision} |" in card for precision in measured)
