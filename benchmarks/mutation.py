"""Mutation testing of multihead's core with mutmut: one module at a time, each with only its own test files.

Usage (from the repository root, with the dev extra installed; docs/testing.md):

    .venv/bin/python benchmarks/mutation.py                      # every module in [tool.multihead.mutation]
    .venv/bin/python benchmarks/mutation.py multihead/taxonomy.py  # just one
    .venv/bin/python benchmarks/mutation.py --survivors          # rerun only the last survivors and timeouts
    .venv/bin/python benchmarks/mutation.py --resume MODULE      # finish an interrupted run, new tests in

mutmut reads a single ``[tool.mutmut]`` table, so each module runs in a scratch copy of the package and the
tests (``build/mutation/<module>/``) whose pyproject.toml is the repository's, narrowed to that module and its
test files. The counts and every surviving mutant's diff are merged into benchmarks/results/mutation.json,
keeping the verdict already written there (before or during the run) for a survivor whose change is unchanged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "mutation.json"
KILLED = {"killed", "caught by type check", "timeout"}  # a timeout (an endless loop) fails the run too
TIMEOUT_MULTIPLIER = 60.0  # mutmut's default is 15; see _write_config


def _toml_table(name: str, values: dict) -> str:
    return f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def prepare(module: str, tests: list[str], pyproject: dict) -> Path:
    """A scratch copy of the package and the tests whose pyproject.toml mutates only ``module``."""
    scratch = _scratch(module)
    shutil.rmtree(scratch, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "artifacts", "*.pyc")
    shutil.copytree(REPO / "multihead", scratch / "multihead", ignore=ignore)
    shutil.copytree(REPO / "tests", scratch / "tests", ignore=ignore)
    _write_config(scratch, module, tests, pyproject)
    return scratch


def _write_config(scratch: Path, module: str, tests: list[str], pyproject: dict) -> None:
    # A test's measured duration leaves out the module fixtures (a trained model) that a mutant's run builds
    # again, so mutmut's default 15 x the estimate times out healthy runs on a busy 2-core machine; a real
    # endless loop still ends as a timeout. [tool.mutmut] may set its own timeout_multiplier.
    mutmut = {"timeout_multiplier": TIMEOUT_MULTIPLIER, **pyproject["tool"]["mutmut"], "only_mutate": [module],
              "pytest_add_cli_args_test_selection": tests}
    pytest_options = pyproject["tool"]["pytest"]["ini_options"]
    (scratch / "pyproject.toml").write_text(_toml_table("tool.mutmut", mutmut) + "\n"
                                            + _toml_table("tool.pytest.ini_options", pytest_options))


def _scratch(module: str) -> Path:
    return REPO / "build" / "mutation" / Path(module).with_suffix("").as_posix().replace("/", ".")


def run_module(module: str, tests: list[str], pyproject: dict, previous: dict, *, survivors: bool = False,
               resume: bool = False) -> dict:
    names = [s["name"] for s in previous.get("survivors", [])] + previous.get("timeouts", [])
    unchanged = (_scratch(module) / module).is_file() and (
        (_scratch(module) / module).read_bytes() == (REPO / module).read_bytes())
    if (survivors or resume) and not unchanged:
        print(f"  {module} changed since its mutants were made: mutating it all again", flush=True)
    env = {**os.environ, "MULTIHEAD_SHARED": str(REPO.parent / "shared"), "CI": ""}
    mutmut = [sys.executable, "-m", "mutmut"]
    if (survivors or resume) and unchanged and (_scratch(module) / "mutants").is_dir():
        scratch = _scratch(module)  # the same mutants; the current tests and other modules replace the old ones
        if resume:  # survivors and timeouts again; then every mutant without a result (the second, empty list)
            names = [name for name, status in _statuses(scratch, env).items()
                     if status != "not checked" and status not in KILLED - {"timeout"}]
        _write_config(scratch, module, tests, pyproject)
        for target in (scratch / "tests", scratch / "mutants" / "tests"):
            shutil.rmtree(target)
            shutil.copytree(REPO / "tests", target, ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
        for source in (REPO / "multihead").rglob("*.py"):
            relative = source.relative_to(REPO)
            if relative.as_posix() != module:
                for root in (scratch, scratch / "mutants"):
                    (root / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, root / relative)
    else:
        scratch, names = prepare(module, tests, pyproject), []
    start = time.perf_counter()
    log = scratch / "mutmut-run.log"  # a file, not a pipe: mutmut's fork server can outlive it holding a pipe open
    with open(log, "w") as out:
        # mutmut tests the named mutants, or with no names every mutant that has no result yet (after a change to
        # the tests, every mutant those tests cover)
        for batch in ([names, []] if names else [[]]):
            run = subprocess.run([*mutmut, "run", *batch], cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT)
            if run.returncode != 0:
                break
    seconds = round(time.perf_counter() - start)
    statuses = _statuses(scratch, env)
    if run.returncode != 0 or not statuses:
        raise SystemExit(f"mutmut failed: {module} (exit {run.returncode}), see {log}:\n{log.read_text()[-3000:]}")
    survivors = []
    for name, status in sorted(statuses.items()):
        if status in KILLED:
            continue
        diff = subprocess.run([*mutmut, "show", name], cwd=scratch, env=env, capture_output=True, text=True).stdout
        diff = "\n".join(line for line in diff.splitlines()[1:] if line.startswith(("+", "-", "@@"))
                         and not line.startswith(("+++", "---")))
        survivors.append({"name": name, "status": status, "diff": diff, "verdict": "unexplained"})
    counts = {status: sum(1 for s in statuses.values() if s == status) for status in sorted(set(statuses.values()))}
    killed = sum(n for status, n in counts.items() if status in KILLED)
    timeouts = sorted(name for name, status in statuses.items() if status == "timeout")  # rerun by --survivors
    return {"tests": tests, "mutants": len(statuses), "killed": killed, "survived": len(statuses) - killed,
            "score": round(killed / len(statuses), 3), "statuses": counts, "seconds": seconds, "survivors": survivors,
            "timeouts": timeouts}


def _statuses(scratch: Path, env: dict) -> dict[str, str]:
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=scratch, env=env,
                             capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^\s+(\S+): (.+)$", listing, re.M))


def _change(diff: str) -> str:
    """A survivor's diff without its position (``@@`` lines): a verdict still holds when lines above it moved."""
    return "\n".join(line for line in diff.splitlines() if not line.startswith("@@"))


def _load_result() -> dict:
    return json.loads(RESULT.read_text(encoding="utf-8")) if RESULT.is_file() else {"modules": {}}


def main() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    modules = pyproject["tool"]["multihead"]["mutation"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", choices=[[], *modules], help="default: all of them, in order")
    parser.add_argument("--survivors", action="store_true",
                        help="rerun only the survivors and timeouts of the last run")
    parser.add_argument("--resume", action="store_true",
                        help="test again every mutant of the last (maybe interrupted) run not yet killed, new tests in")
    args = parser.parse_args()
    chosen = args.modules or list(modules)
    for module in chosen:
        print(f"mutating {module} against {', '.join(modules[module])} ...", flush=True)
        result = _load_result()
        previous = result["modules"].get(module, {})
        entry = run_module(module, modules[module], pyproject, previous, survivors=args.survivors,
                           resume=args.resume)
        if args.survivors:
            entry["seconds"] += previous.get("seconds", 0)
        entry["date"] = datetime.date.today().isoformat()
        entry["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or platform.system()})"
        result = _load_result()  # verdicts written meanwhile
        known = {_change(s["diff"]): s["verdict"] for s in [*previous.get("survivors", []),
                                                            *result["modules"].get(module, {}).get("survivors", [])]
                 if not s["verdict"].startswith(("unexplained", "killed", "expected killed"))}  # it survived after all
        for survivor in entry["survivors"]:
            survivor["verdict"] = known.get(_change(survivor["diff"]), "unexplained")
        result["modules"][module] = {**{k: v for k, v in result["modules"].get(module, {}).items()
                                        if k in ("killed_by", "first_run", "note")}, **entry}
        result["tool"] = f"mutmut {version('mutmut')}"
        result["command"] = ".venv/bin/python benchmarks/mutation.py [MODULE...]"
        RESULT.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"  {entry['killed']}/{entry['mutants']} killed ({entry['score']:.0%}), "
              f"{len(entry['survivors'])} survivors, {entry['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
