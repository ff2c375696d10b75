"""Temperature scaling: one temperature for the router and one per organ head (one for all subtypes in a
flat model), fitted on validation logits.

Dividing logits by a temperature changes no argmax, so no prediction changes; only the probabilities move
closer to the observed accuracy. The model multiplies its fused logits by :attr:`TemperatureScaling.logit_scale`
(1 / temperature per output column), which travels inside checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..taxonomy import Taxonomy

__all__ = ["MIN_SAMPLES", "TemperatureScaling"]

MIN_SAMPLES = 30
"""Validation images a head needs before its temperature is fitted (fewer: T = 1, and it is said so)."""


def _fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature minimising the cross-entropy of ``logits / T`` (LBFGS on log T)."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def _temperature_or_skip(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, str | None]:
    """Fit only where it means something: enough images and at least one mistake. With no mistake the
    cross-entropy keeps falling as T -> 0, which would make the head over-confident on anything new."""
    if len(targets) < MIN_SAMPLES:
        return 1.0, f"{len(targets)} validation images, fewer than {MIN_SAMPLES}"
    if bool((logits.argmax(1) == targets).all()):
        return 1.0, "no validation mistake"
    return _fit_temperature(logits, targets), None


class TemperatureScaling(nn.Module):
    """Per-head temperatures as a scale on the fused ``[router | subtypes]`` logits.

    Example:
        >>> scaling = TemperatureScaling(MULTI_CANCER)
        >>> scaling.fitted, scaling(torch.ones(1, 34)).sum().item()
        (False, 34.0)
    """

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.register_buffer("logit_scale", torch.ones(taxonomy.num_organs + taxonomy.num_subtypes))
        self.temperatures_: dict[str, object] = {}
        """The last :meth:`fit`'s temperatures by head: ``{"router": T, "heads": {organ: T}}`` or ``{"flat": T}``."""
        self.skipped_: dict[str, str] = {}
        """Heads left at T = 1 by the last :meth:`fit`, with the reason."""

    @property
    def fitted(self) -> bool:
        """Whether any temperature differs from 1 (a model saved after fitting keeps this)."""
        return bool((self.logit_scale != 1).any())

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.logit_scale

    def fit(self, logits: torch.Tensor, subtypes: torch.Tensor, *, available: torch.Tensor,
            flat: bool = False) -> TemperatureScaling:
        """Fit on unscaled validation logits ``[N, O + S]`` and true global subtype indices ``[N]``.

        Args:
            available: ``[O]`` bool, the organs the model answers (the router's other columns are ``-inf``).
            flat: one temperature for all subtypes (the flat model) instead of router + one per head.
        """
        if len(subtypes) == 0:
            raise ValueError("temperature scaling needs validation images; the validation split is empty")
        tax = self.taxonomy
        logits, subtypes, available = logits.detach().cpu(), subtypes.cpu(), available.cpu()
        router_logits, subtype_logits = logits.split([tax.num_organs, tax.num_subtypes], dim=1)
        organs = torch.tensor(tax.subtype_organ_indices)[subtypes]
        scale = torch.ones_like(self.logit_scale, device="cpu")
        self.skipped_ = {}
        if flat:
            columns = available[torch.tensor(tax.subtype_organ_indices)]
            remap = torch.cumsum(columns.long(), 0) - 1
            flat_t = self._fit_one("flat", subtype_logits[:, columns], remap[subtypes])
            scale[tax.num_organs:] = 1.0 / flat_t
            self.temperatures_ = {"flat": flat_t}
        else:
            remap = torch.cumsum(available.long(), 0) - 1  # organ index -> column among available organs
            router_t = self._fit_one("router", router_logits[:, available], remap[organs])
            scale[: tax.num_organs] = 1.0 / router_t
            heads: dict[str, float] = {}
            for index, organ in enumerate(tax.organs):
                mine = organs == index
                start = tax.head_offsets[index]
                columns = slice(start, start + len(organ.subtypes))
                heads[organ.name] = self._fit_one(organ.name, subtype_logits[mine, columns], subtypes[mine] - start)
                scale[tax.num_organs + start: tax.num_organs + start + len(organ.subtypes)] = 1.0 / heads[organ.name]
            self.temperatures_ = {"router": router_t, "heads": heads}
        self.logit_scale.copy_(scale.to(self.logit_scale.device))
        return self

    def _fit_one(self, head: str, logits: torch.Tensor, targets: torch.Tensor) -> float:
        temperature, reason = _temperature_or_skip(logits, targets)
        if reason is not None:
            self.skipped_[head] = reason
        return temperature
