"""Batches streamed from a prepared dataset's memory-mapped ``images.npy``."""

from __future__ import annotations

import math

import cv2
import numpy as np

from catsdogs.backend import keras as import_keras
from data_prep import split

keras = import_keras()


def stratified_split(
    labels: np.ndarray, validation_split: float, seed: int, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): :func:`data_prep.split.stratified_split`, the
    rule ``prepare --test-fraction`` also follows. ``class_names[label]`` names a class in
    the error for one too small to split."""
    try:
        return split.stratified_split(labels, validation_split, seed)
    except split.ClassTooSmall as small:
        raise ValueError(too_few_to_split(class_names[small.label], small.count,
                                          validation_split)) from None


def too_few_to_split(name: str, count: int, validation_split: float) -> str:
    """The error for a class that cannot both train and validate."""
    if count == 1:
        return (f"{name} has 1 training photo: a class needs at least 2, one to train on and "
                "one to validate on; add photos")
    return (f"{name} has {count} training photos: too few to split {validation_split:g} of "
            "them off for validation and keep one to train on (--validation-split); add "
            "photos or lower the split")


class ImageBatches(keras.utils.PyDataset):
    """Batches of ``images[indices]`` (uint8, as stored) with their labels, read from the
    memory map.

    Only one batch is materialized at a time (per worker); the memory map is never copied.
    The pixels stay uint8 (a quarter of the bytes of float32 to move): the model's input
    layer converts them to float32 inside the compiled step.
    With ``size`` (a side in pixels other than the stored one) the photos come out at that
    size: the random crops are resized to it, or without ``augment`` the whole photos
    (:func:`resize_batch`; ``--train-scale``).
    With ``mixup`` above 0 the photos (after augmentation) and their labels are then
    :func:`mix_batch`-ed.
    With ``shuffle`` the order of each epoch is drawn from a generator seeded by
    ``(seed, epoch)``, so a run is reproducible, and a resumed run (``start_epoch``) sees
    the same order an uninterrupted one would have. With ``augment`` each batch is
    :func:`augment_batch`-ed with a generator seeded by ``(seed, epoch, batch index)``, so a
    resumed run replays the same augmentation too.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        num_classes: int = 2,
        start_epoch: int = 0,
        augment: bool = False,
        mixup: float = 0.0,
        size: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.images = images
        labels = np.asarray(labels)
        # Two classes: one float per photo (sigmoid output); more: one-hot rows (softmax
        # output), which categorical cross-entropy can smooth.
        self.labels = (
            labels.astype("float32").reshape(-1, 1)
            if num_classes == 2
            else np.eye(num_classes, dtype="float32")[labels.astype("int64")]
        )
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        if mixup < 0:
            raise ValueError(f"mixup must be at least 0, got {mixup}")
        self.mixup = mixup
        stored = int(images.shape[1])
        if size is not None and size < 1:
            raise ValueError(f"size must be at least 1 pixel, got {size}")
        self.size = stored if size is None else int(size)
        self.epoch = start_epoch
        self.order = self._order_for(self.epoch)

    def _order_for(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return np.random.default_rng([self.seed, epoch]).permutation(self.indices)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        x = np.asarray(self.images[chosen])  # sorted reads are sequential on disk
        y = self.labels[chosen]
        if not self.augment and self.size != x.shape[1]:
            x = resize_batch(x, self.size)
        if not (self.augment or self.mixup):
            return x, y
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.augment:
            x = augment_batch(x, rng, self.size)
        if self.mixup:
            x, y = mix_batch(x, y, self.mixup, rng)
        return x, y

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order_for(self.epoch)


# Random resized crop: the share of the photo's area kept, and the crop's aspect ratio.
CROP_AREA = (0.35, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
# Brightness, contrast and saturation are each scaled by a factor drawn in this range, and
# this share of the colour photos turns gray after it (issue 12: 0.8–1.2 and none until
# 2026-12-07; the wider jitter and the gray photos scored +1 point on other sources).
JITTER = (0.6, 1.4)
GRAY_SHARE = 0.1


def crop_box(side: int, rng: np.random.Generator, tries: int = 10
             ) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop of a ``side``-pixel square photo: a
    share of the area drawn in ``CROP_AREA``, an aspect ratio log-uniform in ``CROP_ASPECT``;
    the whole photo when ``tries`` draws do not fit."""
    low, high = np.log(CROP_ASPECT[0]), np.log(CROP_ASPECT[1])
    for _ in range(tries):
        area = rng.uniform(*CROP_AREA) * side * side
        aspect = np.exp(rng.uniform(low, high))
        width = int(round(np.sqrt(area * aspect)))
        height = int(round(np.sqrt(area / aspect)))
        if 0 < width <= side and 0 < height <= side:
            top = int(rng.integers(0, side - height + 1))
            left = int(rng.integers(0, side - width + 1))
            return top, left, height, width
    return 0, 0, side, side


def augment_batch(images: np.ndarray, rng: np.random.Generator, size: int | None = None,
                  jitter_range: tuple[float, float] = JITTER, gray_share: float = GRAY_SHARE
                  ) -> np.ndarray:
    """A new uint8 batch (N, size, size, C) from a batch (N, S, S, C): each photo a random
    resized crop (resized to ``size``×``size``; default: S×S), mirrored with probability 1/2,
    then its saturation (colour photos only), contrast and brightness scaled by factors drawn
    in ``jitter_range`` (``JITTER``); then a colour photo turns gray (three equal channels)
    with probability ``gray_share`` (``GRAY_SHARE``). Every step is one OpenCV call on uint8
    pixels (about 4× faster than the same arithmetic in float32 numpy), so the same on every
    Keras backend; OpenCV's thread count (``cv2.setNumThreads``) applies."""
    count, side, channels = images.shape[0], images.shape[1], images.shape[-1]
    size = side if size is None else size
    out = np.empty((count, size, size, channels), dtype=images.dtype)
    factors = rng.uniform(*jitter_range, size=(count, 3))
    for number in range(count):
        top, left, height, width = crop_box(side, rng)
        crop = images[number, top:top + height, left:left + width]
        if (height, width) != (size, size):
            crop = cv2.resize(crop, (size, size), interpolation=resize_method(height, size))
        if rng.random() < 0.5:
            crop = cv2.flip(crop, 1)
        photo = jitter(crop.reshape(size, size, channels), *factors[number])
        if channels == 3 and rng.random() < gray_share:
            photo = cv2.cvtColor(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out[number] = photo
    return out


def resize_method(side: int, size: int) -> int:
    """OpenCV's interpolation for resizing ``side`` pixels to ``size``: area averaging when
    shrinking by more than a few percent (no aliasing), bilinear otherwise."""
    return cv2.INTER_AREA if size < 0.95 * side else cv2.INTER_LINEAR


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """A new uint8 batch of the whole photos resized to ``size``×``size``."""
    count, side, channels = images.shape[0], images.shape[1], images.shape[-1]
    out = np.empty((count, size, size, channels), dtype=images.dtype)
    for number in range(count):
        out[number] = cv2.resize(images[number], (size, size),
                                 interpolation=resize_method(side, size)
                                 ).reshape(size, size, channels)
    return out


def jitter(photo: np.ndarray, brightness: float, contrast: float, saturation: float
           ) -> np.ndarray:
    """``photo`` (uint8 H×W×C) blended with its gray version by ``saturation`` (colour only),
    its contrast scaled around its mean gray level and its brightness scaled, rounded and
    clipped to 0..255 by OpenCV."""
    shape = photo.shape
    if shape[-1] == 3:
        gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
        mean = float(gray.mean())
        photo = cv2.addWeighted(photo, saturation, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB),
                                1 - saturation, 0)
    else:
        mean = float(photo.mean())
    # brightness × (mean + contrast × (x − mean)), as one multiply-add
    photo = cv2.addWeighted(photo, brightness * contrast, photo, 0,
                            brightness * (1 - contrast) * mean)
    return photo.reshape(shape)


def mix_batch(images: np.ndarray, labels: np.ndarray, alpha: float, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Mixup: each photo blended with another of the batch (a random pairing), and its label
    with the other's, by a share drawn from Beta(``alpha``, ``alpha``) for each photo. The
    photos stay uint8 (rounded); the labels become soft (float32)."""
    count = images.shape[0]
    share = rng.beta(alpha, alpha, size=count).astype(np.float32)
    # The larger share goes to the photo itself, so each keeps (mostly) its own label.
    share = np.maximum(share, 1 - share)
    partner = rng.permutation(count)
    weight = share.reshape((count,) + (1,) * (images.ndim - 1))
    mixed = weight * images + (1 - weight) * images[partner]
    label_weight = share.reshape((count,) + (1,) * (labels.ndim - 1))
    soft = label_weight * labels + (1 - label_weight) * labels[partner]
    return np.rint(mixed).astype(np.uint8), soft.astype(np.float32)
