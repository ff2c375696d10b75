"""multihead: one frozen trunk, a router over organs and one subtype head per organ, in one forward pass.

Example:
    >>> import multihead
    >>> model = multihead.create_model("resnet18", trunk_weights=None)
    >>> model.taxonomy.organ_names[:3]
    ('all', 'brain', 'breast')
"""

from .checkpoint import CheckpointError, load, read_header
from .images import ImageError
from .inference import FileResult, InferenceConfig, Prediction, classify, classify_files
from .model import HeadOutput, MultiHeadModel, create_model
from .preprocessing import Preprocessing
from .taxonomy import MULTI_CANCER, Organ, Subtype, Taxonomy
from .trunk import Trunk, WeightsUnavailableError, create_trunk

__version__ = "0.1.0"

__all__ = [
    "MULTI_CANCER",
    "CheckpointError",
    "FileResult",
    "HeadOutput",
    "ImageError",
    "InferenceConfig",
    "MultiHeadModel",
    "Organ",
    "Prediction",
    "Preprocessing",
    "Subtype",
    "Taxonomy",
    "Trunk",
    "WeightsUnavailableError",
    "classify",
    "classify_files",
    "create_model",
    "create_trunk",
    "load",
    "read_header",
]
