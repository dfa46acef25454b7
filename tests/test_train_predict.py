"""train and predict end to end on tiny generated photos, and their error paths."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from catsdogs.cli import cli
from catsdogs.predict import Predictor
from tests.helpers import TINY_MODEL, TINY_TRAIN, assert_clean_exit, write_photos


def test_model_folder_contents(trained_model):
    info = json.loads((trained_model / "model.json").read_text())
    assert info["classes"] == ["cats", "dogs"] and info["image_size"] == 24
    assert info["model"]["blocks"] == 1 and info["training"]["epochs"] == 4
    assert 1 <= info["best_epoch"] <= 4
    history = pd.read_csv(trained_model / "history.csv")
    assert len(history) == 4
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.columns)
    assert info["best"]["val_loss"] == history["val_loss"].min()
    assert (trained_model / "model.keras").is_file()


def test_predict_is_right_on_unseen_photos(runner, trained_model, unseen_photos):
    paths = [str(p) for paths in unseen_photos.values() for p in paths]
    result = runner.invoke(cli, ["predict", *paths, "--model", str(trained_model), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 8
    for row in rows:
        expected = "cats" if "cat_" in Path(row["path"]).name else "dogs"
        assert row["label"] == expected, row
        assert row["probability"] == max(row["probabilities"].values())
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-6


def test_predict_lines_and_unreadable_photo(runner, trained_model, unseen_photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    cat = unseen_photos["cats"][0]
    result = runner.invoke(cli, ["predict", str(cat), str(bad), "--model", str(trained_model)])
    assert result.exit_code == 1
    assert f"{cat}: cats (" in result.stdout
    assert f"error: {bad}: not an image" in result.stderr


def test_predict_folder(trained_model, unseen_photos):
    folder = unseen_photos["cats"][0].parent
    predictions = list(Predictor(trained_model).predict_paths([folder], batch_size=3))
    assert len(predictions) == 8 and all(p.error is None for p in predictions)


@pytest.mark.slow
def test_train_output_reports_summary_device_epochs_and_best(runner, tiny_dataset, tmp_path):
    prepared = tmp_path / "prepared"
    assert runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(prepared),
                               "--size", "24"]).exit_code == 0
    out = tmp_path / "model"
    args = ["train", "--data", str(prepared), "--out", str(out), *TINY_MODEL, *TINY_TRAIN]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.index("Total params") < text.index("Training on CPU") < text.index("epoch   1/4")
    assert "val_accuracy" in text and f"Saved model to {out}" in text
    assert "Kept the last epoch, 4 (--keep last): val_accuracy " in text  # the default
    # A second run does not silently replace the model.
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "--force" in again.output
    assert runner.invoke(cli, [*args, "--force"]).exit_code == 0


def test_train_errors(runner, tmp_path):
    result = runner.invoke(cli, ["train", "--data", str(tmp_path / "none")])
    assert_clean_exit(result, 1, f"Error: no prepared dataset at {tmp_path / 'none'}: "
                                 "run 'catsdogs prepare' first")
    for bad in (["--epochs", "-1"], ["--validation-split", "1.5"], ["--validation-split", "0"]):
        result = runner.invoke(cli, ["train", "--data", str(tmp_path), *bad])
        assert result.exit_code == 2, (bad, result.output)


def test_a_small_class_validates_on_one_photo(runner, tmp_path):
    """Five dogs: the default 10% rounds to no validation photo, so one dog validates (and
    four train); the twelve cats' 10% is one photo too."""
    write_photos(tmp_path / "photos" / "cats", "cat", 12, seed=1)
    write_photos(tmp_path / "photos" / "dogs", "dog", 5, seed=2)
    data, out = tmp_path / "prepared", tmp_path / "model"
    assert runner.invoke(cli, ["prepare", str(tmp_path / "photos"), "--out", str(data),
                               "--size", "24"]).exit_code == 0
    result = runner.invoke(cli, ["train", "--data", str(data), "--out", str(out), *TINY_MODEL,
                                 *TINY_TRAIN, "--epochs", "1"])
    assert_clean_exit(result, 0)
    info = json.loads((out / "model.json").read_text())
    assert (info["num_train"], info["num_validation"]) == (11 + 4, 1 + 1)


@pytest.mark.parametrize("dogs, split, message", [
    (1, "0.1", "Error: dogs has 1 training photo: a class needs at least 2, one to train on "
               "and one to validate on; add photos"),
    (3, "0.9", "Error: dogs has 3 training photos: too few to split 0.9 of them off for "
               "validation and keep one to train on (--validation-split); add photos or lower "
               "the split"),
])
def test_a_class_too_small_to_split(runner, tmp_path, dogs, split, message):
    """A class that cannot keep a photo on each side: one line naming the class (and the
    option, where a lower split would do), exit 1, nothing written."""
    write_photos(tmp_path / "photos" / "cats", "cat", 40, seed=1)
    write_photos(tmp_path / "photos" / "dogs", "dog", dogs, seed=2)
    data, out = tmp_path / "prepared", tmp_path / "model"
    assert runner.invoke(cli, ["prepare", str(tmp_path / "photos"), "--out", str(data),
                               "--size", "24"]).exit_code == 0
    result = runner.invoke(cli, ["train", "--data", str(data), "--out", str(out), *TINY_MODEL,
                                 *TINY_TRAIN, "--validation-split", split])
    assert_clean_exit(result, 1, message)
    assert not out.exists()


def test_predict_missing_model_folder(runner, tmp_path, unseen_photos):
    result = runner.invoke(cli, ["predict", str(unseen_photos["cats"][0]), "--model",
                                 str(tmp_path / "nomodel")])
    assert_clean_exit(result, 1, f"Error: no model folder at {tmp_path / 'nomodel'}: "
                                 "run 'catsdogs train' first")
