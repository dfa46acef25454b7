"""Textbook networks by flags: the classic article, an MNIST ConvNet and LeNet, layer by layer.

Per-block values (``--filters 6,16``, ``--kernel-size 5,5``, ``--padding same,valid``),
``--pool``, ``--channels``, ``--classes`` and the ``sigmoid``/``linear`` activations.
"""

from __future__ import annotations

import json
import re

import pytest

from catsdogs.cli import cli
from catsdogs.config import ModelConfig, PerBlockError
from tests.helpers import write_photos

ARTICLE = ["--size", "300", "--blocks", "1", "--filters", "10", "--kernel-size", "5",
           "--dense", "0", "--dropout", "0"]
MNIST = ["--size", "28", "--channels", "1", "--classes", "10", "--blocks", "2", "--filters",
         "8", "--kernel-size", "3", "--padding", "same", "--dense", "0", "--dropout", "0",
         "--no-batch-norm"]
LENET = ["--size", "28", "--channels", "1", "--classes", "10", "--blocks", "2", "--filters",
         "6,16", "--kernel-size", "5", "--padding", "same,valid", "--activation", "sigmoid",
         "--pool", "avg", "--dense", "120,84", "--dropout", "0", "--no-batch-norm"]

# (name, type, output shape, parameters) of each row of the summary table.
ARTICLE_LAYERS = [
    ("rescale", "Rescaling", "(None, 300, 300, 3)", "0"),
    ("block1_conv", "Conv2D", "(None, 296, 296, 10)", "760"),
    ("block1_pool", "MaxPooling2D", "(None, 148, 148, 10)", "0"),
    ("flatten", "Flatten", "(None, 219040)", "0"),
    ("output", "Dense", "(None, 1)", "219,041"),
]
MNIST_LAYERS = [
    ("rescale", "Rescaling", "(None, 28, 28, 1)", "0"),
    ("block1_conv", "Conv2D", "(None, 28, 28, 8)", "80"),
    ("block1_pool", "MaxPooling2D", "(None, 14, 14, 8)", "0"),
    ("block2_conv", "Conv2D", "(None, 14, 14, 16)", "1,168"),
    ("block2_pool", "MaxPooling2D", "(None, 7, 7, 16)", "0"),
    ("flatten", "Flatten", "(None, 784)", "0"),
    ("output", "Dense", "(None, 10)", "7,850"),
]
LENET_LAYERS = [
    ("rescale", "Rescaling", "(None, 28, 28, 1)", "0"),
    ("block1_conv", "Conv2D", "(None, 28, 28, 6)", "156"),
    ("block1_pool", "AveragePooling2D", "(None, 14, 14, 6)", "0"),
    ("block2_conv", "Conv2D", "(None, 10, 10, 16)", "2,416"),
    ("block2_pool", "AveragePooling2D", "(None, 5, 5, 16)", "0"),
    ("flatten", "Flatten", "(None, 400)", "0"),
    ("dense1", "Dense", "(None, 120)", "48,120"),
    ("dense2", "Dense", "(None, 84)", "10,164"),
    ("output", "Dense", "(None, 10)", "850"),
]
ROW = re.compile(r"^│ (\S+) \((\w+)\)\s*│ (\(.*?\))\s*│\s*([\d,]+) │$")


def summary_of(runner, args: list[str]) -> tuple[list[tuple[str, ...]], str]:
    """The rows of ``catsdogs summary ARGS``'s layer table, and its total parameter count."""
    result = runner.invoke(cli, ["summary", *args])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    rows = [found.groups() for found in map(ROW.match, result.output.splitlines()) if found]
    total = re.search(r"^ Total params: ([\d,]+) ", result.output, re.MULTILINE)
    assert total is not None, result.output
    return rows, total.group(1)


@pytest.mark.parametrize("args, layers, total", [
    (ARTICLE, ARTICLE_LAYERS, "219,801"),
    (MNIST, MNIST_LAYERS, "9,098"),
    (LENET, LENET_LAYERS, "61,706"),
], ids=["article", "mnist", "lenet"])
def test_textbook_networks_by_flags(runner, args, layers, total):
    assert summary_of(runner, args) == (layers, total)


@pytest.mark.parametrize("name, layers, total", [
    ("article", ARTICLE_LAYERS, "219,801"),
    ("mnist", MNIST_LAYERS, "9,098"),
    ("lenet", LENET_LAYERS, "61,706"),
])
def test_textbook_networks_as_builtin_recipes(runner, name, layers, total):
    assert summary_of(runner, ["--config", name]) == (layers, total)


def test_the_activation_is_that_of_every_conv_and_hidden_dense_layer():
    from catsdogs.model import build_model

    model = build_model(ModelConfig(
        image_size=28, channels=1, num_classes=10, blocks=2, filters=(6, 16), kernel_size=5,
        padding=("same", "valid"), activation="sigmoid", pool="avg", dense=(120, 84),
        dropout_rate=0, batch_norm=False))
    activations = {layer.name: layer.activation.__name__ for layer in model.layers
                   if hasattr(layer, "activation")}
    assert activations == {"block1_conv": "sigmoid", "block2_conv": "sigmoid",
                           "dense1": "sigmoid", "dense2": "sigmoid", "output": "softmax"}
    linear = build_model(ModelConfig(image_size=16, blocks=1, filters=2, activation="linear"))
    assert linear.get_layer("block1_conv").activation.__name__ == "linear"


def test_per_block_values_and_a_single_value():
    config = ModelConfig(image_size=64, blocks=3, filters=8, kernel_size=(5, 3, 3),
                         padding="same")
    assert config.block_filters() == (8, 16, 32)  # one number: doubling, as before
    assert config.block_kernel_sizes() == (5, 3, 3)
    assert config.block_paddings() == ("same", "same", "same")
    config = ModelConfig(image_size=64, blocks=2, filters=(32, 8), padding=("valid", "same"))
    assert config.block_filters() == (32, 8)
    assert config.block_paddings() == ("valid", "same")


@pytest.mark.parametrize("args, option, detail", [
    (["--blocks", "2", "--filters", "6,16,32"], "--filters", "3 values for 2 blocks"),
    (["--blocks", "3", "--kernel-size", "5,5"], "--kernel-size", "2 values for 3 blocks"),
    (["--blocks", "1", "--padding", "same,valid"], "--padding", "2 values for 1 block"),
])
@pytest.mark.parametrize("command", ["summary", "train"])
def test_a_list_of_the_wrong_length_is_a_usage_error_naming_the_option(
        runner, tmp_path, command, args, option, detail):
    extra = ["--data", str(tmp_path / "none"), "--print-config"] if command == "train" else []
    result = runner.invoke(cli, [command, *args, *extra])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[-1] == (
        f"Error: Invalid value for '{option}': {detail}: give one value, or one per block")


def test_a_recipe_list_of_the_wrong_length_names_the_setting(runner, tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('blocks = 3\npadding = ["same", "valid"]\n', encoding="utf-8")
    result = runner.invoke(cli, ["summary", "--config", str(recipe)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[-1] == (
        "Error: Invalid value for '--padding': 2 values for 3 blocks: give one value, or one "
        "per block")
    with pytest.raises(PerBlockError, match=r"^filters: 2 values for 3 blocks"):
        ModelConfig(blocks=3, filters=(4, 8))


@pytest.mark.parametrize("args, message", [
    (["--padding", "same,full"], "Invalid value for '--padding': 'full' is not one of "
                                 "'valid', 'same'."),
    (["--pool", "min"], "Invalid value for '--pool': 'min' is not one of 'max', 'avg'."),
    (["--channels", "2"], "Invalid value for '--channels': '2' is not one of '1', '3'."),
    (["--filters", "6,0"], "Invalid value for '--filters': filters must be at least 1, got "
                           "(6, 0)"),
    (["--kernel-size", "5,x"], "Invalid value for '--kernel-size': --kernel-size takes "
                               "comma-separated whole numbers, got '5,x'"),
])
def test_bad_values_are_usage_errors(runner, args, message):
    result = runner.invoke(cli, ["summary", *args])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[-1] == f"Error: {message}"


def test_per_block_settings_round_trip_through_print_config(runner, tmp_path):
    first = runner.invoke(cli, ["summary", *LENET, "--print-config"])
    assert first.exit_code == 0, first.output
    for line in ("channels = 1", "filters = [6, 16]", 'padding = ["same", "valid"]',
                 'pool = "avg"', 'activation = "sigmoid"', "kernel-size = 5"):
        assert line + "\n" in first.output
    recipe = tmp_path / "lenet.toml"
    recipe.write_text(first.output, encoding="utf-8")
    again = runner.invoke(cli, ["summary", "--config", str(recipe), "--print-config"])
    assert again.output == first.output
    assert summary_of(runner, ["--config", str(recipe)]) == (LENET_LAYERS, "61,706")


def test_model_json_round_trips_and_old_model_json_still_loads():
    lenet = ModelConfig(image_size=28, channels=1, num_classes=10, blocks=2, filters=(6, 16),
                        kernel_size=5, padding=("same", "valid"), pool="avg", dense=(120, 84))
    data = json.loads(json.dumps(lenet.to_dict()))
    assert data["filters"] == [6, 16] and data["padding"] == ["same", "valid"]
    assert ModelConfig.from_dict(data) == lenet
    old = {"image_size": 24, "num_classes": 2, "blocks": 1, "filters": 4, "kernel_size": 3,
           "pool_size": 2, "padding": "valid", "activation": "relu", "dense": [],
           "dropout_rate": 0.0, "batch_norm": None, "head": "flatten"}
    config = ModelConfig.from_dict(old)
    assert (config.filters, config.channels, config.pool) == (4, 3, "max")
    assert config.block_filters() == (4,)


def test_train_checks_the_blocks_against_the_dataset_not_a_default_size(runner, prepared,
                                                                         tmp_path):
    # 8 blocks with same padding fit no 128 px image, the size summary assumes; train does
    # not assume one: it checks the blocks against the dataset's size when it reads it.
    args = ["train", "--blocks", "8", "--padding", "same"]
    printed = runner.invoke(cli, [*args, "--data", str(tmp_path / "none"), "--print-config"])
    assert printed.exit_code == 0, printed.output
    result = runner.invoke(cli, [*args, "--data", str(prepared), "--out",
                                 str(tmp_path / "model")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[-1] == (
        "Error: 8 blocks shrink a 24px image to nothing at block 5; use fewer --blocks, a "
        "larger --size or --padding same")
    assert not (tmp_path / "model").exists()


# --- Grayscale end to end: prepare --color gray, then train, predict, evaluate, visualize.

def test_a_gray_dataset_is_the_rgb_one_converted_by_the_loader(runner, tiny_dataset, tmp_path):
    import cv2
    import numpy as np

    from data_prep.images import load_image
    from data_prep.store import read_dataset

    for color in ("rgb", "gray"):
        result = runner.invoke(cli, ["prepare", str(tiny_dataset), "--out",
                                     str(tmp_path / color), "--size", "24", "--color", color])
        assert result.exit_code == 0, result.output
    assert result.output.startswith("Prepared 24 photos (24x24, stretch, gray) in ")
    rgb, gray = read_dataset(tmp_path / "rgb"), read_dataset(tmp_path / "gray")
    assert (gray.channels, gray.info["channels"], gray.info["channel_order"]) == (1, 1, "gray")
    assert (rgb.channels, rgb.info["channel_order"]) == (3, "RGB")
    assert gray.images.shape == (24, 24, 24, 1) and gray.images.dtype == np.uint8
    converted = np.stack([cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in rgb.images])
    assert np.array_equal(gray.images[..., 0], converted)
    first = tiny_dataset / gray.manifest["path"][0].split("/photos/")[-1]
    assert np.array_equal(load_image(first, 24, channels=1), gray.images[0])
    # The same source prepared again in gray is reused; in colour it is another dataset.
    again = runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(tmp_path / "gray"),
                                "--size", "24", "--color", "gray"])
    assert "is already prepared from this source with these options: reused." in again.output
    other = runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(tmp_path / "gray"),
                                "--size", "24"])
    assert other.exit_code == 1 and "--force" in other.output


def test_datasets_and_models_from_before_gray_are_rgb(prepared, tmp_path):
    from catsdogs.model_folder import read_model_info
    from data_prep.store import read_dataset

    info_path = prepared / "dataset.json"
    info = json.loads(info_path.read_text())
    del info["channels"]
    info_path.write_text(json.dumps(info))
    assert read_dataset(prepared).channels == 3
    model = tmp_path / "old_model"
    model.mkdir()
    (model / "model.json").write_text(json.dumps(
        {"format": "catsdogs-model/1", "classes": ["cats", "dogs"], "image_size": 24}))
    assert read_model_info(model).channels == 3
    (model / "model.json").write_text(json.dumps(
        {"format": "catsdogs-model/1", "classes": ["cats", "dogs"], "image_size": 24,
         "channels": 2}))
    with pytest.raises(ValueError, match="'channels' must be 1 \\(gray\\) or 3 \\(RGB\\)"):
        read_model_info(model)


@pytest.mark.slow
def test_a_gray_dataset_trains_predicts_and_evaluates(runner, tiny_dataset, unseen_photos,
                                                      tmp_path):
    data, model = tmp_path / "gray", tmp_path / "model"
    result = runner.invoke(cli, ["prepare", str(tiny_dataset), "--out", str(data), "--size",
                                 "24", "--color", "gray", "--test-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["train", "--data", str(data), "--out", str(model),
                                 "--blocks", "2", "--filters", "4,8", "--padding", "same",
                                 "--dense", "0", "--dropout", "0", "--epochs", "1",
                                 "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "│ rescale (Rescaling)              │ (None, 24, 24, 1)  " in result.output
    info = json.loads((model / "model.json").read_text())
    assert (info["channels"], info["channel_order"], info["model"]["channels"]) == (1, "gray", 1)
    assert info["onnx"]["file"] == "model.onnx"  # the export follows the channels too

    # Colour photos, converted to gray by the loader; the ONNX and Keras engines agree.
    photos = [str(path) for path in unseen_photos["cats"] + unseen_photos["dogs"]]
    answers = {}
    for engine in ("onnx", "keras"):
        result = runner.invoke(cli, ["predict", *photos, "--model", str(model), "--json",
                                     "--engine", engine])
        assert result.exit_code == 0, result.output
        answers[engine] = json.loads(result.output)
    assert [row["path"] for row in answers["onnx"]] == photos
    for onnx, keras in zip(answers["onnx"], answers["keras"], strict=True):
        assert onnx["label"] == keras["label"] and onnx["label"] in ("cats", "dogs")
        assert onnx["probability"] == pytest.approx(keras["probability"], abs=1e-4)

    labelled = tmp_path / "labelled"
    write_photos(labelled / "cats", "cat", 4, seed=31)
    write_photos(labelled / "dogs", "dog", 4, seed=32)
    for source, count in ((data, 6), (labelled, 8)):
        out = tmp_path / f"evaluation_{count}"
        result = runner.invoke(cli, ["evaluate", str(source), "--model", str(model), "--out",
                                     str(out)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Evaluated {count} photos from {source}")
        metrics = json.loads((out / "metrics.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert (out / "mistakes.png").is_file()

    result = runner.invoke(cli, ["visualize", photos[0], "--model", str(model), "--out",
                                 str(tmp_path / "visualization")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "visualization" / "heatmap.png").is_file()


def test_a_model_json_whose_channels_are_not_the_models_is_one_clear_line(
        runner, trained_model, unseen_photos, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    meta = model / "model.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "channels": 1}))
    photo = str(unseen_photos["cats"][0])
    result = runner.invoke(cli, ["predict", photo, "--model", str(model), "--engine", "keras"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: {model}/model.json says 24px gray images but the model expects input "
        "(24, 24, 3)")
    result = runner.invoke(cli, ["predict", photo, "--model", str(model), "--engine", "onnx"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: {model}/model.onnx expects input (24, 24, 3) but model.json says 24x24 gray "
        "images")
