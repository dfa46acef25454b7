"""Find, check, decode and resize photos; write and read prepared datasets.

This package never imports Keras or TensorFlow: it is what ``catsdogs prepare`` runs, and
what prediction uses to turn a photo into exactly the pixels the model was trained on.
"""

from data_prep.discover import Discovery, discover
from data_prep.images import RESIZE_POLICIES, ImageError, load_image
from data_prep.prepare import PrepareResult, prepare
from data_prep.store import PreparedDataset, read_dataset

__all__ = [
    "RESIZE_POLICIES",
    "Discovery",
    "ImageError",
    "PrepareResult",
    "PreparedDataset",
    "discover",
    "load_image",
    "prepare",
    "read_dataset",
]
