"""Test-time augmentation (--tta, the default of predict, evaluate and serve; --no-tta
predicts the photo alone): six views of each photo (the photo, its central 90% and 80% resized
back, and the mirror images of the three), averaged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import catsdogs.predict as predict_module
from catsdogs.cli import cli
from catsdogs.evaluate import PHOTO_ALONE
from catsdogs.predict import Predictor
from catsdogs.serve import PhotoService, RequestError, parse_options
from catsdogs.tta import TTA_DEFAULT, TTA_NAME, central_crop, mirrored, tta_views
from tests.helpers import assert_clean_exit, make_photo, write_photos

TOLERANCE = 1e-6


def half_and_half(rng: np.random.Generator) -> np.ndarray:
    """A BGR photo, cat colours on the left and dog colours on the right: far from symmetric."""
    photo = make_photo("cat", rng)
    photo[:, 12:] = make_photo("dog", rng)[:, 12:]
    return photo


def write_pair(folder: Path, seed: int) -> tuple[Path, Path]:
    """A lossless 24 px photo and its mirror image (``cv2.flip``), as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = half_and_half(np.random.default_rng(seed))
    original, mirror = folder / f"photo_{seed}.png", folder / f"mirror_{seed}.png"
    assert cv2.imwrite(str(original), photo)
    assert cv2.imwrite(str(mirror), cv2.flip(photo, 1))
    return original, mirror


def predict_json(runner, model: Path, *arguments: str) -> list[dict]:
    result = runner.invoke(cli, ["predict", *arguments, "--model", str(model), "--json"])
    assert_clean_exit(result, 0)
    return json.loads(result.output)


class LeftHeavy(Predictor):
    """A stand-in model whose answer depends on which side of the photo is bright."""

    def __init__(self) -> None:  # no model folder
        self.calls: list[int] = []

    @property
    def classes(self) -> list[str]:
        return ["left", "right"]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        images = np.asarray(images, dtype=float)
        width = images.shape[2]
        left = images[:, :, : width // 2].mean(axis=(1, 2, 3))
        right = images[:, :, width // 2 :].mean(axis=(1, 2, 3))
        share = left / (left + right)
        return np.stack([share, 1.0 - share], axis=1)


def test_mirrored_flips_each_image_left_to_right():
    images = np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1)
    assert mirrored(images)[1, 2, :, 0].tolist() == images[1, 2, ::-1, 0].tolist()
    assert mirrored(images).shape == images.shape
    assert np.array_equal(mirrored(mirrored(images)), images)


def test_central_crop_keeps_equal_margins_and_the_size():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 20, 20, 3), dtype=np.uint8)
    crop = central_crop(images, 0.8)  # 2 px off each side, 16 px resized back to 20
    assert crop.shape == images.shape and crop.dtype == np.uint8
    expected = cv2.resize(images[1, 2:18, 2:18], (20, 20), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(crop[1], expected)
    assert np.array_equal(central_crop(images, 1.0), images)
    assert np.array_equal(central_crop(mirrored(images), 0.8), mirrored(crop))
    gray = images[:, :, :, :1]
    assert central_crop(gray, 0.9).shape == gray.shape  # one channel stays a channel


def test_tta_views_are_the_crops_then_their_mirrors():
    images = np.random.default_rng(1).integers(0, 256, size=(3, 20, 20, 3), dtype=np.uint8)
    views = tta_views(images)
    assert [view.shape for view in views] == [(3, 20, 20, 3)] * 6
    assert np.array_equal(views[0], images)  # the photo itself first
    assert np.array_equal(views[1], central_crop(images, 0.9))
    assert np.array_equal(views[2], central_crop(images, 0.8))
    for crop, mirror in zip(views[:3], views[3:], strict=True):
        assert np.array_equal(mirror, mirrored(crop))


def test_tta_is_on_by_default():
    assert TTA_DEFAULT is True


def test_scores_average_the_views_one_call_each():
    model = LeftHeavy()
    images = np.zeros((3, 20, 20, 3), dtype=np.uint8)
    images[:, :, :10] = np.array([10, 50, 200]).reshape(3, 1, 1, 1)  # the left half varies
    images[:, :, 10:] = 30
    images[:, 5:15, 3:10] = 120  # and differs from its central crops
    plain, none = model.scores(images, tta=False)
    assert none is None and not np.allclose(plain, 0.5)
    averaged, alone = model.scores(images)  # test-time views by default
    # one engine call a view, each of the batch's size: the memory of one view, not six
    assert model.calls == [3] * 7
    assert np.allclose(alone, plain)
    views = np.stack([model.probabilities(view) for view in tta_views(images)])
    assert np.allclose(averaged, views.mean(axis=0))
    assert not np.allclose(views[1], views[0])  # the crops are other views
    assert np.allclose(averaged, 0.5)  # this model is antisymmetric: its mean is even


class ThreeColumns(LeftHeavy):
    """A three-class stand-in: how bright the first, middle and last columns are."""

    @property
    def classes(self) -> list[str]:
        return ["a", "b", "c"]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=float)
        columns = np.stack([images[:, :, 0].mean(axis=(1, 2)), images[:, :, 1].mean(axis=(1, 2)),
                            images[:, :, -1].mean(axis=(1, 2))], axis=1) + 1.0
        return columns / columns.sum(axis=1, keepdims=True)


def test_tta_averages_probability_vectors_of_any_number_of_classes():
    model = ThreeColumns()
    images = np.zeros((2, 3, 3, 1), dtype=np.uint8)  # too small to crop: photo and mirror
    images[0, :, 0] = 90  # bright on the left
    images[1, :, 2] = 60  # bright on the right
    averaged, plain = model.scores(images, tta=True)
    assert plain[:, 0].tolist() != plain[:, 2].tolist()
    expected = (model.probabilities(images) + model.probabilities(images[:, :, ::-1])) / 2
    assert np.allclose(averaged, expected)
    assert np.allclose(averaged.sum(axis=1), 1.0)
    assert np.allclose(averaged[:, 0], averaged[:, 2])  # the first and last column swap
    rows = model.predict_images(images, ["left", "right"], top=2, tta=True)
    assert [row.plain_scores.tolist() for row in rows] == plain.tolist()
    assert rows[0].probabilities == {name: round(float(p), 6)
                                     for name, p in zip("abc", averaged[0], strict=True)}


def test_serve_reads_the_tta_query_parameter():
    assert parse_options({"tta": "1"}, ["cats", "dogs"]).tta is True
    assert parse_options({}, ["cats", "dogs"]).tta is True  # on unless tta=0, as in predict
    assert parse_options({"tta": "0"}, ["cats", "dogs"]).tta is False
    assert parse_options({"tta": "false"}, ["cats", "dogs"]).tta is False
    with pytest.raises(RequestError, match="tta must be 0 or 1, got 'yes'"):
        parse_options({"tta": "yes"}, ["cats", "dogs"])


def test_a_photo_and_its_mirror_get_the_same_tta_answer(runner, trained_model, tmp_path):
    original, mirror = write_pair(tmp_path, seed=3)
    plain = predict_json(runner, trained_model, str(original), str(mirror), "--no-tta")
    augmented = predict_json(runner, trained_model, str(original), str(mirror))
    assert predict_json(runner, trained_model, str(original), str(mirror), "--tta") == augmented
    # the model itself is not symmetric, so only the average makes the two agree
    assert abs(plain[0]["probabilities"]["dogs"] - plain[1]["probabilities"]["dogs"]) > 1e-3
    for name in ("cats", "dogs"):
        assert augmented[0]["probabilities"][name] == pytest.approx(
            augmented[1]["probabilities"][name], abs=TOLERANCE)
    assert augmented[0]["label"] == augmented[1]["label"]


def test_tta_is_the_mean_of_the_plain_answers_for_the_view_files(runner, trained_model,
                                                                  tmp_path):
    """Each view written as a lossless file of the model's size and predicted plainly: --tta's
    answer for the photo is the mean of those six answers."""
    originals = [write_pair(tmp_path, seed)[0] for seed in (4, 5, 6)]
    view_files = []
    for original in originals:
        photo = cv2.imread(str(original))  # 24 px: the model's size, so not resized again
        for number, view in enumerate(tta_views(photo[np.newaxis])):
            view_files.append(tmp_path / f"{original.stem}_view{number}.png")
            assert cv2.imwrite(str(view_files[-1]), view[0])
    plain = predict_json(runner, trained_model, *map(str, view_files), "--no-tta")
    augmented = predict_json(runner, trained_model, *map(str, originals), "--batch-size", "2")
    assert len(plain) == 18 and len(augmented) == 3
    for index, row in enumerate(augmented):
        views = plain[6 * index: 6 * index + 6]
        assert len({view["probabilities"]["dogs"] for view in views}) > 2  # other views
        for name in ("cats", "dogs"):
            mean = np.mean([view["probabilities"][name] for view in views])
            assert row["probabilities"][name] == pytest.approx(mean, abs=2e-6)


def test_onnx_and_keras_agree_with_tta(trained_model, tmp_path, unseen_photos):
    photos = [*unseen_photos["cats"], *unseen_photos["dogs"], write_pair(tmp_path, 7)[0]]
    fast = Predictor(trained_model, engine="onnx")
    slow = Predictor(trained_model, engine="keras")
    onnx_rows = list(fast.predict_paths(photos))  # test-time views by default
    keras_rows = list(slow.predict_paths(photos))
    assert [row.label for row in onnx_rows] == [row.label for row in keras_rows]
    for a, b in zip(onnx_rows, keras_rows, strict=True):
        assert np.max(np.abs(a.scores - b.scores)) <= 1e-5
        assert np.max(np.abs(a.plain_scores - b.plain_scores)) <= 1e-5


def test_tta_with_csv_and_json(runner, trained_model, tmp_path):
    original, _ = write_pair(tmp_path, seed=8)
    missing = tmp_path / "missing.png"
    rows = predict_json(runner, trained_model, str(original))
    result = runner.invoke(cli, ["predict", str(original), str(missing), "--model",
                                 str(trained_model), "--csv"])
    assert_clean_exit(result, 1)
    lines = [line for line in result.output.splitlines() if not line.startswith("error:")]
    table = list(csv.DictReader(lines))
    assert [row["path"] for row in table] == [str(original), str(missing)]
    assert float(table[0]["dogs"]) == rows[0]["probabilities"]["dogs"]
    assert table[0]["label"] == rows[0]["label"]
    assert table[1]["error"] == "no such file"


def test_evaluate_measures_predicts_answer_and_the_photo_alone_from_one_decoding(
        runner, trained_model, tmp_path, monkeypatch):
    data, out = tmp_path / "labelled", tmp_path / "evaluation"
    write_photos(data / "cats", "cat", 4, seed=21)
    write_photos(data / "dogs", "dog", 4, seed=22)
    for seed in (23, 24):  # photos that look different mirrored
        assert cv2.imwrite(str(data / "cats" / f"odd_{seed}.png"),
                           half_and_half(np.random.default_rng(seed)))
    decoded: list[str] = []
    real_load = predict_module.load_image

    def counting_load(path, *arguments):
        decoded.append(str(path))
        return real_load(path, *arguments)

    monkeypatch.setattr(predict_module, "load_image", counting_load)
    result = runner.invoke(cli, ["evaluate", str(data), "--model", str(trained_model),
                                 "--out", str(out)])
    assert_clean_exit(result, 0)
    assert len(decoded) == len(set(decoded)) == 10  # each photo decoded once

    metrics = json.loads((out / "metrics.json").read_text())
    alone = metrics["photo_alone"]
    assert metrics["views"] == TTA_NAME and alone["n"] == metrics["n"] == 10
    assert f"Evaluated 10 photos from {data} (onnx; {TTA_NAME})" in result.output
    assert f"accuracy  {metrics['accuracy']:.4f}" in result.output
    assert (f"the photo alone (--no-tta): accuracy {alone['accuracy']:.4f}   "
            f"log loss {alone['log_loss']:.4f}") in result.output
    assert metrics["log_loss"] != pytest.approx(alone["log_loss"], abs=1e-6)  # other scores

    with open(out / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert metrics["accuracy"] == pytest.approx(
        np.mean([row["predicted"] == row["true"] for row in table]))
    assert alone["accuracy"] == pytest.approx(
        np.mean([row["predicted_photo_alone"] == row["true"] for row in table]))
    # the main columns are predict's answer; the photo alone's, predict --no-tta's
    answers = {row["path"]: row for row in predict_json(runner, trained_model, str(data))}
    singles = {row["path"]: row
               for row in predict_json(runner, trained_model, str(data), "--no-tta")}
    for row in table:
        assert row["predicted"] == answers[row["path"]]["label"]
        assert float(row["p_dogs"]) == pytest.approx(
            answers[row["path"]]["probabilities"]["dogs"], abs=2e-6)
        assert row["predicted_photo_alone"] == singles[row["path"]]["label"]
        assert float(row["p_photo_alone_dogs"]) == pytest.approx(
            singles[row["path"]]["probabilities"]["dogs"], abs=2e-6)
    # --no-tta: the photo alone's figures at the top, no second set
    plain_out = tmp_path / "plain"
    result = runner.invoke(cli, ["evaluate", str(data), "--model", str(trained_model),
                                 "--out", str(plain_out), "--no-tta"])
    assert_clean_exit(result, 0)
    plain = json.loads((plain_out / "metrics.json").read_text())
    assert plain["photo_alone"] is None and "the photo alone (--no-tta)" not in result.output
    assert plain["views"] == PHOTO_ALONE and f"(onnx; {PHOTO_ALONE})" in result.output
    assert plain["accuracy"] == alone["accuracy"]
    assert plain["log_loss"] == pytest.approx(alone["log_loss"], abs=1e-6)
    with open(plain_out / "predictions.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["path", "true", "predicted", "p_cats", "p_dogs"]


def test_serve_answers_with_tta_as_predict_does(trained_model, tmp_path):
    original, mirror = write_pair(tmp_path, seed=9)
    predictor = Predictor(trained_model)
    service = PhotoService(predictor)
    uploads = [(path.name, path.read_bytes()) for path in (original, mirror)]
    rows, problems = service.answer(uploads, parse_options({}, predictor.classes))
    expected = list(predictor.predict_paths([original, mirror], tta=True))
    assert problems == []
    for row, prediction in zip(rows, expected, strict=True):
        assert row["probabilities"] == prediction.probabilities
    singles, _ = service.answer(uploads, parse_options({"tta": "0"}, predictor.classes))
    alone = list(predictor.predict_paths([original, mirror], tta=False))
    assert [row["probabilities"] for row in singles] == [p.probabilities for p in alone]
    assert singles[0]["probabilities"] != rows[0]["probabilities"]
    assert rows[0]["probabilities"]["dogs"] == pytest.approx(
        rows[1]["probabilities"]["dogs"], abs=TOLERANCE)
