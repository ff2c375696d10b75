"""Evaluate a model on a folder (or one subset of a split of it): features through the cache, then metrics."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..data.scan import scan_dataset
from ..data.splits import Split
from ..data.views import VIEWS
from ..features.dataset import dataset_features
from ..inference.config import InferenceConfig
from ..model.heads import MultiHeadModel
from .metrics import metrics_report, predict_features
from .trust import selective_report
from .trust_state import describe_trust

__all__ = ["evaluate_folder"]

NOT_REGULAR = "not a regular file"
"""The reason :func:`~multihead.data.scan.scan_dataset` gives for a file it left out without reading it."""


def evaluate_folder(model: MultiHeadModel, data_dir: str | os.PathLike | Sequence[str | os.PathLike], *,
                    split: Split | None = None, subset: str = "test", cache_dir: str | os.PathLike | None = None,
                    n_resamples: int = 1000, config: InferenceConfig | None = None,
                    ) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """Evaluate ``model`` on every image under ``data_dir`` (a folder, or several read as their union, as
    training reads them), or on one subset of a split of it. ``config``: how the trunk runs (precision, backend),
    as ``classify`` would (its default: precision ``auto``).

    Returns the metrics report and the files that could not be read ``(relpath, reason)``.
    """
    scan = scan_dataset(data_dir, model.taxonomy)
    relpaths = [r.relpath for r in scan.records] if split is None else split.files(subset)
    if not relpaths:
        raise ValueError(f"no images to evaluate in {scan.describe()}" + (f" (subset {subset!r})" if split else ""))
    data, failures = dataset_features(model, scan, relpaths, views=VIEWS[:1], cache_dir=cache_dir, config=config)
    # A FIFO or a link to a device named like an image is never read (the scan left it out); it is still a file
    # that could not be evaluated, so it is listed with the unreadable ones.
    wanted = None if split is None else set(relpaths)
    failures += [(relpath, f"{relpath}: {NOT_REGULAR} (a FIFO, a device or a broken link): not read")
                 for relpath, reason in scan.skipped if reason == NOT_REGULAR and (wanted is None or relpath in wanted)]
    if len(data) == 0:
        raise ValueError(f"none of the {len(relpaths)} images in {scan.describe()} could be read")
    source_of = {r.relpath: r.source for r in scan.records}
    evaluation = predict_features(model, data.features[:, 0], data.subtypes, data.relpaths,
                                  [source_of[p] for p in data.relpaths])
    report = metrics_report(model.taxonomy, evaluation, n_resamples=n_resamples)
    report["skipped"] = [{"file": f, "reason": r} for f, r in failures]
    report["subset"] = subset if split is not None else "all"
    # what classify would say on these images: answered / organ only / uncertain, and the recorded trust state
    report["trust"] = {**selective_report(model, data), "state": describe_trust(model.metadata)}
    return report, failures
