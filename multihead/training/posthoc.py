"""Fitting the post-hoc estimators on a trained model's features: temperatures on validation logits, the
out-of-distribution score on training features (its threshold on validation), then the abstention
thresholds. Each returns the summary the checkpoint's metadata records; the measurements come from
:mod:`multihead.evaluation.trust`.
"""

from __future__ import annotations

import torch

from ..evaluation.trust import selective_report, selective_scores
from ..features.dataset import FeatureSet
from ..model.heads import MultiHeadModel
from ..model.ood import DEFAULT_TPR
from ..model.thresholds import DEFAULT_CONFIDENCE_LEVEL, DEFAULT_TARGET_ACCURACY, images_to_certify
from ..model.trunk_split import untuned_features

__all__ = ["fit_ood", "fit_temperatures", "fit_thresholds", "fit_trust"]


def fit_temperatures(model: MultiHeadModel, data: FeatureSet) -> dict[str, object]:
    """Fit and set the temperatures on validation features (identity view); returns them by head, and under
    ``"skipped"`` the heads left at T = 1 with the reason (fewer than 30 validation images, or no
    validation mistake), so that nobody reads T = 1 as "fitted and found calibrated".

    A flat model gets one temperature for all subtypes.
    """
    if len(data) == 0:
        raise ValueError("temperature scaling needs validation images; the validation split is empty")
    with torch.no_grad():
        logits = model.head_logits(data.features[:, 0].to(model.device))
    model.temperature.fit(logits, data.subtypes, available=model.organ_mask, flat=model.joint == "flat")
    untrained = set(model.taxonomy.organ_names) - set(model.available_organs)
    skipped = {head: reason for head, reason in model.temperature.skipped_.items() if head not in untrained}
    return {**model.temperature.temperatures_, "skipped": skipped}


def fit_thresholds(model: MultiHeadModel, data: FeatureSet, *, target_accuracy: float = DEFAULT_TARGET_ACCURACY,
                   confidence_level: float | None = DEFAULT_CONFIDENCE_LEVEL, router_threshold: float | None = None,
                   subtype_threshold: float | None = None) -> dict[str, float]:
    """Choose (or set) the abstention thresholds on validation features; returns them with their coverage
    (:class:`~multihead.model.thresholds.AbstentionThresholds`, :func:`~multihead.evaluation.trust.selective_report`).

    Example:
        >>> fit_thresholds(model, val_features, target_accuracy=0.99)  # doctest: +SKIP
        {'router_threshold': 0.71, 'subtype_threshold': 0.88, ...}
    """
    scores: tuple[torch.Tensor, ...] = (torch.zeros(0),) * 4
    if len(data):
        s = selective_scores(model, data.features[:, 0])
        true_organ = model.subtype_organ.cpu()[data.subtypes]
        scores = (s["organ_prob"], s["organ"] == true_organ, s["subtype_conf"], s["subtype"] == data.subtypes)
    model.thresholds.fit(*scores, target_accuracy=target_accuracy, confidence_level=confidence_level,
                         router_threshold=router_threshold, subtype_threshold=subtype_threshold)
    result = {"router_threshold": float(model.thresholds.router), "subtype_threshold": float(model.thresholds.subtype),
              "target_accuracy": target_accuracy, "confidence_level": confidence_level,
              "rules": dict(model.thresholds.rules_),
              "images_to_certify": images_to_certify(target_accuracy, confidence_level) if confidence_level else None}
    if len(data):
        result.update(selective_report(model, data))
    return result


def fit_ood(model: MultiHeadModel, train: FeatureSet, val: FeatureSet | None = None, *,
            tpr: float = DEFAULT_TPR) -> dict[str, object]:
    """Fit the out-of-distribution score on training features and its threshold on validation features
    (:class:`~multihead.model.ood.MahalanobisOOD`); returns the threshold and each organ's scale.

    A tuned trunk's score reads only the pooled stages below its cut (:func:`untuned_features`), or every
    feature when none is pooled there."""
    use_val = val is not None and len(val) > 0
    num_read = untuned_features(model.trunk) or model.trunk.num_features
    model.ood.fit(train.features[:, 0], train.organs, val.features[:, 0] if use_val else None,
                  val.organs if use_val else None, organ_mask=model.organ_mask, tpr=tpr, num_read=num_read)
    scales = {name: round(float(scale), 4) for name, scale, ok in
              zip(model.taxonomy.organ_names, model.ood.organ_scale.tolist(), model.organ_mask.tolist()) if ok}
    return {"score": "mahalanobis", "components": model.ood.projection.shape[1], "features_read": num_read,
            "threshold": float(model.ood.threshold), "tpr": tpr, "fitted_on": len(train),
            "threshold_from": "val" if use_val else "train", "organ_scale": scales,
            "scale_rule": {name: model.ood.scale_rules_.get(index, "pooled")
                           for index, name in enumerate(model.taxonomy.organ_names) if name in scales}}


def fit_trust(model: MultiHeadModel, train: FeatureSet, val: FeatureSet, *,
              target_accuracy: float = DEFAULT_TARGET_ACCURACY, abstain: bool = True,
              tpr: float = DEFAULT_TPR) -> dict[str, object]:
    """Everything the training pipeline fits after calibration: the OOD score, then the thresholds.

    Without validation images, or with ``abstain=False``, the thresholds stay at "never abstain" (0 and 0;
    out-of-distribution images are still flagged), and without validation images the OOD threshold comes
    from the training images.
    """
    result: dict[str, object] = {"ood": fit_ood(model, train, val, tpr=tpr)}
    if len(val):
        given = None if abstain else 0.0
        result["selective"] = fit_thresholds(model, val, target_accuracy=target_accuracy, router_threshold=given,
                                             subtype_threshold=given)
    return result
