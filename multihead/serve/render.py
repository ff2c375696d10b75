"""Pictures for the web: Grad-CAM maps laid over the image, as PNG data URLs a page can show directly."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

__all__ = ["overlay", "png_data_url"]


def overlay(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """``HxWx3`` uint8 image and ``HxW`` map in [0, 1] -> the map in colour over the image, ``HxWx3`` uint8.

    The same look as :func:`multihead.evaluation.plots.plot_explanation` (``jet`` at ``alpha`` 0.45), without a figure.

    Example:
        >>> overlay(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.float32)).shape
        (4, 4, 3)
    """
    from matplotlib import colormaps

    if image.shape[:2] != heat.shape:
        raise ValueError(f"the map ({heat.shape}) must be the image's size ({image.shape[:2]})")
    colours = colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def png_data_url(pixels: np.ndarray) -> str:
    """``HxWx3`` uint8 -> ``data:image/png;base64,...``: an ``<img src>`` that needs no second request."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
