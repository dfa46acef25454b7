"""predict at scale: several paths, folders, globs, streaming, --json/--csv/--threshold/--top."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from catsdogs.cli import cli
from catsdogs.predict import Predictor, decide, expand_paths
from tests.helpers import TINY_MODEL, TINY_TRAIN, CleanExitRunner


def invoke(runner, *args):
    return runner.invoke(cli, ["predict", *map(str, args)])


@pytest.fixture(scope="module")
def three_class_model(tmp_path_factory) -> Path:
    """A tiny model of three colours: reds, greens, blues."""
    root = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(3)
    for name, bgr in {"blues": (200, 40, 40), "greens": (40, 200, 40),
                      "reds": (40, 40, 200)}.items():
        (root / "photos" / name).mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(np.array(bgr) + rng.integers(-20, 20, (24, 24, 3)), 0, 255)
            cv2.imwrite(str(root / "photos" / name / f"{i}.png"), pixels.astype(np.uint8))
    runner = CleanExitRunner()
    assert runner.invoke(cli, ["prepare", str(root / "photos"), "--out", str(root / "data"),
                               "--size", "24"]).exit_code == 0
    result = runner.invoke(cli, ["train", "--data", str(root / "data"), "--out",
                                 str(root / "model"), *TINY_MODEL, *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    return root / "model"


def test_several_paths_folders_and_quoted_globs_in_order(runner, trained_model, unseen_photos):
    folder = unseen_photos["cats"][0].parent
    result = invoke(runner, unseen_photos["dogs"][1], folder / "cat_*.jpg", "--model",
                    trained_model)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        str(unseen_photos["dogs"][1]), *[str(p) for p in unseen_photos["cats"]]]
    assert lines[0].endswith("%)") and ": dogs (" in lines[0]
    assert all(": cats (" in line for line in lines[1:])


def test_recursive_glob_and_unmatched_pattern(runner, trained_model, unseen_photos, tmp_path):
    result = invoke(runner, tmp_path / "**" / "dog_*.jpg", tmp_path / "nothing*.jpg",
                    "--model", trained_model)
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 4
    assert "nothing*.jpg: no file matches this pattern" in result.stderr


def test_json_is_one_array_with_errors_in_place(runner, trained_model, unseen_photos, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff truncated")
    cat = unseen_photos["cats"][0]
    result = invoke(runner, cat, bad, empty, tmp_path / "gone.jpg", "--json", "--model",
                    trained_model)
    assert result.exit_code == 1
    rows = json.loads(result.stdout)
    assert [row.get("error") for row in rows] == [
        None, "undecodable image", "no photos in folder", "no such file"]
    assert rows[0]["label"] == "cats" and set(rows[0]["probabilities"]) == {"cats", "dogs"}
    assert "error: " + str(bad) + ": undecodable image" in result.stderr


def test_csv_and_exit_zero_when_all_predicted(runner, trained_model, unseen_photos):
    folder = unseen_photos["cats"][0].parent
    result = invoke(runner, folder, "--csv", "--model", trained_model)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["path", "label", "probability", "cats", "dogs", "error"]
    assert len(rows) == 8
    for row in rows:
        assert row["label"] == ("cats" if "cat_" in row["path"] else "dogs")
        assert abs(float(row["cats"]) + float(row["dogs"]) - 1) < 1e-5
        assert float(row["probability"]) == float(row[row["label"]])
    assert invoke(runner, folder, "--csv", "--json", "--model", trained_model).exit_code == 2


def test_threshold_moves_the_decision(runner, trained_model, unseen_photos):
    folder = unseen_photos["cats"][0].parent
    labels = {}
    for threshold in ("0", "1"):
        result = invoke(runner, folder, "--json", "--threshold", threshold, "--model",
                        trained_model)
        assert result.exit_code == 0
        labels[threshold] = {row["label"] for row in json.loads(result.stdout)}
    assert labels == {"0": {"dogs"}, "1": {"cats"}}  # p(dogs) > 0 always, > 1 never
    assert invoke(runner, folder, "--threshold", "1.5", "--model",
                  trained_model).exit_code == 2


def test_decide_matches_argmax_by_default_and_refuses_threshold_for_many_classes():
    scores = np.array([[0.5, 0.5], [0.3, 0.7], [0.8, 0.2]])
    assert decide(scores).tolist() == [0, 1, 0]
    assert decide(scores, 0.5).tolist() == [0, 1, 0]  # same rule, same ties
    assert decide(scores, 0.75).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="two-class"):
        decide(np.full((1, 3), 1 / 3), 0.5)


def test_top_k_with_three_classes(runner, three_class_model, tmp_path):
    photo = tmp_path / "green.png"
    cv2.imwrite(str(photo), np.full((30, 40, 3), (40, 200, 40), dtype=np.uint8))
    result = invoke(runner, photo, "--top", "2", "--json", "--model", three_class_model)
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["label"] == "greens" and len(row["probabilities"]) == 3
    top = row["top"]
    assert [t["label"] for t in top][0] == "greens" and len(top) == 2
    assert top[0]["probability"] >= top[1]["probability"]
    lines = invoke(runner, photo, "--top", "9", "--model", three_class_model).stdout
    assert lines.count("%") == 4  # the answer + all three classes (K is capped)
    refused = invoke(runner, photo, "--threshold", "0.5", "--model", three_class_model)
    assert refused.exit_code == 2 and "--threshold" in refused.output
    fast = Predictor(three_class_model, engine="onnx").probabilities(
        np.full((2, 24, 24, 3), 90, dtype=np.uint8))
    slow = Predictor(three_class_model, engine="keras").probabilities(
        np.full((2, 24, 24, 3), 90, dtype=np.uint8))
    np.testing.assert_allclose(fast, slow, atol=1e-4, rtol=0)


def test_predict_paths_streams(trained_model, unseen_photos):
    """An endless stream of paths still gives answers: nothing is listed or kept ahead."""
    endless = itertools.cycle(unseen_photos["cats"])
    answers = Predictor(trained_model).predict_paths(endless, batch_size=3)
    first = list(itertools.islice(answers, 7))
    assert [a.label for a in first] == ["cats"] * 7
    listed = expand_paths(itertools.cycle([unseen_photos["dogs"][0]]))
    assert next(listed) == (unseen_photos["dogs"][0], None)


def test_output_cut_short_by_its_reader_is_a_quiet_stop(trained_model, unseen_photos):
    """``catsdogs predict photos/ | head -1``: when the reader goes away, predict stops
    without a word on stderr and with the status of a program killed by SIGPIPE (141)."""
    import subprocess
    import sys

    photo = str(unseen_photos["cats"][0])
    # 3,000 answers, far more than a pipe holds, so predict is still writing when the
    # reader goes away
    child = subprocess.Popen(
        [sys.executable, "-m", "catsdogs", "predict", *[photo] * 3000, "--model",
         str(trained_model)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = child.stdout.readline()
    child.stdout.close()
    _, stderr = child.communicate(timeout=120)  # reads stderr to its end and closes it
    assert first.startswith(f"{photo}: cats (")
    assert child.returncode == 141, stderr
    assert stderr == ""


def test_names_that_are_not_utf8_are_printed_with_escapes(trained_model, unseen_photos,
                                                          tmp_path):
    """A Latin-1 file name under a UTF-8 locale whose streams are strict (the usual desktop
    setting): predict, evaluate and visualize write it as ``caf\\xe9.jpg``, and work."""
    import os
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "labelled"
    for kind in ("cats", "dogs"):
        (folder / kind).mkdir(parents=True)
        for photo in unseen_photos[kind]:
            shutil.copy(photo, folder / kind)
    odd = os.fsdecode(os.fsencode(folder / "cats") + b"/caf\xe9.jpg")
    shutil.copy(unseen_photos["cats"][0], odd)
    shown = f"{folder / 'cats'}/caf\\xe9.jpg"

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "catsdogs", *args, "--model",
                               str(trained_model)], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
        assert done.returncode == 0, done.stderr
        return done

    assert f"{shown}: cats (" in run("predict", odd).stdout
    assert f"\n{shown},cats," in run("predict", odd, "--csv").stdout
    report = tmp_path / "report"
    run("evaluate", str(folder), "--out", str(report))
    predictions = (report / "predictions.csv").read_text(encoding="utf-8")
    assert f"\n{shown},cats,cats," in predictions
    assert "caf\\xe9.jpg: cats (" in run("visualize", odd, "--out", str(tmp_path / "v")).stdout
