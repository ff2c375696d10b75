"""Lazy package exports: a package names what it offers, and a name's module is imported on first use.

``import multihead`` and ``multihead --help`` then cost what they use, not torch, torchvision and every
subpackage up front (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``exports`` maps a public name to its module
    (relative to ``package``, e.g. ``".predict"``).

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"classify": ".predict"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
