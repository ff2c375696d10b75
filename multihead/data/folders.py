"""Walking folders for image files: one walker, so ``classify DIR``, the dataset scan and the
out-of-distribution report see the same files in the same order."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "expand_inputs", "is_image_file", "visible_files"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
"""The extensions multihead reads (:mod:`multihead.data.images` opens them); defined here, with no torch or
Pillow import, so ``multihead --help`` and folder walks stay fast."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether the name has one of the image extensions multihead reads (:data:`IMAGE_EXTENSIONS`)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def visible_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Every file below ``folder``, recursively and sorted (folders in name order, then their files), skipping
    hidden files and folders (names starting with ``.``); symbolic links to folders are not followed."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files as given; folders walked (:func:`visible_files`) for image files.

    Example:
        >>> next(expand_inputs(["multihead/examples"])).name  # doctest: +SKIP
        'WBC-Benign-020.jpg'
    """
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from (file for file in visible_files(path) if is_image_file(file))
        else:
            yield path
