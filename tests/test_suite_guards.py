"""The suite's own guards: CI cannot pass by skipping what needs ../shared, and no subprocess can download
weights. Each check runs pytest or python in a subprocess, as CI and the tests' own subprocesses do."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import REPO

PROBE = '''
def test_needs_the_sample(sample_dir):
    assert sample_dir.is_dir()


def test_needs_the_weights(mobilenet_weights):
    assert mobilenet_weights.is_file()
'''


def _pytest_in_a_copy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run PROBE with this suite's conftest, in a package of its own so nothing else is collected."""
    package = tmp_path / "probe_tests"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (package / "test_probe.py").write_text(PROBE)
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                           "-rs", str(package)], cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # two pytest runs in subprocesses
def test_missing_shared_is_a_skip_locally_and_an_error_in_ci(tmp_path):
    missing = str(tmp_path / "no-shared")
    local = _pytest_in_a_copy(tmp_path / "local", CI="", MULTIHEAD_SHARED=missing, MULTIHEAD_SAMPLE="")
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout[-2000:]
    ci = _pytest_in_a_copy(tmp_path / "ci", CI="true", MULTIHEAD_SHARED=missing, MULTIHEAD_SAMPLE="")
    assert ci.returncode == 1 and "2 errors" in ci.stdout, ci.stdout[-2000:]  # errors at setup, not skips
    assert "CI=true: real images (the multi-cancer sample) not found at" in ci.stdout
    assert "CI=true: ImageNet MobileNetV2 weights not found at" in ci.stdout


def test_subprocesses_inherit_the_no_download_guard(tmp_path):
    """What a test's subprocess (torchrun, a documented command) sees: offline hub, empty caches."""
    script = textwrap.dedent('''
        import os, sys
        from pathlib import Path
        import torch.hub
        assert os.environ["HF_HUB_OFFLINE"] == "1", os.environ.get("HF_HUB_OFFLINE")
        hub = Path(torch.hub.get_dir())
        assert "multihead-tests-no-downloads-" in str(hub) and not any(hub.glob("checkpoints/*")), hub
        assert "multihead-tests-no-downloads-" in os.environ["HF_HOME"]
        import huggingface_hub
        try:
            huggingface_hub.hf_hub_download("timm/resnet18.a1_in1k", "model.safetensors")
        except Exception as err:  # offline mode refuses at once, without touching the network
            print(type(err).__name__)
        else:
            sys.exit("downloaded")
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in {"OfflineModeIsEnabled", "LocalEntryNotFoundError"}, done.stdout


def test_in_process_downloads_fail_at_once():
    import huggingface_hub
    import pytest
    import timm
    import torch

    for download in (lambda: torch.hub.load_state_dict_from_url("https://example.invalid/w.pth"),
                     lambda: huggingface_hub.hf_hub_download("timm/resnet18.a1_in1k", "model.safetensors"),
                     lambda: timm.create_model("resnet18", pretrained=True)):
        with pytest.raises(OSError, match="network disabled in tests"):
            download()
