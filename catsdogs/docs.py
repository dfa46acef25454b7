"""The option reference (``docs/options.md``), made from the commands' own options.

The options of ``train`` and ``summary`` are made from the settings in ``catsdogs.config``,
so these tables, ``--help`` and the checks all come from one source. Regenerate with::

    python -m catsdogs.docs > docs/options.md

(a test fails when the file is out of date).
"""

from __future__ import annotations

import re

import click

HEADER = """# Options

Every option of every command: its default, the values it takes, and what it does. This
file is generated from the code (the settings of `train` and `summary` are the fields of
`ModelConfig` and `TrainConfig` in `catsdogs/config.py`); do not edit it, regenerate it:

    python -m catsdogs.docs > docs/options.md

The settings of `train` and `summary` can also come from a TOML recipe file
(`--config FILE`, see [commands.md](commands.md#recipe-files)).
"""

DEFAULT_IN_HELP = re.compile(r"\s*\[default: ([^\]]*)\]")


def number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def range_text(kind: click.IntRange | click.FloatRange) -> str:
    """``1 ≤ x ≤ 10``, ``0 < x < 1``, ``x > 0``."""
    if kind.max is None:
        return f"x {'>' if kind.min_open else '≥'} {number_text(kind.min)}"
    text = "x"
    if kind.min is not None:
        text = f"{number_text(kind.min)} {'<' if kind.min_open else '≤'} {text}"
    if kind.max is not None:
        text = f"{text} {'<' if kind.max_open else '≤'} {number_text(kind.max)}"
    return text


def values_text(param: click.Option) -> str:
    """What an option takes: a range, the choices, a kind of value, or nothing (a flag)."""
    from catsdogs.options import IntList, StrList

    kind = param.type
    if param.is_flag:
        return ""
    if isinstance(kind, StrList):
        return (", ".join(f"`{choice}`" for choice in kind.choices)
                + "; or one per block, comma-separated")
    if isinstance(kind, IntList):
        return list_text(kind)
    if param.metavar:
        return param.metavar
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        return range_text(kind)
    if isinstance(kind, click.Choice):
        return ", ".join(f"`{choice}`" for choice in kind.choices)
    names = {"integer": "whole number", "float": "number", "text": "text", "path": "path",
             "file": "file"}
    return names.get(kind.name, kind.name)


def list_text(kind: click.ParamType) -> str:
    """What a setting of whole numbers takes: ``N[,N...]`` with the bounds of each number."""
    item = kind.setting  # type: ignore[attr-defined]
    text = "whole number" if item.kind == "int|tuple[int]" else "N[,N...]"
    if item.min is not None or item.max is not None:
        bounds = click.IntRange(item.min, item.max, min_open=item.min_open,
                                max_open=item.max_open)
        each = "" if item.kind == "int|tuple[int]" else f"{text}, each "
        text = each + range_text(bounds)
    if item.kind == "int|tuple[int]":
        text += "; or one per block, comma-separated"
    return text


def default_text(param: click.Option) -> str:
    """The default as ``--help`` shows it."""
    found = DEFAULT_IN_HELP.search(param.help or "")
    if found:
        return found.group(1)
    if param.is_flag and param.secondary_opts:
        return param.opts[0] if param.default else param.secondary_opts[0]
    if param.is_flag:
        return "off"
    if param.default is None or not param.show_default:
        return ""
    if isinstance(param.show_default, str):
        return param.show_default
    return str(param.default)


def option_names(param: click.Option) -> str:
    names = ", ".join(f"`{name}`" for name in param.opts)
    if param.secondary_opts:
        names += " / " + ", ".join(f"`{name}`" for name in param.secondary_opts)
    return names


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def command_table(name: str, command: click.Command) -> list[str]:
    """One command's section: its usage line and a table of its options."""
    usage = " ".join(command.collect_usage_pieces(click.Context(command, info_name=name)))
    lines = [f"## `catsdogs {name} {usage}`", "", "| option | default | values | help |",
             "|---|---|---|---|"]
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        help_text = DEFAULT_IN_HELP.sub("", param.help or "")
        lines.append(f"| {option_names(param)} | {cell(default_text(param))} | "
                     f"{cell(values_text(param))} | {cell(help_text)} |")
    return lines + [""]


def options_markdown() -> str:
    """The whole ``docs/options.md``."""
    from catsdogs.cli import cli

    lines = [HEADER]
    for name, command in cli.commands.items():
        lines += command_table(name, command)
    return "\n".join(lines)


if __name__ == "__main__":
    print(options_markdown(), end="")
