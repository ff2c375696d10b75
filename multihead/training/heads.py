"""Train the heads on cached trunk features: the joint combined cross-entropy and two baselines.

The combined loss, cross-entropy of the router plus cross-entropy of the sample's true organ head, equals
the negative log of the joint probability P(organ) * P(subtype | organ) of the true subtype, so one
``nll_loss`` on ``joint_log_probs`` computes it. Methods:

- ``multihead``: router and all heads trained together on that joint loss.
- ``per-organ``: the paper's method: each organ's head trained alone on its organ's images (plus a
  router trained alone, so the checkpoint can still be deployed); the best epoch is chosen per head.
- ``flat``: one 26-way softmax over all subtype logits.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation.metrics import feature_metrics
from ..features.dataset import FeatureSet
from ..model.heads import HeadOutput, MultiHeadModel
from .config import TrainConfig

__all__ = ["feature_statistics", "fit_heads", "fold_standardization", "sample_weights", "standardized",
           "unfold_standardization"]

log = logging.getLogger(__name__)


def sample_weights(labels: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights with mean 1: every class counts as much as every other."""
    counts = torch.bincount(labels).float()
    weights = 1.0 / counts[labels]
    return weights * (len(labels) / weights.sum())


def _organ_subset(data: FeatureSet, organ_index: int) -> FeatureSet:
    return data.subset([p for p, o in zip(data.relpaths, data.organs.tolist()) if o == organ_index])


def _score(metrics: dict[str, float], key: str) -> float:
    return metrics[key] - 1e-3 * metrics["loss"]


LossFn = Callable[[HeadOutput, torch.Tensor], torch.Tensor]


def _fit(model: MultiHeadModel, params: list[nn.Parameter], loss_fn: LossFn,
         train: FeatureSet, val: FeatureSet | None, config: TrainConfig, *, score_key: str, label: str,
         on_epoch: Callable[[dict[str, object]], None] | None) -> list[dict[str, object]]:
    """Adam over ``params``; keeps the parameters of the epoch with the best validation score."""
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    n, n_views = len(train), train.features.shape[1]
    history: list[dict[str, object]] = []
    best_score, best_state = float("-inf"), None
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            rows = order[start:start + config.batch_size]
            view = torch.randint(n_views, (len(rows),), generator=generator)
            features = train.features[rows, view].to(model.device)
            loss = loss_fn(model.forward_heads(features), rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        record: dict[str, object] = {"epoch": epoch, "part": label, "stage": "heads",
                                     "train": feature_metrics(model, train)}
        if val is not None and len(val):
            record["val"] = feature_metrics(model, val)
        score = _score(record.get("val") or record["train"], score_key)  # type: ignore[arg-type]
        if score > best_score:
            best_score, best_state = score, [p.detach().clone() for p in params]
            record["best"] = True
        history.append(record)
        if on_epoch:
            on_epoch(record)
    if best_state is not None:
        with torch.no_grad():
            for param, value in zip(params, best_state):
                param.copy_(value)
    return history


@contextmanager
def _one_thread() -> Iterator[None]:
    """Head training is thousands of tiny matmuls: one thread beats two (measured 5 s against 56 s for
    20 epochs on 4,900 samples of a busy 2-core CPU), since the threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_heads(model: MultiHeadModel, train: FeatureSet, val: FeatureSet | None, config: TrainConfig, *,
              on_epoch: Callable[[dict[str, object]], None] | None = None) -> list[dict[str, object]]:
    """Train ``model``'s heads in place on cached features with ``config.method``; returns the history.

    Organs with no training image are switched off (``model.available_organs``): the model never offers
    an answer it has not seen.
    """
    with _one_thread():
        return _fit_heads(model, train, val, config, on_epoch)


def _fit_heads(model: MultiHeadModel, train: FeatureSet, val: FeatureSet | None, config: TrainConfig,
               on_epoch: Callable[[dict[str, object]], None] | None) -> list[dict[str, object]]:
    if len(train) == 0:
        raise ValueError("no training images: the training split is empty")
    if config.views == "identity":
        train = FeatureSet(train.features[:, :1], train.organs, train.subtypes, train.relpaths, train.views[:1])
    if not config.standardize:
        return _train_heads(model, train, val, config, on_epoch)
    mean, std = feature_statistics(train)
    history = _train_heads(model, standardized(train, mean, std),
                           None if val is None else standardized(val, mean, std), config, on_epoch)
    fold_standardization(model, mean.to(model.device), std.to(model.device))
    return history


def feature_statistics(data: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation over training images and views (floored: constant features)."""
    flat = data.features.reshape(-1, data.features.shape[-1]).float()
    return flat.mean(0), flat.std(0).clamp_min(1e-3)


def standardized(data: FeatureSet, mean: torch.Tensor, std: torch.Tensor) -> FeatureSet:
    return FeatureSet((data.features - mean) / std, data.organs, data.subtypes, data.relpaths, data.views)


@torch.no_grad()
def fold_standardization(model: MultiHeadModel, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Heads trained on ``(x - mean) / std`` become heads on ``x``: ``W' = W / std``, ``b' = b - W' mean``."""
    for layer in [model.router, *model.heads.values()]:
        layer.weight.div_(std)
        layer.bias.sub_(layer.weight @ mean)


@torch.no_grad()
def unfold_standardization(model: MultiHeadModel, mean: torch.Tensor, std: torch.Tensor) -> None:
    """The inverse of :func:`fold_standardization`: heads on ``x`` become heads on ``(x - mean) / std``
    (``b = b' + W' mean``, ``W = W' std``), so training can go on in the standardised space."""
    for layer in [model.router, *model.heads.values()]:
        layer.bias.add_(layer.weight @ mean)
        layer.weight.mul_(std)


def _train_heads(model: MultiHeadModel, train: FeatureSet, val: FeatureSet | None, config: TrainConfig,
                 on_epoch: Callable[[dict[str, object]], None] | None) -> list[dict[str, object]]:
    taxonomy = model.taxonomy
    present = sorted(set(train.organs.tolist()))
    model.set_available_organs([taxonomy.organ_names[i] for i in present])
    model.joint = "flat" if config.method == "flat" else "hierarchical"
    model.reset_heads(config.seed)
    model.temperature.logit_scale.fill_(1.0)
    organs, subtypes = train.organs.to(model.device), train.subtypes.to(model.device)
    ones = torch.ones(len(train), device=model.device)
    subtype_weight = sample_weights(subtypes) if config.class_weighting else ones

    if config.method in ("multihead", "flat"):
        def joint_loss(out: HeadOutput, rows: torch.Tensor) -> torch.Tensor:
            rows = rows.to(model.device)
            nll = F.nll_loss(out.joint_log_probs, subtypes[rows], reduction="none")
            return (nll * subtype_weight[rows]).sum() / subtype_weight[rows].sum()

        params = model.head_parameters() if config.method == "multihead" else list(model.heads.parameters())
        return _fit(model, params, joint_loss, train, val, config, score_key="accuracy", label=config.method,
                    on_epoch=on_epoch)

    # per-organ: the router alone, then each organ's head alone on its own images.
    organ_weight = sample_weights(organs) if config.class_weighting else ones

    def router_loss(out: HeadOutput, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(model.device)
        nll = F.cross_entropy(out.router_logits, organs[rows], reduction="none")
        return (nll * organ_weight[rows]).sum() / organ_weight[rows].sum()

    history = _fit(model, list(model.router.parameters()), router_loss, train, val, config,
                   score_key="router_accuracy", label="router", on_epoch=on_epoch)
    for organ_index in present:
        name = taxonomy.organ_names[organ_index]
        part = _organ_subset(train, organ_index)
        part_val = _organ_subset(val, organ_index) if val is not None else None
        part_subtypes = part.subtypes.to(model.device)
        weight = sample_weights(part_subtypes) if config.class_weighting else torch.ones_like(part_subtypes).float()
        offset = taxonomy.head_offsets[organ_index]
        size = taxonomy.head_sizes[organ_index]

        def head_loss(out: HeadOutput, rows: torch.Tensor, offset=offset, size=size,
                      part_subtypes=part_subtypes, weight=weight) -> torch.Tensor:
            rows = rows.to(model.device)
            logits = out.subtype_logits[:, offset:offset + size]
            nll = F.cross_entropy(logits, part_subtypes[rows] - offset, reduction="none")
            return (nll * weight[rows]).sum() / weight[rows].sum()

        history += _fit(model, list(model.heads[name].parameters()), head_loss, part, part_val,
                        copy.copy(config), score_key="accuracy_given_organ", label=f"head:{name}", on_epoch=on_epoch)
    return history
