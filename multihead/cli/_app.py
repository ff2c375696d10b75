"""What every command shares: the typer app, the consoles, exit codes, option helpers and error handling."""

from __future__ import annotations

import json
import math
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
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Options before the command; the commands import torch only when they run, so --help is fast."""


def _one_of(*allowed: str) -> Callable[[Any], Any]:
    """Option callback: a value outside ``allowed`` is a wrong command line (exit 2), like an unknown option."""
    def check(value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in allowed:
                raise typer.BadParameter(f"{item!r} is not one of {', '.join(allowed)}")
        return value
    return check


def _library_errors(func: _F) -> _F:
    """Turn the library's plain errors into one line on stderr and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:  # click's Exit is a RuntimeError: let it through untouched
            raise
        except (ValueError, TypeError, RuntimeError, OSError) as err:  # escaped: "[serve]" is no markup
            err_console.print(f"[bold red]error:[/] {_shown(err)}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


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
