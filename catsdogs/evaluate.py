"""``evaluate(data, model_dir, out)``: how good the model really is, on labelled photos.

DATA is either a labelled folder (any layout ``prepare`` accepts, found by the same
:func:`data_prep.discover.discover`) or a prepared dataset (its ``test`` split when it has one).
Photos are predicted by the same :class:`~catsdogs.predict.Predictor` and the same
:func:`~catsdogs.predict.decide` as ``catsdogs predict``, so the accuracy is exactly what
``predict`` gives on the same photos. The metrics are computed here with numpy.

The figures are those of ``predict``'s answer with the same views: by default (``tta=True``,
:data:`catsdogs.tta.TTA_DEFAULT`) the mean over each photo's test-time views
(:func:`~catsdogs.tta.tta_views`: the photo, its central crops and their mirrors). Then
the photo alone is predicted in the same pass (it is the first view), and ``metrics.json``
also holds its figures under ``photo_alone``; with ``tta=False`` the figures are the photo
alone's and ``photo_alone`` is null.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs import __version__
from catsdogs.predict import Prediction, Predictor, decide
from catsdogs.tta import TTA_DEFAULT, TTA_NAME
from data_prep import safeio
from data_prep.discover import printable

# /2: the figures are those of predict's answer (test-time views by default), the photo
# alone's under "photo_alone". /1 had the photo alone's at the top and the views' under "tta".
FORMAT = "catsdogs-evaluation/2"
FORMATS_REPLACEABLE = ("catsdogs-evaluation/1", FORMAT)  # what --force may replace
PHOTO_ALONE = "the photo alone"  # metrics.json's "views" without test-time augmentation
MISTAKES_SHOWN = 16
LOG_LOSS_EPSILON = 1e-15


# --------------------------------------------------------------------------- metrics


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=int), np.asarray(predicted, dtype=int)), 1)
    return matrix


def precision_recall_f1(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1; NaN where a ratio has nothing to divide by."""
    hits = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, np.nan)
        recall = np.where(actual > 0, hits / actual, np.nan)
        f1 = np.where(
            (precision + recall) > 0, 2 * precision * recall / (precision + recall), 0.0
        )
    f1 = np.where(np.isnan(precision) | np.isnan(recall), np.nan, f1)
    return precision, recall, f1


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative
    (ties count one half), from the ranks of the scores (Mann-Whitney U). NaN when only one
    class is present."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=float)
    sorted_scores = scores[order]
    # average ranks (1-based) over runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc(true: np.ndarray, scores: np.ndarray) -> float:
    """Two classes: the AUC of the second class's probability. More: the mean one-vs-rest
    AUC over the classes present (NaN when fewer than two classes are present)."""
    true = np.asarray(true, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if scores.shape[1] == 2:
        return binary_auc(true == 1, scores[:, 1])
    values = [binary_auc(true == k, scores[:, k]) for k in np.unique(true)]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def log_loss(true: np.ndarray, scores: np.ndarray) -> float:
    """Mean negative log probability given to the true class (clipped at 1e-15)."""
    picked = np.asarray(scores, dtype=float)[np.arange(len(true)), np.asarray(true, dtype=int)]
    return float(-np.mean(np.log(np.clip(picked, LOG_LOSS_EPSILON, 1.0))))


def balanced_accuracy(recall: np.ndarray) -> float | None:
    """The mean recall over the classes present in the data (as scikit-learn's
    ``balanced_accuracy_score``): the accuracy each class would see if all were as common.
    None when no class is present."""
    present = recall[~np.isnan(recall)]
    return float(present.mean()) if len(present) else None


def finite_or_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def compute_metrics(
    true: np.ndarray, predicted: np.ndarray, scores: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """The numbers of ``metrics.json`` (NaN, where undefined, becomes ``None``)."""
    matrix = confusion_matrix(true, predicted, len(classes))
    precision, recall, f1 = precision_recall_f1(matrix)
    n = int(len(true))

    def per_class(values: np.ndarray) -> dict[str, float | None]:
        return {name: finite_or_none(v) for name, v in zip(classes, values, strict=True)}

    return {
        "n": n,
        "accuracy": float(np.trace(matrix) / n) if n else None,
        "balanced_accuracy": balanced_accuracy(recall),
        "precision": per_class(precision),
        "recall": per_class(recall),
        "f1": per_class(f1),
        "roc_auc": finite_or_none(roc_auc(true, scores)) if n else None,
        "log_loss": log_loss(true, scores) if n else None,
        "confusion_matrix": matrix.tolist(),
        "classes": list(classes),
    }


# --------------------------------------------------------------------------- data


@dataclass
class Source:
    """The labelled photos to evaluate: paths and true labels (model class indices)."""

    kind: str  # "folder" or "dataset"
    paths: list[str]
    labels: list[int]
    warnings: list[str] = field(default_factory=list)
    images: np.ndarray | None = None  # a prepared dataset's pixels, when they fit the model
    rows: np.ndarray | None = None  # and the rows of it to use


def match_classes(found: list[str], classes: list[str]) -> dict[str, int]:
    """Map the data's class names onto the model's: exactly, ignoring case, or ignoring a
    plural ``s`` (``cat`` ↔ ``cats``). ValueError for a name that matches nothing."""

    def key(name: str) -> str:
        lowered = name.lower()
        return lowered[:-1] if lowered.endswith("s") and len(lowered) > 1 else lowered

    mapping: dict[str, int] = {}
    for name in found:
        if name in classes:
            mapping[name] = classes.index(name)
            continue
        candidates = [i for i, c in enumerate(classes) if c.lower() == name.lower()]
        candidates = candidates or [i for i, c in enumerate(classes) if key(c) == key(name)]
        if len(candidates) != 1:
            raise ValueError(
                f"class {name!r} of the data is not one the model knows ({', '.join(classes)})"
            )
        mapping[name] = candidates[0]
    return mapping


def training_paths(model_info: dict[str, Any]) -> set[str] | None:
    """Resolved paths of the photos the model could have trained on (its dataset's rows that
    are not in a test split, by :meth:`~data_prep.store.PreparedDataset.training_rows`), or
    None when that dataset is gone or unreadable."""
    from data_prep.store import read_dataset

    dataset = model_info.get("dataset")
    if not isinstance(dataset, str) or not Path(dataset).is_dir():
        return None  # (read_dataset would restore a folder a killed writer left aside)
    try:
        prepared = read_dataset(dataset)
        paths = prepared.manifest["path"].iloc[prepared.training_rows()]
    except (OSError, ValueError, KeyError):
        return None
    return {os.path.realpath(str(path)) for path in paths}


def read_source(data: Path, predictor: Predictor) -> Source:
    """The labelled photos in ``data`` (a folder or a prepared dataset), labels mapped onto the
    model's classes, with warnings about anything that makes the figures less honest."""
    from data_prep.discover import discover
    from data_prep.store import is_dataset, read_dataset

    classes = predictor.classes
    if is_dataset(data):
        dataset = read_dataset(data)
        manifest = dataset.manifest
        warnings: list[str] = []
        rows = dataset.test_rows()
        if not len(rows):
            rows = np.arange(len(manifest))
            warnings.append(
                f"{data} has no test split: evaluating all {len(rows)} photos "
                "(prepare --test-fraction sets some aside that train never sees)"
            )
        mapping = match_classes(dataset.classes, classes)
        names = manifest["class_name"].astype(str).to_numpy()
        labels = [mapping[names[i]] for i in rows]
        paths = manifest["path"].astype(str).to_numpy()[rows].tolist()
        fits = (
            dataset.image_size == predictor.info.image_size
            and dataset.channels == predictor.info.channels
            and dataset.info.get("resize_policy", "stretch") == predictor.info.resize_policy
        )
        source = Source("dataset", paths, labels, warnings,
                        dataset.images if fits else None, rows if fits else None)
    else:
        found = discover(data)
        mapping = match_classes(found.classes, classes)
        source = Source("folder", [str(p) for p, _ in found.files],
                        [mapping[name] for _, name in found.files])
    seen = training_paths(predictor.info.raw)
    if seen:
        overlap = sum(os.path.realpath(p) in seen for p in source.paths)
        if overlap:
            source.warnings.append(
                f"{overlap} of these {len(source.paths)} photos were in the model's training "
                "data: the figures are optimistic"
            )
    return source


def predictions_for(source: Source, predictor: Predictor, batch_size: int,
                    threshold: float | None, tta: bool) -> Iterator[Prediction]:
    if source.images is not None and source.rows is not None:
        for start in range(0, len(source.rows), batch_size):
            chosen = source.rows[start : start + batch_size]
            yield from predictor.predict_images(
                np.asarray(source.images[chosen]), source.paths[start : start + batch_size],
                threshold, tta=tta,
            )
    else:
        yield from predictor.predict_paths(source.paths, batch_size=batch_size,
                                           threshold=threshold, expand=False, tta=tta)


# --------------------------------------------------------------------------- the command


@dataclass
class EvaluationResult:
    out: Path
    metrics: dict[str, Any]
    classes: list[str]
    engine: str
    warnings: list[str]
    unreadable: list[tuple[str, str]]
    files: list[str]


def is_evaluation(folder: Path) -> bool:
    """True for a folder written by :func:`evaluate` (its metrics.json names our format)."""
    marker = folder / "metrics.json"
    if not marker.is_file():
        return False
    try:
        return (json.loads(marker.read_text(encoding="utf-8")).get("format")
                in FORMATS_REPLACEABLE)
    except (OSError, ValueError, AttributeError):
        return False


def check_out_folder(out: Path, force: bool) -> None:
    """Replace only an evaluation folder of ours, and that only with ``force``."""
    safeio.check_replaceable(out, force, is_evaluation, "a catsdogs evaluation",
                             "an evaluation")


def evaluate(
    data: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    engine: str = "auto",
    batch_size: int = 32,
    threshold: float | None = None,
    force: bool = False,
    tta: bool = TTA_DEFAULT,
) -> EvaluationResult:
    """Predict every labelled photo in ``data`` and write the report folder ``out``. With
    ``tta`` the figures are those of the views of each photo averaged, and of the photo alone
    under ``photo_alone``."""
    data_path, out_path = Path(data), Path(out)
    if not data_path.exists():
        raise FileNotFoundError(f"no data at {data_path}")
    check_out_folder(out_path, force)  # refuse before loading the model; checked again below
    predictor = Predictor(model_dir, engine=engine)
    source = read_source(data_path, predictor)
    if predictor.note:
        source.warnings.append(predictor.note)
    with safeio.output_folder(out_path, kind="evaluation", force=force,
                              is_ours=is_evaluation) as build:
        scored = write_predictions(build.path / "predictions.csv", source, predictor,
                                   batch_size, threshold, tta)
        if not scored.true:
            raise ValueError(f"no readable photos to evaluate in {data_path}")
        metrics = compute_metrics(scored.true_array, scored.predicted_array,
                                  scored.score_array, predictor.classes)
        metrics.update({
            "format": FORMAT,
            "data": str(data_path.resolve()),
            "data_kind": source.kind,
            "model": str(Path(model_dir).resolve()),
            "engine": predictor.engine,
            "threshold": threshold,
            "views": TTA_NAME if tta else PHOTO_ALONE,
            "photo_alone": (photo_alone_metrics(scored, predictor.classes, threshold)
                            if tta else None),
            "unreadable": len(scored.unreadable),
            "warnings": source.warnings,
            "catsdogs_version": __version__,
        })
        safeio.write_json_atomic(build.path / "metrics.json", metrics)
        draw_plots(build.path, metrics, scored, source, predictor)
        files = sorted(p.name for p in build.path.iterdir())
    return EvaluationResult(out_path, metrics, predictor.classes, predictor.engine,
                            source.warnings, scored.unreadable, files)


@dataclass
class Scored:
    """The photos that could be predicted: true and predicted class numbers, scores, paths;
    and the (path, reason) of those that could not."""

    true: list[int] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    alone_scores: list[np.ndarray] = field(default_factory=list)  # the photo alone, with tta

    @property
    def true_array(self) -> np.ndarray:
        return np.asarray(self.true)

    @property
    def predicted_array(self) -> np.ndarray:
        return np.asarray(self.predicted)

    @property
    def score_array(self) -> np.ndarray:
        return np.stack(self.scores)


def write_predictions(path: Path, source: Source, predictor: Predictor, batch_size: int,
                      threshold: float | None, tta: bool) -> Scored:
    """Predict every photo of ``source``, writing one row per readable photo to ``path``:
    ``predict``'s answer (``predicted``, ``p_<class>``) and, with ``tta``, that of the photo
    alone (``predicted_photo_alone``, ``p_photo_alone_<class>``)."""
    classes = predictor.classes
    scored = Scored()
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        header = ["path", "true", "predicted", *[f"p_{name}" for name in classes]]
        if tta:
            header += ["predicted_photo_alone", *[f"p_photo_alone_{name}" for name in classes]]
        writer.writerow(header)
        labels = iter(source.labels)
        for prediction in predictions_for(source, predictor, batch_size, threshold, tta):
            label = next(labels)
            if prediction.error is not None or prediction.scores is None:
                scored.unreadable.append((prediction.path, prediction.error or "unreadable"))
                continue
            row = [printable(prediction.path), classes[label], prediction.label,
                   *[f"{p:.6f}" for p in prediction.scores]]
            if prediction.plain_scores is not None:
                alone = prediction.plain_scores
                row += [classes[int(decide(alone[None, :], threshold)[0])],
                        *[f"{p:.6f}" for p in alone]]
                scored.alone_scores.append(alone)
            writer.writerow(row)
            scored.true.append(label)
            scored.predicted.append(classes.index(prediction.label))  # by predict.decide
            scored.scores.append(prediction.scores)
            scored.paths.append(prediction.path)
    return scored


def photo_alone_metrics(scored: Scored, classes: list[str], threshold: float | None
                        ) -> dict[str, Any]:
    """The metrics of the photo alone, without test-time views (``metrics.json``'s
    ``photo_alone``), decided by the same :func:`~catsdogs.predict.decide`."""
    scores = np.stack(scored.alone_scores)
    metrics = compute_metrics(scored.true_array, decide(scores, threshold), scores, classes)
    metrics.pop("classes", None)
    return metrics


def draw_plots(folder: Path, metrics: dict[str, Any], scored: Scored, source: Source,
               predictor: Predictor) -> None:
    """confusion.png, and mistakes.png with the most confident mistakes."""
    from catsdogs import plots

    classes = predictor.classes
    plots.confusion_png(metrics["confusion_matrix"], classes, folder / "confusion.png",
                        title=f"{metrics['n']} photos, accuracy {metrics['accuracy']:.1%}")
    true, predicted, scores = scored.true_array, scored.predicted_array, scored.score_array
    wrong = np.flatnonzero(true != predicted)
    confidence = scores[wrong, predicted[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")][:MISTAKES_SHOWN]
    shown = [
        (
            mistake_pixels(scored.paths[i], source, predictor),
            f"true {classes[true[i]]}\nsaid {classes[predicted[i]]} "
            f"{scores[i, predicted[i]]:.1%}\n"
            f"{plots.shortened(printable(Path(scored.paths[i]).name))}",
        )
        for i in worst
    ]
    plots.mistakes_png(shown, folder / "mistakes.png", total_wrong=len(wrong),
                       total=metrics["n"])


def mistake_pixels(path: str, source: Source, predictor: Predictor) -> np.ndarray:
    """The photo to show for a mistake: the source file at a viewable size, else the
    prepared pixels the model saw."""
    from data_prep.images import ImageError, load_image

    try:
        return load_image(path, 160, predictor.info.resize_policy)
    except (ImageError, ValueError):
        if source.images is not None and source.rows is not None:
            return np.asarray(source.images[source.rows[source.paths.index(path)]])
        return np.zeros((160, 160, 3), dtype=np.uint8)
