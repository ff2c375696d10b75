"""Parity of an option against fp32 eager: share of identical decisions and the largest probability
difference, on the same batches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..inference.config import InferenceConfig
from ..inference.engine import run_batch
from ..model.heads import HeadOutput, MultiHeadModel


def collect_outputs(model: MultiHeadModel, batches: Iterable[torch.Tensor],
                    config: InferenceConfig) -> HeadOutput:
    """Run uint8 batches through :func:`run_batch` and concatenate the outputs (on the CPU)."""
    outputs = [run_batch(model, batch, config) for batch in batches]
    if not outputs:
        raise ValueError("collect_outputs needs at least one batch")
    return HeadOutput(*(torch.cat([getattr(o, f).cpu() for o in outputs])
                        for f in ("router_logits", "subtype_logits", "joint_log_probs")))


def compare_outputs(model: MultiHeadModel, reference: HeadOutput, candidate: HeadOutput) -> dict[str, Any]:
    """How far ``candidate`` strays from ``reference`` on the same images (``model`` decides).

    Returns:
        ``images``; ``subtype_agreement`` and ``organ_agreement``, the fractions of images given the same
        subtype / organ; ``max_abs_joint_prob_diff`` and ``mean_abs_joint_prob_diff`` over all 26 joint
        probabilities of all images.

    Example:
        >>> ref = collect_outputs(model, batches, InferenceConfig(precision="fp32"))  # doctest: +SKIP
        >>> compare_outputs(model, ref, collect_outputs(model, batches, InferenceConfig()))["subtype_agreement"]
        1.0
    """
    if reference.joint_log_probs.shape != candidate.joint_log_probs.shape:
        raise ValueError(f"outputs differ in shape: {tuple(reference.joint_log_probs.shape)} "
                         f"vs {tuple(candidate.joint_log_probs.shape)}; run both on the same batches")
    with torch.inference_mode():
        ref_organ, ref_subtype = (t.cpu() for t in model.decide(_on(reference, model.device)))
        cand_organ, cand_subtype = (t.cpu() for t in model.decide(_on(candidate, model.device)))
        diff = (reference.joint_probs.double() - candidate.joint_probs.double()).abs()
    images = reference.joint_log_probs.shape[0]
    return {"images": images,
            "subtype_agreement": float((ref_subtype == cand_subtype).double().mean()),
            "organ_agreement": float((ref_organ == cand_organ).double().mean()),
            "max_abs_joint_prob_diff": float(diff.max()),
            "mean_abs_joint_prob_diff": float(diff.mean())}


def _on(output: HeadOutput, device: torch.device) -> HeadOutput:
    return HeadOutput(output.router_logits.to(device), output.subtype_logits.to(device),
                      output.joint_log_probs.to(device))
