"""Trunk features of many files: extraction (cached per file and view, or augmented), and labelled sets.

The layer between running the model (:mod:`multihead.inference`) and learning or measuring on a dataset
(:mod:`multihead.training`, :mod:`multihead.evaluation`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .cache import FeatureCache, default_cache_dir, file_digest
    from .dataset import FeatureSet, dataset_features
    from .extract import augmented_features, extract_features
    from .maps import MapCache, MapSet, labelled_maps

_EXPORTS = {
    **dict.fromkeys(["FeatureCache", "default_cache_dir", "file_digest"], ".cache"),
    **dict.fromkeys(["FeatureSet", "dataset_features"], ".dataset"),
    **dict.fromkeys(["augmented_features", "extract_features"], ".extract"),
    **dict.fromkeys(["MapCache", "MapSet", "labelled_maps"], ".maps"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
