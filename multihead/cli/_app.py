"""What every command shares: the typer app, the consoles, exit codes, option helpers and error handling."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="multihead",
    help="One frozen trunk, a router over organs and a subtype head per organ: classify in one forward pass.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141
"""The reader of stdout left (``multihead classify ... --json | head``): 128 + SIGPIPE, what ``cat`` ends with."""
_F = TypeVar("_F", bound=Callable[..., Any])

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Checkpoint (.safetensors). Default: $MULTIHEAD_MODEL, then the bundled model."),
]


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"multihead {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error instead of one line "
                                                        "(for bug reports).")] = False,
) -> None:
    """Options before the command; the commands import torch only when they run, so --help is fast."""
    ctx.meta[_DEBUG] = debug


_DEBUG = "multihead.debug"
"""Where ``--debug`` is kept: click's context ``meta``, which every command's context shares."""


def _debugging() -> bool:
    try:  # typer >= 0.17 runs its own copy of click; older ones run click itself
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(_DEBUG))


def _one_of(*allowed: str) -> Callable[[Any], Any]:
    """Option callback: a value outside ``allowed`` is a wrong command line (exit 2), like an unknown option."""
    def check(value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in allowed:
                raise typer.BadParameter(f"{item!r} is not one of {', '.join(allowed)}")
        return value
    return check


def _library_errors(func: _F) -> _F:
    """Turn any error into one line on stderr and exit code 1: the library's plain errors (``ValueError``,
    ``OSError``, ...) as they are, anything else named as a bug. ``multihead --debug`` shows the traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):  # exits and usage errors: as they are
            raise
        except BrokenPipeError:  # nobody reads stdout any more: nothing to say, and nobody to say it to
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except Exception as err:
            if _debugging():
                raise
            if isinstance(err, (ValueError, TypeError, RuntimeError, OSError)):  # escaped: "[serve]" is no markup
                message = _shown(err)
            else:
                message = (f"unexpected {type(err).__name__}: {_shown(err)} (a bug in multihead: run "
                           "'multihead --debug ...' for the traceback and report it)")
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not hit the closed pipe again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test runner's buffer): nothing to flush into a pipe
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _json_line(record: dict[str, Any]) -> str:
    """One JSON line with NaN and infinity as ``null``, as the server writes them (strict JSON has no NaN)."""

    def finite(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(record), allow_nan=False)


def _shown(text: object) -> str:
    """A string from a checkpoint or a file, as data for rich: markup escaped, terminal control codes removed."""
    from ..model.metadata import printable

    return escape(printable(text))
