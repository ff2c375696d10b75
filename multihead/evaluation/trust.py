"""How far the trust rules can be trusted: selective accuracy and coverage, reliability, risk-coverage curves,
and how well the out-of-distribution score separates unknown images. Figures: :mod:`.trust_plots`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..data.folders import expand_inputs
from ..data.scan import scan_dataset
from ..data.splits import Split
from ..data.views import VIEWS
from ..features.dataset import FeatureSet, dataset_features
from ..features.extract import extract_features
from ..model.decision import Status, subtype_confidence
from ..model.heads import MultiHeadModel

__all__ = ["ood_metrics", "ood_report", "reliability", "risk_coverage", "selective_report", "selective_scores"]

METRIC_TPR = 0.95
"""The TPR at which :func:`ood_metrics` reports the FPR (``fpr_at_95_tpr``), apart from the model's own
threshold (:data:`multihead.model.ood.DEFAULT_TPR`)."""


def selective_scores(model: MultiHeadModel, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the thresholds look at, per row of identity-view features ``[N, F]`` (CPU tensors): the joint
    probabilities, the decided organ and subtype, P(organ) and P(subtype | organ)."""
    with torch.no_grad():
        out = model.forward_heads(features.to(model.device))
        joint = out.joint_probs.double().cpu()
        organ, subtype = (t.cpu() for t in model.decide(out))
    organ_prob, subtype_conf = subtype_confidence(joint, model.subtype_organ.cpu(), organ, subtype)
    return {"joint": joint, "organ": organ, "subtype": subtype, "organ_prob": organ_prob, "subtype_conf": subtype_conf}


def selective_report(model: MultiHeadModel, data: FeatureSet) -> dict[str, float]:
    """Coverage and accuracy of each status at the model's thresholds, on identity-view features, with the
    out-of-distribution flag applied as predictions apply it (so the shares are what ``classify`` says)."""
    s = selective_scores(model, data.features[:, 0])
    flagged = None
    if model.ood.fitted:
        with torch.no_grad():
            flagged = model.ood.flag(model.ood_score(data.features[:, 0].to(model.device))).cpu()
    status = np.array([str(x) for x in model.thresholds.status(s["organ_prob"], s["subtype_conf"], flagged)])
    true_organ = model.subtype_organ.cpu()[data.subtypes].numpy()
    organ_ok, subtype_ok = s["organ"].numpy() == true_organ, (s["subtype"] == data.subtypes).numpy()
    full, organ_only = status == Status.ORGAN_AND_SUBTYPE.value, status == Status.ORGAN_ONLY.value
    answered_organ = full | organ_only
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


def ood_report(model: MultiHeadModel, data_dir: str | os.PathLike, ood_dir: str | os.PathLike, *,
               split: Split | None = None, subset: str = "test",
               cache_dir: str | os.PathLike | None = None) -> dict[str, object]:
    """OOD metrics of the model's score: the labelled images (one split) against every image in ``ood_dir``."""
    if not model.ood.fitted:
        raise ValueError("this model has no fitted out-of-distribution score; train it again with this "
                         "multihead or call multihead.training.fit_ood")
    root = Path(ood_dir)
    paths = list(expand_inputs([root])) if root.is_dir() else []
    if not paths:
        raise ValueError(f"{ood_dir}: no image files found for the out-of-distribution set")
    scan = scan_dataset(data_dir, model.taxonomy)
    relpaths = split.files(subset) if split is not None else [r.relpath for r in scan.records]
    known, _ = dataset_features(model, scan, relpaths, views=VIEWS[:1], cache_dir=cache_dir)
    unknown, _, failures = extract_features(model, paths, views=VIEWS[:1], cache_dir=cache_dir)
    with torch.no_grad():
        in_scores = model.ood_score(known.features[:, 0].to(model.device)).cpu().numpy()
        out_scores = model.ood_score(unknown[:, 0].to(model.device)).cpu().numpy()
    threshold = float(model.ood.threshold)
    return {
        **ood_metrics(in_scores, out_scores),
        "score": "mahalanobis",
        "subset": subset if split is not None else "all",
        "threshold": threshold,
        "flagged_in": float((in_scores > threshold).mean()),
        "flagged_out": float((out_scores > threshold).mean()),
        "skipped": [(os.fspath(paths[i]), reason) for i, reason in failures],
    }

