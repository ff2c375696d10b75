"""The trunk cut in two at a stage: a frozen bottom whose maps can be cached, and a top that can be tuned.

``bottom(images) -> (map at the cut, pooled stages below it)`` and ``top(map, pooled below) -> features`` give
exactly what the whole trunk gives (the same features, in the same order), so the top can be tuned on cached
maps and the tuned weights put back into the one trunk: inference stays one forward pass of one network.

The split is read off a ``torch.fx`` trace of the network (the pooled stages and the cut kept as leaf
calls), so it works for any traceable trunk whose cut is crossed by one value only (no skip connection
reaching over it): the stage boundaries of ResNet and MobileNetV2 are such cuts. Trunks from the Hugging Face hub and
trunks pooled from their tokens are refused, with the reason (:func:`tuning_refusal`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn

from .trunk import Trunk
from .trunk_specs import AUTO_TUNE_FROM, HUB_FROZEN, HUB_PREFIX, TOKENS, trunk_spec

__all__ = ["AUTO_TUNE_FROM", "STEM", "TrunkSplit", "resolve_tune_from", "split_trunk", "tuning_refusal",
           "untuned_features"]

STEM = "stem"
"""``tune_from="stem"``: the whole trunk is tuned (nothing below the cut; no map cache)."""


def resolve_tune_from(trunk_name: str, tune_from: str) -> str | None:
    """``"none"`` -> ``None``; ``"auto"`` -> the trunk's entry in :data:`AUTO_TUNE_FROM` (its spec's cut, chosen on
    validation accuracy: docs/accuracy.md); names pass through. A trunk that cannot be tuned is refused, with why."""
    if tune_from in ("none", ""):
        return None
    refusal = tuning_refusal(trunk_name)
    if refusal:
        raise ValueError(refusal)
    if tune_from == "auto":
        if trunk_name not in AUTO_TUNE_FROM:
            raise ValueError(f"no automatic tune_from for trunk {trunk_name!r} (known: {', '.join(AUTO_TUNE_FROM)}); "
                             "name the first module to tune, for example tune_from='layer4'")
        return AUTO_TUNE_FROM[trunk_name]
    return tune_from


def tuning_refusal(trunk: Trunk | str) -> str | None:
    """Why ``trunk`` (or the trunk of that name) cannot be tuned, as a sentence; ``None`` when it can be.

    Example:
        >>> tuning_refusal("hf-hub:paige-ai/Virchow2")[:48]
        "trunk 'hf-hub:paige-ai/Virchow2' cannot be tuned"
    """
    name = trunk if isinstance(trunk, str) else trunk.name
    spec = trunk_spec(name)
    if spec is not None and spec.untunable:
        reason = spec.untunable
    elif name.startswith(HUB_PREFIX):
        reason = HUB_FROZEN
    elif not isinstance(trunk, str) and TOKENS in trunk.stages:
        reason = f"its features are pooled from its tokens ({TOKENS}), which no cut of the network gives"
    else:
        return None
    return f"trunk {name!r} cannot be tuned: {reason}; train it frozen (tune_from='none')"


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.leaves or super().is_leaf_module(module, qualified_name)


class TrunkSplit(nn.Module):
    """A trunk's network as ``bottom`` (frozen) and ``top`` (tunable), sharing the trunk's own modules.

    ``top``'s parameters *are* the trunk's: tuning them tunes the trunk in place.
    """

    def __init__(self, trunk: Trunk, cut: str) -> None:
        super().__init__()
        refusal = tuning_refusal(trunk)
        if refusal:
            raise ValueError(refusal)
        stages = tuple(trunk.stages)
        nested = [s for s in stages if s.startswith(cut + ".")] if cut != STEM else []
        if nested:
            raise ValueError(f"cannot cut trunk {trunk.name!r} at {cut!r}: pooled stages {nested} lie inside it; "
                             "cut at a module that contains no pooled stage")
        if cut != STEM:
            try:
                trunk.network.get_submodule(cut)
            except AttributeError:
                raise ValueError(f"trunk {trunk.name!r} has no module {cut!r} to tune from") from None
        try:
            graph = _Tracer(set(stages) | ({cut} if cut != STEM else set())).trace(trunk.network)
        except Exception as err:  # fx raises many types for untraceable code
            raise ValueError(f"trunk {trunk.name!r} cannot be split for tuning: torch.fx cannot trace it "
                             f"({type(err).__name__}: {err})") from None
        nodes = list(graph.nodes)
        first_module = next(i for i, n in enumerate(nodes) if n.op in ("call_module", "call_function", "call_method"))
        cut_index = first_module if cut == STEM else next(
            (i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == cut), None)
        if cut_index is None:
            raise ValueError(f"trunk {trunk.name!r}: module {cut!r} is not called in its forward pass")
        below, above = nodes[:cut_index], nodes[cut_index:]
        below_set = set(below)
        crossing = {source for node in above for source in node.all_input_nodes if source in below_set}
        if len(crossing) != 1:
            raise ValueError(f"cannot cut trunk {trunk.name!r} at {cut!r}: {len(crossing)} values cross the cut "
                             "(a skip connection reaches over it); cut at the start of a stage")
        (cut_value,) = crossing
        self.cut = cut
        self.stages_below = tuple(n.target for n in below if n.op == "call_module" and n.target in stages)
        self.stages_above = tuple(n.target for n in above if n.op == "call_module" and n.target in stages)
        if self.stages_below + self.stages_above != stages:
            raise ValueError(f"trunk {trunk.name!r}: pooled stages {list(stages)} are not called in their order")
        self.bottom = fx.GraphModule(trunk.network, _subgraph(below, None, cut_value, self.stages_below))
        self.top = fx.GraphModule(trunk.network, _subgraph(above, cut_value, None, self.stages_above))
        self.trunk_name = trunk.name

    def bottom_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (the map at the cut ``[B, C, H, W]``, pooled stages below the cut ``[B, F_below]``)."""
        cut_map, stage_maps = self.bottom(images)
        return cut_map, _pooled(stage_maps, cut_map)

    def top_forward(self, cut_map: torch.Tensor, pooled_below: torch.Tensor) -> torch.Tensor:
        """(map at the cut, pooled stages below) -> the trunk's features, exactly as ``trunk(images)``."""
        final, stage_maps = self.top(cut_map)
        return torch.cat([pooled_below.to(final.dtype), _pooled(stage_maps, final), final.flatten(1)], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.top_forward(*self.bottom_forward(images))

    def top_parameters(self) -> list[nn.Parameter]:
        return list(self.top.parameters())

    def set_batchnorm_training(self, training: bool) -> None:
        """BatchNorm layers of the top in train mode (statistics follow the new data) or eval mode (kept);
        every other layer of the trunk (dropout included) stays in eval mode."""
        self.top.eval()
        for module in self.top.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(training)


def _pooled(stage_maps: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if not stage_maps:
        return like.new_zeros(like.shape[0], 0)
    return torch.cat([m.mean((2, 3)) for m in stage_maps], 1)


def _subgraph(nodes: list[fx.Node], start: fx.Node | None, end: fx.Node | None, stages: tuple[str, ...]) -> fx.Graph:
    """Copy ``nodes`` into a new graph. ``start`` (a value computed before ``nodes``) becomes its input;
    the output is ``(end, stage maps)`` for the bottom, ``(the network's output, stage maps)`` for the top."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if start is not None:
        env[start] = graph.placeholder("cut_map")
    result = None
    for node in nodes:
        if node.op == "output":
            result = fx.map_arg(node.args[0], lambda n: env[n])
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    stage_nodes = tuple(env[n] for n in nodes if n.op == "call_module" and n.target in stages)
    graph.output((env[end] if end is not None else result, stage_nodes))
    graph.lint()
    return graph


def split_trunk(trunk: Trunk, tune_from: str) -> TrunkSplit:
    """Cut ``trunk`` before module ``tune_from`` (``"auto"``, a module name such as ``"layer4"`` or
    ``"features.14"``, or ``"stem"`` for the whole trunk).

    Example:
        >>> from multihead.model.trunk import create_trunk
        >>> trunk = create_trunk("resnet18", weights=None, stages="auto")
        >>> parts = split_trunk(trunk, "auto")
        >>> parts.cut, parts.stages_below
        ('layer4', ('layer1', 'layer2', 'layer3'))
    """
    cut = resolve_tune_from(trunk.name, tune_from)
    if cut is None:
        raise ValueError("tune_from='none' leaves the trunk frozen: there is nothing to split")
    return TrunkSplit(trunk, cut)


def untuned_features(trunk: Trunk) -> int:
    """How many leading features of ``trunk(images)`` its tuning left as they were: all of them for a frozen
    trunk; for a tuned one, the pooled stages below its cut (0 when the stem was tuned or no stage is pooled
    below the cut). The out-of-distribution score reads these (:mod:`multihead.model.ood`)."""
    if trunk.tuned_from is None:
        return trunk.num_features
    if trunk.tuned_from == STEM:
        return 0
    parts = TrunkSplit(trunk, trunk.tuned_from)
    device = next(trunk.parameters()).device
    with torch.no_grad():
        return parts.bottom_forward(torch.zeros(1, 3, 64, 64, device=device))[1].shape[1]
