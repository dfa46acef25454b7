"""Batches streamed from a prepared dataset's memory-mapped ``images.npy``."""

from __future__ import annotations

import math

import numpy as np

from catsdogs.backend import keras as import_keras

keras = import_keras()


def stratified_split(
    labels: np.ndarray, validation_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): the same share of every class, reproducibly."""
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation split must be between 0 and 1, got {validation_split}")
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(len(members) * validation_split))
        if count == 0 or count == len(members):
            raise ValueError(
                f"class {label} has {len(members)} photos: too few to split "
                f"{validation_split:.0%} of them off for validation"
            )
        val_parts.append(members[:count])
        train_parts.append(members[count:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


class ImageBatches(keras.utils.PyDataset):
    """Float32 batches of ``images[indices]`` with their labels, read from the memory map.

    Only one batch is materialized at a time; with ``shuffle`` the order is drawn anew each
    epoch from a seeded generator, so a run is reproducible.
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
        binary: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.images = images
        self.labels = labels.astype("float32" if binary else "int32")
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.binary = binary
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(self.indices) if shuffle else self.indices

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        x = self.images[chosen].astype("float32")  # sorted reads are sequential on disk
        y = self.labels[chosen]
        return x, (y.reshape(-1, 1) if self.binary else y)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(self.indices)
