"""build_model and the summary command."""

import pytest

from catsdogs.cli import cli
from catsdogs.config import ModelConfig, TrainConfig, parse_dense
from catsdogs.model import build_model

ARTICLE = ["--size", "300", "--blocks", "1", "--filters", "10", "--kernel-size", "5",
           "--padding", "valid", "--dense", "0"]


def test_article_model_has_219801_parameters(runner):
    result = runner.invoke(cli, ["summary", *ARTICLE])
    assert result.exit_code == 0, result.output
    assert "Total params: 219,801" in result.output
    assert "(None, 296, 296, 10)" in result.output and "(None, 148, 148, 10)" in result.output


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
    dict(image_size=16, blocks=5, padding="valid"),
])
def test_bad_model_configs_raise_value_error(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(validation_split=0.0),
                                 dict(validation_split=1.0), dict(optimizer="magic")])
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
    assert result.exit_code == 2 and "--dense" in result.output
    result = runner.invoke(cli, ["summary", "--size", "16", "--blocks", "6"])
    assert result.exit_code == 1 and "blocks" in result.output
    assert "Traceback" not in result.output
