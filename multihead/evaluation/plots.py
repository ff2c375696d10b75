"""Figures from computed numbers: ``plot_*(..., ax=None)`` draws and returns; saving is the caller's step.

matplotlib is imported inside the functions (headless ``Agg``), so importing multihead never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..inference.explain import Explanation
    from ..inference.predict import Prediction
    from ..taxonomy import Taxonomy

__all__ = ["plot_confusion_matrix", "plot_explanation", "plot_history", "plot_prediction", "pyplot"]


def pyplot() -> Any:
    """matplotlib's pyplot on the headless ``Agg`` backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], *, ax: Any = None,
                          title: str = "") -> Any:
    """A confusion-matrix heat map (rows: true, columns: predicted) with counts in the cells."""
    plt = pyplot()
    if ax is None:
        size = max(4.0, 0.45 * len(labels) + 2)
        _, ax = plt.subplots(figsize=(size, size))
    counts = [list(row) for row in matrix]
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in counts if row), default=0)
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > peak / 2 else "black")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_history(history: Sequence[dict[str, Any]], *, axes: Any = None, part: str | None = None) -> Any:
    """Training and validation loss and accuracy per epoch (one part of the history: a method or a head)."""
    plt = pyplot()
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4))
    part = part or (history[0].get("part") if history else None)
    rows = [h for h in history if h.get("part") == part]
    key = "accuracy_given_organ" if str(part).startswith("head:") else (
        "router_accuracy" if part == "router" else "accuracy")
    for split, style, color in (("train", "-o", "tab:blue"), ("val", "--s", "tab:orange")):
        for ax, metric in ((axes[0], "loss"), (axes[1], key)):
            points = _points(rows, split, metric)
            if points:
                ax.plot(*zip(*points), style, color=color, label=split)
    axes[0].set(xlabel="epoch", ylabel="loss", title=f"{part}: loss")
    axes[1].set(xlabel="epoch", ylabel=key.replace("_", " "), title=f"{part}: accuracy")
    for ax in axes:
        if ax.get_lines():
            ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    return axes


def _points(rows: Sequence[dict[str, Any]], split: str, metric: str) -> list[tuple[int, float]]:
    """``(epoch, value)`` of the records that hold ``record[split][metric]``. A tuning epoch records its training
    loss only (its training accuracy would cost another pass over the maps): it is drawn without that figure."""
    points = []
    for record in rows:
        figures = record.get(split)
        value = figures.get(metric) if isinstance(figures, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            points.append((record.get("epoch"), float(value)))
    return points



def plot_prediction(image: Any, prediction: Prediction, *, taxonomy: Taxonomy | None = None, fig: Any = None,
                    top_k: int = 8) -> Any:
    """The paper's prediction figure: the image beside bar charts of organ and subtype probabilities."""
    plt = pyplot()
    if fig is None:
        fig = plt.figure(figsize=(13, 4.2))
    ax_image, ax_organs, ax_subtypes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1, 1.3]})
    ax_image.imshow(image)
    ax_image.axis("off")
    name = lambda n: taxonomy.display_name(n) if taxonomy else n  # noqa: E731
    status = str(prediction.status)
    if status == "organ_and_subtype":
        title = f"{name(prediction.subtype)}\nP = {prediction.subtype_probability:.3f}"
    else:  # the subtype is withheld: say so rather than title the figure with it
        title = f"{name(prediction.organ)}: {status}\nsubtype withheld (best: {prediction.subtype})"
    ax_image.set_title(title, fontsize=10, color="black" if status == "organ_and_subtype" else "tab:red")
    organs = sorted(prediction.organ_probabilities.items(), key=lambda kv: kv[1])
    ax_organs.barh([o for o, _ in organs], [p for _, p in organs],
                   color=["tab:red" if o == prediction.organ else "tab:gray" for o, _ in organs])
    ax_organs.set(xlim=(0, 1), title="organ (router)", xlabel="probability")
    top = sorted(prediction.top_k(top_k), key=lambda kv: kv[1])
    ax_subtypes.barh([s for s, _ in top], [p for _, p in top],
                     color=["tab:red" if s == prediction.subtype else "tab:blue" for s, _ in top])
    ax_subtypes.set(xlim=(0, 1), title="subtype (joint probability)", xlabel="probability")
    fig.tight_layout()
    return fig


def plot_explanation(explanation: Explanation, *, fig: Any = None, alpha: float = 0.45) -> Any:
    """The image, then the organ map and the subtype map laid over it, side by side."""
    plt = pyplot()
    if fig is None:
        fig = plt.figure(figsize=(12, 4.3))
    axes = fig.subplots(1, 3)
    p = explanation.prediction
    titles = [f"input ({p.status.replace('_', ' ')})",
              f"organ: {p.organ} (P = {p.organ_probability:.3f})",
              f"subtype: {p.subtype} (P | organ = {p.subtype_confidence:.3f})"]
    for ax, heat, title in zip(axes, (None, explanation.organ_map, explanation.subtype_map), titles):
        ax.imshow(explanation.image)
        if heat is not None:
            ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    if p.out_of_distribution:
        fig.suptitle(f"out of distribution (score {p.ood_score:.0f}): unlike every trained organ", color="tab:red")
    fig.tight_layout()
    return fig
