"""How far the trust rules can be trusted: selective accuracy and coverage, reliability, risk-coverage curves,
and how well the out-of-distribution score separates unknown images. Figures: :mod:`.trust_plots`."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.folders import expand_inputs, is_image_file
from ..data.scan import scan_dataset
from ..data.splits import Split
from ..data.views import VIEWS
from ..features.dataset import FeatureSet, dataset_features
from ..features.extract import extract_features
from ..model.decision import Status
from ..model.heads import MultiHeadModel

__all__ = ["ood_metrics", "ood_report", "reliability", "risk_coverage", "selective_report", "selective_scores"]

METRIC_TPR = 0.95
"""The TPR at which :func:`ood_metrics` reports the FPR (``fpr_at_95_tpr``), apart from the model's own
threshold (:data:`multihead.model.ood.DEFAULT_TPR`)."""


def selective_scores(model: MultiHeadModel, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the thresholds look at, per row of identity-view features ``[N, F]`` (CPU tensors): the joint
    probabilities, the decided organ and subtype, P(organ) and P(subtype | organ)."""
    decided = model.decisions(features)
    return {"joint": decided.joint, "organ": decided.organ, "subtype": decided.subtype,
            "organ_prob": decided.organ_probability, "subtype_conf": decided.subtype_confidence}


def selective_report(model: MultiHeadModel, data: FeatureSet) -> dict[str, float]:
    """Coverage and accuracy of each status at the model's thresholds, on identity-view features, with the
    out-of-distribution flag and coverage applied as predictions apply them (so the shares are what ``classify``
    says: it takes the same :meth:`~multihead.model.heads.MultiHeadModel.decisions`)."""
    decided = model.decisions(data.features[:, 0])
    status = np.array([str(x) for x in decided.status])
    true_organ = model.subtype_organ.cpu()[data.subtypes].numpy()
    organ_ok, subtype_ok = decided.organ.numpy() == true_organ, (decided.subtype == data.subtypes).numpy()
    full, organ_only = status == Status.ORGAN_AND_SUBTYPE.value, status == Status.ORGAN_ONLY.value
    answered_organ = full | organ_only
    flagged = decided.out_of_distribution
    mean = lambda values, mask: float(values[mask].mean()) if mask.any() else float("nan")  # noqa: E731
    return {
        "n": len(status),
        "coverage": float(full.mean()),
        "accuracy_kept": mean(subtype_ok, full),
        "organ_only_fraction": float(organ_only.mean()),
        "organ_accuracy_organ_only": mean(organ_ok, organ_only),
        "uncertain_fraction": float((status == Status.UNCERTAIN.value).mean()),
        "organ_coverage": float(answered_organ.mean()),
        "organ_accuracy_kept": mean(organ_ok, answered_organ),
        "accuracy_all": float(subtype_ok.mean()),
        "out_of_distribution_fraction": float(flagged.double().mean()) if flagged is not None else 0.0,
    }


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> dict[str, list[float]]:
    """Accuracy of the most confident answers as coverage grows (one point per image, best first)."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    hits = np.asarray(correct, dtype=float)[order]
    n = np.arange(1, len(hits) + 1)
    return {"coverage": (n / max(len(hits), 1)).tolist(), "accuracy": (np.cumsum(hits) / n).tolist(),
            "confidence": np.asarray(confidence, dtype=float)[order].tolist()}


def reliability(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 15) -> dict[str, list[float]]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (the reliability diagram)."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    rows: dict[str, list[float]] = {"lower": [], "upper": [], "confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        members = bins == b
        if members.any():
            rows["lower"].append(b / n_bins)
            rows["upper"].append((b + 1) / n_bins)
            rows["confidence"].append(float(confidence[members].mean()))
            rows["accuracy"].append(float(correct[members].mean()))
            rows["count"].append(int(members.sum()))
    return rows


def ood_metrics(in_scores: np.ndarray, out_scores: np.ndarray, *, tpr: float = METRIC_TPR) -> dict[str, float]:
    """AUROC (unknowns score higher) and the share of unknowns kept at ``tpr`` of the known (FPR at TPR; by
    default at 95 % TPR, the usual measure, whatever share the model's own threshold keeps)."""
    from sklearn.metrics import roc_auc_score

    in_scores, out_scores = np.asarray(in_scores, dtype=float), np.asarray(out_scores, dtype=float)
    if len(in_scores) == 0 or len(out_scores) == 0:
        raise ValueError(f"need known and unknown images; got {len(in_scores)} and {len(out_scores)}")
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    threshold = float(np.quantile(in_scores, tpr))
    return {"auroc": float(roc_auc_score(labels, np.r_[in_scores, out_scores])),
            f"fpr_at_{round(100 * tpr)}_tpr": float((out_scores <= threshold).mean()),
            "n_in": len(in_scores), "n_out": len(out_scores)}


def ood_report(model: MultiHeadModel, data_dir: str | os.PathLike | Sequence[str | os.PathLike],
               ood_dir: str | os.PathLike, *, split: Split | None = None, subset: str = "test",
               cache_dir: str | os.PathLike | None = None) -> dict[str, object]:
    """How the model answers images that are none of its subtypes, against the labelled images of one subset.

    ``ood_dir`` holds the unknown images; each folder directly inside it is one group (``near-ood/brain_notumor``,
    ``near-ood/natural_photo``, ...), images lying directly in it form a group named after it. Per group: the
    share flagged out of distribution, the share for which an organ is claimed (any status but ``uncertain``)
    and for which a subtype is (``organ_and_subtype``), which organs were claimed, and the score's AUROC and FPR
    at 95 % TPR against the labelled images. For the labelled images, the in-distribution cost: the shares
    flagged, ``uncertain`` and ``organ_only``. Unreadable files are listed under ``skipped``, never fatal.
    """
    if not model.ood.fitted:
        raise ValueError("this model has no fitted out-of-distribution score; train it again with this "
                         "multihead or call multihead.training.fit_ood")
    groups = _groups(Path(ood_dir))
    scan = scan_dataset(data_dir, model.taxonomy)
    relpaths = split.files(subset) if split is not None else [r.relpath for r in scan.records]
    known, _ = dataset_features(model, scan, relpaths, views=VIEWS[:1], cache_dir=cache_dir)
    known_decided = model.decisions(known.features[:, 0])
    in_scores = known_decided.ood_score.numpy()
    statuses = np.array([str(x) for x in known_decided.status])
    threshold = float(model.ood.threshold)
    report: dict[str, object] = {
        "score": "nearest training image (cosine distance)", "threshold": threshold,
        "subset": subset if split is not None else "all",
        "in_distribution": {"n": len(in_scores), "flagged": float((in_scores > threshold).mean()),
                            "uncertain": float((statuses == Status.UNCERTAIN.value).mean()),
                            "organ_only": float((statuses == Status.ORGAN_ONLY.value).mean())},
        "groups": {}, "skipped": [],
    }
    names = model.taxonomy.organ_names
    for group, paths in groups.items():
        unknown, _, failures = extract_features(model, paths, views=VIEWS[:1], cache_dir=cache_dir)
        report["skipped"] += [(os.fspath(paths[i]), reason) for i, reason in failures]  # type: ignore[operator]
        if len(unknown) == 0:
            continue
        decided = model.decisions(unknown[:, 0])
        status = np.array([str(x) for x in decided.status])
        claimed = status != Status.UNCERTAIN.value
        out_scores = decided.ood_score.numpy()
        report["groups"][group] = {  # type: ignore[index]
            **ood_metrics(in_scores, out_scores),
            "flagged": float((out_scores > threshold).mean()),
            "organ_claimed": float(claimed.mean()),
            "subtype_claimed": float((status == Status.ORGAN_AND_SUBTYPE.value).mean()),
            "organs_claimed": dict(Counter(names[o] for o, c in zip(decided.organ.tolist(), claimed) if c)),
        }
    if not report["groups"]:
        raise ValueError(f"{ood_dir}: none of its images could be read")
    return report


def _groups(root: Path) -> dict[str, list[Path]]:
    """The out-of-distribution images by group: each folder inside ``root``, and the images lying in it."""
    if not root.is_dir():
        raise ValueError(f"{root}: out-of-distribution folder does not exist or is not a folder")
    groups = {root.name: [p for p in sorted(root.iterdir()) if p.is_file() and is_image_file(p)]}
    groups.update({folder.name: list(expand_inputs([folder])) for folder in sorted(root.iterdir())
                   if folder.is_dir() and not folder.name.startswith(".")})
    groups = {name: paths for name, paths in groups.items() if paths}
    if not groups:
        raise ValueError(f"{root}: no image files found for the out-of-distribution set")
    return groups
