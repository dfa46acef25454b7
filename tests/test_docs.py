"""Help text is documentation: every command and option has it, with an example block."""

import subprocess
import sys

import click
import pytest

from catsdogs.cli import cli
from tests.helpers import ROOT


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_command_has_help_and_example(name):
    command = cli.commands[name]
    assert command.help and command.help.strip(), f"{name} has no help"
    assert "\b" in command.help and "Example" in command.help, f"{name} lacks an example block"
    assert "catsdogs " + name in command.help, f"{name}'s example does not show it"


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_has_help(name):
    for param in cli.commands[name].params:
        if param.param_type_name == "option":
            assert param.help, f"{name} {param.opts} has no help"


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_help_runs(runner, name):
    result = runner.invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_help_does_not_import_tensorflow_or_keras():
    code = (
        "import sys\n"
        "from catsdogs.cli import cli\n"
        "try:\n"
        "    cli(['--help'], prog_name='catsdogs')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'pandas', 'onnxruntime', 'jax', 'torch')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out, out
    assert "Commands:" in out


def normalized(text: str) -> str:
    return " ".join(text.split())


def test_options_reference_is_up_to_date():
    from catsdogs.docs import options_markdown

    written = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    assert written == options_markdown(), (
        "docs/options.md is out of date: python -m catsdogs.docs > docs/options.md")


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_options_reference_agrees_with_help(runner, name):
    """Every row of the reference: its option, default and help are what --help says."""
    from catsdogs.docs import DEFAULT_IN_HELP, command_table, default_text

    command = cli.commands[name]
    shown = normalized(runner.invoke(cli, [name, "--help"], terminal_width=200).output)
    rows = [row for row in command_table(name, command) if row.startswith("| `-")]
    options = [p for p in command.params if isinstance(p, click.Option)]
    assert len(rows) == len(options)
    for row, param in zip(rows, options, strict=True):
        assert all(f"`{opt}`" in row.split("|")[1] for opt in param.opts)
        assert all(opt in shown for opt in param.opts + param.secondary_opts)
        assert normalized(param.help) in shown
        assert cell_text(row, 4) == normalized(DEFAULT_IN_HELP.sub("", param.help))
        assert cell_text(row, 2) == default_text(param)
        if not param.is_flag and default_text(param):
            assert f"[default: {default_text(param)}" in shown or (
                f"default: {default_text(param)}]" in shown), (name, param.name)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_docstring_ends_with_its_example_block(name):
    """The example block is the last part of the help: nothing after it."""
    help_text = cli.commands[name].help.rstrip()
    block = help_text[help_text.rindex("\b"):]
    assert block.splitlines()[1].strip() == "Example:"
    assert all(line.startswith("        ") for line in block.splitlines()[2:]), name
    assert "\n\n" not in block, f"{name}: text after the example block"


def cell_text(row: str, column: int) -> str:
    """The text of one cell of a markdown table row (column 1 is the first)."""
    cells = row.replace("\\|", "\0").split("|")
    return cells[column].strip().replace("\0", "|")


# Pages the README links to that other work will write.
PLANNED_PAGES = {"docs/serve.md", "docs/gpu.md"}


@pytest.mark.parametrize("page", ["README.md", "RELIABILITY.md", "docs/commands.md",
                                  "docs/formats.md", "docs/options.md", "docs/distributed.md"])
def test_relative_links_point_to_files_that_exist(page):
    import re

    text = (ROOT / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        path = (ROOT / page).parent / target
        relative = path.resolve().relative_to(ROOT).as_posix()
        assert path.exists() or relative in PLANNED_PAGES, f"{page} links to {target}"


def test_readme_keeps_the_ci_test_command():
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci = [line for line in lines if line.startswith("python3 -m venv .venv &&")]
    assert len(ci) == 1 and "python -m pytest" in ci[0]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ci[0] in readme
    assert 'python -m pytest -m "not slow"' in readme


def test_train_help_states_the_defaults_from_their_one_source(runner):
    """train --help names the default blocks, epochs, time limit and validation share:
    from config.py, so a change of default changes the help too."""
    from catsdogs.config import DEFAULT_TIME_LIMIT, ModelConfig, TrainConfig

    result = runner.invoke(cli, ["train", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    defaults = TrainConfig()
    assert f"the default recipe: {ModelConfig().blocks} blocks with batch" in text, text
    assert (f"{defaults.epochs} epochs (at most {DEFAULT_TIME_LIMIT / 60:g} minutes"
            in text), text
    assert f"validating on {defaults.validation_split:.0%} of the photos" in text, text


def test_prepare_help_states_the_sample_and_worker_figures_as_the_code_has_them(runner):
    """prepare --help names the built-in sample's size and photo count, and the photos per
    decoding worker: each as the code that uses it has it."""
    from catsdogs.cli import SAMPLE_SIZE, sample_folder
    from data_prep.prepare import PHOTOS_PER_WORKER

    result = runner.invoke(cli, ["prepare", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    photos = sum(1 for path in sample_folder().rglob("*.jpg"))
    assert f"the built-in sample of {photos} small photos is used, at {SAMPLE_SIZE} px" in text
    assert f"one per {PHOTOS_PER_WORKER} photos at most" in text, text
