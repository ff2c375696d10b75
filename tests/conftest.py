"""Shared fixtures: small random-weight models (no download, ever) and the real images in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import multihead

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("MULTIHEAD_SAMPLE", REPO.parent / "shared" / "data" / "multi-cancer-sample"))
MOBILENET_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors"


@pytest.fixture(autouse=True)
def _no_network_weights(monkeypatch, tmp_path_factory):
    """Tests never download: an empty torch hub cache, and downloads fail at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))
    monkeypatch.delenv("MULTIHEAD_MODEL", raising=False)
    monkeypatch.setenv("MULTIHEAD_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny 64-px forwards: one thread is faster than two fighting over a busy 2-core machine (13 s vs 44 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model() -> multihead.MultiHeadModel:
    """ResNet18 with random weights at 64 px: fast, deterministic, fine for anything but accuracy."""
    torch.manual_seed(0)
    return multihead.create_model("resnet18", trunk_weights=None, image_size=64, seed=0).eval()


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not SAMPLE.is_dir():
        pytest.skip(f"real images not found at {SAMPLE}")
    return SAMPLE


@pytest.fixture(scope="session")
def real_images(sample_dir) -> list[Path]:
    """One real image per subtype folder present in the shared sample (mixed sizes, modes, formats)."""
    images = []
    for folder in sorted(p for p in sample_dir.glob("*/*") if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file())
        if files:
            images.append(files[0])
    return images
