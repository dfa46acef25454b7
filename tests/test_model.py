"""build_model and the summary command."""

import pytest

from catsdogs.cli import cli
from catsdogs.config import ModelConfig, TrainConfig, parse_dense
from catsdogs.model import build_model
from tests.helpers import ROOT, assert_clean_exit

ARTICLE = ["--size", "300", "--blocks", "1", "--filters", "10", "--kernel-size", "5",
           "--padding", "valid", "--dense", "0"]


@pytest.mark.parametrize("extra", [
    [],  # the issue-2 check, as it was written: the defaults must not add parameters
    ["--head", "flatten", "--no-batch-norm", "--dropout", "0"],  # everything spelled out
])
def test_article_model_has_219801_parameters(runner, extra):
    args = [a for a in ARTICLE if a not in ("--padding", "valid")] if not extra else ARTICLE
    result = runner.invoke(cli, ["summary", *args, *extra])
    assert result.exit_code == 0, result.output
    assert "Total params: 219,801" in result.output
    assert "(None, 296, 296, 10)" in result.output and "(None, 148, 148, 10)" in result.output
    assert "BatchNormalization" not in result.output


def test_default_recipe_model_has_batch_norm_and_no_random_layers():
    model = build_model(ModelConfig())
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("BatchNormalization") == 5 and kinds.count("Conv2D") == 5
    assert not any(kind.startswith("Random") for kind in kinds)
    assert model.get_layer("block1_conv").use_bias is False  # BN's offset replaces the bias


def test_default_network_is_the_documented_one(runner):
    """The default width (issue 12: 20 filters, doubling) and the parameter count that
    docs/commands.md prints for `catsdogs train` with no options."""
    result = runner.invoke(cli, ["summary"])
    assert result.exit_code == 0, result.output
    convs = [layer for layer in build_model(ModelConfig()).layers
             if type(layer).__name__ == "Conv2D"]
    assert [layer.filters for layer in convs] == [20, 40, 80, 160, 320]
    total = next(line for line in result.output.splitlines() if "Total params:" in line)
    assert total.strip() == "Total params: 615,341 (2.35 MB)"
    documented = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    assert f"\n{total}\n" in documented


def test_batch_norm_auto_and_explicit():
    assert not ModelConfig(blocks=2).use_batch_norm and ModelConfig(blocks=3).use_batch_norm
    assert ModelConfig(blocks=1, batch_norm=True).use_batch_norm
    assert not ModelConfig(blocks=5, batch_norm=False).use_batch_norm
    model = build_model(ModelConfig(image_size=32, blocks=1, filters=4, batch_norm=True))
    assert "block1_bn" in [layer.name for layer in model.layers]


def test_gap_head_gives_one_value_per_filter():
    model = build_model(ModelConfig(image_size=64, blocks=2, filters=4, head="gap",
                                    dropout_rate=0))
    assert model.get_layer("gap").output.shape == (None, 8)
    assert model.count_params() == build_model(
        ModelConfig(image_size=32, blocks=2, filters=4, head="gap", dropout_rate=0)
    ).count_params()  # independent of the image size


def test_mixed_precision_keeps_the_output_in_float32():
    model = build_model(ModelConfig(image_size=32, blocks=1, filters=4),
                        dtype_policy="mixed_float16")
    assert model.get_layer("block1_conv").compute_dtype == "float16"
    assert model.get_layer("output").compute_dtype == "float32"
    assert model.get_layer("output").dtype_policy.name == "float32"


def test_augmentation_is_only_in_the_trainer():
    from catsdogs.model import build_augmentation, build_trainer

    model = build_model(ModelConfig(image_size=32, blocks=1, filters=4))
    trainer = build_trainer(model, build_augmentation(seed=1))
    assert [type(layer).__name__ for layer in trainer.layers[0].layers] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast"]
    assert trainer.layers[1] is model and trainer.count_params() == model.count_params()
    assert build_trainer(model, None) is model


def test_filters_double_per_block_and_output_matches_classes():
    model = build_model(ModelConfig(image_size=32, blocks=3, filters=4, dense=(8,),
                                    num_classes=3))
    convs = [layer for layer in model.layers if layer.name.endswith("_conv")]
    assert [layer.filters for layer in convs] == [4, 8, 16]
    assert model.output_shape == (None, 3)
    assert model.layers[-1].activation.__name__ == "softmax"
    binary = build_model(ModelConfig(image_size=32, blocks=1, filters=4, dense=()))
    assert binary.output_shape == (None, 1)
    assert binary.layers[-1].activation.__name__ == "sigmoid"


def test_scaling_is_inside_the_model():
    model = build_model(ModelConfig(image_size=16, blocks=1, filters=2, dense=()))
    assert model.layers[0].name == "rescale"


@pytest.mark.parametrize("bad", [
    dict(blocks=0), dict(filters=0), dict(dropout_rate=1.0), dict(padding="full"),
    dict(image_size=16, blocks=5, padding="valid"), dict(head="dense"),
])
def test_bad_model_configs_raise_value_error(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


@pytest.mark.parametrize("bad", [
    dict(epochs=0), dict(validation_split=0.0), dict(validation_split=1.0),
    dict(optimizer="magic"), dict(lr_schedule="wild"), dict(label_smoothing=1.0),
    dict(weight_decay=-1), dict(monitor="loss"), dict(patience=-1), dict(device="tpu"),
    dict(precision="half"),
])
def test_bad_train_configs_raise_value_error(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_parse_dense():
    assert parse_dense("0") == ()
    assert parse_dense("256, 64") == (256, 64)
    with pytest.raises(ValueError):
        parse_dense("ten")


def test_summary_bad_options_are_usage_errors(runner):
    result = runner.invoke(cli, ["summary", "--dense", "abc"])
    assert_clean_exit(result, 2, "Error: Invalid value for '--dense': --dense takes "
                                 "comma-separated whole numbers, got 'abc'")
    result = runner.invoke(cli, ["summary", "--size", "16", "--blocks", "6"])
    assert_clean_exit(result, 1, "Error: 6 blocks shrink a 16px image to nothing at block 3; "
                                 "use fewer --blocks, a larger --size or --padding same")


def test_learning_rate_schedules():
    from catsdogs.train import make_learning_rate

    def at(schedule, step):
        return float(schedule(step)) if callable(schedule) else schedule

    cosine = make_learning_rate(TrainConfig(epochs=10, learning_rate=0.01, warmup_epochs=2), 5)
    assert at(cosine, 0) == pytest.approx(0.001)  # warm-up from a tenth
    assert at(cosine, 10) == pytest.approx(0.01)  # the peak after 2 epochs of 5 steps
    assert at(cosine, 50) == pytest.approx(0.0001, rel=1e-3)  # 1% at the end
    step = make_learning_rate(TrainConfig(epochs=4, learning_rate=0.1, lr_schedule="step"), 10)
    assert [round(at(step, s), 6) for s in (0, 25, 35)] == [0.1, 0.01, 0.001]
    assert make_learning_rate(TrainConfig(lr_schedule="constant", learning_rate=0.5), 3) == 0.5


@pytest.mark.parametrize("order, expected", [
    ("conv-pool-norm", ["block1_conv", "block1_pool", "block1_bn", "block1_act"]),
    ("conv-norm-pool", ["block1_conv", "block1_bn", "block1_act", "block1_pool"]),
])
def test_block_order_puts_pooling_before_or_after_batch_norm(order, expected):
    model = build_model(ModelConfig(image_size=32, blocks=1, filters=4, batch_norm=True,
                                    block_order=order))
    assert [layer.name for layer in model.layers][1:5] == expected
    assert model.get_layer("block1_bn").output.shape == (
        (None, 15, 15, 4) if order == "conv-pool-norm" else (None, 30, 30, 4))


def test_model_json_without_block_order_means_the_old_order():
    assert ModelConfig().block_order == "conv-pool-norm"
    old = ModelConfig.from_dict({"blocks": 3})
    assert old.block_order == "conv-norm-pool"
    assert ModelConfig.from_dict(ModelConfig().to_dict()).block_order == "conv-pool-norm"


def test_separable_blocks_after_the_first_and_their_parameters(runner):
    model = build_model(ModelConfig(image_size=64, blocks=3, filters=16, conv="separable"))
    kinds = [type(model.get_layer(f"block{n}_conv")).__name__ for n in (1, 2, 3)]
    assert kinds == ["Conv2D", "SeparableConv2D", "SeparableConv2D"]
    # depthwise 3×3 per input channel, then a 1×1 from 16 to 32 channels; no bias (batch norm)
    assert model.get_layer("block2_conv").count_params() == 3 * 3 * 16 + 16 * 32
    result = runner.invoke(cli, ["summary", "--size", "64", "--blocks", "3", "--conv",
                                 "separable"])
    assert result.exit_code == 0, result.output
    assert "block2_conv (SeparableConv2D)" in result.output
    assert "block1_conv (Conv2D)" in result.output
    result = runner.invoke(cli, ["summary", "--conv", "depthwise"])
    assert result.exit_code == 2 and "'depthwise' is not one of" in result.output


@pytest.mark.slow
def test_a_separable_model_trains_exports_and_predicts(runner, prepared, tmp_path,
                                                       unseen_photos):
    import json

    out = tmp_path / "model"
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(out),
                                 "--blocks", "2", "--filters", "4", "--conv", "separable",
                                 "--head", "gap", "--epochs", "2", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "model.json").read_text())
    assert info["model"]["conv"] == "separable" and info["onnx"]["file"] == "model.onnx"
    onnx = runner.invoke(cli, ["predict", "--model", str(out), "--json",
                               str(unseen_photos["cats"][0])])
    keras_run = runner.invoke(cli, ["predict", "--model", str(out), "--json", "--engine",
                                    "keras", str(unseen_photos["cats"][0])])
    assert onnx.exit_code == 0 and keras_run.exit_code == 0, onnx.output + keras_run.output
    assert json.loads(onnx.output)[0]["probability"] == pytest.approx(
        json.loads(keras_run.output)[0]["probability"], abs=1e-4)
