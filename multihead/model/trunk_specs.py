"""One spec per supported trunk: what multihead knows about a trunk, in one place.

timm keeps everything about an architecture in one ``PretrainedCfg``. multihead adds a few facts of its own on top:
which inner stages ``stages="auto"`` pools, where ``tune_from="auto"`` cuts, the input the published weights expect,
the extra arguments timm needs to build a foundation model, the feature width and the licence. They live here, one
:class:`TrunkSpec` per trunk, and are read by :mod:`~multihead.model.trunk` (stages, preprocessing, build
arguments), :mod:`~multihead.model.trunk_split` (the tune cut, or why there is none) and the command line (its help
texts). Any other torchvision, timm or hub model works too; what a spec would say is then read off the model
(:func:`derived_stages`). No torch here, so ``multihead --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AUTO_STAGES", "AUTO_TUNE_FROM", "HUB_FROZEN", "HUB_PREFIX", "TOKENS", "TRUNK_SPECS", "TrunkSpec",
           "derived_stages", "has_class_token", "stages_help", "trunk_help", "trunk_spec", "tune_from_help"]

HUB_PREFIX = "hf-hub:"
"""Trunks named ``hf-hub:ORG/NAME[@REVISION]`` are read from the local Hugging Face cache
(:mod:`multihead.model.hub`)."""
TOKENS = "cls+mean"
"""The stage name that pools a transformer's tokens: its class token and the mean of its patch tokens side by side
(``2 x`` the token width), in place of the pooled output; as the ends of earlier stages are pooled for CNNs."""


@dataclass(frozen=True)
class TrunkSpec:
    """What multihead knows about one trunk.

    Example:
        >>> trunk_spec("resnet18").tune_from, trunk_spec("resnet18").num_features
        ('layer4', 960)
    """

    name: str
    """A torchvision or timm model name, or ``hf-hub:ORG/NAME`` (matched without regard to case or revision)."""
    stages: tuple[str, ...] = ()
    """What ``stages="auto"`` pools beside the output: module names (CNNs), or ``(TOKENS,)`` (transformers)."""
    tune_from: str | None = None
    """Where ``tune_from="auto"`` cuts: the first module tuned (chosen on validation accuracy, docs/accuracy.md)."""
    untunable: str | None = None
    """Why the trunk cannot be tuned at all (``None``: it can, from :attr:`tune_from` or a named module)."""
    preprocessing: dict[str, Any] | None = None
    """The input its published weights expect, as :class:`~multihead.data.preprocessing.Preprocessing` arguments
    (``{}``: its defaults, 224 px with ImageNet's mean and std, bilinear); ``None``: the weights' own config says
    (a hub repository's ``config.json``)."""
    build_args: dict[str, Any] = field(default_factory=dict)
    """Arguments timm needs beyond the repository's ``config.json`` (its model card says which)."""
    build_classes: dict[str, str] = field(default_factory=dict)
    """Arguments that are classes, by import path (``"torch.nn.SiLU"``): a config cannot hold them."""
    num_features: int | None = None
    """Width of the features with ``stages="auto"`` (the tests check the torchvision ones; the model cards give the
    foundation models')."""
    licence: str | None = None
    """The weights' licence, as the model card states it."""
    about: str = ""
    """One line for the documentation: architecture and what the weights were trained on."""


HUB_FROZEN = ("foundation models from the Hugging Face hub stay frozen in this version (their features are used as "
              "published, and the split that tuning needs is not defined for transformer trunks)")
"""Why no trunk from the hub can be tuned (yet)."""
TRUNK_SPECS: tuple[TrunkSpec, ...] = (
    TrunkSpec("mobilenet_v2", stages=("features.3", "features.6", "features.10", "features.13", "features.16",
                                      "features.17"),
              tune_from="features.14", preprocessing={}, num_features=1976,
              about="MobileNetV2, ImageNet-1k (torchvision)"),
    *(TrunkSpec(name, stages=("layer1", "layer2", "layer3"), tune_from="layer4", preprocessing={},
                num_features=width, about=f"{title}, ImageNet-1k (torchvision)")
      for name, title, width in (("resnet18", "ResNet18", 960), ("resnet34", "ResNet34", 960),
                                 ("resnet50", "ResNet50", 3840), ("resnet101", "ResNet101", 3840))),
    # foundation models: what their model cards say (docs/training.md, "A foundation model as the trunk")
    TrunkSpec("hf-hub:MahmoodLab/UNI", untunable=HUB_FROZEN,
              build_args={"init_values": 1e-5, "dynamic_img_size": True},
              num_features=1024, licence="CC-BY-NC-ND-4.0, gated",
              about="ViT-L/16, DINOv2 on Mass-100K (about 100 million tiles of 100,000 H&E slides); the class token"),
    TrunkSpec("hf-hub:paige-ai/Virchow2", stages=(TOKENS,), untunable=HUB_FROZEN,
              build_classes={"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"},
              num_features=2560, licence="CC-BY-NC-ND-4.0, gated",
              about="ViT-H/14 with 4 register tokens, DINOv2 on 3.1 million slides; class token and mean of the patch "
                    "tokens"),
)
"""Every trunk multihead has a spec for, in the order the help texts list them."""
_BY_NAME = {spec.name.lower(): spec for spec in TRUNK_SPECS}

AUTO_STAGES = {spec.name: spec.stages for spec in TRUNK_SPECS if spec.stages and TOKENS not in spec.stages}
"""``stages="auto"`` of the CNN trunks with a spec: the last block of every stage before the final one."""
AUTO_TUNE_FROM = {spec.name: spec.tune_from for spec in TRUNK_SPECS if spec.tune_from}
"""``tune_from="auto"``: the last stages of each trunk that has a cut (MobileNetV2's last three inverted-residual
blocks and final convolution; ResNet's ``layer4``)."""


def trunk_spec(name: str) -> TrunkSpec | None:
    """The spec of trunk ``name`` (``hf-hub:`` names without regard to case or ``@REVISION``), or ``None``.

    Example:
        >>> trunk_spec("hf-hub:paige-ai/virchow2@main").num_features
        2560
    """
    if name.lower().startswith(HUB_PREFIX):
        name = name.split("@", 1)[0]
    return _BY_NAME.get(name.lower())


def trunk_help() -> str:
    """The ``--trunk`` option's help."""
    cnns = ", ".join(spec.name for spec in TRUNK_SPECS if spec.tune_from)
    hub = ", ".join(spec.name for spec in TRUNK_SPECS if spec.name.startswith(HUB_PREFIX))
    return (f"torchvision or timm model name ({cnns} have automatic stages and tune cut), or {HUB_PREFIX}ORG/NAME"
            f"[@REVISION] read from the local Hugging Face cache, never downloaded ({hub}, ...; docs/training.md).")


def tune_from_help() -> str:
    """What ``tune_from="auto"`` means, trunk by trunk, for the ``--tune-from`` option's help."""
    cuts: dict[str, list[str]] = {}
    for name, cut in AUTO_TUNE_FROM.items():
        cuts.setdefault(cut, []).append(name)
    return "; ".join(f"{', '.join(names)}: {cut}" for cut, names in cuts.items())


def stages_help() -> str:
    """What ``stages="auto"`` means, for the ``--stages`` option's help."""
    return (f"the end of every stage but the last for CNNs; for a transformer with a class token, {TOKENS} (its class "
            "token and the mean of its patch tokens) where its spec says so")


def derived_stages(network: Any, *, feature_info: bool) -> tuple[str, ...]:
    """``stages="auto"`` for a trunk without a spec, read off its network: a transformer with a class token pools its
    tokens (:data:`TOKENS`); a timm CNN pools the end of every stage but the last (``feature_info``, when asked);
    anything else pools nothing beside its output."""
    if has_class_token(network):
        return (TOKENS,)
    if feature_info:
        return tuple(info["module"] for info in getattr(network, "feature_info", [])[:-1])
    return ()


def has_class_token(network: Any) -> bool:
    """A timm transformer whose ``forward_features`` gives tokens, the first of them a class token."""
    return (getattr(network, "cls_token", None) is not None and getattr(network, "num_prefix_tokens", 0) >= 1
            and callable(getattr(network, "forward_features", None)))
