"""``python -m multihead``, and ``torchrun -m multihead classify ...``: the same app as the ``multihead`` command."""

from .cli import main

main()
