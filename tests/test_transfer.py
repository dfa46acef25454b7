"""train --backbone: Keras Applications backbones, their weights, two-stage fine-tuning, and
every command on such a model. Nothing here downloads: ImageNet weights are never fetched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from catsdogs.cli import cli
from catsdogs.config import ModelConfig
from tests.helpers import assert_clean_exit, write_photos


def keras_module():
    from catsdogs.backend import keras

    return keras()


@pytest.fixture
def prepared32(runner, tmp_path: Path) -> Path:
    """Cats and dogs prepared at 32 px, the smallest size MobileNetV3Small takes."""
    write_photos(tmp_path / "photos" / "cats", "cat", 12, seed=1)
    write_photos(tmp_path / "photos" / "dogs", "dog", 12, seed=2)
    out = tmp_path / "prepared32"
    result = runner.invoke(cli, ["prepare", str(tmp_path / "photos"), "--out", str(out),
                                 "--size", "32"])
    assert result.exit_code == 0, result.output
    return out


def test_backbone_needs_32_px_and_fine_tuning_needs_a_backbone(runner, prepared, tmp_path):
    with pytest.raises(ValueError, match="needs images of at least 32 px"):
        ModelConfig(backbone="efficientnet_b0", image_size=24)
    ModelConfig(backbone="efficientnet_b0", image_size=32, blocks=10)  # blocks are not used
    with pytest.raises(ValueError, match="needs RGB images; prepare them with --color rgb"):
        ModelConfig(backbone="mobilenet_v3_small", image_size=32, channels=1)
    out = tmp_path / "model"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 "--backbone", "mobilenet_v3_small", "--weights", "none"])
    assert_clean_exit(result, 1, "Error: --backbone mobilenet_v3_small needs images of at "
                                 "least 32 px, got 24 px; prepare them with --size 32 or more")
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 "--blocks", "1", "--fine-tune-epochs", "2", "--weights", "none"])
    assert "note: --weights is only used with --backbone" in result.output.splitlines()
    assert_clean_exit(result, 1, "Error: --fine-tune-epochs fine-tunes a pretrained backbone: "
                                 "use it with --backbone")
    assert not out.exists()
    result = runner.invoke(cli, ["train", "--backbone", "resnet9000"])
    assert result.exit_code == 2 and "resnet9000" in result.output


def test_imagenet_weights_without_network_is_one_line(runner, prepared32, tmp_path,
                                                       monkeypatch):
    keras = keras_module()

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    out = tmp_path / "model"
    result = runner.invoke(cli, ["train", "--data", str(prepared32), "--out", str(out),
                                 "--backbone", "mobilenet_v3_small", "--epochs", "1"])
    assert_clean_exit(result, 1)
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: cannot download the ImageNet weights of mobilenet_v3_small "
                            "([Errno -3] Temporary failure in name resolution); download ")
    assert ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in error)
    assert error.endswith("pass the file with --weights FILE, or use --weights none to start "
                          "from random weights")
    assert not out.exists() and list(tmp_path.glob(".model*")) == []


@pytest.mark.slow  # trains a model
def test_weights_file_is_loaded_and_a_wrong_one_refused(tmp_path):
    from catsdogs.backbone import build_backbone

    keras = keras_module()
    keras.utils.set_random_seed(1)
    source = build_backbone("mobilenet_v3_small", 32, "none")
    path = tmp_path / "mine.weights.h5"
    source.save_weights(str(path))
    keras.utils.set_random_seed(2)  # other random weights, which the file must replace
    fresh = build_backbone("mobilenet_v3_small", 32, "none")
    loaded = build_backbone("mobilenet_v3_small", 32, str(path))
    assert any(not np.array_equal(a, b)
               for a, b in zip(source.get_weights(), fresh.get_weights(), strict=True))
    for expected, got in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(expected, got)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_backbone("mobilenet_v3_small", 32, str(tmp_path / "gone.weights.h5"))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an HDF5 file")
    with pytest.raises(ValueError, match=r"cannot load .*garbage\.h5 into mobilenet_v3_small"):
        build_backbone("mobilenet_v3_small", 32, str(garbage))


def test_efficientnet_imagenet_release_gets_the_variance_keras_corrects(tmp_path):
    """Keras adds Rescaling(1/sqrt(std)) after EfficientNet's Normalization for its ImageNet
    weights; the same factor is folded into the variance instead."""
    from catsdogs.backbone import IMAGENET_STDDEV_RGB, correct_normalization

    keras = keras_module()
    model = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), include_top=False,
                                              weights=None)
    [norm] = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    norm.adapt_variance.assign(np.array([0.05, 0.06, 0.07], dtype="float32"))
    norm.finalize_state()
    pixels = np.full((1, 32, 32, 3), 0.5, dtype="float32")
    before = keras.ops.convert_to_numpy(norm(pixels))
    correct_normalization(model)
    after = keras.ops.convert_to_numpy(norm(pixels))
    np.testing.assert_allclose(after, before / np.sqrt(IMAGENET_STDDEV_RGB), rtol=1e-5)


def test_fine_tuning_unfreezes_the_top_but_not_batch_norm():
    from catsdogs.backbone import find_backbone, unfreeze_top
    from catsdogs.model import build_model

    keras = keras_module()
    model = build_model(ModelConfig(backbone="mobilenet_v3_small", image_size=32))
    backbone = find_backbone(model)
    assert backbone is not None and not backbone.trainable
    assert [w.path for w in model.trainable_weights] == ["catsdogs/output/kernel",
                                                         "catsdogs/output/bias"]
    count = unfreeze_top(model, 20)
    top = backbone.layers[-20:]
    assert count == sum(1 for layer in top if layer.weights
                        and not isinstance(layer, keras.layers.BatchNormalization))
    assert count > 0
    norms = [layer for layer in backbone.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)
    assert not any(layer.trainable for layer in backbone.layers[:-20] if layer.weights)
    # Batch normalization stays in inference mode: training=True changes neither its output
    # nor its moving statistics.
    batch = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    moving = [keras.ops.convert_to_numpy(layer.moving_mean) for layer in norms]
    trained = keras.ops.convert_to_numpy(backbone(batch, training=True))
    inferred = keras.ops.convert_to_numpy(backbone(batch, training=False))
    np.testing.assert_allclose(trained, inferred, rtol=1e-5, atol=1e-6)
    for layer, before in zip(norms, moving, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_mean), before)


@pytest.mark.slow
def test_efficientnet_model_exports_to_onnx(tmp_path):
    from catsdogs.export import export_onnx
    from catsdogs.model import build_model

    model = build_model(ModelConfig(backbone="efficientnet_b0", image_size=32))
    onnx = export_onnx(model, tmp_path / "model.onnx")
    assert onnx.get("file") == "model.onnx", onnx
    assert onnx["max_difference"] <= 1e-4


@pytest.mark.slow
def test_backbone_train_fine_tune_then_every_command(runner, prepared32, tmp_path):
    """Trained from a weights file the test writes: the layers below the fine-tuned top
    still hold the file's weights, and every command works on the model."""
    from catsdogs.backbone import build_backbone, find_backbone

    keras = keras_module()
    keras.utils.set_random_seed(5)
    source = build_backbone("mobilenet_v3_small", 32, "none")
    weights = tmp_path / "backbone.weights.h5"
    source.save_weights(str(weights))
    out = tmp_path / "model"
    result = runner.invoke(cli, [
        "train", "--data", str(prepared32), "--out", str(out), "--backbone",
        "mobilenet_v3_small", "--weights", str(weights), "--epochs", "1",
        "--fine-tune-epochs", "1", "--fine-tune-layers", "12", "--batch-size", "8",
        "--no-augment"])
    assert_clean_exit(result, 0)
    saved = find_backbone(keras.saving.load_model(out / "model.keras", compile=False))
    assert len(saved.layers) == len(source.layers)
    for layer, original in zip(saved.layers[:-12], source.layers, strict=False):
        for got, expected in zip(layer.get_weights(), original.get_weights(), strict=True):
            np.testing.assert_array_equal(got, expected)  # frozen in both stages
    assert any(not np.array_equal(layer.get_weights()[0], original.get_weights()[0])
               for layer, original in zip(saved.layers[-12:], source.layers[-12:], strict=True)
               if layer.trainable_weights)  # fine-tuned
    lines = result.output.splitlines()
    assert any(line.startswith("│ MobileNetV3Small (Functional)") for line in lines)
    assert "Fine-tuning: the top of the backbone is trained too from here, at " \
           "--fine-tune-learning-rate." in lines
    assert [line[:12] for line in lines if line.startswith("epoch")] == ["epoch   1/2 ",
                                                                         "epoch   2/2 "]
    info = json.loads((out / "model.json").read_text())
    assert info["model"]["backbone"] == "mobilenet_v3_small"
    assert info["training"]["weights"] == str(weights) and info["fine_tuned_layers"] > 0
    assert info["onnx"]["file"] == "model.onnx"
    history = (out / "history.csv").read_text().splitlines()
    rates = [float(row.split(",")[history[0].split(",").index("learning_rate")])
             for row in history[1:]]
    assert rates[1] == pytest.approx(1e-5)  # the fine-tuning rate

    photo = tmp_path / "photos" / "cats" / "cat_0.jpg"
    answers = {}
    for engine in ("onnx", "keras"):
        result = runner.invoke(cli, ["predict", str(photo), "--model", str(out), "--json",
                                     "--engine", engine])
        assert_clean_exit(result, 0)
        answers[engine] = json.loads(result.stdout)[0]["probabilities"]["cats"]
    assert answers["onnx"] == pytest.approx(answers["keras"], abs=1e-4)

    result = runner.invoke(cli, ["summary", "--backbone", "mobilenet_v3_small", "--size", "32"])
    assert_clean_exit(result, 0)
    assert "MobileNetV3Small (Functional)" in result.output

    result = runner.invoke(cli, ["visualize", str(photo), "--model", str(out), "--out",
                                 str(tmp_path / "why")])
    assert_clean_exit(result, 0)
    drawn = sorted(p.name for p in (tmp_path / "why").iterdir())
    features = [name for name in drawn if name.startswith("features_")]
    assert 2 <= len(features) <= 8 and "features_1_conv.png" in features
    assert {"filters.png", "heatmap.png"} <= set(drawn)

    result = runner.invoke(cli, ["evaluate", str(tmp_path / "photos"), "--model", str(out),
                                 "--out", str(tmp_path / "evaluation")])
    assert_clean_exit(result, 0)
    assert "Evaluated 24 photos" in result.output


@pytest.mark.slow
def test_a_run_interrupted_while_fine_tuning_resumes_in_that_stage(prepared32, tmp_path,
                                                                   monkeypatch):
    """The checkpoint of the fine-tuning stage is restored into the fine-tuning stage (the
    top of the backbone unfrozen, its optimizer, its rate): the resumed epochs give the same
    metrics as an uninterrupted run."""
    from catsdogs import export
    from catsdogs.config import TrainConfig
    from catsdogs.train import train
    from tests.test_train_control import InterruptAfter

    # Five trainings: the ONNX export (about 12 s each here) is tested elsewhere.
    monkeypatch.setattr(export, "export_onnx",
                        lambda model, path: {"file": None, "note": "skipped by the test"})

    model = ModelConfig(backbone="mobilenet_v3_small", dropout_rate=0.0)
    config = TrainConfig(epochs=1, fine_tune_epochs=2, fine_tune_layers=12, batch_size=8,
                         augment=False, weights="none", seed=7)
    whole = train(prepared32, tmp_path / "whole", model, config)
    stopped = train(prepared32, tmp_path / "split", model, config,
                    callbacks=[InterruptAfter(2)])
    assert stopped.interrupted and stopped.epochs_run == 2
    resumed = train(prepared32, tmp_path / "split", model, config, resume=True)
    assert not resumed.interrupted and resumed.resumed_from == 2 and resumed.fine_tune_from == 2
    assert [row["learning_rate"] for row in resumed.history[1:]] == pytest.approx([1e-5, 1e-5])
    for a, b in zip(whole.history, resumed.history, strict=True):
        for key in ("loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), (key, a, b)
    info = json.loads((tmp_path / "split" / "model.json").read_text())
    assert info["fine_tuned_layers"] > 0 and info["epochs_run"] == 3
    # Interrupted at the end of the frozen stage: the resumed run starts the second stage
    # from the best epoch, as an uninterrupted run does.
    train(prepared32, tmp_path / "boundary", model, config, callbacks=[InterruptAfter(1)])
    resumed = train(prepared32, tmp_path / "boundary", model, config, resume=True)
    assert resumed.resumed_from == 1 and resumed.epochs_run == 3
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), (a, b)


def test_the_transfer_recipe(runner):
    result = runner.invoke(cli, ["train", "--config", "transfer", "--print-config"])
    assert_clean_exit(result, 0)
    for line in ('backbone = "mobilenet_v3_small"', "epochs = 10", "fine-tune-epochs = 5",
                 'weights = "imagenet"'):
        assert line in result.output.splitlines(), line
    result = runner.invoke(cli, ["summary", "--config", "transfer", "--size", "64"])
    assert_clean_exit(result, 0)
    assert "MobileNetV3Small (Functional)" in result.output  # built without downloading
