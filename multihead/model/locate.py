"""Which checkpoint "the model" means when none is named: ``$MULTIHEAD_MODEL``, then the bundled one.

``classify``, the CLI (``info``, ``classify``, ``serve``...) and the server all ask here, so they agree.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["MODEL_ENV", "default_model_path", "locate_model"]

MODEL_ENV = "MULTIHEAD_MODEL"


def default_model_path() -> Path | None:
    """The model shipped inside the package, if this installation has one."""
    candidate = resources.files("multihead") / "weights" / "default.safetensors"
    return Path(str(candidate)) if candidate.is_file() else None


def locate_model(model: str | os.PathLike | None = None) -> Path:
    """The checkpoint file to use: ``model`` when given, else ``$MULTIHEAD_MODEL``, else the bundled model.

    Raises:
        ValueError: no model was given and none is installed, or the file does not exist.

    Example:
        >>> locate_model().name  # doctest: +SKIP
        'default.safetensors'
    """
    chosen = model if model is not None else (os.environ.get(MODEL_ENV) or default_model_path())
    if chosen is None:
        raise ValueError(
            "no model given and no default model is installed: pass model='path/to/model.safetensors', "
            f"set {MODEL_ENV}, or train one with `multihead train DATA_DIR --out model.safetensors`"
        )
    path = Path(chosen)
    if not path.is_file():
        raise ValueError(f"{chosen}: model checkpoint does not exist")
    return path
