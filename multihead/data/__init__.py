"""Images in, uint8 tensors out: reading files, preprocessing, views and augmentation, folders, splits.

The lowest layer of multihead after the taxonomy: it knows nothing of models. Names are imported from
their modules on first use, so ``import multihead.data`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .augment import AugmentedViews, paper_augmentation
    from .device_decode import decode_batch, resize_batch
    from .folders import expand_inputs, is_image_file, visible_files
    from .images import IMAGE_EXTENSIONS, ImageError, ImageInput, decode_image, read_image
    from .loading import LoadedBatch, load_batches
    from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
    from .scan import DatasetScan, ImageRecord, scan_dataset
    from .splits import SPLITS, Split, make_split
    from .tensors import to_rgb_tensor
    from .views import VIEWS, apply_view

_EXPORTS = {
    **dict.fromkeys(["AugmentedViews", "paper_augmentation"], ".augment"),
    **dict.fromkeys(["decode_batch", "resize_batch"], ".device_decode"),
    **dict.fromkeys(["expand_inputs", "is_image_file", "visible_files"], ".folders"),
    **dict.fromkeys(["IMAGE_EXTENSIONS", "ImageError", "ImageInput", "decode_image", "read_image"], ".images"),
    **dict.fromkeys(["LoadedBatch", "load_batches"], ".loading"),
    **dict.fromkeys(["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing"], ".preprocessing"),
    **dict.fromkeys(["DatasetScan", "ImageRecord", "scan_dataset"], ".scan"),
    **dict.fromkeys(["SPLITS", "Split", "make_split"], ".splits"),
    "to_rgb_tensor": ".tensors",
    **dict.fromkeys(["VIEWS", "apply_view"], ".views"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
