"""The model: frozen trunk, fused router and subtype heads, the decision rule, the post-hoc estimators
(temperatures, abstention thresholds, out-of-distribution score) and the checkpoint format.

Knows images only as tensors (from :mod:`multihead.data`); nothing here runs batches over files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .card import model_card_data
    from .checkpoint import CheckpointError, load, read_header, save
    from .decision import Status, decide, organ_marginal
    from .heads import HeadOutput, MultiHeadModel, create_model
    from .locate import MODEL_ENV, default_model_path, locate_model
    from .ood import NearestNeighbourOOD
    from .temperature import TemperatureScaling
    from .thresholds import AbstentionThresholds
    from .trunk import AUTO_STAGES, Trunk, TrunkWeights, WeightsUnavailableError, create_trunk
    from .trunk_specs import TRUNK_SPECS, TrunkSpec, trunk_spec
    from .trunk_split import AUTO_TUNE_FROM, TrunkSplit, split_trunk

_EXPORTS = {
    "model_card_data": ".card",
    **dict.fromkeys(["CheckpointError", "load", "read_header", "save"], ".checkpoint"),
    **dict.fromkeys(["Status", "decide", "organ_marginal"], ".decision"),
    **dict.fromkeys(["HeadOutput", "MultiHeadModel", "create_model"], ".heads"),
    **dict.fromkeys(["MODEL_ENV", "default_model_path", "locate_model"], ".locate"),
    "NearestNeighbourOOD": ".ood",
    "TemperatureScaling": ".temperature",
    "AbstentionThresholds": ".thresholds",
    **dict.fromkeys(["AUTO_STAGES", "Trunk", "TrunkWeights", "WeightsUnavailableError", "create_trunk"], ".trunk"),
    **dict.fromkeys(["TRUNK_SPECS", "TrunkSpec", "trunk_spec"], ".trunk_specs"),
    **dict.fromkeys(["AUTO_TUNE_FROM", "TrunkSplit", "split_trunk"], ".trunk_split"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
