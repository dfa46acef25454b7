"""Recipe files: ``--config FILE`` on train and summary, and ``train --print-config``."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsdogs.cli import cli

ARTICLE = "size = 300\nblocks = 1\nfilters = 10\nkernel-size = 5\ndense = 0\n"


def write(tmp_path: Path, text: str, name: str = "article.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def total_params(output: str) -> str:
    return next(line for line in output.splitlines() if "Total params" in line).split()[2]


def invoke_ok(runner, args):
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result


def invoke_usage_error(runner, args) -> str:
    """Run a command that must fail with exit 2; return its last line, the message."""
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    return result.output.strip().splitlines()[-1]


def test_article_recipe_gives_219801_and_a_flag_wins_over_the_file(runner, tmp_path):
    recipe = write(tmp_path, ARTICLE)
    assert total_params(invoke_ok(runner, ["summary", "--config", recipe]).output) == "219,801"
    with_flag = invoke_ok(runner, ["summary", "--config", recipe, "--filters", "20"])
    assert total_params(with_flag.output) == "439,601"
    # The flag wins wherever it is written, before or after --config.
    before = invoke_ok(runner, ["summary", "--filters", "20", "--config", recipe])
    assert total_params(before.output) == "439,601"


def test_the_shipped_article_example(runner):
    result = invoke_ok(runner, ["summary", "--config", "article"])
    assert total_params(result.output) == "219,801"
    assert "BatchNormalization" not in result.output


def test_underscores_and_dashes_both_work(runner, tmp_path):
    recipe = write(tmp_path, ARTICLE.replace("kernel-size", "kernel_size"))
    assert total_params(invoke_ok(runner, ["summary", "--config", recipe]).output) == "219,801"


def test_misspelled_key_names_it_and_the_closest_valid_one(runner, tmp_path):
    recipe = write(tmp_path, ARTICLE.replace("kernel-size", "kernal-size"))
    message = invoke_usage_error(runner, ["summary", "--config", recipe])
    assert message == f"Error: {recipe}: unknown key 'kernal-size' (did you mean 'kernel-size'?)"
    recipe = write(tmp_path, "colour = 3\n", "other.toml")
    message = invoke_usage_error(runner, ["train", "--config", recipe, "--print-config"])
    assert message == f"Error: {recipe}: unknown key 'colour'"


@pytest.mark.parametrize("text, message", [
    ("blocks = 0\n", "blocks: 0 is not in the range 1<=x<=10."),
    ("blocks = '3'\n", "blocks must be a whole number, got '3'"),
    ("dropout = 1.5\n", "dropout: 1.5 is not in the range 0<=x<1."),
    ("padding = 'full'\n", "padding: 'full' is not one of 'valid', 'same'."),
    ("batch_norm = 'yes'\n", "batch_norm must be true, false or \"auto\", got 'yes'"),
    ("dense = '64,x'\n", "dense: --dense takes comma-separated whole numbers, got '64,x'"),
    ("dense = [64, 0]\n", "dense: dense must be at least 1, got (64, 0)"),
    ("out = 'model'\n", "'out' can only be given on the command line"),
    ("blocks = 2\nfilters = 4\nkernel_size = 3\nkernel-size = 3\n",
     "'kernel-size' and 'kernel_size' are the same setting; give it once"),
])
def test_bad_values_are_usage_errors_naming_the_key(runner, tmp_path, text, message):
    recipe = write(tmp_path, text)
    assert invoke_usage_error(runner, ["summary", "--config", recipe]) == (
        f"Error: {recipe}: {message}")


def test_invalid_toml_and_missing_file(runner, tmp_path):
    recipe = write(tmp_path, "blocks = \n")
    message = invoke_usage_error(runner, ["train", "--config", recipe])
    assert message.startswith(f"Error: {recipe} is not valid TOML: ")
    missing = str(tmp_path / "none.toml")
    message = invoke_usage_error(runner, ["train", "--config", missing])
    assert message == (f"Error: Invalid value for '--config': no file {missing!r}, and no "
                       "built-in recipe of that name (built-in: article, demo, lenet, mnist, "
                       "transfer)")
    message = invoke_usage_error(runner, ["train", "--config", str(tmp_path)])
    assert message == f"Error: Invalid value for '--config': {str(tmp_path)!r} is not a file"


def test_builtin_recipes_by_name(runner):
    assert "Total params: 219,801" in invoke_ok(runner, ["summary", "--config", "article"]).output
    demo = invoke_ok(runner, ["train", "--config", "demo", "--print-config"]).output
    assert 'head = "gap"\n' in demo and "epochs = 30\n" in demo
    assert 'monitor = "val_accuracy"\n' in demo


def test_print_config_round_trips(runner, tmp_path):
    args = ["train", "--blocks", "2", "--dense", "64,32", "--no-augment", "--dropout", "0.25",
            "--learning-rate", "1e-5", "--optimizer", "sgd", "--batch-norm", "--print-config"]
    first = invoke_ok(runner, args).output
    assert "blocks = 2\n" in first and "dense = [64, 32]\n" in first
    assert "augment = \"none\"\n" in first and "batch-norm = true\n" in first
    assert "learning-rate = 1e-05\n" in first and 'optimizer = "sgd"\n' in first
    recipe = write(tmp_path, first, "saved.toml")
    again = invoke_ok(runner, ["train", "--config", recipe, "--print-config"]).output
    assert again == first


def test_print_config_merges_defaults_file_and_flags_without_data(runner, tmp_path):
    recipe = write(tmp_path, ARTICLE + "epochs = 7\nlr_schedule = 'step'\n")
    result = invoke_ok(runner, ["train", "--data", str(tmp_path / "no_such_dataset"),
                                "--config", recipe, "--epochs", "9", "--print-config"])
    text = result.output
    assert "filters = 10\n" in text and "kernel-size = 5\n" in text  # the file
    assert "epochs = 9\n" in text  # the flag wins
    assert 'lr-schedule = "step"\n' in text and "seed = 1337\n" in text  # file, default
    assert 'batch-norm = "auto"\n' in text and "dense = []\n" in text
    assert "\nsize =" not in text  # train takes the image size from the dataset
    assert not (tmp_path / "model").exists()


def test_summary_ignores_training_settings_and_train_notes_the_size(runner, tmp_path):
    recipe = write(tmp_path, ARTICLE + "epochs = 7\n")
    result = invoke_ok(runner, ["summary", "--config", recipe])
    assert total_params(result.output) == "219,801"
    result = runner.invoke(cli, ["train", "--config", recipe, "--data",
                                 str(tmp_path / "none")])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"note: {recipe}: size = 300 is not used: train takes it from the prepared dataset")


@pytest.mark.slow  # trains a model
def test_recipe_trains(runner, prepared, tmp_path):
    recipe = write(tmp_path, "blocks = 1\nfilters = 4\ndense = 0\ndropout = 0\nepochs = 1\n"
                             "batch-size = 4\naugment = false\n")
    out = tmp_path / "model"
    result = invoke_ok(runner, ["train", "--data", str(prepared), "--out", str(out),
                                "--config", recipe, "--epochs", "2"])
    assert "epoch   2/2" in result.output
    import json

    info = json.loads((out / "model.json").read_text())
    assert info["model"]["filters"] == 4 and info["training"]["epochs"] == 2
    assert info["training"]["augment"] == "none"
