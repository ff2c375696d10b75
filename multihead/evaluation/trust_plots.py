"""Figures for trust, from numbers :mod:`multihead.evaluation.trust` computed: ``plot_*(..., ax=None)`` only draws."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .plots import pyplot

__all__ = ["plot_ood_scores", "plot_reliability_diagram", "plot_risk_coverage"]


def plot_reliability_diagram(tables: Mapping[str, Mapping[str, Sequence[float]]], *, ax: Any = None,
                             title: str = "reliability") -> Any:
    """Accuracy against mean confidence per bin (from :func:`multihead.evaluation.trust.reliability`), one line per
    table (e.g. before and after temperature scaling); the diagonal is perfect calibration."""
    plt = pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="perfectly calibrated")
    for (name, table), marker in zip(tables.items(), "osd^v"):
        sizes = [12 + 120 * c / max(max(table["count"]), 1) for c in table["count"]]
        ax.plot(table["confidence"], table["accuracy"], lw=1, label=name)
        ax.scatter(table["confidence"], table["accuracy"], s=sizes, marker=marker, alpha=0.7)
    ax.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="confidence (joint probability of the answer)",
           ylabel="accuracy", title=title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return ax


def plot_risk_coverage(curves: Mapping[str, Mapping[str, Sequence[float]]], *, ax: Any = None,
                       target: float | None = None, points: Mapping[str, tuple[float, float]] | None = None,
                       title: str = "accuracy of the kept answers") -> Any:
    """Accuracy of the most confident answers against the share kept (from
    :func:`multihead.evaluation.trust.risk_coverage`); ``points`` marks operating points as (coverage, accuracy)."""
    plt = pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5.4, 4.2))
    for name, curve in curves.items():
        ax.plot(curve["coverage"], curve["accuracy"], lw=1.5, label=name)
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.0%}")
    for name, (coverage, accuracy) in (points or {}).items():
        ax.plot([coverage], [accuracy], "o", ms=7, label=name)
    ax.set(xlabel="coverage (share of images answered with a subtype)", ylabel="accuracy", xlim=(0, 1), title=title)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return ax


def plot_ood_scores(scores: Mapping[str, Sequence[float]], *, threshold: float | None = None, ax: Any = None,
                    title: str = "out-of-distribution score") -> Any:
    """Histograms of the OOD score per group of images (log scale), with the model's threshold."""
    import numpy as np

    plt = pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    values = [np.asarray(v, dtype=float) for v in scores.values()]
    top = max(float(v.max()) for v in values if len(v))
    bins = np.logspace(np.log10(max(min(float(v.min()) for v in values if len(v)), 1e-3)), np.log10(top), 40)
    for name, v in zip(scores, values):
        ax.hist(v, bins=bins, alpha=0.55, density=True, label=f"{name} ({len(v)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="out-of-distribution score (distance to the nearest training image)", ylabel="density",
           title=title)
    ax.legend(fontsize=8)
    return ax
