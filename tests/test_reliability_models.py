"""Hostile model folders and datasets: code in a model.keras is never run, a wrong
model.json is one clear line, nothing is ever unpickled."""

from __future__ import annotations

import ast
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from catsdogs.cli import cli
from tests.helpers import ROOT, assert_clean_exit

# The lambda touches the file named by $CATSDOGS_TEST_MARKER whenever it runs.
SIDE_EFFECT = (
    "lambda x: (open(__import__('os').environ['CATSDOGS_TEST_MARKER'], 'a').close() "
    "if 'CATSDOGS_TEST_MARKER' in __import__('os').environ else None, x * 2)[1]"
)


def last_line(result) -> str:
    """The last line a failed command printed, after checking that it failed cleanly."""
    assert_clean_exit(result, 1)
    return result.output.strip().splitlines()[-1]


@pytest.fixture
def model_copy(tmp_path: Path, trained_model: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(trained_model, folder)
    return folder


def rewrite_config(folder: Path, change) -> None:
    """Rewrite config.json inside ``folder/model.keras`` with ``change(config)``."""
    path = folder / "model.keras"
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_a_model_with_a_lambda_layer_is_refused_and_its_code_never_runs(
    runner, tmp_path, model_copy, unseen_photos, monkeypatch
):
    from catsdogs.backend import keras as import_keras

    keras = import_keras()
    from keras import layers

    model = keras.Sequential([
        keras.Input((24, 24, 3)),
        layers.Lambda(eval(SIDE_EFFECT)),
        layers.Flatten(),
        layers.Dense(1, activation="sigmoid"),
    ])
    model.save(model_copy / "model.keras")  # model.json (24px, 2 classes) matches it
    marker = tmp_path / "lambda-ran"
    monkeypatch.setenv("CATSDOGS_TEST_MARKER", str(marker))

    result = runner.invoke(cli, ["predict", "--engine", "keras", str(unseen_photos["cats"][0]),
                                 "--model", str(model_copy)])
    assert result.exit_code == 1
    assert last_line(result) == (
        f"Error: cannot load {model_copy / 'model.keras'}: it contains a Lambda layer "
        "(arbitrary code), refused in safe mode"
    )
    assert not marker.exists()

    # Keras' own safe mode refuses it too (second line of defence)...
    with pytest.raises(ValueError, match="Lambda"):
        keras.saving.load_model(model_copy / "model.keras", safe_mode=True)
    assert not marker.exists()
    # ...and the marker does work: loading it unsafely runs the lambda.
    keras.saving.load_model(model_copy / "model.keras", safe_mode=False)
    assert marker.exists()


FUNCTION_REFERENCE = {"module": "keras.models", "class_name": "function",
                      "config": "load_model", "registered_name": "function"}


@pytest.mark.parametrize("tamper, message", [
    (lambda config: config["config"]["layers"][1].update(module="os", class_name="system"),
     "it refers to code outside Keras (module 'os'), refused"),
    (lambda config: config["config"]["layers"][1]["config"].update(
        activation=FUNCTION_REFERENCE),
     "it contains a 'function' object (arbitrary code), refused in safe mode"),
    (lambda config: config["config"]["layers"].insert(
        1, {"module": "keras.layers", "class_name": "TFSMLayer", "config": {}}),
     "it contains a 'TFSMLayer' object (arbitrary code), refused in safe mode"),
])
def test_a_tampered_model_config_is_refused(runner, model_copy, unseen_photos, tamper,
                                            message):
    rewrite_config(model_copy, tamper)
    result = runner.invoke(cli, ["predict", "--engine", "keras", str(unseen_photos["cats"][0]),
                                 "--model", str(model_copy)])
    assert result.exit_code == 1
    assert last_line(result) == f"Error: cannot load {model_copy / 'model.keras'}: {message}"


@pytest.mark.parametrize("content, message", [
    (b"", "not a Keras archive (File is not a zip file)"),
    (os.urandom(4096), "not a Keras archive (File is not a zip file)"),
    ("no-config", "not a Keras archive (no config.json)"),
    ("deep", "config.json is nested too deeply"),
])
def test_a_broken_model_archive_is_one_clear_line(runner, model_copy, unseen_photos, content,
                                                  message):
    path = model_copy / "model.keras"
    if content == "no-config":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("metadata.json", "{}")
    elif content == "deep":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("config.json", "[" * 200_000 + "]" * 200_000)
    else:
        path.write_bytes(content)
    result = runner.invoke(cli, ["predict", "--engine", "keras", str(unseen_photos["cats"][0]),
                                 "--model", str(model_copy)])
    assert result.exit_code == 1
    assert last_line(result) == f"Error: cannot load {path}: {message}"


def test_a_truncated_model_archive_is_one_clear_line(runner, model_copy, unseen_photos):
    path = model_copy / "model.keras"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = runner.invoke(cli, ["predict", "--engine", "keras", str(unseen_photos["cats"][0]),
                                 "--model", str(model_copy)])
    assert result.exit_code == 1
    assert last_line(result).startswith(f"Error: cannot load {path}: ")


WRONG_MODEL_JSON = [
    ({"classes": "cats,dogs"}, "'classes' must be a list of two or more distinct names"),
    ({"classes": [1, 2]}, "'classes' must be a list of two or more distinct names"),
    ({"classes": ["cats", "cats"]}, "'classes' must be a list of two or more distinct names"),
    ({"image_size": "24"}, "'image_size' must be a whole number from 8 to 4096"),
    ({"image_size": True}, "'image_size' must be a whole number from 8 to 4096"),
    ({"image_size": 24.0}, "'image_size' must be a whole number from 8 to 4096"),
    ({"image_size": 10**12}, "'image_size' must be a whole number from 8 to 4096"),
    ({"resize_policy": ["stretch"]}, "'resize_policy' must be one of"),
    ({"resize_policy": "zoom"}, "'resize_policy' must be one of"),
    ({"format": "something-else/9"}, "'format' must be 'catsdogs-model/1'"),
]


@pytest.mark.parametrize("change, message", WRONG_MODEL_JSON)
def test_model_json_with_wrong_types_is_one_clear_line(runner, model_copy, unseen_photos,
                                                       change, message):
    meta = model_copy / "model.json"
    info = json.loads(meta.read_text())
    info.update(change)
    meta.write_text(json.dumps(info))
    result = runner.invoke(cli, ["predict", "--engine", "keras", str(unseen_photos["cats"][0]),
                                 "--model", str(model_copy)])
    assert result.exit_code == 1
    assert last_line(result).startswith(f"Error: {meta}: {message}")


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "must hold a JSON object"),
    ("{not json", "cannot read"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("\x00\xff binary", "cannot read"),
])
def test_model_json_that_is_not_an_object_is_one_clear_line(runner, model_copy, unseen_photos,
                                                            text, message):
    (model_copy / "model.json").write_text(text, encoding="latin1")
    result = runner.invoke(cli, ["predict", "--engine", "keras", str(unseen_photos["cats"][0]),
                                 "--model", str(model_copy)])
    assert result.exit_code == 1
    assert message in last_line(result)


def test_image_size_that_does_not_match_the_model(runner, model_copy, unseen_photos):
    meta = model_copy / "model.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "image_size": 32}))
    result = runner.invoke(cli, ["predict", "--engine", "keras", str(unseen_photos["cats"][0]),
                                 "--model", str(model_copy)])
    assert result.exit_code == 1
    assert last_line(result) == (
        f"Error: {model_copy}/model.json says 32px images but the model expects input "
        "(24, 24, 3)"
    )


def test_onnx_model_that_does_not_match_model_json(runner, model_copy, unseen_photos):
    meta = model_copy / "model.json"
    original = json.loads(meta.read_text())
    photo = str(unseen_photos["cats"][0])
    meta.write_text(json.dumps({**original, "image_size": 32}))
    result = runner.invoke(cli, ["predict", "--engine", "onnx", photo, "--model",
                                 str(model_copy)])
    assert result.exit_code == 1
    assert last_line(result) == (
        f"Error: {model_copy}/model.onnx expects input (24, 24, 3) but model.json says "
        "32x32 RGB images"
    )
    meta.write_text(json.dumps({**original, "classes": ["cats", "dogs", "birds"]}))
    result = runner.invoke(cli, ["predict", "--engine", "onnx", photo, "--model",
                                 str(model_copy)])
    assert result.exit_code == 1
    assert last_line(result) == f"Error: {model_copy}/model.onnx: 1 outputs for 3 classes"


def test_class_count_that_does_not_match_the_model(runner, model_copy, unseen_photos):
    meta = model_copy / "model.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()),
                                "classes": ["cats", "dogs", "birds"]}))
    result = runner.invoke(cli, ["predict", "--engine", "keras", str(unseen_photos["cats"][0]),
                                 "--model", str(model_copy)])
    assert result.exit_code == 1
    assert last_line(result) == f"Error: {model_copy}: model has 1 outputs for 3 classes"


class Boom:
    """Unpickling this touches a marker file: proof that something was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "a"))


def test_a_pickled_images_npy_is_never_unpickled(runner, tmp_path, trained_model):
    data = tmp_path / "prepared"
    shutil.copytree(trained_model.parent / "prepared", data)
    marker = tmp_path / "unpickled"
    hostile = np.empty(24, dtype=object)
    hostile[:] = [Boom(str(marker))] * 24
    np.save(data / "images.npy", hostile, allow_pickle=True)
    result = runner.invoke(cli, ["train", "--data", str(data), "--out",
                                 str(tmp_path / "model"), "--blocks", "1"])
    assert result.exit_code == 1
    assert last_line(result).startswith(f"Error: broken prepared dataset at {data}: ")
    assert not marker.exists()
    assert not (tmp_path / "model").exists()


def test_dataset_json_with_wrong_types_is_one_clear_line(runner, tmp_path, trained_model):
    data = tmp_path / "prepared"
    shutil.copytree(trained_model.parent / "prepared", data)
    meta = data / "dataset.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "image_size": "24"}))
    result = runner.invoke(cli, ["train", "--data", str(data), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert last_line(result) == f"Error: {meta}: 'image_size' must be a whole number"


def test_no_code_path_unpickles():
    """No pickle, joblib, dill, marshal, shelve or torch.load in catsdogs; every ``np.load``
    call refuses pickles explicitly; nothing passes ``allow_pickle=True``."""
    unpicklers = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal",
                  "shelve"}
    sources = [*(ROOT / "catsdogs").rglob("*.py"), *(ROOT / "data_prep").rglob("*.py")]
    assert sources
    np_loads = 0
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
                assert not names & unpicklers, f"{path}:{node.lineno} imports {names}"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in unpicklers, f"{path}:{node.lineno}"
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            if "allow_pickle" in keywords:
                value = keywords["allow_pickle"]
                assert isinstance(value, ast.Constant) and value.value is False, (
                    f"{path}:{node.lineno} allow_pickle must be False"
                )
            function = node.func
            assert not (isinstance(function, ast.Attribute) and function.attr == "load"
                        and isinstance(function.value, ast.Name)
                        and function.value.id == "torch"), f"{path}:{node.lineno} torch.load"
            if (isinstance(function, ast.Attribute) and function.attr == "load"
                    and isinstance(function.value, ast.Name)
                    and function.value.id in ("np", "numpy")):
                np_loads += 1
                assert "allow_pickle" in keywords, f"{path}:{node.lineno} np.load without " \
                                                   "allow_pickle=False"
    assert np_loads >= 1  # read_dataset's, at least
