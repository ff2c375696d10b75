"""The ``multihead`` command: a thin typer layer over the library, one module per group of commands.

Exit codes: 0 everything worked; 1 an error stopped the command (one line on stderr says why; an
unexpected one too, named as a bug: ``multihead --debug COMMAND ...`` shows its traceback);
2 the command line was wrong; 3 the command ran but some inputs failed (listed in the output); 141 the reader of
its output left early (``... | head``), nothing printed, as for ``cat``.
Each command imports the library only when it runs, so ``multihead --help`` needs no torch.
"""

from __future__ import annotations

from ._app import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, app
from .benchmarking import benchmark
from .checkpoints import evaluate, export, info
from .precision import tune_precision
from .predicting import classify, explain, extract
from .serving import serve
from .training import train

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "app", "main"]

for _command in (classify, extract, info, export, evaluate, explain, serve, benchmark, train, tune_precision):
    app.command()(_command)  # in this order in --help


def main() -> None:  # pragma: no cover - console script entry point
    app()
