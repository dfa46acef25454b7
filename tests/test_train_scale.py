"""--train-scale: training on smaller photos than the model predicts on, and --head auto."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catsdogs.cli import cli
from catsdogs.config import AUTO_TRAIN_SCALE, ModelConfig, TrainConfig
from catsdogs.data import ImageBatches, augment_batch, resize_batch
from catsdogs.model import build_model, build_trainer, summary_lines
from tests.helpers import TINY_TRAIN, assert_clean_exit


def test_head_auto_is_global_average_pooling_from_three_blocks():
    assert ModelConfig(blocks=2, image_size=32).head_type == "flatten"
    assert ModelConfig(blocks=3, image_size=32).head_type == "gap"
    assert ModelConfig(blocks=5, head="flatten").head_type == "flatten"
    assert ModelConfig(blocks=1, image_size=32, head="gap").head_type == "gap"
    names = [layer.name for layer in build_model(ModelConfig()).layers]
    assert "gap" in names and "flatten" not in names
    assert ModelConfig().any_input_size
    assert not ModelConfig(blocks=2, image_size=32).any_input_size
    assert not ModelConfig(backbone="mobilenet_v3_small").any_input_size


def test_train_scale_auto_is_0_8_for_a_model_of_any_input_size_and_1_otherwise():
    gap = ModelConfig(image_size=160)
    flatten = ModelConfig(image_size=160, head="flatten")
    assert TrainConfig().resolved_train_scale(gap) == AUTO_TRAIN_SCALE == 0.8
    assert TrainConfig().train_size(gap) == 128
    assert TrainConfig().resolved_train_scale(flatten) == 1.0
    assert TrainConfig().train_size(flatten) == 160
    assert TrainConfig(train_scale=0.75).train_size(gap) == 120
    assert TrainConfig(train_scale=1).train_size(flatten) == 160


def test_a_scale_below_one_is_refused_for_a_fixed_input_size_or_too_small_photos():
    with pytest.raises(ValueError, match=r"^--train-scale 0.8 needs a model that takes any "
                       r"input size, and a Flatten head fixes it: use --head gap, or "
                       r"--train-scale 1$"):
        TrainConfig(train_scale=0.8).train_size(ModelConfig(image_size=160, head="flatten"))
    with pytest.raises(ValueError, match="--backbone mobilenet_v3_small fixes it"):
        TrainConfig(train_scale=0.5).train_size(
            ModelConfig(image_size=160, backbone="mobilenet_v3_small"))
    with pytest.raises(ValueError, match=r"^--train-scale 0.3 trains on 19px photos: 5 blocks "
                       r"shrink a 19px image to nothing at block 5"):
        TrainConfig(train_scale=0.3).train_size(ModelConfig(image_size=64, padding="same"))


def test_a_model_json_from_before_train_scale_trained_at_full_size():
    old = TrainConfig().to_dict()
    del old["train_scale"]
    assert TrainConfig.from_dict(old).train_scale == 1.0
    assert TrainConfig.from_dict(TrainConfig().to_dict()).train_scale == 0.0  # auto, kept


def photos(count: int = 6, side: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def test_batches_come_out_at_the_train_size_with_and_without_augmentation():
    images, labels = photos(), np.array([0, 1] * 3)
    augmented = ImageBatches(images, labels, np.arange(6), 4, shuffle=True, seed=1,
                             augment=True, size=19)
    x, y = augmented[0]
    assert x.shape == (4, 19, 19, 3) and x.dtype == np.uint8 and y.shape == (4, 1)
    assert np.array_equal(x, ImageBatches(images, labels, np.arange(6), 4, shuffle=True,
                                          seed=1, augment=True, size=19)[0][0])
    plain = ImageBatches(images, labels, np.arange(6), 4, size=12)[0][0]
    assert plain.shape == (4, 12, 12, 3)
    # area averaging: each 2×2 square of the stored photo becomes one pixel, its mean
    expected = images[:4].reshape(4, 12, 2, 12, 2, 3).mean(axis=(2, 4))
    assert np.abs(plain.astype(float) - expected).max() <= 1
    assert ImageBatches(images, labels, np.arange(6), 4)[0][0].shape == (4, 24, 24, 3)
    with pytest.raises(ValueError, match="size must be at least 1 pixel, got 0"):
        ImageBatches(images, labels, np.arange(6), 4, size=0)


def test_crops_resized_to_a_smaller_side_keep_a_flat_photo_flat():
    images = np.zeros((8, 40, 40, 3), dtype=np.uint8)
    images[...] = (200, 100, 50)
    out = augment_batch(images, np.random.default_rng(3), size=32)
    assert out.shape == (8, 32, 32, 3)
    assert np.all(out == out[:, :1, :1])
    gray = np.full((3, 10, 10, 1), 77, dtype=np.uint8)
    assert np.all(resize_batch(gray, 5) == 77) and resize_batch(gray, 5).shape == (3, 5, 5, 1)


def test_a_trainer_of_any_input_size_shares_the_weights_of_the_fixed_size_model():
    model = build_model(ModelConfig(image_size=24, blocks=2, filters=4, head="gap",
                                    batch_norm=True))
    trainer = build_trainer(model, None, any_size=True)
    assert trainer is not model and trainer.count_params() == model.count_params()
    assert {id(v) for v in trainer.weights} == {id(v) for v in model.weights}
    full = photos(2).astype("float32")
    np.testing.assert_allclose(np.asarray(trainer(full)), np.asarray(model(full)), atol=1e-6)
    # training mode reaches the layers (dropout, batch statistics)
    assert not np.allclose(np.asarray(trainer(full, training=True)), np.asarray(model(full)))
    # ... in a training step too: batch normalization learns its moving statistics
    trainer.compile(optimizer="adam", loss="binary_crossentropy")
    before = np.asarray(model.get_layer("block1_bn").moving_mean).copy()
    trainer.train_on_batch(photos(4, side=19), np.ones((4, 1), dtype="float32"))
    assert not np.allclose(before, np.asarray(model.get_layer("block1_bn").moving_mean))
    assert np.asarray(trainer(photos(2, side=19).astype("float32"))).shape == (2, 1)
    # the inference model's graph is untouched: its input size, and its summary's shapes
    assert model.input_shape == (None, 24, 24, 3)  # what is saved and exported
    table = "\n".join(summary_lines(model))
    assert "(None, 24, 24, 3)" in table and "None, None" not in table


def test_train_refuses_a_flatten_head_below_scale_one_in_one_line(runner, prepared, tmp_path):
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out",
                                 str(tmp_path / "model"), "--blocks", "1", "--filters", "4",
                                 "--train-scale", "0.8", "--epochs", "1"])
    assert_clean_exit(result, 1, "Error: --train-scale 0.8 needs a model that takes any input "
                                 "size, and a Flatten head fixes it: use --head gap, or "
                                 "--train-scale 1")
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_train_on_smaller_crops_then_validate_save_and_predict_at_full_size(
        runner, prepared, tmp_path, unseen_photos):
    out = tmp_path / "model"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 "--blocks", "2", "--filters", "4", "--head", "gap",
                                 *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    assert " training photos at 19 px, 2 validation at 24 px, " in result.output
    info = json.loads((out / "model.json").read_text())
    assert (info["image_size"], info["train_size"]) == (24, 19)
    assert info["training"]["train_scale"] == 0.8  # "auto" resolved, as the run used it
    result = runner.invoke(cli, ["predict", "--model", str(out), "--json",
                                 *map(str, unseen_photos["cats"])])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 4


@pytest.mark.slow
def test_a_resumed_run_trains_at_the_scale_it_started_with(prepared, tmp_path):
    """The resolved scale is in the checkpoint: the resumed epochs train on the same crops
    (same metrics, to float rounding) even though the scale was "auto"."""
    from catsdogs.train import train
    from tests.test_train_control import InterruptAfter

    model = ModelConfig(blocks=2, filters=4, head="gap", dropout_rate=0.0)
    config = TrainConfig(epochs=4, batch_size=4, learning_rate=0.01, seed=7)
    whole = train(prepared, tmp_path / "whole", model, config)
    train(prepared, tmp_path / "split", model, config, callbacks=[InterruptAfter(2)])
    resumed = train(prepared, tmp_path / "split", ModelConfig(), TrainConfig(), resume=True)
    assert (whole.train_size, resumed.train_size, resumed.image_size) == (19, 19, 24)
    for a, b in zip(whole.history, resumed.history, strict=True):
        for key in ("loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), (key, a, b)
