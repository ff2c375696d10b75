"""Grad-CAM on the shared trunk: where in the image the router saw its organ, and the head its subtype.

Both maps come from the same activations (the trunk's last convolutional stage), so they can be
compared directly: one backward pass per map from the router's logit of the chosen organ and from the
chosen head's logit of its subtype. The trunk is frozen (no parameter needs a gradient), so the hooked
activation is made a leaf that does; nothing in the model changes. The hook only acts on the forward pass of
the thread that registered it, so one model can be explained and classified from several threads at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import ImageInput, describe_input, is_path
from ..model.heads import MultiHeadModel
from .models import ModelInput, shared_model
from .predict import Prediction, predict_batch
from .shared_weights import weights_in_use

__all__ = ["Explanation", "explain", "find_target_layer", "grad_cam"]


@dataclass(frozen=True)
class Explanation:
    """An image as the model saw it, its prediction, and one Grad-CAM map per decision (HxW in [0, 1])."""

    image: np.ndarray
    """The preprocessed input, ``HxWx3`` uint8 (resized as the model resizes)."""
    prediction: Prediction
    organ_map: np.ndarray
    """Evidence for the router's organ."""
    subtype_map: np.ndarray
    """Evidence for the chosen head's subtype."""
    layer: str
    """The trunk stage the maps come from."""


def find_target_layer(model: MultiHeadModel) -> tuple[str, nn.Module]:
    """The last top-level child of the trunk's network whose output is a 4D map with more than one pixel.

    Found by running a small dummy image through, so it works for any architecture: ``layer4`` for a
    ResNet, ``features`` for MobileNetV2.
    """
    network = model.trunk.network
    shapes: dict[str, tuple[int, ...]] = {}
    caller = threading.get_ident()  # other threads may run this network meanwhile: only our pass is recorded

    def record(name: str, output: Any) -> None:
        if threading.get_ident() == caller:
            shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else ()

    hooks = [child.register_forward_hook(lambda _m, _i, out, name=name: record(name, out))
             for name, child in network.named_children()]
    size = model.preprocessing.image_size
    try:
        with weights_in_use(), torch.no_grad():
            network(torch.zeros(1, 3, size, size, device=model.device))
    finally:
        for hook in hooks:
            hook.remove()
    spatial = [name for name, shape in shapes.items() if len(shape) == 4 and shape[2] * shape[3] > 1]
    if not spatial:
        raise ValueError(f"trunk {model.trunk.name!r} has no top-level stage with a spatial output; "
                         "Grad-CAM needs one")
    return spatial[-1], network.get_submodule(spatial[-1])


def _cam(activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).detach().cpu().numpy().astype(np.float32)


def grad_cam(model: MultiHeadModel, batch: torch.Tensor, organ: int,
             subtype: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Grad-CAM maps for the router's ``organ`` logit and the ``subtype`` logit (global index) of one image.

    Args:
        batch: one uint8 image ``[1, 3, S, S]`` as the model's preprocessing loads it.

    Returns:
        ``(organ_map, subtype_map, layer name)``; maps are ``SxS`` float32 in [0, 1].
    """
    if batch.ndim != 4 or batch.shape[0] != 1 or batch.dtype != torch.uint8:
        raise ValueError(f"expected one uint8 image of shape [1, 3, S, S], got {batch.dtype} {tuple(batch.shape)}")
    name, layer = find_target_layer(model)
    captured: list[torch.Tensor] = []
    caller = threading.get_ident()

    def make_leaf(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        # The hook sits on a layer every thread's forward pass goes through (a server classifying while it
        # explains, two explain calls at once): only this call's own pass is made a leaf and captured.
        if threading.get_ident() != caller or captured:
            return None
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    hook = layer.register_forward_hook(make_leaf)
    try:
        with weights_in_use(), torch.enable_grad():
            images = model.preprocessing.normalize(batch.to(model.device))
            output = model.forward_heads(model.forward_features(images).float())
            activation = captured[0]
            organ_grad, = torch.autograd.grad(output.router_logits[0, organ], activation, retain_graph=True)
            subtype_grad, = torch.autograd.grad(output.subtype_logits[0, subtype], activation)
    finally:
        hook.remove()
    size = (batch.shape[2], batch.shape[3])
    return _cam(activation, organ_grad, size), _cam(activation, subtype_grad, size), name


def explain(img: ImageInput, model: ModelInput = None) -> Explanation:
    """Classify one image and explain both decisions with Grad-CAM on the shared trunk.

    Example:
        >>> explanation = explain("slide.jpg", model="model.safetensors")  # doctest: +SKIP
        >>> explanation.organ_map.shape, float(explanation.organ_map.max())
        ((224, 224), 1.0)
    """
    resolved = shared_model(model)
    batch = resolved.preprocessing.load(img).unsqueeze(0)
    prediction = predict_batch(resolved, batch, sources=[describe_input(img) if is_path(img) else None])[0]
    organ = resolved.taxonomy.organ_index(prediction.organ)
    subtype = resolved.taxonomy.subtype_index(prediction.subtype)
    organ_map, subtype_map, layer = grad_cam(resolved, batch, organ, subtype)
    image = batch[0].permute(1, 2, 0).cpu().numpy()
    return Explanation(image, prediction, organ_map, subtype_map, layer)
