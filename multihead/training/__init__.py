"""Learning: the heads on cached trunk features (joint loss and the two baselines), the trunk's top tuned
with them (optional), the post-hoc estimators on the trained model, and the whole pipeline from a folder to
a checkpoint.

The top of the library's data layers: it uses :mod:`multihead.evaluation` to pick epochs and report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .config import METHODS, PRESETS, TrainConfig
    from .heads import fit_heads
    from .pipeline import TrainResult, save_split_next_to, train_from_folder
    from .posthoc import fit_coverage, fit_ood, fit_temperatures, fit_thresholds, fit_trust
    from .tune import tune_top

_EXPORTS = {
    **dict.fromkeys(["METHODS", "PRESETS", "TrainConfig"], ".config"),
    "fit_heads": ".heads",
    **dict.fromkeys(["TrainResult", "save_split_next_to", "train_from_folder"], ".pipeline"),
    **dict.fromkeys(["fit_coverage", "fit_ood", "fit_temperatures", "fit_thresholds", "fit_trust"], ".posthoc"),
    "tune_top": ".tune",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
