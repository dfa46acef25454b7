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
    """Batches of ``images[indices]`` (uint8, as stored) with their labels, read from the
    memory map.

    Only one batch is materialized at a time (per worker); the memory map is never copied.
    The pixels stay uint8 (a quarter of the bytes of float32 to move): the model's input
    layer converts them to float32 inside the compiled step.
    With ``shuffle`` the order of each epoch is drawn from a generator seeded by
    ``(seed, epoch)``, so a run is reproducible, and a resumed run (``start_epoch``) sees
    the same order an uninterrupted one would have.
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
        return x, self.labels[chosen]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order_for(self.epoch)
