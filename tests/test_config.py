"""The settings in config.py are the one source of the options, their checks and defaults."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from catsdogs.cli import cli
from catsdogs.config import (
    ModelConfig,
    TrainConfig,
    all_settings,
    check_settings,
    setting,
    settings_of,
)
from catsdogs.options import command_settings


@pytest.mark.parametrize("command", ["train", "summary"])
def test_every_setting_of_a_command_is_one_of_its_options(command):
    params = {param.name: param for param in cli.commands[command].params}
    for item in command_settings(command):
        param = params[item.field]
        assert f"--{item.option}" in param.opts
        assert param.help.startswith(item.help.rstrip("."))
        if item.kind == "tuple[int]":
            assert param.default == (",".join(map(str, item.default)) or "0")
        else:
            assert param.default == item.default
        if item.choices:
            assert tuple(param.type.choices) == item.choices
        if isinstance(param.type, (click.IntRange, click.FloatRange)):
            assert (param.type.min, param.type.max) == (item.min, item.max)


def test_option_names_are_unique_and_every_field_has_help():
    options = [item.option for item in all_settings()]
    assert len(options) == len(set(options))
    for cls in (ModelConfig, TrainConfig):
        assert [item.field for item in settings_of(cls)] == [
            field.name for field in dataclasses.fields(cls)]
        assert all(item.help for item in settings_of(cls))


@pytest.mark.parametrize("bad, message", [
    (dict(blocks=11), "blocks must be at most 10, got 11"),
    (dict(dropout_rate=1.0), "dropout must be below 1, got 1.0"),
    (dict(activation="swish"), "activation must be one of relu, gelu, silu, elu, selu, tanh, "
                               "leaky_relu, sigmoid, linear, got 'swish'"),
    (dict(dense=(8, 0)), "dense must be at least 1, got (8, 0)"),
    (dict(num_classes=1), "classes must be at least 2, got 1"),
])
def test_model_config_checks_come_from_the_metadata(bad, message):
    with pytest.raises(ValueError) as error:
        ModelConfig(**bad)
    assert str(error.value) == message


@pytest.mark.parametrize("bad, message", [
    (dict(validation_split=0.0), "validation-split must be above 0, got 0.0"),
    (dict(learning_rate=0), "learning-rate must be above 0, got 0"),
    (dict(epochs=10_001), "epochs must be at most 10000, got 10001"),
])
def test_train_config_checks_come_from_the_metadata(bad, message):
    with pytest.raises(ValueError) as error:
        TrainConfig(**bad)
    assert str(error.value) == message


def test_flags_keep_their_names_defaults_and_meaning(runner):
    result = runner.invoke(cli, ["summary", "--size", "300", "--blocks", "1", "--filters", "10",
                                 "--kernel-size", "5", "--dense", "0", "--print-config"])
    assert result.exit_code == 0, result.output
    assert "dense = []\n" in result.output and 'batch-norm = "auto"\n' in result.output
    result = runner.invoke(cli, ["train", "--dropout", "0.5", "--no-augment",
                                 "--no-batch-norm", "--dense", "256,64", "--print-config"])
    assert result.exit_code == 0, result.output
    for line in ("dropout = 0.5", 'augment = "none"', "batch-norm = false", "dense = [256, 64]"):
        assert line + "\n" in result.output


@pytest.mark.parametrize("args", [["--blocks", "0"], ["--dropout", "1"], ["--dense", "x"],
                                  ["--epochs", "0"], ["--padding", "full"]])
def test_bad_flag_values_exit_2(runner, args):
    command = "summary" if args[0] != "--epochs" else "train"
    result = runner.invoke(cli, [command, *args])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert f"Invalid value for '{args[0]}'" in result.output


@dataclasses.dataclass
class PerBlock:
    """A config with a setting of one number or one per block, as a per-block option is."""

    filters: int | tuple[int, ...] = setting(16, "Filters.", min=1, max=1024)

    def __post_init__(self) -> None:
        check_settings(self)


def test_a_setting_of_one_number_or_one_per_block():
    from catsdogs.options import IntList, make_option
    from catsdogs.recipe import toml_value

    (item,) = settings_of(PerBlock)
    assert item.kind == "int|tuple[int]"

    @click.command()
    @make_option(item)
    def show(filters):
        click.echo(repr(filters))

    runner = CliRunner()
    assert runner.invoke(show, []).output == "16\n"
    assert runner.invoke(show, ["--filters", "8"]).output == "8\n"
    assert runner.invoke(show, ["--filters", "6,16"]).output == "(6, 16)\n"
    result = runner.invoke(show, ["--filters", "6,0"])
    assert result.exit_code == 2 and "filters must be at least 1, got (6, 0)" in result.output
    assert IntList(item).convert([6, 16], None, None) == (6, 16)
    assert toml_value((6, 16), item) == "[6, 16]" and toml_value(8, item) == "8"
    assert PerBlock(filters=[6, 16]).filters == (6, 16)  # a list from JSON becomes a tuple
    with pytest.raises(ValueError, match="filters must be at most 1024"):
        PerBlock(filters=(6, 2048))
