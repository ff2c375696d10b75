"""The package's layering: imports go only downward and no modules import each other in a cycle.

`lint-imports` checks the contracts in pyproject.toml (import-linter); these tests run it, and make sure
every top-level module of the package sits in a layer, so a new one cannot slip past the contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert command, "lint-imports is not installed: pip install -e '.[dev]'"
    return subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = _lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_top_level_module_is_in_a_layer():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in config if c["type"] == "layers")
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    package = ROOT / "multihead"
    modules = {f"multihead.{p.stem}" for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    modules |= {f"multihead.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert modules - placed == set(), "add these modules to a layer in pyproject.toml"


@pytest.mark.parametrize("importer, imported", [
    ("model/heads.py", "from ..training.heads import fit_heads"),  # upward, at import time
    ("data/views.py", "def _later():\n    from ..inference.predict import classify\n"),  # upward, inside a function
])
def test_an_upward_import_breaks_the_contract(tmp_path, importer, imported):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "multihead", copy / "multihead", ignore=shutil.ignore_patterns("weights", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    module = copy / "multihead" / importer
    module.write_text(module.read_text() + "\n" + imported + "\n")
    command = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(copy)}
    result = subprocess.run([command, "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0 and "broken" in result.stdout
