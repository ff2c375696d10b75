"""Write docs/cli.md, the CLI reference, from the typer app in multihead/cli/.

    python docs/gen_cli.py            # rewrite docs/cli.md
    python docs/gen_cli.py --check    # exit 1 if docs/cli.md is out of date (tests/test_docs.py checks this too)

Everything comes from the app's declarations: each command's docstring, and each parameter's annotation,
default and ``typer.Option``/``typer.Argument`` settings (``help``, ``min``, ``max``, ``exists``...). Only
typer's public declaration API is read, never its help formatter, so the page does not change when a new
typer or click release formats ``--help`` differently.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any

import typer
from typer.models import ArgumentInfo, OptionInfo

DOCS = Path(__file__).resolve().parent
TARGET = DOCS / "cli.md"


def _escape(text: str) -> str:
    """Markdown table cell text: no raw HTML tags, no column breaks, one line."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return " ".join(text.split())


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; ``list[X]`` stays as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _type_name(annotation: Any, info: ArgumentInfo | OptionInfo) -> str:
    base, _ = _unwrap(annotation)
    repeat = typing.get_origin(base) is list
    if repeat:
        base = typing.get_args(base)[0]
    if base is bool:
        return "flag"
    if base is Path:
        name = "file" if info.dir_okay is False else "folder" if info.file_okay is False else "path"
        name += " (must exist)" if info.exists else ""
    else:
        name = {int: "integer", float: "number", str: "text"}.get(base, getattr(base, "__name__", str(base)))
    bounds = [f"≥ {info.min}" if info.min is not None else "", f"≤ {info.max}" if info.max is not None else ""]
    name = " ".join([name, *[b for b in bounds if b]])
    return f"{name}, repeatable" if repeat else name


def _option_names(name: str, annotation: Any, info: OptionInfo) -> list[str]:
    """The flags typer makes: the declared ones, or ``--param-name`` (``--x/--no-x`` for a bool)."""
    # In ``Annotated[..., typer.Option("--model", "-m")]`` typer takes the first string as a flag, not a default.
    first = [info.default] if isinstance(info.default, str) else []
    declared = [d for decl in (*first, *(info.param_decls or ())) for d in decl.split("/")]
    declared = [d.strip() for d in declared if d.strip()]
    if declared:
        return sorted(declared, key=lambda d: (d.startswith("--no-"), not d.startswith("--"), d))
    flag = "--" + name.replace("_", "-")
    return [flag, "--no-" + flag[2:]] if _unwrap(annotation)[0] is bool else [flag]


def _default(default: Any, annotation: Any) -> str:
    if default is inspect.Parameter.empty or default is None or default is ...:
        return ""
    if _unwrap(annotation)[0] is bool:
        return "on" if default else "off"
    return f"`{default}`"


def _command_page(command: Any) -> list[str]:
    callback = command.callback
    name = command.name or callback.__name__.replace("_", "-")
    signature = inspect.signature(callback, eval_str=True)
    arguments, options = [], []
    usage = [f"multihead {name}", "[OPTIONS]"]
    for pname, param in signature.parameters.items():
        annotation, info = param.annotation, None
        if typing.get_origin(annotation) is typing.Annotated:
            annotation, *extras = typing.get_args(annotation)
            info = next((e for e in extras if isinstance(e, (ArgumentInfo, OptionInfo))), None)
        if info is None or info.hidden:
            continue
        required = param.default is inspect.Parameter.empty
        help_text = _escape(info.help or "")
        if isinstance(info, ArgumentInfo):
            metavar = pname.upper() + ("..." if typing.get_origin(_unwrap(annotation)[0]) is list else "")
            usage.append(metavar if required else f"[{metavar}]")
            detail = "required" if required else "optional"
            arguments.append(f"| `{metavar}` | {_type_name(annotation, info)}, {detail} | {help_text} |")
        else:
            flags = ", ".join(f"`{flag}`" for flag in _option_names(pname, annotation, info))
            default = "required" if required else _default(param.default, annotation)
            options.append(f"| {flags} | {_type_name(annotation, info)} | {default} | {help_text} |")
    doc = inspect.getdoc(callback) or ""
    lines = [f"## `multihead {name}`", "", doc, "", "```text", " ".join(usage), "```", ""]
    if arguments:
        lines += ["| argument | type | description |", "|---|---|---|", *arguments, ""]
    options.append("| `--help` | flag | | Show the command's help and exit. |")
    lines += ["| option | type | default | description |", "|---|---|---|---|", *options, ""]
    return lines


def render() -> str:
    """The whole page, as docs/cli.md holds it."""
    from multihead import cli

    app: typer.Typer = cli.app
    commands = [c for c in app.registered_commands if not c.hidden]
    lines = [
        "# CLI reference",
        "",
        "<!-- Generated by docs/gen_cli.py from multihead/cli/; do not edit by hand. "
        "Regenerate with: python docs/gen_cli.py -->",
        "",
        _escape(app.info.help or ""),
        "",
        "```text",
        "multihead COMMAND [OPTIONS] [ARGUMENTS]",
        "multihead COMMAND --help",
        "```",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for command in commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        summary = _escape((inspect.getdoc(command.callback) or "").split("\n\n")[0])
        lines.append(f"| [`{name}`](#multihead-{name}) | {summary} |")
    exit_codes = (inspect.getdoc(cli) or "").split("\n\n", 1)[-1]  # the module docstring after its title line
    lines += ["", "## Exit codes", "", exit_codes, ""]
    for command in commands:
        lines += _command_page(command)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.is_file() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date; run: python docs/gen_cli.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
