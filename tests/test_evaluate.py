"""evaluate: metrics checked by hand, the same accuracy as predict, honest data, safe output."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from catsdogs.cli import cli
from catsdogs.evaluate import (
    binary_auc,
    compute_metrics,
    confusion_matrix,
    log_loss,
    match_classes,
    roc_auc,
    training_paths,
)
from tests.helpers import assert_clean_exit, write_photos

KEYS = {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "confusion_matrix", "n"}


def test_metrics_against_hand_computed_values():
    true = np.array([0, 0, 0, 1, 1])
    predicted = np.array([0, 1, 0, 1, 0])
    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert confusion_matrix(true, predicted, 2).tolist() == [[2, 1], [1, 1]]
    metrics = compute_metrics(true, predicted, scores, ["cats", "dogs"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx({"cats": 2 / 3, "dogs": 1 / 2})
    assert metrics["recall"] == pytest.approx({"cats": 2 / 3, "dogs": 1 / 2})
    assert metrics["f1"] == pytest.approx({"cats": 2 / 3, "dogs": 1 / 2})
    # positives (0.8, 0.4) against negatives (0.1, 0.6, 0.3): 0.8 beats 3, 0.4 beats 2
    assert metrics["roc_auc"] == pytest.approx(5 / 6)
    expected_loss = -np.mean(np.log([0.9, 0.4, 0.7, 0.8, 0.4]))
    assert metrics["log_loss"] == pytest.approx(expected_loss)
    assert KEYS <= set(metrics)


def test_auc_and_log_loss_textbook_examples():
    # scikit-learn's documented examples
    assert binary_auc(np.array([0, 0, 1, 1]) == 1, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    scores = np.array([[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.35, 0.65]])
    assert log_loss(np.array([1, 0, 0, 1]), scores) == pytest.approx(0.21616, abs=1e-5)
    # ties count one half; one class present: undefined
    assert binary_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert math.isnan(binary_auc(np.array([True, True]), np.array([0.2, 0.3])))
    # three classes: the mean of one-vs-rest AUCs
    three = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.15, 0.25]])
    assert roc_auc(np.array([0, 1, 2, 1]), three) == pytest.approx((1 + 3 / 4 + 1) / 3)


def test_class_names_are_matched_leniently_but_not_wrongly():
    assert match_classes(["cat", "Dogs"], ["cats", "dogs"]) == {"cat": 0, "Dogs": 1}
    with pytest.raises(ValueError, match="horse"):
        match_classes(["horse"], ["cats", "dogs"])


@pytest.fixture
def labelled(tmp_path) -> Path:
    """cats/ and dogs/ never trained on, with two dog-looking photos filed as cats, so that
    the model makes mistakes and accuracy is not trivially 1."""
    root = tmp_path / "held_out"
    write_photos(root / "cats", "cat", 5, seed=21)
    write_photos(root / "dogs", "dog", 5, seed=22)
    for index, path in enumerate(write_photos(tmp_path / "odd", "dog", 2, seed=23)):
        path.rename(root / "cats" / f"mislabelled_{index}.jpg")
    return root


def test_evaluate_equals_predict_on_unseen_photos(runner, trained_model, labelled, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(cli, ["evaluate", str(labelled), "--model", str(trained_model),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert KEYS <= set(metrics) and metrics["n"] == 12
    answers = runner.invoke(cli, ["predict", str(labelled), "--json", "--model",
                                  str(trained_model)])
    rows = json.loads(answers.stdout)
    right = sum(row["label"] == Path(row["path"]).parent.name for row in rows)
    assert metrics["accuracy"] == right / len(rows) == 10 / 12
    assert f"accuracy  {10 / 12:.4f}" in result.stdout
    assert metrics["confusion_matrix"] == [[5, 2], [0, 5]]
    assert metrics["precision"]["dogs"] == pytest.approx(5 / 7)
    assert "confusion matrix" in result.stdout and "ROC AUC" in result.stdout

    with open(out / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["path", "true", "predicted", "p_cats", "p_dogs",
                              "predicted_photo_alone", "p_photo_alone_cats",
                              "p_photo_alone_dogs"]
    assert len(table) == 12
    by_path = {row["path"]: row for row in rows}
    for row in table:
        assert row["predicted"] == by_path[row["path"]]["label"]
        assert float(row["p_dogs"]) == pytest.approx(
            by_path[row["path"]]["probabilities"]["dogs"], abs=2e-6)
    for name in ("confusion.png", "mistakes.png"):
        picture = cv2.imread(str(out / name))
        assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 100


def test_prepared_dataset_uses_its_test_split(runner, trained_model, tiny_dataset, tmp_path):
    prepared = tmp_path / "prepared"
    assert runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(prepared), "--size",
                               "24", "--test-fraction", "0.25"]).exit_code == 0
    result = runner.invoke(cli, ["evaluate", str(prepared), "--model", str(trained_model),
                                 "--out", str(tmp_path / "e1")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["data_kind"] == "dataset"
    split = json.loads((prepared / "dataset.json").read_text())["num_test"]
    assert split == 6


def test_training_paths_are_the_dataset_rows_outside_its_test_split(runner, tiny_dataset,
                                                                  tmp_path):
    prepared = tmp_path / "prepared"
    assert runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(prepared), "--size",
                               "24", "--test-fraction", "0.25"]).exit_code == 0
    with open(prepared / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    trained = {str(Path(row["path"]).resolve()) for row in rows if row["split"] != "test"}
    assert len(trained) == 18 and len(rows) == 24
    assert training_paths({"dataset": str(prepared)}) == trained
    assert training_paths({"dataset": str(tmp_path / "gone")}) is None
    assert training_paths({}) is None
    (prepared / "manifest.csv").write_text("index,path\n0,a.jpg\n")  # rows ≠ images
    assert training_paths({"dataset": str(prepared)}) is None


def test_honest_warnings_about_photos_the_model_has_seen(runner, trained_model, tmp_path):
    training_data = Path(json.loads((trained_model / "model.json").read_text())["dataset"])
    result = runner.invoke(cli, ["evaluate", str(training_data), "--model",
                                 str(trained_model), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "has no test split" in result.stderr
    assert "24 of these 24 photos were in the model's training data" in result.stderr
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert len(metrics["warnings"]) == 2


def test_output_folder_is_never_clobbered(runner, trained_model, labelled, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = ["evaluate", str(labelled), "--model", str(trained_model), "--out"]
    refused = runner.invoke(cli, [*args, str(mine), "--force"])
    assert refused.exit_code == 1 and "not a catsdogs evaluation" in refused.output
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "report"
    assert runner.invoke(cli, [*args, str(out)]).exit_code == 0
    again = runner.invoke(cli, [*args, str(out)])
    assert again.exit_code == 1 and "--force" in again.output
    assert runner.invoke(cli, [*args, str(out), "--force"]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_evaluate_errors(runner, trained_model, tmp_path):
    strange = tmp_path / "zoo"
    write_photos(strange / "horses", "dog", 2, seed=1)
    write_photos(strange / "cats", "cat", 2, seed=1)
    result = runner.invoke(cli, ["evaluate", str(strange), "--model", str(trained_model),
                                 "--out", str(tmp_path / "e")])
    assert_clean_exit(result, 1, "Error: class 'horses' of the data is not one the model "
                                 "knows (cats, dogs)")
    assert not (tmp_path / "e").exists()
    missing = runner.invoke(cli, ["evaluate", str(tmp_path / "none"), "--model",
                                  str(trained_model)])
    assert_clean_exit(missing, 1, f"Error: no data at {tmp_path / 'none'}")


def test_unreadable_photos_are_reported_and_left_out(runner, trained_model, labelled,
                                                      tmp_path):
    (labelled / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff cut short")
    out = tmp_path / "report"
    result = runner.invoke(cli, ["evaluate", str(labelled), "--model", str(trained_model),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "broken.jpg: undecodable image" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["unreadable"] == 1
