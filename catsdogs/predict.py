"""Predict the class of photos with a trained model folder, streamed in batches.

Two engines give the same probabilities (to 1e-4, checked when the model is exported):

* ``onnx``: ``model.onnx`` through onnxruntime. Neither TensorFlow nor Keras is imported, so a
  single prediction starts fast. Used by default when the file and onnxruntime are there.
* ``keras``: ``model.keras`` through Keras, the reference; the fallback.

Photos are decoded by :func:`data_prep.images.load_image`, the code ``prepare`` uses.

By default (``tta=True``, :data:`catsdogs.tta.TTA_DEFAULT`; test-time augmentation) each
photo's probabilities are the mean of those of six views of it
(:func:`catsdogs.tta.tta_views`): the photo, its central 90% and its central 80%, each resized
back to the model's size, and the mirror images of the three. Each view of a batch is one
engine call of the batch's size, so memory stays that of one view. The views and the mean are
made with numpy and OpenCV outside the model, so both engines give the same answer.
``tta=False`` predicts the photo alone.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs.model_folder import ModelInfo, read_model_info
from catsdogs.tta import TTA_DEFAULT, tta_views
from data_prep.discover import is_clutter
from data_prep.images import ImageError, load_image

ENGINES = ("auto", "onnx", "keras")
GLOB_CHARACTERS = frozenset("*?[")
DECODE_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class Prediction:
    """One photo's answer, or the reason it has none (``error``).

    ``scores`` holds the unrounded probabilities (one per class, in class order); it is for
    computing metrics and is left out of :meth:`to_dict`. When predicted with test-time
    augmentation, ``scores`` are the averaged ones and ``plain_scores`` those of the photo
    alone (otherwise ``plain_scores`` is None).
    """

    path: str
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    scores: np.ndarray | None = field(default=None, repr=False)
    plain_scores: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        row: dict[str, Any] = {
            "path": self.path,
            "label": self.label,
            "probability": self.probability,
            "probabilities": self.probabilities,
        }
        if self.top:
            row["top"] = [{"label": name, "probability": p} for name, p in self.top]
        return row


def decide(scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The predicted class index of each row of ``scores`` (n, num_classes).

    With two classes and a ``threshold``, the second class wins when its probability is above
    the threshold; otherwise (and by default) the most probable class wins, the first on a tie.
    ``predict`` and ``evaluate`` both decide here, so they always agree.
    """
    scores = np.asarray(scores)
    if threshold is not None:
        if scores.shape[1] != 2:
            raise ValueError("--threshold applies to two-class models only; use --top instead")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        return (scores[:, 1] > threshold).astype(int)
    return np.argmax(scores, axis=1)


def expand_paths(
    paths: Iterable[str | os.PathLike[str]],
) -> Iterator[tuple[Path, str | None]]:
    """``(path, None)`` for every photo named, or ``(path, reason)`` when there is none.

    Files are taken as given; folders give the files below them (sorted, recursively,
    clutter left out); a name that does not exist but holds ``*``, ``?`` or ``[`` is expanded
    as a glob pattern (``**`` crosses folders), so quoted patterns work as well as the shell's.
    Lazy: nothing is listed before it is needed.
    """
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = False
            for root, dirs, files in os.walk(path, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not is_clutter(d))
                for name in sorted(files):
                    if not is_clutter(name):
                        found = True
                        yield Path(root) / name, None
            if not found:
                yield path, "no photos in folder"
        elif path.exists() or path.is_symlink():
            yield path, None
        elif GLOB_CHARACTERS & set(str(item)):
            matches = sorted(glob.iglob(str(item), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and not is_clutter(Path(m).name)]
            if not files:
                yield path, "no file matches this pattern"
            for match in files:
                yield match, None
        else:
            yield path, "no such file"


def choose_engine(info: ModelInfo, engine: str = "auto") -> tuple[str, str | None]:
    """``("onnx" | "keras", note)``: what ``engine`` means for this model folder, and a note
    when ``auto`` could not use ``model.onnx`` although it is there."""
    from catsdogs.export import ONNX_NAME, onnx_mismatch, onnxruntime_available

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")
    has_onnx = (info.path / ONNX_NAME).is_file()
    if engine == "keras" or (engine == "auto" and not (has_onnx and onnxruntime_available())):
        return "keras", None
    if not has_onnx:
        raise FileNotFoundError(f"{info.path} holds no {ONNX_NAME}; use --engine keras")
    mismatch = onnx_mismatch(info.path, info.raw.get("onnx"))
    if engine == "auto":
        if mismatch is not None:
            return "keras", f"{ONNX_NAME} {mismatch}: predicting with model.keras"
        return "onnx", None
    if mismatch is not None:
        raise ValueError(f"{info.path / ONNX_NAME} {mismatch}; use --engine keras, or "
                         "train again")
    if not onnxruntime_available():
        raise ValueError("onnxruntime is not installed; use --engine keras")
    return "onnx", None


class Predictor:
    """A loaded model folder that turns photo paths into :class:`Prediction` objects."""

    def __init__(self, model_dir: str | os.PathLike[str], engine: str = "auto") -> None:
        self.info: ModelInfo = read_model_info(model_dir)
        self.engine, self.note = choose_engine(self.info, engine)
        if self.engine == "onnx":
            from catsdogs.export import ONNX_NAME, OnnxModel

            self.model: Any = OnnxModel(
                self.info.path / ONNX_NAME, self.info.image_size, len(self.classes),
                self.info.channels,
            )
        else:
            from catsdogs.model_folder import load_keras_model

            self.model = load_keras_model(self.info)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(n, num_classes) class probabilities for a uint8 batch (n, size, size, channels)."""
        batch = np.ascontiguousarray(images, dtype="float32")
        if self.engine == "onnx":
            raw = self.model.predict(batch)
        else:
            raw = self.model.predict_on_batch(batch)
        raw = np.asarray(raw, dtype="float64")
        if len(self.classes) == 2:
            positive = raw.reshape(-1)
            return np.stack([1.0 - positive, positive], axis=1)
        return raw.reshape(len(batch), len(self.classes))

    def scores(self, images: np.ndarray, tta: bool = TTA_DEFAULT
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(scores, plain)`` for a uint8 batch. Without ``tta``: the probabilities and None.
        With it: the mean of the probabilities of the images' test-time views
        (:func:`~catsdogs.tta.tta_views`, one engine call a view), and the probabilities of
        the images alone (the first view)."""
        if not tta:
            return self.probabilities(images), None
        views = np.stack([self.probabilities(view) for view in tta_views(images)])
        return views.mean(axis=0), views[0]

    def predict_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        batch_size: int = 32,
        threshold: float | None = None,
        top: int = 0,
        expand: bool = True,
        tta: bool = TTA_DEFAULT,
    ) -> Iterator[Prediction]:
        """Predict each photo, in input order, decoding ``batch_size`` photos at a time.

        A generator all the way down: at most two batches of pixels are held, whatever the
        number of photos, and the first answers come before the last photo is listed.
        With ``expand=False`` every path is one photo (no folders, no patterns): exactly one
        prediction per path. With ``tta`` (the default) the test-time views of each photo
        (:func:`~catsdogs.tta.tta_views`) are averaged.
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if threshold is not None:
            decide(np.zeros((1, len(self.classes))), threshold)  # checks it before any work
        items = expand_paths(paths) if expand else ((Path(p), None) for p in paths)
        chunks = iter(lambda: list(itertools.islice(items, batch_size)), [])
        # Photos are decoded by a few threads (OpenCV releases the GIL), one batch ahead of
        # the model: while batch N is predicted, batch N + 1 is read. Two batches at most.
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            ahead: list[Future] = []
            for chunk in chunks:
                decoding = [pool.submit(self._decode, path, problem) for path, problem in chunk]
                if ahead:
                    yield from self._flush([f.result() for f in ahead], threshold, top, tta)
                ahead = decoding
            if ahead:
                yield from self._flush([f.result() for f in ahead], threshold, top, tta)

    def _decode(self, path: Path, problem: str | None) -> tuple[Prediction, np.ndarray | None]:
        if problem is None:
            try:
                pixels = load_image(path, self.info.image_size, self.info.resize_policy,
                                    self.info.channels)
                return Prediction(str(path)), pixels
            except (ImageError, ValueError) as error:
                problem = getattr(error, "reason", str(error))
        return Prediction(str(path), error=problem), None

    def predict_images(
        self, images: np.ndarray, names: list[str], threshold: float | None = None,
        top: int = 0, tta: bool = TTA_DEFAULT,
    ) -> list[Prediction]:
        """Predictions for already decoded images (a batch of a prepared dataset)."""
        return list(self._flush(list(zip(
            (Prediction(name) for name in names), images, strict=True)), threshold, top, tta))

    def _flush(
        self,
        pending: list[tuple[Prediction, np.ndarray | None]],
        threshold: float | None,
        top: int,
        tta: bool,
    ) -> Iterator[Prediction]:
        good = [pixels for _, pixels in pending if pixels is not None]
        if good:
            scores, plain = self.scores(np.stack(good), tta)
            chosen = iter(decide(scores, threshold))
            rows = iter(scores)
            plain_rows = iter(plain if plain is not None else [None] * len(good))
        for prediction, pixels in pending:
            if pixels is not None:
                row = next(rows)
                best = int(next(chosen))
                prediction.scores = row
                prediction.plain_scores = next(plain_rows)
                prediction.label = self.classes[best]
                prediction.probability = round(float(row[best]), 6)
                prediction.probabilities = {
                    name: round(float(p), 6) for name, p in zip(self.classes, row, strict=True)
                }
                if top:
                    order = np.argsort(-row, kind="stable")[:top]
                    prediction.top = [(self.classes[i], round(float(row[i]), 6)) for i in order]
            yield prediction
