"""Fitting the post-hoc estimators on a trained model's features: temperatures on validation logits, the organs
the model covers (enough training images), the out-of-distribution score on training features (its threshold on
validation), then the abstention thresholds. Each returns the summary the checkpoint's metadata records; the
measurements come from :mod:`multihead.evaluation.trust`.
"""

from __future__ import annotations

import math

import torch

from ..evaluation.trust import selective_report, selective_scores
from ..features.dataset import FeatureSet
from ..model.heads import MultiHeadModel
from ..model.ood import DEFAULT_TPR
from ..model.records import Calibration, Coverage, OodFit, Selective, SelectiveRules, to_dict
from ..model.thresholds import (
    DEFAULT_CONFIDENCE_LEVEL,
    DEFAULT_TARGET_ACCURACY,
    MIN_THRESHOLD_IMAGES,
    images_to_certify,
)
from ..model.trunk_split import untuned_features

__all__ = ["MIN_COVERED_IMAGES", "fit_coverage", "fit_ood", "fit_temperatures", "fit_thresholds", "fit_trust"]

MIN_COVERED_IMAGES = 50
"""Training images an organ needs to be claimed. With fewer (the shared data's breast has 21, oral 11), the router
still learns it, so its images are not taken for another organ, but an answer naming it is ``uncertain``: a
handful of images from one source says nothing about the organ."""


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
    return to_dict(Calibration(**model.temperature.temperatures_, skipped=skipped))


def fit_thresholds(model: MultiHeadModel, data: FeatureSet, *, target_accuracy: float = DEFAULT_TARGET_ACCURACY,
                   confidence_level: float | None = DEFAULT_CONFIDENCE_LEVEL, router_threshold: float | None = None,
                   subtype_threshold: float | None = None, small_data: str = "follow") -> dict[str, object]:
    """Choose (or set) the abstention thresholds on validation features: the router's and one subtype threshold
    per organ (an organ too small for a confidence bound aims at half its validation error unless ``small_data`` is
    ``"strict"``); returns them with their rules, the accuracy each aimed at, and coverage
    (:class:`~multihead.model.thresholds.AbstentionThresholds`, :func:`~multihead.evaluation.trust.selective_report`).

    Example:
        >>> fit_thresholds(model, val_features, target_accuracy=0.99)  # doctest: +SKIP
        {'router_threshold': 0.71, 'subtype_thresholds': {'all': 0.0, 'brain': 0.98, ...}, ...}
    """
    scores: tuple[torch.Tensor, ...] = (torch.zeros(0),) * 4 + (torch.zeros(0, dtype=torch.long),)
    if len(data):
        s = selective_scores(model, data.features[:, 0])
        true_organ = model.subtype_organ.cpu()[data.subtypes]
        scores = (s["organ_prob"], s["organ"] == true_organ, s["subtype_conf"], s["subtype"] == data.subtypes,
                  s["organ"])
    model.thresholds.fit(*scores, target_accuracy=target_accuracy, confidence_level=confidence_level,
                         router_threshold=router_threshold, subtype_threshold=subtype_threshold,
                         small_data=small_data)
    names, available = model.taxonomy.organ_names, model.available_organs
    subtype_rules = model.thresholds.rules_["subtype"]
    measured = selective_report(model, data) if len(data) else {}
    return to_dict(Selective(
        router_threshold=float(model.thresholds.router),
        subtype_thresholds={name: _finite_or_none(float(t)) for name, t in zip(names, model.thresholds.subtype)
                            if name in available},
        target_accuracy=target_accuracy, confidence_level=confidence_level, small_data=small_data,
        subtype_targets={name: target for name, target in zip(names, model.thresholds.targets_) if name in available},
        rules=SelectiveRules(router=model.thresholds.rules_["router"],
                             subtype={name: rule for name, rule in zip(names, subtype_rules) if name in available}),
        images_to_certify=images_to_certify(target_accuracy, confidence_level) if confidence_level else None,
        min_images=MIN_THRESHOLD_IMAGES, **measured))


def _finite_or_none(value: float) -> float | None:
    """A withheld organ's threshold is infinite; JSON says ``null`` (its rule says why)."""
    return value if math.isfinite(value) else None


def fit_ood(model: MultiHeadModel, train: FeatureSet, val: FeatureSet | None = None, *,
            tpr: float = DEFAULT_TPR) -> dict[str, object]:
    """Fit the out-of-distribution score on training features and its threshold on validation features
    (:class:`~multihead.model.ood.NearestNeighbourOOD`); returns what it fitted.

    A tuned trunk's score reads only the pooled stages below its cut (:func:`untuned_features`), or every
    feature when none is pooled there."""
    use_val = val is not None and len(val) > 0
    num_read = untuned_features(model.trunk) or model.trunk.num_features
    model.ood.fit(train.features[:, 0], val.features[:, 0] if use_val else None, tpr=tpr, num_read=num_read)
    return to_dict(OodFit(score="nearest_neighbour", components=model.ood.projection.shape[1],
                          features_read=num_read, threshold=float(model.ood.threshold), tpr=tpr, fitted_on=len(train),
                          threshold_from="val" if use_val else "train (left one out)"))


def fit_coverage(model: MultiHeadModel, train: FeatureSet, *,
                 min_images: int = MIN_COVERED_IMAGES) -> dict[str, object]:
    """Claim only the organs with at least ``min_images`` training images (:attr:`MultiHeadModel.covered_organs`);
    returns the training images per organ and subtype, and which organs are covered."""
    names = model.taxonomy.organ_names
    organs = torch.bincount(train.organs, minlength=len(names)).tolist()
    subtypes = torch.bincount(train.subtypes, minlength=model.taxonomy.num_subtypes).tolist()
    model.set_covered_organs([name for name, n in zip(names, organs) if n >= min_images])
    return to_dict(Coverage(min_images=min_images, covered=list(model.covered_organs), organs=dict(zip(names, organs)),
                            subtypes=dict(zip(model.taxonomy.subtype_names, subtypes))))


def fit_trust(model: MultiHeadModel, train: FeatureSet, val: FeatureSet, *,
              target_accuracy: float = DEFAULT_TARGET_ACCURACY, abstain: bool = True,
              tpr: float = DEFAULT_TPR, min_covered_images: int = MIN_COVERED_IMAGES,
              small_data: str = "follow") -> dict[str, object]:
    """Everything the training pipeline fits after calibration: the coverage, the OOD score, then the thresholds.

    Without validation images, or with ``abstain=False``, the thresholds stay at "never abstain" (0; images out
    of distribution or of an organ not covered are still ``uncertain``), and without validation images the OOD
    threshold comes from the training images (left one out).
    """
    result: dict[str, object] = {"coverage": fit_coverage(model, train, min_images=min_covered_images),
                                 "ood": fit_ood(model, train, val, tpr=tpr)}
    if len(val):
        given = None if abstain else 0.0
        result["selective"] = fit_thresholds(model, val, target_accuracy=target_accuracy, router_threshold=given,
                                             subtype_threshold=given, small_data=small_data)
    return result
