"""The multi-head model: one frozen trunk, a router head over organs, one subtype head per organ.

All heads run as one matrix product over the pooled features. The joint distribution
P(organ, subtype) = P(organ) * P(subtype | organ) is computed in log space and sums to one; a prediction
takes the router's organ and that organ's best subtype (:mod:`multihead.model.decision`), so organ and
subtype can never disagree. The post-hoc estimators fitted after training (temperatures, abstention
thresholds, the out-of-distribution score) are submodules, so their buffers travel in checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.preprocessing import Preprocessing
from ..taxonomy import MULTI_CANCER, Taxonomy
from .decision import Decisions, decide, subtype_confidence
from .ood import NearestNeighbourOOD
from .temperature import TemperatureScaling
from .thresholds import AbstentionThresholds
from .trunk import Trunk, TrunkWeights, create_trunk

__all__ = ["JOINT_MODES", "HeadOutput", "MultiHeadModel", "create_model"]

JOINT_MODES = ("hierarchical", "flat")


@dataclass
class HeadOutput:
    """What one forward pass gives: logits of every head and the joint log-probabilities."""

    router_logits: torch.Tensor
    """``[B, num_organs]``; organs the model was not trained on are ``-inf``."""
    subtype_logits: torch.Tensor
    """``[B, num_subtypes]``: every head's logits side by side, in the taxonomy's global subtype order."""
    joint_log_probs: torch.Tensor
    """``[B, num_subtypes]``: log P(organ) + log P(subtype | organ); exp sums to one per row."""

    @property
    def joint_probs(self) -> torch.Tensor:
        return self.joint_log_probs.exp()


class MultiHeadModel(nn.Module):
    """Frozen trunk -> pooled features -> router + per-organ heads (one fused matrix product).

    Build it with :func:`create_model` or :func:`multihead.load`; write it with :func:`multihead.save`.
    State-dict keys read as ``router.weight``, ``heads.<organ>.weight``, ``temperature.logit_scale``,
    ``thresholds.router`` and ``ood.threshold``.

    Example:
        >>> model = create_model(trunk_weights=None)
        >>> out = model(torch.zeros(2, 3, 224, 224))
        >>> out.router_logits.shape, out.joint_probs.sum(1)
        (torch.Size([2, 8]), tensor([1.0000, 1.0000]))
    """

    def __init__(self, trunk: Trunk, taxonomy: Taxonomy = MULTI_CANCER, *,
                 preprocessing: Preprocessing | None = None, joint: str = "hierarchical") -> None:
        super().__init__()
        if joint not in JOINT_MODES:
            raise ValueError(f"joint must be one of {JOINT_MODES}, got {joint!r}")
        self.joint = joint
        """``"hierarchical"``: P(organ) from the router times P(subtype | organ) from its head (multihead).
        ``"flat"``: one softmax over all subtype logits, organ probabilities summed from it (the flat baseline)."""
        self.trunk = trunk
        self.taxonomy = taxonomy
        self.preprocessing = preprocessing or trunk.preprocessing
        self.router = nn.Linear(trunk.num_features, taxonomy.num_organs)
        self.heads = nn.ModuleDict(
            {organ.name: nn.Linear(trunk.num_features, len(organ.subtypes)) for organ in taxonomy.organs}
        )
        self.register_buffer("organ_mask", torch.ones(taxonomy.num_organs, dtype=torch.bool))
        self.register_buffer("organ_covered", torch.ones(taxonomy.num_organs, dtype=torch.bool))
        """The organs the model may claim: trained on enough images (``set_covered_organs``); an answer naming
        another organ is ``uncertain``."""
        # post-hoc estimators; their defaults (T = 1, thresholds 0, OOD threshold inf) change nothing
        self.temperature = TemperatureScaling(taxonomy)
        self.thresholds = AbstentionThresholds(taxonomy.num_organs)
        self.ood = NearestNeighbourOOD(trunk.num_features)
        self.metadata: dict[str, Any] = {}
        """Training config, history, split and metrics; written into checkpoints as JSON."""
        self._register_index_buffers()

    def _register_index_buffers(self) -> None:
        tax = self.taxonomy
        width = max(tax.head_sizes)
        gather = torch.zeros(tax.num_organs, width, dtype=torch.long)
        valid = torch.zeros(tax.num_organs, width, dtype=torch.bool)
        for i, (offset, size) in enumerate(zip(tax.head_offsets, tax.head_sizes)):
            gather[i, :size] = torch.arange(offset, offset + size)
            valid[i, :size] = True
        self.register_buffer("_head_gather", gather, persistent=False)
        self.register_buffer("_head_valid", valid, persistent=False)
        self.register_buffer("subtype_organ", torch.tensor(tax.subtype_organ_indices), persistent=False)
        """The organ index of every subtype ``[S]``, what :mod:`~multihead.model.decision` needs."""

    # --- the forward pass: features -> heads ---------------------------------------------------------
    @property
    def num_features(self) -> int:
        return self.trunk.num_features

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[B, 3, S, S]`` -> pooled trunk features ``[B, num_features]``."""
        return self.trunk(images)

    def fused_head_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Router and all heads stacked: weight ``[O + S, F]`` and bias ``[O + S]``."""
        weight = torch.cat([self.router.weight, *(h.weight for h in self.heads.values())])
        bias = torch.cat([self.router.bias, *(h.bias for h in self.heads.values())])
        return weight, bias

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, F]`` -> ``[router | subtypes]`` logits ``[B, O + S]`` before temperatures
        and masks, in one matmul (what temperature scaling is fitted on)."""
        weight, bias = self.fused_head_parameters()
        return F.linear(features.to(weight.dtype), weight, bias)

    def forward_heads(self, features: torch.Tensor) -> HeadOutput:
        """Pooled features -> every head's logits and the joint log-probabilities, in one matmul."""
        logits = self.temperature(self.head_logits(features))
        router_logits, subtype_logits = logits.split([self.taxonomy.num_organs, self.taxonomy.num_subtypes], dim=1)
        if self.joint == "flat":
            subtype_logits = subtype_logits.masked_fill(~self.organ_mask[self.subtype_organ], float("-inf"))
            joint = F.log_softmax(subtype_logits, dim=1)
            router_logits = torch.logsumexp(self._padded(joint), dim=2)
            return HeadOutput(router_logits, subtype_logits, joint)
        router_logits = router_logits.masked_fill(~self.organ_mask, float("-inf"))
        return HeadOutput(router_logits, subtype_logits, self.joint_log_probs(router_logits, subtype_logits))

    def _padded(self, per_subtype: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` -> ``[B, O, max head size]``, one row per head, padding ``-inf``."""
        return per_subtype[:, self._head_gather].masked_fill(~self._head_valid, float("-inf"))

    def forward(self, images: torch.Tensor) -> HeadOutput:
        return self.forward_heads(self.forward_features(images))

    def joint_log_probs(self, router_logits: torch.Tensor, subtype_logits: torch.Tensor) -> torch.Tensor:
        """log P(organ) + log P(subtype | organ) for every subtype, with a softmax per head segment."""
        head_log_norm = torch.logsumexp(self._padded(subtype_logits), dim=2)  # [B, O]
        conditional = subtype_logits - head_log_norm[:, self.subtype_organ]
        return F.log_softmax(router_logits, dim=1)[:, self.subtype_organ] + conditional

    def decide(self, output: HeadOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """The router's organ and that organ's best subtype (global index), per row."""
        return decide(output.joint_log_probs, self.subtype_organ, output.router_logits)

    def ood_score(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, F]`` -> the out-of-distribution score ``[B]``: the distance to the nearest training
        image (:class:`~multihead.model.ood.NearestNeighbourOOD`)."""
        return self.ood.score(features)

    def decisions(self, features: torch.Tensor, *, joint: torch.Tensor | None = None) -> Decisions:
        """Pooled features ``[B, F]`` -> organ, subtype, their probabilities, the out-of-distribution flag and the
        status of each row: the one path from features to answers (:mod:`~multihead.model.decision`).

        Args:
            joint: joint probabilities ``[B, S]`` to decide from instead of the heads' own on ``features`` (the
                average over views of test-time augmentation); the out-of-distribution score still reads
                ``features``.
        """
        subtype_organ = self.subtype_organ.cpu()
        with torch.no_grad():
            if joint is None:
                output = self.forward_heads(features.to(self.device))
                joint = output.joint_probs.double().cpu()
                organ, subtype = (t.cpu() for t in self.decide(output))
            else:
                joint = joint.double().cpu()
                organ, subtype = decide(joint, subtype_organ)
            score = self.ood_score(features).double().cpu() if self.ood.fitted else None
        organ_probability, confidence = subtype_confidence(joint, subtype_organ, organ, subtype)
        flagged = self.ood.flag(score) if score is not None else None
        status = self.thresholds.status(organ_probability, confidence, organ, flagged, covered=self.organ_covered)
        return Decisions(joint, organ, subtype, organ_probability, confidence, score, flagged, status)

    # --- trained organs --------------------------------------------------------------------------
    @property
    def available_organs(self) -> tuple[str, ...]:
        """Organs the model may answer (those it saw training images of)."""
        return tuple(o for o, ok in zip(self.taxonomy.organ_names, self.organ_mask.tolist()) if ok)

    def set_available_organs(self, organs: list[str] | tuple[str, ...]) -> None:
        """Restrict answers to these organs (the others get probability zero); they are all covered until
        :meth:`set_covered_organs` says otherwise."""
        if not organs:
            raise ValueError("at least one organ must stay available")
        self.organ_mask.copy_(self._organ_flags(organs))
        self.organ_covered.copy_(self.organ_mask)

    @property
    def covered_organs(self) -> tuple[str, ...]:
        """Organs the model claims: trained on enough images. The router still weighs the others (so their images
        are not mistaken for a covered organ), but an answer naming one is ``uncertain``."""
        return tuple(o for o, ok in zip(self.taxonomy.organ_names, (self.organ_covered & self.organ_mask).tolist())
                     if ok)

    def set_covered_organs(self, organs: list[str] | tuple[str, ...]) -> None:
        """Claim only these organs (among the available ones)."""
        self.organ_covered.copy_(self._organ_flags(organs) & self.organ_mask)

    def _organ_flags(self, organs: list[str] | tuple[str, ...]) -> torch.Tensor:
        flags = torch.zeros_like(self.organ_mask)
        for organ in organs:
            flags[self.taxonomy.organ_index(organ)] = True
        return flags

    # --- heads' state and persistence -------------------------------------------------------------
    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (router and heads); the trunk has none."""
        return [*self.router.parameters(), *self.heads.parameters()]

    def reset_heads(self, seed: int | None = None) -> None:
        """Re-initialise router and heads (as ``nn.Linear`` does), optionally from a seed."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for layer in [self.router, *self.heads.values()]:
            bound = 1.0 / layer.in_features**0.5
            with torch.no_grad():
                for param in (layer.weight, layer.bias):
                    fresh = torch.empty(param.shape).uniform_(-bound, bound, generator=generator)
                    param.copy_(fresh)

    @property
    def device(self) -> torch.device:
        return self.router.weight.device

    def extra_repr(self) -> str:
        return f"taxonomy={self.taxonomy!r}, joint={self.joint!r}, available_organs={len(self.available_organs)}"


def create_model(trunk: str | Trunk = "resnet18", trunk_weights: TrunkWeights = "imagenet",
                 taxonomy: Taxonomy = MULTI_CANCER, *, trunk_stages: Sequence[str] | str = (),
                 image_size: int | None = None, preprocessing: Preprocessing | None = None,
                 seed: int | None = None) -> MultiHeadModel:
    """Build a multi-head model with freshly initialised heads.

    Args:
        trunk: a torchvision or timm model name, ``hf-hub:ORG/NAME[@REVISION]`` (a timm model in the local Hugging
            Face cache, never downloaded), or a :class:`~multihead.model.trunk.Trunk`.
        trunk_weights: ``"imagenet"``, a weights id, a local file, or ``None`` (random, said explicitly).
        taxonomy: the organ -> subtypes layout; head sizes come from it.
        trunk_stages: inner trunk stages whose pooled outputs join the features, or ``"auto"``
            (see :func:`~multihead.model.trunk.create_trunk`); ignored when ``trunk`` is already built.
        image_size: input side in pixels, overriding the trunk's default.
        preprocessing: full preprocessing, overriding the trunk's default (and ``image_size``).
        seed: seed for the heads' initialisation.

    Example:
        >>> model = create_model("resnet18", trunk_weights=None)
        >>> model.taxonomy.num_subtypes
        26
    """
    if not isinstance(taxonomy, Taxonomy):
        raise TypeError(f"taxonomy must be a multihead.Taxonomy, got {type(taxonomy).__name__}")
    if not isinstance(trunk, Trunk):
        trunk = create_trunk(trunk, weights=trunk_weights, stages=trunk_stages)
    size = preprocessing.image_size if preprocessing is not None else image_size
    if trunk.fixed_size is not None and size is not None and size != trunk.fixed_size:
        raise ValueError(f"trunk {trunk.name!r} takes {trunk.fixed_size}x{trunk.fixed_size} px inputs only (its "
                         f"position embeddings are fixed), not {size}: leave image_size unset (None) to use its own")
    if preprocessing is None:
        preprocessing = trunk.preprocessing if image_size is None else trunk.preprocessing.with_size(image_size)
    model = MultiHeadModel(trunk, taxonomy, preprocessing=preprocessing)
    if seed is not None:
        model.reset_heads(seed)
    return model
