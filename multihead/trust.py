"""Trust: back off to the organ when the subtype is unsure, abstain when the organ is, reject the unknown.

Two kinds of doubt, kept apart:

* **Selective prediction.** The router's P(organ) and the chosen head's P(subtype | organ) are compared
  with ``router_threshold`` and ``subtype_threshold`` (model buffers, chosen on validation features for
  a target accuracy). Below the first the answer is ``"uncertain"``; below the second it is
  ``"organ_only"``: the organ is still worth reporting when the subtype is not.
* **Out of distribution.** An image that is none of the trained modalities (a photograph, a scan of a
  document, noise) can still get a confident softmax. Its pooled trunk features, though, lie far from
  every organ's: the score is the squared Mahalanobis distance to the nearest organ mean, with one
  shared covariance, in a whitened PCA space of :data:`~multihead.model.OOD_COMPONENTS` dimensions (so
  the checkpoint grows by a few hundred kB). The threshold keeps 95 % of the validation images.

Everything fitted lives in model buffers and so travels inside checkpoints; the defaults (thresholds 0,
OOD threshold inf) never abstain and never reject.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .model import MultiHeadModel

if TYPE_CHECKING:
    from .features import FeatureSet
    from .splits import Split

__all__ = [
    "DEFAULT_CONFIDENCE_LEVEL",
    "DEFAULT_TARGET_ACCURACY",
    "DEFAULT_TPR",
    "STATUSES",
    "decide_joint",
    "fit_ood",
    "fit_thresholds",
    "fit_trust",
    "ood_metrics",
    "ood_report",
    "reliability",
    "risk_coverage",
    "selective_report",
    "statuses",
    "subtype_confidence",
]

STATUSES = ("organ_and_subtype", "organ_only", "uncertain")
DEFAULT_TARGET_ACCURACY = 0.99
"""Accuracy asked of the predictions the model keeps (status ``organ_and_subtype``), on validation."""
DEFAULT_CONFIDENCE_LEVEL = 0.95
"""How sure the validation split must make us that the kept answers reach the target accuracy."""
DEFAULT_TPR = 0.95
"""Share of in-distribution validation images the OOD threshold keeps."""
MIN_SCALE_IMAGES = 20
"""Validation images an organ needs for its own OOD distance scale (fewer: scale 1, a quantile of noise)."""
_RIDGE = 1e-4


# --- decisions and confidences -------------------------------------------------------------------

def _organ_probs(model: MultiHeadModel, joint: torch.Tensor) -> torch.Tensor:
    organ_probs = torch.zeros(joint.shape[0], model.taxonomy.num_organs, dtype=joint.dtype, device=joint.device)
    return organ_probs.index_add_(1, model._subtype_organ.to(joint.device), joint)


def decide_joint(model: MultiHeadModel, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Organ and subtype from joint probabilities ``[B, S]`` (averaged ones too, as test-time augmentation
    gives): the most probable organ, then its most probable subtype, so the two never disagree."""
    organ = _organ_probs(model, joint).argmax(dim=1)
    in_organ = model._subtype_organ.to(joint.device).unsqueeze(0) == organ.unsqueeze(1)
    return organ, joint.masked_fill(~in_organ, -1.0).argmax(dim=1)


def subtype_confidence(model: MultiHeadModel, joint: torch.Tensor, organ: torch.Tensor,
                       subtype: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P(organ) and P(subtype | organ) of the chosen answer: the two scores the thresholds compare."""
    organ_prob = _organ_probs(model, joint).gather(1, organ.unsqueeze(1)).squeeze(1)
    chosen = joint.gather(1, subtype.unsqueeze(1)).squeeze(1)
    return organ_prob, chosen / organ_prob.clamp_min(torch.finfo(joint.dtype).tiny)


def statuses(model: MultiHeadModel, organ_prob: torch.Tensor, subtype_conf: torch.Tensor,
             out_of_distribution: torch.Tensor | None = None) -> list[str]:
    """One of :data:`STATUSES` per row. An out-of-distribution image is ``"uncertain"`` whatever its scores."""
    router_ok = organ_prob.cpu() >= float(model.router_threshold)
    subtype_ok = subtype_conf.cpu() >= float(model.subtype_threshold)
    if out_of_distribution is not None:
        router_ok &= ~out_of_distribution.cpu()
    return [STATUSES[0] if r and s else STATUSES[1] if r else STATUSES[2]
            for r, s in zip(router_ok.tolist(), subtype_ok.tolist())]


# --- selective prediction --------------------------------------------------------------------------

def _scores(model: MultiHeadModel, features: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model.forward_heads(features.to(model.device))
        joint = out.joint_probs.double().cpu()
        organ, subtype = (t.cpu() for t in model.decide(out))
        organ_prob, subtype_conf = subtype_confidence(model, joint, organ, subtype)
    return {"joint": joint, "organ": organ, "subtype": subtype, "organ_prob": organ_prob, "subtype_conf": subtype_conf}


def _largest_safe_threshold(confidence: np.ndarray, correct: np.ndarray, target: float,
                            confidence_level: float | None) -> float:
    """The lowest confidence threshold whose kept set reaches ``target`` accuracy (the largest coverage
    that does); 1.0 when no non-empty set does. Ties are kept or dropped together.

    With ``confidence_level``, "reaches" means the one-sided Clopper-Pearson lower bound of the kept
    accuracy does, at that level: a threshold read off a few hundred images is otherwise optimistic.
    """
    if len(confidence) == 0:
        return 0.0
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], correct[order].astype(float)
    n = np.arange(1, len(hits) + 1)
    right = np.cumsum(hits)
    if confidence_level is None:
        accuracy = right / n
    else:
        from scipy.stats import beta

        accuracy = np.nan_to_num(beta.ppf(1.0 - confidence_level, right, n - right + 1), nan=0.0)
    last_of_tie = np.append(conf[1:] < conf[:-1], True)  # a threshold can only cut between distinct values
    good = np.flatnonzero((accuracy >= target) & last_of_tie)
    if len(good) == 0:
        return 1.0
    k = good[-1]
    return 0.0 if k == len(conf) - 1 else float(conf[k])


def fit_thresholds(model: MultiHeadModel, data: FeatureSet, *, target_accuracy: float = DEFAULT_TARGET_ACCURACY,
                   confidence_level: float | None = DEFAULT_CONFIDENCE_LEVEL, router_threshold: float | None = None,
                   subtype_threshold: float | None = None) -> dict[str, float]:
    """Choose (or set) the abstention thresholds on validation features; returns them with their coverage.

    The router threshold is the lowest P(organ) at which the kept organs are ``target_accuracy`` right;
    then, among those, the subtype threshold is the lowest P(subtype | organ) at which the kept answers
    (organ and subtype) are. "Are" means with ``confidence_level`` confidence (a Clopper-Pearson lower
    bound; ``None``: the plain validation accuracy, which was optimistic on the test split, see
    docs/trust.md). A threshold passed in is used as given.

    Example:
        >>> fit_thresholds(model, val_features, target_accuracy=0.99)  # doctest: +SKIP
        {'router_threshold': 0.71, 'subtype_threshold': 0.88, ...}
    """
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy!r}")
    if confidence_level is not None and not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1) or None, got {confidence_level!r}")
    for name, value in (("router_threshold", router_threshold), ("subtype_threshold", subtype_threshold)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    if (router_threshold is None or subtype_threshold is None) and len(data) == 0:
        raise ValueError("choosing thresholds needs validation images; the set is empty (or pass both thresholds)")
    if len(data):
        s = _scores(model, data.features[:, 0])
        true_organ = model._subtype_organ.cpu()[data.subtypes]
        organ_ok = (s["organ"] == true_organ).numpy()
        subtype_ok = (s["subtype"] == data.subtypes).numpy()
        if router_threshold is None:
            router_threshold = _largest_safe_threshold(s["organ_prob"].numpy(), organ_ok, target_accuracy,
                                                       confidence_level)
        kept = s["organ_prob"].numpy() >= router_threshold
        if subtype_threshold is None:
            subtype_threshold = _largest_safe_threshold(s["subtype_conf"].numpy()[kept], subtype_ok[kept],
                                                        target_accuracy, confidence_level)
    model.router_threshold.fill_(float(router_threshold))
    model.subtype_threshold.fill_(float(subtype_threshold))
    result = {"router_threshold": float(router_threshold), "subtype_threshold": float(subtype_threshold),
              "target_accuracy": target_accuracy, "confidence_level": confidence_level}
    if len(data):
        result.update(selective_report(model, data))
    return result


def selective_report(model: MultiHeadModel, data: FeatureSet) -> dict[str, float]:
    """Coverage and accuracy of each status at the model's thresholds, on identity-view features."""
    s = _scores(model, data.features[:, 0])
    status = np.array(statuses(model, s["organ_prob"], s["subtype_conf"]))
    true_organ = model._subtype_organ.cpu()[data.subtypes].numpy()
    organ_ok, subtype_ok = s["organ"].numpy() == true_organ, (s["subtype"] == data.subtypes).numpy()
    full, organ_only = status == STATUSES[0], status == STATUSES[1]
    answered_organ = full | organ_only
    mean = lambda values, mask: float(values[mask].mean()) if mask.any() else float("nan")  # noqa: E731
    return {
        "n": len(status),
        "coverage": float(full.mean()),
        "accuracy_kept": mean(subtype_ok, full),
        "organ_only_fraction": float(organ_only.mean()),
        "organ_accuracy_organ_only": mean(organ_ok, organ_only),
        "uncertain_fraction": float((status == STATUSES[2]).mean()),
        "organ_coverage": float(answered_organ.mean()),
        "organ_accuracy_kept": mean(organ_ok, answered_organ),
        "accuracy_all": float(subtype_ok.mean()),
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


# --- out of distribution -----------------------------------------------------------------------------

def fit_ood(model: MultiHeadModel, train: FeatureSet, val: FeatureSet | None = None, *,
            tpr: float = DEFAULT_TPR) -> dict[str, float]:
    """Fit the out-of-distribution score on training features and its threshold on validation features.

    PCA of the training features (identity view), organ means and one pooled covariance in that space,
    folded into one projection so that scoring is a matrix product and a distance. One covariance fits the
    large organs and not a small one whose images spread more (lymphoma here: half its images came out
    above the threshold, docs/trust.md), so each organ with at least ``MIN_SCALE_IMAGES`` validation images
    gets a scale: its distances are multiplied so that its ``tpr`` quantile lands on the pooled one. The
    threshold is the ``tpr`` quantile of the validation scores (the training ones when no validation set
    is given).
    """
    if not 0.0 < tpr < 1.0:
        raise ValueError(f"tpr must be in (0, 1), got {tpr!r}")
    if len(train) < 2:
        raise ValueError(f"the out-of-distribution score needs training images; got {len(train)}")
    x = train.features[:, 0].double()
    organs = train.organs
    mean = x.mean(0)
    centred = x - mean
    components = model.ood_projection.shape[1]
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = torch.zeros(x.shape[1], components, dtype=torch.float64)
    kept = min(components, vh.shape[0])
    basis[:, :kept] = vh[:kept].T
    z = centred @ basis
    present = sorted(set(organs.tolist()))
    means = torch.zeros(model.taxonomy.num_organs, components, dtype=torch.float64)
    for organ in present:
        means[organ] = z[organs == organ].mean(0)
    residual = z - means[organs]
    covariance = residual.T @ residual / max(len(z) - len(present), 1)
    covariance += _RIDGE * covariance.diagonal().mean() * torch.eye(components, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(covariance)
    whiten = vectors @ torch.diag(values.clamp_min(1e-12).rsqrt()) @ vectors.T
    model.ood_mean.copy_(mean.float())
    model.ood_projection.copy_((basis @ whiten).float())
    model.ood_class_means.copy_((means @ whiten).float())
    reference = val if val is not None and len(val) else train
    model.ood_organ_scale.fill_(1.0)
    with torch.no_grad():
        distances = model.ood_organ_distances(reference.features[:, 0].to(model.device)).cpu().double()
    own = distances.gather(1, reference.organs.unsqueeze(1)).squeeze(1)  # each image to its own organ
    pooled = torch.quantile(own, tpr)
    for organ in sorted(set(reference.organs.tolist())):
        rows = reference.organs == organ
        if int(rows.sum()) >= MIN_SCALE_IMAGES:
            model.ood_organ_scale[organ] = float(pooled / torch.quantile(own[rows], tpr).clamp_min(1e-12))
    with torch.no_grad():
        scores = model.ood_score(reference.features[:, 0].to(model.device)).cpu().double()
    threshold = float(torch.quantile(scores, tpr))
    model.ood_threshold.fill_(threshold)
    scales = {name: round(float(scale), 4) for name, scale, ok in
              zip(model.taxonomy.organ_names, model.ood_organ_scale.tolist(), model.organ_mask.tolist()) if ok}
    return {"score": "mahalanobis", "components": components, "threshold": threshold, "tpr": tpr,
            "fitted_on": len(train), "threshold_from": "val" if reference is val else "train",
            "organ_scale": scales}


def fit_trust(model: MultiHeadModel, train: FeatureSet, val: FeatureSet, *,
              target_accuracy: float = DEFAULT_TARGET_ACCURACY, tpr: float = DEFAULT_TPR) -> dict[str, object]:
    """Everything :mod:`multihead.runs` fits after calibration: the OOD score, then the thresholds.

    Without validation images the thresholds stay at "never abstain" and the OOD threshold comes from
    the training images.
    """
    result: dict[str, object] = {"ood": fit_ood(model, train, val, tpr=tpr)}
    if len(val):
        result["selective"] = fit_thresholds(model, val, target_accuracy=target_accuracy)
    return result


def ood_metrics(in_scores: np.ndarray, out_scores: np.ndarray, *, tpr: float = DEFAULT_TPR) -> dict[str, float]:
    """AUROC (unknowns score higher) and the share of unknowns kept at ``tpr`` of the known (FPR at TPR)."""
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
    from .data import scan_dataset
    from .features import VIEWS, extract_features
    from .images import IMAGE_EXTENSIONS
    from .runs import dataset_features

    if not model.ood_fitted:
        raise ValueError("this model has no fitted out-of-distribution score; train it again with this "
                         "multihead or call multihead.trust.fit_ood")
    root = Path(ood_dir)
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise ValueError(f"{ood_dir}: no image files found for the out-of-distribution set")
    scan = scan_dataset(data_dir, model.taxonomy)
    relpaths = split.files(subset) if split is not None else [r.relpath for r in scan.records]
    known, _ = dataset_features(model, scan, relpaths, views=VIEWS[:1], cache_dir=cache_dir)
    unknown, _, failures = extract_features(model, paths, views=VIEWS[:1], cache_dir=cache_dir)
    with torch.no_grad():
        in_scores = model.ood_score(known.features[:, 0].to(model.device)).cpu().numpy()
        out_scores = model.ood_score(unknown[:, 0].to(model.device)).cpu().numpy()
    threshold = float(model.ood_threshold)
    return {
        **ood_metrics(in_scores, out_scores),
        "score": "mahalanobis",
        "subset": subset if split is not None else "all",
        "threshold": threshold,
        "flagged_in": float((in_scores > threshold).mean()),
        "flagged_out": float((out_scores > threshold).mean()),
        "skipped": [(os.fspath(paths[i]), reason) for i, reason in failures],
    }
