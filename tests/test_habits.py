"""The habits Keras users bring: --class-weight and the imbalance note, balanced accuracy,
--tensorboard, and more than two classes from prepare to evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from catsdogs.cli import cli
from catsdogs.train import ClassBalance, balanced_class_weights
from tests.helpers import TINY_MODEL, assert_clean_exit, write_photos

TWO_EPOCHS = ["--epochs", "2", "--batch-size", "4", "--learning-rate", "0.01", "--no-augment"]


def test_balanced_class_weights_and_the_imbalance_rule():
    weights = balanced_class_weights(np.array([0, 0, 0, 1, 0, 0]), 2)
    assert weights == pytest.approx({0: 6 / (2 * 5), 1: 6 / (2 * 1)})
    assert balanced_class_weights(np.array([2, 2, 0]), 3) == pytest.approx({0: 1.0, 2: 0.5})
    assert ClassBalance({"cats": 30, "dogs": 20}).imbalanced  # exactly 1.5x
    balance = ClassBalance({"cats": 29, "dogs": 20, "birds": 25})
    assert not balance.imbalanced and balance.largest == "cats" and balance.smallest == "dogs"


def test_tensorboard_without_the_package_is_one_line_and_writes_nothing(
        runner, prepared, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else real(name, *args))
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out",
                                 str(tmp_path / "model"), "--tensorboard",
                                 str(tmp_path / "logs"), *TINY_MODEL])
    assert_clean_exit(result, 1, "Error: --tensorboard needs the tensorboard package (pip "
                                 "install tensorboard); nothing was trained")
    assert not (tmp_path / "model").exists() and not (tmp_path / "logs").exists()


def tensorboard_tags(folder: Path) -> set[str]:
    import tensorflow as tf

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.mark.slow
def test_three_to_one_folder_class_weights_tensorboard_and_balanced_accuracy(runner, tmp_path):
    pytest.importorskip("tensorboard")
    photos = tmp_path / "photos"
    write_photos(photos / "cats", "cat", 24, seed=1)
    write_photos(photos / "dogs", "dog", 8, seed=2)
    data = tmp_path / "prepared"
    assert runner.invoke(cli, ["prepare", str(photos), "--out", str(data), "--size", "24",
                               "-q"]).exit_code == 0

    plain = runner.invoke(cli, ["train", "--data", str(data), "--out", str(tmp_path / "plain"),
                                *TINY_MODEL, *TWO_EPOCHS, "--tensorboard",
                                str(tmp_path / "logs")])
    assert_clean_exit(plain, 0, "note: cats has 3.1x the training photos of dogs (22 vs 7); "
                                "--class-weight balanced makes each class count the same")
    assert tensorboard_tags(tmp_path / "logs" / "train") >= {
        "epoch_loss", "epoch_accuracy", "epoch_learning_rate"}
    assert tensorboard_tags(tmp_path / "logs" / "validation") >= {"epoch_loss",
                                                                  "epoch_accuracy"}

    weighted = runner.invoke(cli, ["train", "--data", str(data), "--out",
                                   str(tmp_path / "weighted"), *TINY_MODEL, *TWO_EPOCHS,
                                   "--class-weight", "balanced"])
    assert_clean_exit(weighted, 0, "Class weights (balanced): cats 0.66, dogs 2.07")
    assert "note: cats has" not in weighted.output
    info = json.loads((tmp_path / "weighted" / "model.json").read_text())
    assert info["class_counts"] == {"cats": 22, "dogs": 7}
    assert info["class_weights"] == pytest.approx({"cats": 29 / 44, "dogs": 29 / 14}, rel=1e-5)
    # Same seed, same batches: only the weights differ, and they reach the loss.
    losses = [next(csv.DictReader(open(tmp_path / name / "history.csv")))["loss"]
              for name in ("plain", "weighted")]
    assert losses[0] != losses[1]

    result = runner.invoke(cli, ["evaluate", str(photos), "--model", str(tmp_path / "weighted"),
                                 "--out", str(tmp_path / "evaluation")])
    assert_clean_exit(result, 0)
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    recall = metrics["recall"]
    assert metrics["balanced_accuracy"] == pytest.approx((recall["cats"] + recall["dogs"]) / 2)
    assert (f"balanced accuracy {metrics['balanced_accuracy']:.4f} (the mean of the classes' "
            "recalls)") in result.output.splitlines()


def write_colour_photos(folder: Path, colours: dict[str, tuple[int, int, int]], count: int,
                        seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, bgr in colours.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(np.array(bgr) + rng.integers(-20, 20, (24, 24, 3)), 0, 255)
            assert cv2.imwrite(str(folder / name / f"{name}_{i}.png"), pixels.astype(np.uint8))


@pytest.mark.slow
def test_three_classes_from_prepare_to_evaluate(runner, tmp_path):
    colours = {"blues": (200, 40, 40), "greens": (40, 200, 40), "reds": (40, 40, 200)}
    write_colour_photos(tmp_path / "photos", colours, 10, seed=3)
    write_colour_photos(tmp_path / "unseen", colours, 4, seed=4)
    data, model = tmp_path / "prepared", tmp_path / "model"
    result = runner.invoke(cli, ["prepare", str(tmp_path / "photos"), "--out", str(data),
                                 "--size", "24"])
    assert_clean_exit(result, 0)
    assert [line.split()[0] for line in result.output.splitlines()[1:4]] == [
        "blues", "greens", "reds"]
    result = runner.invoke(cli, ["train", "--data", str(data), "--out", str(model),
                                 *TINY_MODEL, "--epochs", "6", "--batch-size", "4",
                                 "--learning-rate", "0.01"])
    assert_clean_exit(result, 0)
    assert "│ output (Dense)                   │ (None, 3)" in result.output

    photo = tmp_path / "unseen" / "greens" / "greens_0.png"
    result = runner.invoke(cli, ["predict", str(photo), "--model", str(model), "--top", "2",
                                 "--json"])
    assert_clean_exit(result, 0)
    [row] = json.loads(result.stdout)
    assert row["label"] == "greens"
    assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)  # softmax
    assert [entry["label"] for entry in row["top"]][0] == "greens" and len(row["top"]) == 2

    result = runner.invoke(cli, ["evaluate", str(tmp_path / "unseen"), "--model", str(model),
                                 "--out", str(tmp_path / "evaluation")])
    assert_clean_exit(result, 0)
    lines = result.output.splitlines()
    header = lines.index("confusion matrix (rows: true class, columns: predicted)")
    assert lines[header + 1].split() == ["blues", "greens", "reds"]
    rows = [line.split() for line in lines[header + 2: header + 5]]
    assert [r[0] for r in rows] == ["blues", "greens", "reds"]
    matrix = [[int(n) for n in r[1:]] for r in rows]
    assert [sum(r) for r in matrix] == [4, 4, 4]
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["confusion_matrix"] == matrix
    assert metrics["accuracy"] >= 0.75 and metrics["balanced_accuracy"] is not None
