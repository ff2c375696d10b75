"""Deciding: the organ, then the best subtype within it, and how far to trust the answer.

One rule everywhere (``classify``, test-time augmentation, evaluation, training metrics): take the most
probable organ, then that organ's most probable subtype, so the two can never disagree. The functions take
plain tensors: joint probabilities (or log-probabilities) ``[B, S]`` over the taxonomy's subtypes and
``subtype_organ`` ``[S]``, the organ index of every subtype (``MultiHeadModel.subtype_organ``).
:meth:`MultiHeadModel.decisions <multihead.model.heads.MultiHeadModel.decisions>` puts them together with the
model's thresholds, coverage and out-of-distribution score into one :class:`Decisions`: the one path from
features to answers that ``classify``, evaluation, the trust measurements and post-hoc fitting all take.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

__all__ = ["Decisions", "Status", "best_subtype", "decide", "organ_marginal", "statuses", "subtype_confidence"]


class Status(str, Enum):
    """How much of a prediction to trust; the value is the name used in JSON, the CLI, the API and the page."""

    ORGAN_AND_SUBTYPE = "organ_and_subtype"
    """Both answers are kept."""
    ORGAN_ONLY = "organ_only"
    """P(subtype | organ) is below the subtype threshold: the organ is still worth reporting."""
    UNCERTAIN = "uncertain"
    """P(organ) is below the router threshold, or the image is out of distribution."""

    def __str__(self) -> str:
        return self.value


def organ_marginal(joint_probs: torch.Tensor, subtype_organ: torch.Tensor, num_organs: int) -> torch.Tensor:
    """P(organ) ``[B, O]``: the joint probabilities ``[B, S]`` summed over each organ's subtypes.

    Example:
        >>> organ_marginal(torch.tensor([[0.1, 0.2, 0.7]]), torch.tensor([0, 0, 1]), 2)
        tensor([[0.3000, 0.7000]])
    """
    marginal = torch.zeros(joint_probs.shape[0], num_organs, dtype=joint_probs.dtype, device=joint_probs.device)
    return marginal.index_add_(1, subtype_organ.to(joint_probs.device), joint_probs)


def best_subtype(joint: torch.Tensor, organ: torch.Tensor, subtype_organ: torch.Tensor) -> torch.Tensor:
    """The most probable subtype (global index) within ``organ`` ``[B]``, from joint probabilities or
    log-probabilities ``[B, S]`` (the order is the same)."""
    in_organ = subtype_organ.to(joint.device).unsqueeze(0) == organ.unsqueeze(1)
    return joint.masked_fill(~in_organ, float("-inf")).argmax(dim=1)


def decide(joint: torch.Tensor, subtype_organ: torch.Tensor, organ_scores: torch.Tensor | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(organ [B], subtype [B])``: the best organ, then its best subtype.

    Args:
        joint: joint probabilities ``[B, S]``, or their logarithms when ``organ_scores`` is given.
        subtype_organ: the organ index of every subtype ``[S]``.
        organ_scores: anything ordered like P(organ) ``[B, O]`` (the router's logits give the same argmax);
            default: the organ marginal of ``joint``, which must then be probabilities (averaged ones too,
            as test-time augmentation gives).

    Example:
        >>> decide(torch.tensor([[0.1, 0.2, 0.7]]), torch.tensor([0, 0, 1]))
        (tensor([1]), tensor([2]))
    """
    if organ_scores is None:
        organ_scores = organ_marginal(joint, subtype_organ, int(subtype_organ.max()) + 1)
    organ = organ_scores.argmax(dim=1)
    return organ, best_subtype(joint, organ, subtype_organ)


def subtype_confidence(joint_probs: torch.Tensor, subtype_organ: torch.Tensor, organ: torch.Tensor,
                       subtype: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P(organ) and P(subtype | organ) of the chosen answer ``[B]`` each: the scores the thresholds compare."""
    marginal = organ_marginal(joint_probs, subtype_organ, int(subtype_organ.max()) + 1)
    organ_prob = marginal.gather(1, organ.unsqueeze(1)).squeeze(1)
    chosen = joint_probs.gather(1, subtype.unsqueeze(1)).squeeze(1)
    return organ_prob, chosen / organ_prob.clamp_min(torch.finfo(joint_probs.dtype).tiny)


def statuses(organ_prob: torch.Tensor, subtype_conf: torch.Tensor, *, router_threshold: float,
             subtype_threshold: float | torch.Tensor, out_of_distribution: torch.Tensor | None = None,
             organ: torch.Tensor | None = None, covered: torch.Tensor | None = None) -> list[Status]:
    """One :class:`Status` per row. An out-of-distribution image, or one whose organ the model does not cover,
    is ``UNCERTAIN`` whatever its scores.

    Args:
        subtype_threshold: one threshold, or one per organ ``[O]`` (then ``organ`` is needed).
        organ: the decided organ of each row ``[B]``.
        covered: ``[O]`` bool, the organs the model may claim (with ``organ``).

    Example:
        >>> statuses(torch.tensor([0.9]), torch.tensor([0.5]), router_threshold=0.5, subtype_threshold=0.8)[0].value
        'organ_only'
    """
    router_ok = organ_prob.cpu() >= router_threshold
    if isinstance(subtype_threshold, torch.Tensor) and subtype_threshold.ndim:
        if organ is None:
            raise ValueError("per-organ subtype thresholds need the decided organ of each row")
        subtype_threshold = subtype_threshold.cpu()[organ.cpu()]
    subtype_ok = subtype_conf.cpu() >= (subtype_threshold.cpu() if isinstance(subtype_threshold, torch.Tensor)
                                        else subtype_threshold)
    if out_of_distribution is not None:
        router_ok &= ~out_of_distribution.cpu()
    if covered is not None:
        if organ is None:
            raise ValueError("coverage needs the decided organ of each row")
        router_ok &= covered.cpu()[organ.cpu()]
    return [Status.ORGAN_AND_SUBTYPE if r and s else Status.ORGAN_ONLY if r else Status.UNCERTAIN
            for r, s in zip(router_ok.tolist(), subtype_ok.tolist())]


@dataclass(frozen=True)
class Decisions:
    """Everything decided for a batch, from one pass of the heads: what a prediction shows, and what evaluation,
    trust measurements and post-hoc fitting read. CPU tensors, one row per image."""

    joint: torch.Tensor
    """Joint probabilities ``[B, S]`` (float64): P(organ) * P(subtype | organ)."""
    organ: torch.Tensor
    subtype: torch.Tensor
    """The decided organ and its best subtype (global index)."""
    organ_probability: torch.Tensor
    subtype_confidence: torch.Tensor
    """P(organ) and P(subtype | organ) of the decided answer: what the thresholds compare."""
    ood_score: torch.Tensor | None
    out_of_distribution: torch.Tensor | None
    """The out-of-distribution score and flag; ``None`` for a model without a fitted score."""
    status: list[Status]
