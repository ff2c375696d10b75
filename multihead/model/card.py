"""What a model says about itself, as JSON-ready data: the facts a model card, ``GET /v1/model`` or a
dashboard shows, read from a loaded model or from a checkpoint's header (no tensors loaded).

The checkpoint's metadata also holds the split's file list (thousands of relative paths) and the per-epoch
history; they are left out here, as are local paths of the machine it was trained on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from .checkpoint import read_header
from .heads import MultiHeadModel
from .metadata import printable
from .precision import choose_precision, guard_rows
from .records import ModelMetadata, read_guard, read_metadata, to_dict

__all__ = ["model_card_data"]

INTENDED_USE = "Research and teaching; not for diagnosis or any clinical decision."


def model_card_data(model: MultiHeadModel | Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Taxonomy, trunk, preprocessing, training settings and measured metrics of a model, and its precision guard
    with what ``precision="auto"`` runs on this machine (``precision``).

    Args:
        model: a loaded model, a header from :func:`multihead.read_header`, or a checkpoint path (only its
            header is read).

    Returns:
        A dict of plain JSON values; non-finite numbers become ``None``.

    Example:
        >>> card = model_card_data("model.safetensors")  # doctest: +SKIP
        >>> trunk, test = card["trunk"], card["test"]
        >>> trunk["name"], test["accuracy"]
        ('mobilenet_v2', 0.9362279511533242)
    """
    if isinstance(model, (str, os.PathLike)):
        model = read_header(model)
    if isinstance(model, MultiHeadModel):
        taxonomy, trunk, preprocessing = model.taxonomy, model.trunk.spec(), model.preprocessing
        metadata, joint, available = model.metadata, model.joint, list(model.available_organs)
    elif isinstance(model, Mapping):
        taxonomy, trunk, preprocessing = model["taxonomy"], dict(model["trunk"]), model["preprocessing"]
        metadata, joint, available = model["metadata"], model.get("joint", "hierarchical"), None
    else:
        raise TypeError(f"expected a MultiHeadModel, a checkpoint header or a path, got {type(model).__name__}")
    record = read_metadata(metadata)
    if available is None:
        available = list(record.available_organs or taxonomy.organ_names)
    card = {
        "intended_use": INTENDED_USE,
        "taxonomy": json.loads(taxonomy.to_json()),
        "available_organs": available,
        "covered_organs": _covered(record, available),
        "untrained_organs": [o for o in taxonomy.organ_names if o not in available],
        "trunk": {key: trunk.get(key) for key in ("name", "source", "weights_id", "fingerprint", "num_features")},
        "preprocessing": {**asdict(preprocessing), "description": preprocessing.describe()},
        "joint": joint,
        "training": record.training.config if record.training else None,
        # as recorded, keys this version does not read included: the card shows what the checkpoint holds
        "counts": metadata.get("counts"),
        "metrics": metadata.get("metrics"),
        "test": _test_summary(metadata.get("test_report")),
        "calibration": metadata.get("calibration"),
        "trust": metadata.get("trust"),
        "precision": _precision(metadata, trunk, preprocessing),
    }
    return _finite(card)


def _precision(metadata: Mapping[str, Any], trunk: Mapping[str, Any], preprocessing: Any) -> dict[str, Any]:
    """The accuracy guard of reduced precision (one row per precision measured, with its verdict) and what
    ``precision="auto"`` runs on the machine reading the card, with why."""
    choice = choose_precision(metadata, trunk, preprocessing, device="cpu")
    guard = read_guard(metadata)
    return {"guard": guard_rows(metadata), "reference": to_dict(guard.reference) if guard else None,
            "images": guard.images if guard else None, "measured_on": guard.measured_on if guard else None,
            "auto_here": {"precision": choice.precision, "backend": choice.backend, "reason": choice.reason}}


def _covered(record: ModelMetadata, available: list[str]) -> list[str]:
    """The organs the model claims: as fitted (issue 35), or every trained organ for older files."""
    coverage = record.trust.coverage if record.trust else None
    return list(available if coverage is None or coverage.covered is None else coverage.covered)


def _test_summary(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The headline numbers of an evaluation report, without its confusion matrices."""
    if not report:
        return None
    overall, router = report.get("overall", {}), report.get("router", {})
    return {
        "n_images": report.get("n_images"),
        "router_accuracy": router.get("accuracy"),
        "router_accuracy_ci95": router.get("accuracy_ci95"),
        "accuracy": overall.get("accuracy"),
        "accuracy_ci95": overall.get("accuracy_ci95"),
        "macro_f1": overall.get("macro_f1"),
        "ece": overall.get("ece"),
        "organs": {organ: {key: entry.get(key) for key in ("n", "accuracy", "accuracy_ci95", "accuracy_given_organ")}
                   for organ, entry in report.get("organs", {}).items()},
    }


def _finite(value: Any) -> Any:
    """NaN and infinity have no JSON spelling: ``None`` instead, everywhere in a nested structure; strings from
    a checkpoint are data, so terminal control codes are removed from them (:func:`printable`)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Mapping):
        return {printable(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
