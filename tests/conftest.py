"""Shared fixtures: small random-weight models (no download, ever) and the real images in ../shared.

The no-download guard is set in ``os.environ`` before torch or the hub are imported, so every subprocess a test
starts (torchrun, the documented commands, the CLI) inherits it: an empty ``TORCH_HOME`` and ``HF_HOME`` and
``HF_HUB_OFFLINE=1``. With ``CI`` set to true, a missing ``../shared`` fails the tests that need it instead of
skipping them, so CI cannot go green having tested little.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_NO_DOWNLOADS = Path(tempfile.mkdtemp(prefix="multihead-tests-no-downloads-"))
os.environ["TORCH_HOME"] = str(_NO_DOWNLOADS / "torch-home")
os.environ["HF_HOME"] = str(_NO_DOWNLOADS / "hf-home")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("MULTIHEAD_MODEL", None)

import pytest  # noqa: E402 (after the guard above, which the hub reads when it is imported)
import torch  # noqa: E402

import multihead  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MULTIHEAD_SHARED") or REPO.parent / "shared")
SAMPLE = Path(os.environ.get("MULTIHEAD_SAMPLE") or SHARED / "data" / "multi-cancer-sample")
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet-features.safetensors"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_shared(path: Path, what: str) -> Path:
    """``path`` from ../shared, or a skip that is an error under ``CI=true`` (CI must not pass having skipped)."""
    if not path.exists():
        message = f"{what} not found at {path} (set MULTIHEAD_SHARED to the folder holding data/ and weights/)"
        if IN_CI:
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _no_network_weights(monkeypatch, tmp_path_factory):
    """Tests never download: an empty torch hub cache, and downloads fail at once (in this process; the
    environment set at the top of this file covers subprocesses)."""
    monkeypatch.setenv("TORCH_HOME", str(_NO_DOWNLOADS / "torch-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MULTIHEAD_MODEL", raising=False)
    monkeypatch.setenv("MULTIHEAD_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import huggingface_hub
    import timm.models._hub  # binds its own hf_hub_download at import

    for module in (huggingface_hub, timm.models._hub):
        monkeypatch.setattr(module, "hf_hub_download", refuse)


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
    return require_shared(SAMPLE, "real images (the multi-cancer sample)")


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    return require_shared(MOBILENET_WEIGHTS, "ImageNet MobileNetV2 weights")


@pytest.fixture(scope="session")
def real_images(sample_dir) -> list[Path]:
    """One real image per subtype folder present in the shared sample (mixed sizes, modes, formats)."""
    images = []
    for folder in sorted(p for p in sample_dir.glob("*/*") if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file())
        if files:
            images.append(files[0])
    return images


def assert_handled_exit(result, code: int, *in_stderr: str) -> None:
    """A CLI run (typer's ``CliRunner``) that ended through ``typer.Exit(code)``, not an uncaught exception.

    An uncaught exception also gives exit 1 and leaves no traceback in ``result.output``, so checking the exit
    code or the absence of "Traceback" proves nothing; ``result.exception`` is a ``SystemExit`` only when the
    command exited on purpose. ``in_stderr``: texts the one-line error must contain.
    """
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}: {result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}")
    stderr = _plain(result.stderr)  # rich wraps long lines and draws boxes around usage errors
    for text in in_stderr:
        assert _plain(text) in stderr, f"{text!r} not in stderr: {result.stderr!r}"


def _plain(text: str) -> str:
    return re.sub(r"[\s│╭╮╰╯─]+", " ", text).strip()


def copy_real_images(sample_dir: Path, root: Path, organs: dict[str, str] | tuple[str, ...], per_subtype: int) -> Path:
    """The first ``per_subtype`` real images of every subtype of ``organs``, copied to
    ``root/<organ folder>/<subtype>/`` (``organs``: names, or organ -> folder name for the Kaggle layout)."""
    folders = organs if isinstance(organs, dict) else {organ: organ for organ in organs}
    for organ, folder in folders.items():
        for subtype in multihead.MULTI_CANCER.organ(organ).subtype_names:
            target = root / folder / subtype
            target.mkdir(parents=True)
            for path in sorted((sample_dir / organ / subtype).iterdir())[:per_subtype]:
                shutil.copy(path, target / path.name)
    return root


@contextmanager
def live_server(model: multihead.MultiHeadModel, settings) -> Iterator[tuple[object, int]]:
    """``multihead serve`` of ``model`` in a thread of this process on a free loopback port: ``(app, port)``."""
    import uvicorn

    from multihead.serve import server_config

    app, config = server_config(model, host="127.0.0.1", port=0, settings=settings, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield app, server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
