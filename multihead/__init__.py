"""multihead: one frozen trunk, a router over organs and one subtype head per organ, in one forward pass.

The package is layered, each layer importing only the ones below it (checked by import-linter, see
``pyproject.toml``): ``taxonomy`` -> ``data`` (images, preprocessing, views, folders, splits) -> ``model``
(trunk, heads, decision, post-hoc estimators, checkpoints) -> ``inference`` (engine, backends, export,
predictions) -> ``features`` (extraction, cache) -> ``evaluation`` (metrics, reports, plots) ->
``training`` (heads, post-hoc fitting, the pipeline) -> ``serve``, ``distributed``, ``benchmark`` -> ``cli``.
The names below are the task verbs; each is imported on first use, so ``import multihead`` is cheap.

Example:
    >>> import multihead
    >>> model = multihead.create_model("resnet18", trunk_weights=None)
    >>> model.taxonomy.organ_names[:3]
    ('all', 'brain', 'breast')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .data.images import ImageError
    from .data.preprocessing import Preprocessing
    from .evaluation.evaluate import evaluate_folder
    from .inference.config import InferenceConfig
    from .inference.explain import explain
    from .inference.export import export_onnx
    from .inference.predict import FileResult, Prediction, classify, classify_files
    from .model.checkpoint import CheckpointError, load, read_header, save
    from .model.decision import Status
    from .model.heads import HeadOutput, MultiHeadModel, create_model
    from .model.trunk import Trunk, WeightsUnavailableError, create_trunk
    from .taxonomy import MULTI_CANCER, Organ, Subtype, Taxonomy
    from .training.config import TrainConfig
    from .training.pipeline import train_from_folder

__version__ = "0.1.0"

_EXPORTS = {
    "ImageError": ".data.images",
    "Preprocessing": ".data.preprocessing",
    "evaluate_folder": ".evaluation.evaluate",
    "InferenceConfig": ".inference.config",
    "explain": ".inference.explain",
    "export_onnx": ".inference.export",
    **dict.fromkeys(["FileResult", "Prediction", "classify", "classify_files"], ".inference.predict"),
    **dict.fromkeys(["CheckpointError", "load", "read_header", "save"], ".model.checkpoint"),
    "Status": ".model.decision",
    **dict.fromkeys(["HeadOutput", "MultiHeadModel", "create_model"], ".model.heads"),
    **dict.fromkeys(["Trunk", "WeightsUnavailableError", "create_trunk"], ".model.trunk"),
    **dict.fromkeys(["MULTI_CANCER", "Organ", "Subtype", "Taxonomy"], ".taxonomy"),
    "TrainConfig": ".training.config",
    "train_from_folder": ".training.pipeline",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
