"""The one way a photo becomes model input: decode with OpenCV, RGB, resize to N×N.

``prepare``, ``predict`` and ``evaluate`` all call :func:`load_image`, so a photo is turned
into exactly the same pixels whether it is being trained on or asked about.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

RESIZE_POLICIES = ("stretch", "crop", "pad")
"""How a non-square photo becomes square.

* ``stretch`` (default): resize width and height independently to N×N, as Keras'
  ``image_dataset_from_directory`` does; nothing is lost, shapes are distorted.
* ``crop``: scale the short side to N and cut the centre square; shapes kept, edges lost.
* ``pad``: scale the long side to N and pad the rest with black; shapes kept, pixels wasted.
"""

MIN_SIDE = 8
"""Photos smaller than this on either side carry no usable detail and are skipped."""


class ImageError(ValueError):
    """A file that cannot be used as a photo; ``reason`` is a short, stable phrase."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes, whatever its extension says."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ImageError("unreadable file", error.strerror or str(error)) from None


def decode(data: bytes) -> np.ndarray:
    """Decode image bytes to an 8-bit RGB array (H, W, 3), or raise :class:`ImageError`."""
    if not data:
        raise ImageError("empty file")
    kind = sniff_format(data)
    if kind is None:
        raise ImageError("not an image")
    if kind == "jpeg" and data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        raise ImageError("truncated JPEG")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError("undecodable image", kind)
    height, width = image.shape[:2]
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ImageError("too small", f"{width}x{height}, need {MIN_SIDE}x{MIN_SIDE}")
    return image


def resize(image: np.ndarray, size: int, policy: str = "stretch") -> np.ndarray:
    """Resize an RGB array to ``size``×``size`` following ``policy`` (see RESIZE_POLICIES)."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; choose from {RESIZE_POLICIES}")
    height, width = image.shape[:2]
    if policy == "stretch":
        target = (size, size)
    else:
        scale = size / (min if policy == "crop" else max)(height, width)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
    shrinking = target[0] <= width and target[1] <= height
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    resized = cv2.resize(image, target, interpolation=interpolation)
    if policy == "crop":
        top = (resized.shape[0] - size) // 2
        left = (resized.shape[1] - size) // 2
        resized = resized[top : top + size, left : left + size]
    elif policy == "pad":
        canvas = np.zeros((size, size, 3), dtype=np.uint8)
        top = (size - resized.shape[0]) // 2
        left = (size - resized.shape[1]) // 2
        canvas[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
        resized = canvas
    return np.ascontiguousarray(resized)


def load_photo(
    path: str | os.PathLike[str], size: int, policy: str = "stretch"
) -> tuple[np.ndarray, int, int]:
    """Like :func:`load_image`, also returning the photo's original width and height."""
    if size < MIN_SIDE:
        raise ValueError(f"image size must be at least {MIN_SIDE}, got {size}")
    image = decode(read_bytes(path))
    height, width = image.shape[:2]
    return resize(image, size, policy), width, height


def load_image(
    path: str | os.PathLike[str], size: int, policy: str = "stretch"
) -> np.ndarray:
    """Read ``path`` and return a (size, size, 3) uint8 RGB array.

    Raises :class:`ImageError` (a ``ValueError``) with a short reason for any file that is not
    a usable photo; it never returns a partial or garbage image.
    """
    return load_photo(path, size, policy)[0]
