"""prepare: layouts, the dataset format, skipping, and the safety rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from catsdogs.cli import cli
from data_prep import ImageError, discover, load_image, prepare, read_dataset
from tests.helpers import assert_clean_exit, make_photo, write_photos


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def test_prepare_writes_documented_format(tiny_dataset, tmp_path):
    out = tmp_path / "prepared"
    result = prepare(tiny_dataset, out, size=16)
    assert result.counts == {"cats": 12, "dogs": 12}
    images = np.load(out / "images.npy", mmap_mode="r")
    assert images.shape == (24, 16, 16, 3) and images.dtype == np.uint8
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns) == ["index", "path", "label", "class_name", "width",
                                      "height", "split"]
    assert set(manifest["class_name"]) == {"cats", "dogs"}
    assert (manifest["width"] == 24).all() and (manifest["height"] == 24).all()
    info = json.loads((out / "dataset.json").read_text())
    assert info["classes"] == ["cats", "dogs"]
    assert info["channel_order"] == "RGB" and info["image_size"] == 16
    # RGB, not BGR: the "cat" photos are red-dominant after conversion.
    first_cat = images[manifest.index[manifest["class_name"] == "cats"][0]]
    assert first_cat[..., 0].mean() > first_cat[..., 2].mean() + 50


def test_flat_kaggle_layout(tmp_path):
    folder = tmp_path / "flat"
    write_photos(folder, "cat", 3, seed=1, prefix="cat")
    write_photos(folder, "dog", 3, seed=2, prefix="dog")
    found = discover(folder)
    assert found.layout == "flat" and found.classes == ["cat", "dog"]
    result = prepare(folder, tmp_path / "out", size=16)
    assert result.counts == {"cat": 3, "dog": 3}


def test_any_class_folder_names(tmp_path):
    folder = tmp_path / "PetImages"
    write_photos(folder / "Cat", "cat", 3, seed=1)
    write_photos(folder / "Dog", "dog", 3, seed=2)
    assert prepare(folder, tmp_path / "out", size=16).classes == ["Cat", "Dog"]


def test_unreadable_files_are_skipped_with_reasons(tiny_dataset, tmp_path):
    (tiny_dataset / "cats" / "empty.jpg").write_bytes(b"")
    (tiny_dataset / "cats" / "notes.jpg").write_text("not a photo")
    good = (tiny_dataset / "dogs" / "dog_0.jpg").read_bytes()
    (tiny_dataset / "dogs" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (tiny_dataset / "cats" / ".DS_Store").write_bytes(b"\x00\x01")
    result = prepare(tiny_dataset, tmp_path / "out", size=16)
    reasons = dict((Path(p).name, r) for p, r, _ in result.skipped)
    assert reasons == {"empty.jpg": "empty file", "notes.jpg": "not an image",
                       "cut.jpg": "truncated JPEG"}
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert len(skipped) == 3
    assert result.counts == {"cats": 12, "dogs": 12}


def test_source_is_never_written(tiny_dataset, tmp_path):
    before = snapshot(tiny_dataset)
    prepare(tiny_dataset, tmp_path / "out", size=16)
    assert snapshot(tiny_dataset) == before


def test_out_inside_source_is_refused(tiny_dataset):
    with pytest.raises(ValueError, match="inside the source"):
        prepare(tiny_dataset, tiny_dataset / "prepared", size=16)
    assert not (tiny_dataset / "prepared").exists()


def test_rerun_reuses_and_force_is_needed_for_a_different_dataset(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    prepare(tiny_dataset, out, size=16)
    again = prepare(tiny_dataset, out, size=16)
    assert again.reused
    with pytest.raises(ValueError, match="--force"):
        prepare(tiny_dataset, out, size=20)
    assert read_dataset(out).image_size == 16
    prepare(tiny_dataset, out, size=20, force=True)
    assert read_dataset(out).image_size == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_non_dataset_folder_is_never_replaced(tiny_dataset, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty"):
        prepare(tiny_dataset, out, size=16, force=True)
    assert (out / "thesis.txt").read_text() == "precious"


def test_single_class_and_empty_folders_are_errors(tmp_path):
    write_photos(tmp_path / "one" / "cats", "cat", 3, seed=1)
    with pytest.raises(ValueError, match="one class"):
        prepare(tmp_path / "one", tmp_path / "out", size=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos"):
        prepare(tmp_path / "empty", tmp_path / "out", size=16)
    with pytest.raises(FileNotFoundError):
        prepare(tmp_path / "missing", tmp_path / "out", size=16)
    assert not (tmp_path / "out").exists()


def test_duplicates_kept_once_and_label_conflicts_skipped(tiny_dataset, tmp_path):
    data = (tiny_dataset / "cats" / "cat_0.jpg").read_bytes()
    (tiny_dataset / "cats" / "copy.jpg").write_bytes(data)
    other = (tiny_dataset / "cats" / "cat_1.jpg").read_bytes()
    (tiny_dataset / "dogs" / "confused.jpg").write_bytes(other)
    result = prepare(tiny_dataset, tmp_path / "out", size=16)
    reasons = {Path(p).name: r for p, r, _ in result.skipped}
    assert reasons["copy.jpg"] == "duplicate"
    assert reasons["confused.jpg"] == "label conflict"
    assert reasons["cat_1.jpg"] == "label conflict"
    details = {Path(p).name: d for p, _, d in result.skipped}
    assert details["copy.jpg"].endswith("cat_0.jpg")
    assert details["confused.jpg"] == "same bytes in cats, dogs"
    assert result.skipped_by_reason == {"label conflict": 2, "duplicate": 1}
    assert result.counts == {"cats": 11, "dogs": 12}


def test_test_fraction_is_stratified_and_seeded(tiny_dataset, tmp_path):
    prepare(tiny_dataset, tmp_path / "a", size=16, test_fraction=0.25)
    prepare(tiny_dataset, tmp_path / "b", size=16, test_fraction=0.25)
    a = pd.read_csv(tmp_path / "a" / "manifest.csv")
    b = pd.read_csv(tmp_path / "b" / "manifest.csv")
    assert (a["split"] == b["split"]).all()
    assert a[a["split"] == "test"].groupby("class_name").size().to_dict() == {"cats": 3,
                                                                               "dogs": 3}


def test_a_small_class_gives_one_test_photo(tmp_path):
    """Three dogs: a tenth of them rounds to no photo, so one dog is held out (two train), as
    train's validation split does with a small class."""
    write_photos(tmp_path / "photos" / "cats", "cat", 12, seed=1)
    write_photos(tmp_path / "photos" / "dogs", "dog", 3, seed=2)
    result = prepare(tmp_path / "photos", tmp_path / "out", size=16, test_fraction=0.1)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    held = manifest[manifest["split"] == "test"].groupby("class_name").size().to_dict()
    assert held == {"cats": 1, "dogs": 1} and result.test_count == 2


@pytest.mark.parametrize("dogs, fraction, message", [
    (1, "0.2", "Error: dogs has 1 usable photo: holding photos out for testing "
               "(--test-fraction) needs at least 2 in each class, one to test on and one to "
               "train on; add photos or leave out --test-fraction"),
    (3, "0.9", "Error: dogs has 3 usable photos: too few to hold 0.9 of them out for testing "
               "and keep one to train on (--test-fraction); add photos or lower the fraction"),
])
def test_a_class_too_small_to_hold_test_photos_out(runner, tmp_path, dogs, fraction, message):
    """A class that cannot give a test photo and keep a training one: one line naming the
    class, exit 1, and no dataset left at --out. Before, such a class silently had no test
    photo (1 dog) or no training photo (3 dogs at 0.9)."""
    write_photos(tmp_path / "photos" / "cats", "cat", 40, seed=1)
    write_photos(tmp_path / "photos" / "dogs", "dog", dogs, seed=2)
    out = tmp_path / "prepared"
    result = runner.invoke(cli, ["prepare", str(tmp_path / "photos"), "--out", str(out),
                                 "--size", "16", "--test-fraction", fraction])
    assert_clean_exit(result, 1, message)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_test_photos_and_validation_photos_follow_one_rule(tmp_path):
    """prepare's --test-fraction and train's --validation-split split the same labels with
    the same seed and share into the same photos."""
    from catsdogs.data import stratified_split

    write_photos(tmp_path / "photos" / "cats", "cat", 13, seed=1)
    write_photos(tmp_path / "photos" / "dogs", "dog", 7, seed=2)
    prepare(tmp_path / "photos", tmp_path / "out", size=16, test_fraction=0.3, seed=5)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    _, validation = stratified_split(manifest["label"].to_numpy(), 0.3, 5, ["cats", "dogs"])
    assert validation.tolist() == np.flatnonzero(manifest["split"] == "test").tolist()
    assert len(validation) == round(13 * 0.3) + round(7 * 0.3)


def test_dataset_rows_split_into_test_and_training(tiny_dataset, tmp_path):
    prepare(tiny_dataset, tmp_path / "split", size=16, test_fraction=0.25)
    dataset = read_dataset(tmp_path / "split")
    test, training = dataset.test_rows(), dataset.training_rows()
    assert test.tolist() == np.flatnonzero(dataset.manifest["split"] == "test").tolist()
    assert len(test) == 6 and len(training) == len(dataset.manifest) - 6
    assert sorted([*test, *training]) == list(range(len(dataset.manifest)))
    prepare(tiny_dataset, tmp_path / "whole", size=16)  # no test split: all rows train
    whole = read_dataset(tmp_path / "whole")
    assert len(whole.test_rows()) == 0
    assert whole.training_rows().tolist() == list(range(len(whole.manifest)))
    whole.manifest = whole.manifest.drop(columns="split")  # as a dataset without the column
    assert len(whole.test_rows()) == 0 and len(whole.training_rows()) == len(whole.manifest)


@pytest.mark.parametrize("policy", ["stretch", "crop", "pad"])
def test_resize_policies_give_square_rgb(tmp_path, policy):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :, 2] = 255  # red in BGR
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), wide)
    image = load_image(path, 16, policy)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    if policy == "pad":
        assert image[0, 0].tolist() == [0, 0, 0] and image[8, 8].tolist() == [255, 0, 0]
    else:
        assert (image[..., 0] == 255).all()


def test_load_image_reasons(tmp_path):
    (tmp_path / "x.jpg").write_bytes(os.urandom(100))
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "x.jpg", 16)
    cv2.imwrite(str(tmp_path / "tiny.png"), make_photo("cat", np.random.default_rng(0), size=4))
    with pytest.raises(ImageError, match="too small"):
        load_image(tmp_path / "tiny.png", 16)


def test_prepare_cli_summary_and_errors(runner, tiny_dataset, tmp_path):
    out = tmp_path / "prepared"
    result = runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(out), "--size", "16"])
    assert result.exit_code == 0, result.output
    assert "Prepared 24 photos" in result.output and "cats" in result.output
    result = runner.invoke(cli, ["prepare", str(tmp_path / "nope"), "--out", str(out)])
    assert_clean_exit(result, 1, f"Error: source folder not found: {tmp_path / 'nope'}")
    result = runner.invoke(cli, ["prepare", str(tiny_dataset), "--size", "0"])
    assert result.exit_code == 2


def test_prepare_without_source_uses_builtin_sample(runner, tmp_path):
    out = tmp_path / "prepared"
    result = runner.invoke(cli, ["prepare", "--out", str(out), "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "built-in sample" in result.output
    assert read_dataset(out).info["counts"] == {"cats": 400, "dogs": 400}
    assert read_dataset(out).info["image_size"] == 32


def test_builtin_sample_is_prepared_at_its_own_size_and_keeps_unseen_photos_out(runner,
                                                                                  tmp_path):
    out = tmp_path / "prepared"
    result = runner.invoke(cli, ["prepare", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Prepared 800 photos (64x64, stretch)" in result.output
    dataset = read_dataset(out)
    assert dataset.info["image_size"] == 64
    assert not any("unseen" in path for path in dataset.manifest["path"])
