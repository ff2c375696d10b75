"""The documentation cannot rot: the site builds strictly, the CLI reference is current, and every command
shown in the quickstart and the README runs.

Which commands run: fenced blocks marked ``bash``/``sh``/``shell`` (one command per line; a trailing ``\\``
continues a line, ``&&`` chains are split) and ``python`` blocks (run as one script). ``text`` and
``console`` blocks are output and are never run. Within a page, blocks run in order in one scratch folder
that looks like the repository root (its entries are linked in) with ``../shared`` beside it, so relative
paths work as written and whatever a command writes lands in the scratch folder.

Not run, because the test already runs inside the installed environment: creating a virtual environment,
``pip install``, activating a venv, ``git clone``, ``cd`` and ``pytest`` itself. ``multihead ...`` lines
(with or without ``.venv/bin/``) run in-process through typer's ``CliRunner`` unless they use shell syntax
(pipes, redirections, ``$``, globs), which goes to bash with the venv's ``bin`` first on ``PATH``.
Commands must exit 0. A command that fails only because no default model is bundled yet is reported as a
skip, after every other command has run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from multihead.cli import app
from multihead.inference import default_model_path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
RUN_LANGS = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python", "py": "python"}
NOT_RUN = re.compile(
    r"""^(?:\S*python3?\s+-m\s+(?:venv|pip\s+install|pytest)\b   # venv, pip, pytest through python -m
        |virtualenv\b|(?:\S*/)?pip3?\s+install\b|(?:\S*/)?pytest\b  # the same as scripts
        |(?:source|\.)\s+\S*activate\b|git\s+clone\b|cd\b
        |\(?command\s+-v\b|(?:sudo\s+)?apt-get\b)          # system packages (the browser test's chromium)""",
    re.VERBOSE,
)
SHELL_SYNTAX = re.compile(r"[|;<>$`*?]")
NO_DEFAULT_MODEL = "no default model is installed"


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    text: str

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The runnable fenced blocks of a Markdown file, in order."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = re.match(r"^(`{3,})\s*([\w+-]*)", lines[index])
        if not match:
            index += 1
            continue
        fence, lang, start = match.group(1), match.group(2).lower(), index
        index += 1
        body = []
        while index < len(lines) and not lines[index].startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1
        if lang in RUN_LANGS:
            blocks.append(Block(path, start + 1, RUN_LANGS[lang], "\n".join(body) + "\n"))
    return blocks


def shell_commands(text: str) -> list[str]:
    """One command per line (``\\`` continues it); ``a && b`` becomes two; comments and skipped lines go."""
    commands = []
    for line in re.sub(r"\s*\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        commands += [part.strip() for part in line.split(" && ") if not NOT_RUN.match(part.strip())]
    return commands


def test_block_parsing(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```bash\n(command -v chromium || (apt-get update -qq && apt-get install -y chromium)) && "
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/pytest -q\n"
        "source .venv/bin/activate\n# a comment\nmultihead classify a.jpg \\\n  --top-k 3\nls && echo hi\n```\n\n"
        "```text\nmultihead classify not-run.jpg\n```\n\n```python\nprint(1)\n```\n"
    )
    blocks = code_blocks(page)
    assert [(b.lang, b.line) for b in blocks] == [("shell", 3), ("python", 16)]
    assert shell_commands(blocks[0].text) == ["multihead classify a.jpg --top-k 3", "ls", "echo hi"]


# --- 1. the site builds with --strict --------------------------------------------------------------

def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs/mkdocstrings are not installed; install them with: pip install -e '.[docs]'")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=180, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    problems = [line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems or [result.stderr[-3000:]])
    assert (tmp_path / "site" / "api" / "index.html").is_file()


# --- 2. docs/cli.md is what docs/gen_cli.py makes now -------------------------------------------------

def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert committed == _gen_cli().render(), "docs/cli.md is out of date: run `python docs/gen_cli.py`"


def test_cli_reference_lists_the_real_options():
    """The flags the page documents are exactly the flags typer builds (a check on the generator itself)."""
    import typer.main

    group = typer.main.get_command(app)
    sections = re.split(r"^## `multihead (\S+)`$", (DOCS / "cli.md").read_text(encoding="utf-8"), flags=re.M)
    documented = {name: body for name, body in zip(sections[1::2], sections[2::2])}
    assert list(documented) == list(group.commands)
    for name, command in group.commands.items():
        real = {flag for p in command.params if p.param_type_name == "option" for flag in [*p.opts, *p.secondary_opts]}
        rows = [line.split("|")[1] for line in documented[name].splitlines() if line.startswith("| `-")]
        shown = {flag for row in rows for flag in re.findall(r"`(-[^`]+)`", row)}
        assert shown == real | {"--help"}, f"multihead {name}: documented {sorted(shown)}, real {sorted(real)}"


def test_concepts_taxonomy_table_matches_the_code():
    from multihead import MULTI_CANCER

    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ((?:`\w+`(?:, )?)+) \|$", (DOCS / "concepts.md").read_text(), re.M)
    table = {organ: tuple(re.findall(r"`(\w+)`", subtypes)) for organ, subtypes in rows}
    assert table == {organ.name: organ.subtype_names for organ in MULTI_CANCER.organs}
    assert list(table) == list(MULTI_CANCER.organ_names)


# --- 3. every command in the quickstart and the README runs -----------------------------------------

@pytest.fixture
def workdir(tmp_path, sample_dir, monkeypatch):
    """A folder that looks like the repository root, with ../shared beside it."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in REPO.iterdir():
        if not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry)
    (tmp_path / "shared").symlink_to(sample_dir.parents[1])  # <shared>/data/multi-cancer-sample
    monkeypatch.chdir(root)
    return root


def _run_shell(command: str, cwd: Path) -> tuple[int, str]:
    words = command.split(maxsplit=1)
    if words and words[0] in ("multihead", ".venv/bin/multihead") and not SHELL_SYNTAX.search(command):
        result = CliRunner().invoke(app, shlex.split(command)[1:], catch_exceptions=True)
        output = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            output += f"\n{type(result.exception).__name__}: {result.exception}"
        return result.exit_code, output
    command = command.replace(".venv/bin/", f"{BIN}/")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def _run_python(code: str, cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-"], input=code, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    return result.returncode, result.stdout + result.stderr


def run_page(path: Path, cwd: Path) -> None:
    """Run every runnable block of ``path`` in order; fail on the first failure, skip if only the
    missing default model stopped something."""
    blocks = code_blocks(path)
    waiting_for_default = []
    for block in blocks:
        if block.lang == "python":
            steps = [(block.text, _run_python)]
        else:
            steps = [(command, _run_shell) for command in shell_commands(block.text)]
        for step, runner in steps:
            code, output = runner(step, cwd)
            if code == 0:
                continue
            if NO_DEFAULT_MODEL in output and default_model_path() is None:
                waiting_for_default.append(step.splitlines()[0])
                continue
            pytest.fail(f"{block.where()}: exit {code} from\n{step}\n--- output (last 4000 characters) ---\n"
                        f"{output[-4000:]}", pytrace=False)
    if waiting_for_default:
        pytest.skip(f"default model not yet bundled: {len(waiting_for_default)} commands of {path.name} need it "
                    f"(first: {waiting_for_default[0]}); every other command ran")


@pytest.mark.slow  # every command of the page: about 45 s on 2 cores
def test_quickstart_commands_run(workdir):
    assert code_blocks(DOCS / "quickstart.md"), "the quickstart shows no commands"
    run_page(DOCS / "quickstart.md", workdir)


@pytest.mark.slow
def test_readme_commands_run(workdir):
    if not code_blocks(REPO / "README.md"):
        pytest.skip("README.md shows no bash or python blocks")
    run_page(REPO / "README.md", workdir)
