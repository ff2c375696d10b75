"""Running a model: the engine (device, precision, backends, export) and the predictions it makes.

``classify`` and ``classify_files`` turn images into :class:`Prediction` objects; ``run_features`` and
``run_batch`` are the engine under them; ``explain`` adds Grad-CAM maps of both decisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ..model.locate import MODEL_ENV, default_model_path
    from .backends import BACKENDS, Runtime, installed_backends, open_runtime
    from .config import InferenceConfig
    from .engine import run_batch, run_features
    from .explain import Explanation, explain, grad_cam
    from .export import MissingDependencyError, check_onnx, export_onnx, read_onnx_header
    from .models import ModelInput, resolve_model, shared_model
    from .predict import FileResult, Prediction, classify, classify_files, predict_batch

_EXPORTS = {
    **dict.fromkeys(["MODEL_ENV", "default_model_path"], "..model.locate"),
    **dict.fromkeys(["BACKENDS", "Runtime", "installed_backends", "open_runtime"], ".backends"),
    "InferenceConfig": ".config",
    **dict.fromkeys(["run_batch", "run_features"], ".engine"),
    **dict.fromkeys(["Explanation", "explain", "grad_cam"], ".explain"),
    **dict.fromkeys(["MissingDependencyError", "check_onnx", "export_onnx", "read_onnx_header"], ".export"),
    **dict.fromkeys(["ModelInput", "resolve_model", "shared_model"], ".models"),
    **dict.fromkeys(["FileResult", "Prediction", "classify", "classify_files", "predict_batch"], ".predict"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
