"""Selective prediction: back off to the organ when the subtype is unsure, abstain when the organ is.

The router's P(organ) and the chosen head's P(subtype | organ) are compared with two thresholds chosen on
validation data for a target accuracy. Below the first the answer is ``uncertain``; below the second it is
``organ_only``: the organ is still worth reporting when the subtype is not. The defaults (0 and 0) never
abstain. How the kept answers then score is measured in :mod:`multihead.evaluation.trust`.

A confidence bound needs images: at 99 % and 95 % confidence even a perfect validation set must hold
:func:`images_to_certify` = 299 images. With fewer, no threshold can be certified, and withholding every
answer would punish a small data set, not a bad model; each threshold then falls back to the plain
validation accuracy (rule ``"validation_accuracy"``, recorded in :attr:`AbstentionThresholds.rules_`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .decision import Status, statuses

__all__ = ["DEFAULT_CONFIDENCE_LEVEL", "DEFAULT_TARGET_ACCURACY", "RULE_BOUND", "RULE_FALLBACK", "AbstentionThresholds",
           "images_to_certify", "largest_safe_threshold"]

DEFAULT_TARGET_ACCURACY = 0.99
"""Accuracy asked of the predictions the model keeps (status ``organ_and_subtype``), on validation."""
DEFAULT_CONFIDENCE_LEVEL = 0.95
"""How sure the validation split must make us that the kept answers reach the target accuracy."""
RULE_BOUND = "confidence_bound"
"""A threshold whose kept answers reach the target by their Clopper-Pearson lower bound."""
RULE_FALLBACK = "validation_accuracy"
"""Too few images to certify any threshold: the kept answers reach the target by their plain accuracy."""


def images_to_certify(target: float, confidence_level: float) -> int:
    """The fewest images whose lower bound can reach ``target`` at all (all of them right):
    ``(1 - level) ** (1 / n) >= target``.

    Example:
        >>> images_to_certify(0.99, 0.95), images_to_certify(0.95, 0.95)
        (299, 59)
    """
    if target >= 1.0:
        return 2**62
    return int(np.ceil(np.log(1.0 - confidence_level) / np.log(target)))


def largest_safe_threshold(confidence: np.ndarray, correct: np.ndarray, target: float,
                           confidence_level: float | None) -> float:
    """The lowest confidence threshold whose kept set reaches ``target`` accuracy (the largest coverage
    that does); 1.0 when no non-empty set does. Ties are kept or dropped together.

    With ``confidence_level``, "reaches" means the one-sided Clopper-Pearson lower bound of the kept
    accuracy does, at that level: a threshold read off a few hundred images is otherwise optimistic.

    Example:
        >>> largest_safe_threshold(np.array([0.9, 0.8, 0.7]), np.array([1, 1, 0]), 0.99, None)
        0.8
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


def _check_probability(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


class AbstentionThresholds(nn.Module):
    """The router and subtype thresholds, as buffers that travel inside checkpoints.

    Example:
        >>> thresholds = AbstentionThresholds()
        >>> thresholds.fitted, thresholds.status(torch.tensor([0.2]), torch.tensor([0.2]))
        (False, [<Status.ORGAN_AND_SUBTYPE: 'organ_and_subtype'>])
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("router", torch.tensor(0.0))
        self.register_buffer("subtype", torch.tensor(0.0))
        self.rules_: dict[str, str] = {}
        """How the last :meth:`fit` chose each threshold: :data:`RULE_BOUND`, :data:`RULE_FALLBACK` (too few
        images for a bound) or ``"given"``."""

    @property
    def fitted(self) -> bool:
        """Whether either threshold can withhold an answer (both 0 never abstain, fitted or not)."""
        return float(self.router) > 0 or float(self.subtype) > 0

    def fit(self, organ_prob: torch.Tensor, organ_correct: torch.Tensor, subtype_conf: torch.Tensor,
            subtype_correct: torch.Tensor, *, target_accuracy: float = DEFAULT_TARGET_ACCURACY,
            confidence_level: float | None = DEFAULT_CONFIDENCE_LEVEL, router_threshold: float | None = None,
            subtype_threshold: float | None = None) -> AbstentionThresholds:
        """Choose the thresholds from validation scores ``[N]`` and whether each answer was right.

        The router threshold is the lowest P(organ) at which the kept organs are ``target_accuracy`` right;
        then, among those, the subtype threshold is the lowest P(subtype | organ) at which the kept answers
        (organ and subtype) are. "Are" means with ``confidence_level`` confidence (a Clopper-Pearson lower
        bound; ``None``: the plain validation accuracy). A threshold passed in is used as given. Where the
        images a threshold is read from are too few for any bound to reach the target
        (:func:`images_to_certify`), that threshold uses the plain accuracy instead (:data:`RULE_FALLBACK`).
        """
        if not 0.0 < target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy!r}")
        if confidence_level is not None and not 0.0 < confidence_level < 1.0:
            raise ValueError(f"confidence_level must be in (0, 1) or None, got {confidence_level!r}")
        _check_probability("router_threshold", router_threshold)
        _check_probability("subtype_threshold", subtype_threshold)
        if (router_threshold is None or subtype_threshold is None) and len(organ_prob) == 0:
            raise ValueError("choosing thresholds needs validation images; the set is empty (or pass both thresholds)")
        organ_prob, subtype_conf = organ_prob.cpu().numpy(), subtype_conf.cpu().numpy()
        organ_ok, subtype_ok = organ_correct.cpu().numpy(), subtype_correct.cpu().numpy()
        self.rules_ = {}

        def choose(name: str, given: float | None, confidence: np.ndarray, correct: np.ndarray) -> float:
            if given is not None:
                self.rules_[name] = "given"
                return given
            level = confidence_level
            if level is not None and len(confidence) < images_to_certify(target_accuracy, level):
                level = None
            self.rules_[name] = RULE_BOUND if level is not None else RULE_FALLBACK
            return largest_safe_threshold(confidence, correct, target_accuracy, level)

        router_threshold = choose("router", router_threshold, organ_prob, organ_ok)
        kept = organ_prob >= router_threshold
        subtype_threshold = choose("subtype", subtype_threshold, subtype_conf[kept], subtype_ok[kept])
        self.router.fill_(float(router_threshold))
        self.subtype.fill_(float(subtype_threshold))
        return self

    def status(self, organ_prob: torch.Tensor, subtype_conf: torch.Tensor,
               out_of_distribution: torch.Tensor | None = None) -> list[Status]:
        """One :class:`~multihead.model.decision.Status` per row."""
        return statuses(organ_prob, subtype_conf, router_threshold=float(self.router),
                        subtype_threshold=float(self.subtype), out_of_distribution=out_of_distribution)
