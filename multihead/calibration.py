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


def fit_temperatures(model: MultiHeadModel, data: FeatureSet) -> dict[str, object]:
    """Fit and set the temperatures on ``data`` (identity view); returns them by head.

    A flat model gets one temperature for all subtypes. Heads without validation images keep T = 1.
    """
    if len(data) == 0:
        raise ValueError("temperature scaling needs validation images; the validation split is empty")
    tax = model.taxonomy
    model.logit_scale.fill_(1.0)
    with torch.no_grad():
        out = model.forward_heads(data.features[:, 0].to(model.device))
    subtypes, organs = data.subtypes.to(model.device), data.organs.to(model.device)
    scale = torch.ones_like(model.logit_scale)
    if model.joint == "flat":
        flat_t = _fit_temperature(out.subtype_logits.cpu(), subtypes.cpu())
        scale[tax.num_organs:] = 1.0 / flat_t
        result: dict[str, object] = {"flat": flat_t}
    else:
        router = out.router_logits[:, model.organ_mask]
        remap = torch.cumsum(model.organ_mask.long(), 0) - 1  # organ index -> column among available organs
        router_t = _fit_temperature(router.cpu(), remap[organs].cpu())
        scale[: tax.num_organs] = 1.0 / router_t
        heads: dict[str, float] = {}
        for index, organ in enumerate(tax.organs):
            mine = organs == index
            if not mine.any():
                continue
            start = tax.head_offsets[index]
            columns = slice(start, start + len(organ.subtypes))
            heads[organ.name] = _fit_temperature(out.subtype_logits[mine, columns].cpu(),
                                                 (subtypes[mine] - start).cpu())
            scale[tax.num_organs + start: tax.num_organs + start + len(organ.subtypes)] = 1.0 / heads[organ.name]
        result = {"router": router_t, "heads": heads}
    model.logit_scale.copy_(scale)
    return result
