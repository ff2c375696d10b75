"""Selective prediction: back off to the organ when the subtype is unsure, abstain when the organ is.

The router's P(organ) and the chosen head's P(subtype | organ) are compared with thresholds chosen on
validation data for a target accuracy: one for the router, and one per organ for the subtype, since one organ's
hard cases (brain MRI, 90 % right) must not withhold another's easy ones (blood smears, 99.6 %). Below the
router's the answer is ``uncertain``; below its organ's subtype threshold it is ``organ_only``: the organ is
still worth reporting when the subtype is not. The defaults (0) never abstain. How the kept answers then score
is measured in :mod:`multihead.evaluation.trust`.

Each threshold is chosen by one of the :data:`RULES`. A confidence bound needs images: at 99 % and 95 %
confidence even a perfect validation set must hold :func:`images_to_certify` = 299 images, and one confident
mistake among the first 299 makes any bound fail. Where no bound can be met, the threshold keeps the answers
whose plain validation accuracy reaches the target (rule ``"validation_accuracy"``, recorded in
:attr:`AbstentionThresholds.rules_`); an organ with fewer than :data:`MIN_THRESHOLD_IMAGES` validation answers
gets no subtype threshold at all: its subtypes are withheld (rule ``"too_few_images"``).

An organ with fewer validation answers than any bound needs is *small*: 99 % plain accuracy on 40 answers means
all of them right, so the first confident mistake withheld almost everything (a small folder's model answered 8 %
of its images with a subtype while 88.7 % of its subtypes were right). By default (``small_data="follow"``) a
small organ's target follows the accuracy it has: the kept answers must make half its validation mistakes
(:func:`small_data_target`, rule ``"small_data"``); ``"strict"`` asks the full target of them as well.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .decision import Status, statuses

__all__ = ["DEFAULT_CONFIDENCE_LEVEL", "DEFAULT_TARGET_ACCURACY", "MIN_THRESHOLD_IMAGES", "RULES", "RULE_BOUND",
           "RULE_FALLBACK", "RULE_SMALL", "RULE_TOO_FEW", "SMALL_DATA", "AbstentionThresholds", "images_to_certify",
           "largest_safe_threshold", "small_data_target"]

DEFAULT_TARGET_ACCURACY = 0.99
"""Accuracy asked of the predictions the model keeps (status ``organ_and_subtype``), on validation."""
DEFAULT_CONFIDENCE_LEVEL = 0.95
"""How sure the validation split must make us that the kept answers reach the target accuracy."""
MIN_THRESHOLD_IMAGES = 10
"""Validation answers an organ needs for a subtype threshold of its own; with fewer its subtypes are withheld: a
handful of right answers (the 8 kidney CT images of the bundled model's validation split) cannot tell a threshold
that keeps 99 % of the answers right from one that keeps 80 %. A small data set of 30 images a subtype (15 to 20
validation answers an organ) still gets thresholds by plain validation accuracy."""
RULE_BOUND = "confidence_bound"
"""A threshold whose kept answers reach the target by their Clopper-Pearson lower bound."""
RULE_FALLBACK = "validation_accuracy"
"""No bound can be met (too few images, or a confident mistake among the first ones): the kept answers reach the
target by their plain validation accuracy."""
RULE_TOO_FEW = "too_few_images"
"""Fewer than MIN_THRESHOLD_IMAGES validation answers for the organ: its subtypes are withheld."""
RULE_SMALL = "small_data"
"""Fewer validation answers than a bound needs: the kept answers make half the organ's validation mistakes, by plain
validation accuracy (:func:`small_data_target`)."""
RULES = (RULE_BOUND, RULE_FALLBACK, RULE_SMALL, RULE_TOO_FEW, "given")
SMALL_DATA = ("follow", "strict")
"""What a small organ's subtype threshold aims at: half its validation error (``follow``), or the target itself."""
WITHHELD = math.inf
"""The subtype threshold of an organ whose subtypes are withheld: no confidence reaches it."""


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


def small_data_target(accuracy: float, target: float) -> float:
    """The accuracy asked of a small organ's kept answers: half the mistakes of all its validation answers
    (``accuracy``), and no more than ``target``.

    Example:
        >>> round(small_data_target(0.887, 0.99), 4), small_data_target(1.0, 0.99)
        (0.9435, 0.99)
    """
    return min(target, 1.0 - (1.0 - accuracy) / 2.0)


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
    lowest = _lowest_reaching(confidence, correct, target, confidence_level)
    return 1.0 if lowest is None else lowest


def _lowest_reaching(confidence: np.ndarray, correct: np.ndarray, target: float,
                     confidence_level: float | None) -> float | None:
    """:func:`largest_safe_threshold` of a non-empty set, or ``None`` when no non-empty set reaches the target."""
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
        return None
    k = good[-1]
    return 0.0 if k == len(conf) - 1 else float(conf[k])


def _check_probability(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


class AbstentionThresholds(nn.Module):
    """The router threshold and one subtype threshold per organ, as buffers that travel inside checkpoints.

    Example:
        >>> thresholds = AbstentionThresholds(num_organs=2)
        >>> thresholds.fitted, thresholds.status(torch.tensor([0.2]), torch.tensor([0.2]), torch.tensor([1]))
        (False, [<Status.ORGAN_AND_SUBTYPE: 'organ_and_subtype'>])
    """

    def __init__(self, num_organs: int = 1) -> None:
        super().__init__()
        self.register_buffer("router", torch.tensor(0.0))
        self.register_buffer("subtype", torch.zeros(num_organs))
        self.rules_: dict[str, object] = {}
        """How the last :meth:`fit` chose each threshold (:data:`RULES`): ``{"router": rule, "subtype": [rule per
        organ]}``; an organ without validation answers has ``None``."""
        self.targets_: list[float | None] = []
        """The accuracy each organ's subtype threshold aimed at in the last :meth:`fit` (``None``: none chosen)."""

    @property
    def fitted(self) -> bool:
        """Whether any threshold can withhold an answer (all 0 never abstain, fitted or not)."""
        return float(self.router) > 0 or bool((self.subtype > 0).any())

    def fit(self, organ_prob: torch.Tensor, organ_correct: torch.Tensor, subtype_conf: torch.Tensor,
            subtype_correct: torch.Tensor, organs: torch.Tensor, *, target_accuracy: float = DEFAULT_TARGET_ACCURACY,
            confidence_level: float | None = DEFAULT_CONFIDENCE_LEVEL, router_threshold: float | None = None,
            subtype_threshold: float | None = None, min_images: int = MIN_THRESHOLD_IMAGES,
            small_data: str = "follow") -> AbstentionThresholds:
        """Choose the thresholds from validation scores ``[N]``, whether each answer was right, and the organ each
        answer named (``organs`` ``[N]``).

        The router threshold is the lowest P(organ) at which the kept organs are ``target_accuracy`` right;
        then, among those, each organ's subtype threshold is the lowest P(subtype | organ) at which that organ's
        kept answers (organ and subtype) are. "Are" means with ``confidence_level`` confidence (a Clopper-Pearson
        lower bound) where the images allow a bound to be met, else by plain accuracy (:data:`RULE_FALLBACK`);
        an organ with fewer than ``min_images`` kept answers has its subtypes withheld. A threshold passed in is
        used as given (for every organ). ``small_data`` (:data:`SMALL_DATA`): whether an organ with too few answers
        for any bound aims at half its validation error (:data:`RULE_SMALL`) or at ``target_accuracy``.
        """
        if not 0.0 < target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy!r}")
        if confidence_level is not None and not 0.0 < confidence_level < 1.0:
            raise ValueError(f"confidence_level must be in (0, 1) or None, got {confidence_level!r}")
        _check_probability("router_threshold", router_threshold)
        _check_probability("subtype_threshold", subtype_threshold)
        if small_data not in SMALL_DATA:
            raise ValueError(f"small_data must be one of {', '.join(SMALL_DATA)}, got {small_data!r}")
        if (router_threshold is None or subtype_threshold is None) and len(organ_prob) == 0:
            raise ValueError("choosing thresholds needs validation images; the set is empty (or pass both thresholds)")
        organ_prob, subtype_conf = organ_prob.cpu().numpy(), subtype_conf.cpu().numpy()
        organ_ok, subtype_ok = organ_correct.cpu().numpy(), subtype_correct.cpu().numpy()
        organs = organs.cpu().numpy()

        certify = images_to_certify(target_accuracy, confidence_level) if confidence_level is not None else 0

        def choose(given: float | None, confidence: np.ndarray, correct: np.ndarray,
                   small: str = "strict") -> tuple[float, str, float | None]:
            if given is not None:
                return given, "given", None  # nothing aimed at
            if confidence_level is not None and len(confidence) >= certify:
                bound = _lowest_reaching(confidence, correct, target_accuracy, confidence_level)
                if bound is not None:
                    return bound, RULE_BOUND, target_accuracy
            elif confidence_level is not None and small == "follow":
                target = small_data_target(float(correct.mean()), target_accuracy)
                return largest_safe_threshold(confidence, correct, target, None), RULE_SMALL, target
            return largest_safe_threshold(confidence, correct, target_accuracy, None), RULE_FALLBACK, target_accuracy

        router, router_rule, _ = choose(router_threshold, organ_prob, organ_ok)
        kept = organ_prob >= router
        thresholds, rules, targets = [], [], []
        for organ in range(len(self.subtype)):
            mine = kept & (organs == organ)
            if subtype_threshold is None and not mine.any():
                thresholds.append(WITHHELD), rules.append(None), targets.append(None)
            elif subtype_threshold is None and mine.sum() < min_images:
                thresholds.append(WITHHELD), rules.append(RULE_TOO_FEW), targets.append(None)
            else:
                threshold, rule, target = choose(subtype_threshold, subtype_conf[mine], subtype_ok[mine], small_data)
                thresholds.append(threshold), rules.append(rule), targets.append(target)
        self.router.fill_(float(router))
        self.subtype.copy_(torch.tensor(thresholds, dtype=self.subtype.dtype))
        self.rules_ = {"router": router_rule, "subtype": rules}
        self.targets_ = targets
        return self

    def status(self, organ_prob: torch.Tensor, subtype_conf: torch.Tensor, organ: torch.Tensor,
               out_of_distribution: torch.Tensor | None = None, covered: torch.Tensor | None = None) -> list[Status]:
        """One :class:`~multihead.model.decision.Status` per row; ``organ`` ``[B]`` is each row's decided organ."""
        return statuses(organ_prob, subtype_conf, router_threshold=float(self.router), subtype_threshold=self.subtype,
                        out_of_distribution=out_of_distribution, organ=organ, covered=covered)
