"""Tune the top stages of the one shared trunk jointly with the router and heads.

Still one trunk and one forward pass: the stages from ``tune_from`` up are trained for all organs at once by
the same combined cross-entropy as the heads (class-weighted), on the frozen bottom's cached maps
(:mod:`multihead.features.maps`). The recipe answers what a naive joint tuning got wrong (small organs
losing points, accuracy swinging from epoch to epoch):

1. the heads are warmed up first on the frozen top's features (the ordinary head training), so the stages
   start from a good classifier instead of chasing a random one;
2. AdamW with one learning rate for the stages and another for the heads, a short warm-up then cosine decay;
3. each epoch is scored on validation by the organ-balanced accuracy (the mean of the organs' end-to-end
   accuracies, organs with too few validation images pooled; ties broken by the loss), so a large organ
   cannot buy its gain with a small organ's loss; the
   best epoch is kept, the warmed-up frozen top included (if no tuning epoch beats it, the trunk stays as
   published). With ``tune_patience`` set, training stops after that many epochs in which tuning did not beat
   its own best epoch (not the frozen top: every run dips below that first).

Maps are augmented by random flips (``tune_views="flips"``), or by the whole dihedral group
(``"dihedral"``: flips and 90-degree rotations); BatchNorm layers of the top either follow the new data
(``tune_batchnorm="train"``) or keep ImageNet's statistics (``"frozen"``). ``"adapted"`` re-estimates the
top's statistics on the training maps first and warms the heads up again on those features, then trains like
``"train"``: with ``"train"`` the statistics jump to the new data's in the first steps, and the heads warmed up
on ImageNet's statistics score 17 % on validation with them (docs/training.md), so the first epoch is spent
relearning the heads.

The forward and backward passes through the top run under bf16 autocast where the device computes bf16 in
hardware (``tune_precision="auto"``: CUDA, CPUs with AVX-512 BF16 or AMX); the heads, the loss, the optimizer's
state and every evaluation stay fp32. Label smoothing (``tune_label_smoothing``) spreads that share of each
target over all subtypes.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .._precision import native_bf16
from ..evaluation.metrics import feature_metrics
from ..features.dataset import FeatureSet
from ..features.maps import MapSet
from ..model.heads import MultiHeadModel
from ..model.trunk_split import TrunkSplit
from .config import TrainConfig
from .heads import (
    feature_statistics,
    fit_heads,
    fold_standardization,
    sample_weights,
    standardized,
    unfold_standardization,
)

__all__ = ["MIN_ORGAN_IMAGES", "adapt_batchnorm", "organ_accuracies", "organ_balanced_accuracy", "top_features",
           "tune_precision", "tune_top"]

log = logging.getLogger(__name__)


@torch.no_grad()
def top_features(parts: TrunkSplit, data: MapSet, model: MultiHeadModel, *, batch_size: int = 64) -> FeatureSet:
    """The trunk's features of every image in ``data`` through the (frozen or tuned) top, in eval mode."""
    parts.set_batchnorm_training(False)
    rows, chunks = [], []
    for batch_rows, maps, pooled in data.batches(torch.arange(len(data)), batch_size, parts, model):
        rows.append(batch_rows)
        chunks.append(parts.top_forward(maps, pooled).float().cpu())
    if not chunks:
        return FeatureSet(torch.empty(0, 1, model.num_features), data.organs[:0], data.subtypes[:0], [], ("identity",))
    order = torch.cat(rows)
    features = torch.empty(len(data), chunks[0].shape[1])
    features[order] = torch.cat(chunks)
    return FeatureSet(features[:, None], data.organs, data.subtypes, list(data.relpaths), ("identity",))


MIN_ORGAN_IMAGES = 30
"""Organs with fewer validation images than this are not weighted as organs in the epoch's score (two images
would swing it by 25 points each); they count through the pooled rest (as temperature scaling skips them)."""


def organ_accuracies(model: MultiHeadModel, data: FeatureSet) -> dict[str, tuple[float, int]]:
    """Per organ present: (end-to-end accuracy, images)."""
    with torch.no_grad():
        _, subtype = model.decide(model.forward_heads(data.features[:, 0].to(model.device)))
    right = (subtype.cpu() == data.subtypes).float()
    names = model.taxonomy.organ_names
    return {names[o]: (float(right[data.organs == o].mean()), int((data.organs == o).sum()))
            for o in data.organs.unique().tolist()}


def organ_balanced_accuracy(model: MultiHeadModel, data: FeatureSet) -> float:
    """Mean of the end-to-end accuracies of the organs with at least :data:`MIN_ORGAN_IMAGES` images, the
    smaller organs pooled into one more group (all organs alike when none is that large)."""
    per_organ = organ_accuracies(model, data)
    large = [acc for acc, n in per_organ.values() if n >= MIN_ORGAN_IMAGES]
    small = [(acc, n) for acc, n in per_organ.values() if n < MIN_ORGAN_IMAGES]
    if not large:
        return sum(acc for acc, _ in small) / len(small)
    if small:
        large.append(sum(acc * n for acc, n in small) / sum(n for _, n in small))
    return sum(large) / len(large)


def _selection_score(model: MultiHeadModel, data: FeatureSet) -> float:
    """What picks the epoch: organ-balanced validation accuracy, ties broken by the lower loss."""
    return organ_balanced_accuracy(model, data) - 1e-3 * feature_metrics(model, data)["loss"]


def _augment(maps: torch.Tensor, views: str, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips per map (``"flips"``), plus a random transpose (``"dihedral"``:
    together all eight symmetries of the square)."""
    if views == "none":
        return maps
    n = len(maps)
    draws = torch.rand(3, n, generator=generator) < 0.5
    flip_w, flip_h, transpose = (d.to(maps.device)[:, None, None, None] for d in draws)
    maps = torch.where(flip_w, maps.flip(3), maps)
    maps = torch.where(flip_h, maps.flip(2), maps)
    if views == "dihedral" and maps.shape[2] == maps.shape[3]:
        maps = torch.where(transpose, maps.transpose(2, 3), maps)
    return maps


def _tuning_loss(joint_log_probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                 smoothing: float) -> torch.Tensor:
    """The weighted joint cross-entropy; with ``smoothing``, that share of each target is spread evenly over all
    subtypes (torch's ``label_smoothing``, on the joint log-probabilities)."""
    nll = F.nll_loss(joint_log_probs, targets, reduction="none")
    if smoothing:
        nll = (1 - smoothing) * nll - smoothing * joint_log_probs.mean(1)
    return (nll * weights).sum() / weights.sum()


def _schedule(total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per step: a linear warm-up (a tenth of the steps, at most 100), then cosine decay."""
    warmup = max(1, min(100, total_steps // 10))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))

    return factor


def _named(part: str, on_epoch: Callable[[dict[str, object]], None] | None
           ) -> Callable[[dict[str, object]], None] | None:
    """``on_epoch`` told which warm-up an epoch belongs to, as the history will name it."""
    if on_epoch is None:
        return None
    return lambda record: on_epoch({**record, "part": f"{part}:{record['part']}", "stage": "warm-up"})


def tune_top(model: MultiHeadModel, parts: TrunkSplit, train: MapSet, val: MapSet | None, config: TrainConfig, *,
             on_epoch: Callable[[dict[str, object]], None] | None = None,
             on_progress: Callable[[str, int, int], None] | None = None) -> list[dict[str, object]]:
    """Warm the heads up on the frozen top's features, then tune top and heads together; returns the history.

    The model's trunk holds the best epoch's weights afterwards (``parts.top`` shares its modules); a tuning
    epoch that was kept is marked ``"best"`` in the history.
    ``on_progress(task, done, total)`` is called after every batch of every tuning epoch.
    """
    if len(train) == 0:
        raise ValueError("no training images: the training split is empty")
    device = model.device
    frozen_train = top_features(parts, train, model)
    frozen_val = top_features(parts, val, model) if val is not None and len(val) else None
    history = fit_heads(model, frozen_train, frozen_val, config, on_epoch=_named("warm-up", on_epoch))
    for record in history:
        record.update(part=f"warm-up:{record['part']}", stage="warm-up")
    # the published top with its warmed-up heads (on raw features: no standardisation to fold) is a candidate
    raw = torch.zeros(model.num_features, device=device), torch.ones(model.num_features, device=device)
    best_score = _selection_score(model, frozen_val) if frozen_val is not None else float("-inf")
    best = (_state(model, parts), *raw)
    if config.tune_batchnorm == "adapted":
        adapt_batchnorm(parts, train, model, batch_size=config.batch_size)
        frozen_train = top_features(parts, train, model)
        frozen_val = top_features(parts, val, model) if frozen_val is not None else None
        adapted = fit_heads(model, frozen_train, frozen_val, config, on_epoch=_named("adapted warm-up", on_epoch))
        for record in adapted:
            record.update(part=f"adapted warm-up:{record['part']}", stage="warm-up")
        history += adapted
    # the heads go on learning in the standardised space they were warmed up in (config.standardize): AdamW's
    # steps then mean the same for features of every scale; folded back into the heads at the end
    mean, std = feature_statistics(frozen_train) if config.standardize else raw
    mean, std = mean.to(device), std.to(device)
    unfold_standardization(model, mean, std)
    parts.top.to(memory_format=torch.channels_last)  # with channels_last maps: the faster CPU and GPU layout
    top_params = parts.top_parameters()
    for param in top_params:
        param.requires_grad_(True)
    head_params = model.head_parameters()
    optimizer = torch.optim.AdamW([
        {"params": top_params, "lr": config.tune_lr, "weight_decay": config.weight_decay},
        {"params": head_params, "lr": config.tune_head_lr, "weight_decay": config.weight_decay},
    ])
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(steps_per_epoch * config.tune_epochs))
    generator = torch.Generator().manual_seed(config.seed)
    subtypes = train.subtypes.to(device)
    weight = sample_weights(subtypes) if config.class_weighting else torch.ones(len(train), device=device)
    best_tuned, stale = float("-inf"), 0  # patience counts the tuning's own progress
    precision = tune_precision(config, device)
    try:
        for epoch in range(1, config.tune_epochs + 1):
            parts.set_batchnorm_training(config.tune_batchnorm != "frozen")
            order = torch.randperm(len(train), generator=generator)
            total, count = 0.0, 0
            for rows, maps, pooled in train.batches(order, config.batch_size, parts, model):
                rows = rows.to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    features = parts.top_forward(_augment(maps, config.tune_views, generator), pooled)
                out = model.forward_heads((features.float() - mean) / std)
                loss = _tuning_loss(out.joint_log_probs, subtypes[rows], weight[rows], config.tune_label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total, count = total + float(loss.detach()) * len(rows), count + len(rows)
                if on_progress:
                    on_progress(f"tune epoch {epoch}", count, len(train))
            # the training set is not re-run after each epoch (a third of the epoch's cost): its loss is the
            # running mean over the epoch's augmented batches
            record: dict[str, object] = {"epoch": epoch, "part": f"tune:{parts.cut}", "stage": "tune",
                                         "precision": precision,
                                         "train": {"loss": total / max(count, 1)}}
            tuned_val = (standardized(top_features(parts, val, model), mean.cpu(), std.cpu())
                         if val is not None and len(val) else None)
            if tuned_val is not None:
                record["val"] = feature_metrics(model, tuned_val)
                record["organ_balanced_accuracy"] = organ_balanced_accuracy(model, tuned_val)
                record["val_organs"] = {o: acc for o, (acc, _) in organ_accuracies(model, tuned_val).items()}
                score = _selection_score(model, tuned_val)
            else:  # no validation images: the last epoch is kept
                score = float(epoch)
            if score > best_score:
                best_score, best = score, (_state(model, parts), mean, std)
                record["best"] = True
            stale = 0 if score > best_tuned else stale + 1
            best_tuned = max(best_tuned, score)
            history.append(record)
            if on_epoch:
                on_epoch(record)
            if config.tune_patience is not None and stale >= config.tune_patience:
                break
    finally:
        for param in top_params:
            param.requires_grad_(False)
        parts.set_batchnorm_training(False)
    state, mean, std = best
    _restore(model, parts, state)
    fold_standardization(model, mean, std)
    return history


def tune_precision(config: TrainConfig, device: torch.device) -> str:
    """``config.tune_precision`` on ``device``: ``"auto"`` is ``"bf16"`` where the device computes bf16 in hardware."""
    if config.tune_precision != "auto":
        return config.tune_precision
    return "bf16" if native_bf16(device) else "fp32"


@torch.no_grad()
def adapt_batchnorm(parts: TrunkSplit, data: MapSet, model: MultiHeadModel, *, batch_size: int = 64) -> None:
    """Re-estimate the top's BatchNorm statistics on ``data`` (one pass, cumulative average), weights unchanged."""
    layers = [m for m in parts.top.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the pass, not an exponential one
    parts.set_batchnorm_training(True)
    try:
        for _, maps, pooled in data.batches(torch.arange(len(data)), batch_size, parts, model):
            parts.top_forward(maps, pooled)
    finally:
        parts.set_batchnorm_training(False)
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum


def _state(model: MultiHeadModel, parts: TrunkSplit) -> dict[str, dict[str, torch.Tensor]]:
    return {"top": copy.deepcopy(parts.top.state_dict()),
            "heads": {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("trunk.")}}


@torch.no_grad()
def _restore(model: MultiHeadModel, parts: TrunkSplit, state: dict[str, dict[str, torch.Tensor]]) -> None:
    parts.top.load_state_dict(state["top"])
    model.load_state_dict(state["heads"], strict=False)
