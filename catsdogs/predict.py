"""Predict the class of photos with a trained model folder."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catsdogs.bundle import ModelInfo, load_keras_model, read_model_info
from data_prep.discover import is_clutter
from data_prep.images import ImageError, load_image


@dataclass
class Prediction:
    """One photo's answer, or the reason it has none (``error``)."""

    path: str
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {
            "path": self.path,
            "label": self.label,
            "probability": self.probability,
            "probabilities": self.probabilities,
        }


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Each file as given; each folder as the files below it (sorted, clutter left out).

    A path that does not exist is yielded as is, so that it gets its own error line.
    """
    for item in paths:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not is_clutter(d))
                for name in sorted(files):
                    if not is_clutter(name):
                        yield Path(root) / name
        else:
            yield path


class Predictor:
    """A loaded model folder that turns photo paths into :class:`Prediction` objects."""

    def __init__(self, model_dir: str | os.PathLike[str]) -> None:
        self.info: ModelInfo = read_model_info(model_dir)
        self.model = load_keras_model(self.info)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(n, num_classes) class probabilities for a uint8 batch (n, size, size, 3)."""
        raw = np.asarray(self.model.predict_on_batch(images.astype("float32")), dtype="float64")
        if len(self.classes) == 2:
            positive = raw.reshape(-1)
            return np.stack([1.0 - positive, positive], axis=1)
        return raw

    def predict_paths(
        self, paths: Iterable[str | os.PathLike[str]], batch_size: int = 32
    ) -> Iterator[Prediction]:
        """Predict each photo, in input order, decoding ``batch_size`` photos at a time."""
        pending: list[tuple[Prediction, np.ndarray | None]] = []
        for path in expand_paths(paths):
            try:
                pixels = load_image(path, self.info.image_size, self.info.resize_policy)
                pending.append((Prediction(str(path)), pixels))
            except (ImageError, ValueError) as error:
                reason = getattr(error, "reason", str(error))
                if not Path(path).exists():
                    reason = "no such file"
                pending.append((Prediction(str(path), error=reason), None))
            if sum(pixels is not None for _, pixels in pending) >= batch_size:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _flush(self, pending: list[tuple[Prediction, np.ndarray | None]]) -> Iterator[Prediction]:
        good = [pixels for _, pixels in pending if pixels is not None]
        probabilities = iter(self.probabilities(np.stack(good)) if good else [])
        for prediction, pixels in pending:
            if pixels is not None:
                row = next(probabilities)
                best = int(np.argmax(row))
                prediction.label = self.classes[best]
                prediction.probability = round(float(row[best]), 6)
                prediction.probabilities = {
                    name: round(float(p), 6) for name, p in zip(self.classes, row, strict=True)
                }
            yield prediction
