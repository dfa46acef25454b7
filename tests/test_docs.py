"""Help text is documentation: every command and option has it, with an example block."""

import subprocess
import sys

import pytest

from catsdogs.cli import cli


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
