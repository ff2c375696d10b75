"""Measuring a model: the paper's metrics per organ and subtype, trust measurements, reports and figures.

Takes labelled features (:mod:`multihead.features`) or computed numbers; never trains anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .evaluate import evaluate_folder
    from .metrics import (
        PAPER_TEST_ACCURACY,
        EvaluationData,
        bootstrap_interval,
        expected_calibration_error,
        feature_metrics,
        metrics_report,
        predict_features,
    )
    from .plots import plot_confusion_matrix, plot_explanation, plot_history, plot_prediction
    from .reports import markdown_report, write_report
    from .trust import ood_metrics, ood_report, reliability, risk_coverage, selective_report
    from .trust_plots import plot_ood_scores, plot_reliability_diagram, plot_risk_coverage
    from .trust_state import describe_trust, status_breakdown

_EXPORTS = {
    "evaluate_folder": ".evaluate",
    **dict.fromkeys(["PAPER_TEST_ACCURACY", "EvaluationData", "bootstrap_interval", "expected_calibration_error",
                     "feature_metrics", "metrics_report", "predict_features"], ".metrics"),
    **dict.fromkeys(["plot_confusion_matrix", "plot_explanation", "plot_history", "plot_prediction"], ".plots"),
    **dict.fromkeys(["markdown_report", "write_report"], ".reports"),
    **dict.fromkeys(["ood_metrics", "ood_report", "reliability", "risk_coverage", "selective_report"], ".trust"),
    **dict.fromkeys(["plot_ood_scores", "plot_reliability_diagram", "plot_risk_coverage"], ".trust_plots"),
    **dict.fromkeys(["describe_trust", "status_breakdown"], ".trust_state"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
