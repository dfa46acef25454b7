"""Test-time augmentation: the views of a photo whose predictions are averaged, and whether
``predict``, ``evaluate`` and ``serve`` average them unless told otherwise.

The views are made here with numpy and OpenCV on the decoded uint8 pixels, outside the model,
so the ONNX and Keras engines give the same answer. The command line reads
:data:`TTA_DEFAULT` for its ``--tta/--no-tta`` options, so this module imports nothing heavy
at the top: numpy and OpenCV load inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# On unless --no-tta (serve: tta=0). The six views gained 1.3 to 3.1 points in every mean
# measured, held out and on another source, for six times the model work; benchmarks/
# RESULTS.md, "Test-time augmentation with six views" and "Six views by default" (issue 12).
TTA_DEFAULT = True
# The central crops (share of each side) whose views are averaged, each with its mirror. 0.8 is
# the default --train-scale: the animal then looks as large as in the training crops.
TTA_CROPS = (1.0, 0.9, 0.8)
TTA_NAME = "6 views: central 100/90/80% and mirrors"  # evaluate's name for them


def mirrored(images: np.ndarray) -> np.ndarray:
    """The horizontal mirror of each image of a batch (n, height, width, channels)."""
    import numpy as np

    return np.asarray(images)[:, :, ::-1, :]


def central_crop(images: np.ndarray, share: float) -> np.ndarray:
    """The central ``share`` of each side of each image of a batch, resized back to the
    image's size (bilinear). The margins are equal on both sides, so the crop of a mirror
    image is the mirror of the crop."""
    import cv2  # here, not at the top: data_prep.images sets OpenCV's pixel limit first
    import numpy as np

    images = np.asarray(images)
    if share >= 1.0:
        return images
    height, width = images.shape[1:3]
    top, left = round(height * (1 - share) / 2), round(width * (1 - share) / 2)
    return np.stack([
        cv2.resize(image[top:height - top, left:width - left], (width, height),
                   interpolation=cv2.INTER_LINEAR).reshape(image.shape)
        for image in images])


def tta_views(images: np.ndarray) -> list[np.ndarray]:
    """The views test-time augmentation averages, each a batch like ``images``: each crop of
    ``TTA_CROPS`` (the photo itself first), then the mirror of each."""
    crops = [central_crop(images, share) for share in TTA_CROPS]
    return [*crops, *(mirrored(crop) for crop in crops)]
