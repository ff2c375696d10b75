"""Temperature scaling: one temperature for the router and one per organ head, fitted on validation data.

Dividing logits by a temperature changes no argmax, so no prediction changes; only the probabilities
move closer to the observed accuracy. The temperatures live in the model's ``logit_scale`` buffer
(1 / temperature per output column) and so travel inside checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import FeatureSet
from .model import MultiHeadModel

__all__ = ["fit_temperatures"]


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


MIN_SAMPLES = 30


def _temperature_or_one(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fit only where it means something: enough images and at least one mistake. With no mistake the
    cross-entropy keeps falling as T -> 0, which would make the head over-confident on anything new."""
    if len(targets) < MIN_SAMPLES or bool((logits.argmax(1) == targets).all()):
        return 1.0
    return _fit_temperature(logits, targets)


def fit_temperatures(model: MultiHeadModel, data: FeatureSet) -> dict[str, object]:
    """Fit and set the temperatures on ``data`` (identity view); returns them by head.

    A flat model gets one temperature for all subtypes. A head with fewer than 30 validation images, or
    with no validation mistake, keeps T = 1.
    """
    if len(data) == 0:
        raise ValueError("temperature scaling needs validation images; the validation split is empty")
    tax = model.taxonomy
    model.logit_scale.fill_(1.0)
    with torch.no_grad():
        out = model.forward_heads(data.features[:, 0].to(model.device))
    subtypes, organs = data.subtypes.cpu(), data.organs.cpu()
    available = model.organ_mask.cpu()
    scale = torch.ones_like(model.logit_scale)
    if model.joint == "flat":
        columns = available[torch.tensor(tax.subtype_organ_indices)]
        remap = torch.cumsum(columns.long(), 0) - 1
        flat_t = _temperature_or_one(out.subtype_logits.cpu()[:, columns], remap[subtypes])
        scale[tax.num_organs:] = 1.0 / flat_t
        result: dict[str, object] = {"flat": flat_t}
    else:
        remap = torch.cumsum(available.long(), 0) - 1  # organ index -> column among available organs
        router_t = _temperature_or_one(out.router_logits.cpu()[:, available], remap[organs])
        scale[: tax.num_organs] = 1.0 / router_t
        heads: dict[str, float] = {}
        for index, organ in enumerate(tax.organs):
            mine = organs == index
            start = tax.head_offsets[index]
            columns = slice(start, start + len(organ.subtypes))
            heads[organ.name] = _temperature_or_one(out.subtype_logits.cpu()[mine, columns], subtypes[mine] - start)
            scale[tax.num_organs + start: tax.num_organs + start + len(organ.subtypes)] = 1.0 / heads[organ.name]
        result = {"router": router_t, "heads": heads}
    model.logit_scale.copy_(scale.to(model.logit_scale.device))
    return result
