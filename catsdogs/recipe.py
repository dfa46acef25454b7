"""Recipe files: the settings of ``train`` and ``summary`` as TOML.

``--config FILE`` reads one, ``--print-config`` writes one.

A recipe is flat: one key per option, named as the option without its dashes
(``kernel-size = 5``; ``kernel_size`` is accepted too). Its values become the defaults of the
command's options (click's ``default_map``), so an option given on the command line wins.
A key that no command takes is a usage error naming the closest valid key; a setting of
another command (``epochs`` for ``summary``) is left out and reported back.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

import click

from catsdogs.config import ModelConfig, Setting, TrainConfig, all_settings, format_duration

# Options that describe one run rather than a recipe: never read from a file.
COMMAND_LINE_ONLY = ("data", "out", "resume", "force", "config", "print-config",
                     "tensorboard")
IGNORED_KEY = "catsdogs.recipe.ignored"

KIND_WORDS = {
    "int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false",
    "bool|None": 'true, false or "auto"', "tuple[int]": "a list of whole numbers",
    "int|tuple[int]": "a whole number or a list of them",
    "str|tuple[str]": "a string or a list of them",
    "duration": 'a duration ("90s", "5m", "1h") or a number of seconds',
}


def builtin_folder() -> Path:
    """The recipes shipped with catsdogs (``catsdogs/recipes/NAME.toml``)."""
    from importlib import resources

    return Path(str(resources.files("catsdogs") / "recipes"))


def builtin_recipes() -> list[str]:
    """The names ``--config`` takes besides file paths: ``demo``, ``article``..."""
    return sorted(path.stem for path in builtin_folder().glob("*.toml"))


def recipe_path(value: str) -> Path:
    """The file ``--config VALUE`` names: a file path, else a built-in recipe's name."""
    path = Path(value)
    if path.is_file():
        return path
    if path.exists():
        raise click.BadParameter(f"{value!r} is not a file", param_hint="'--config'")
    if value in builtin_recipes():
        return builtin_folder() / f"{value}.toml"
    raise click.BadParameter(
        f"no file {value!r}, and no built-in recipe of that name (built-in: "
        f"{', '.join(builtin_recipes())})", param_hint="'--config'")


def read_toml(path: Path) -> dict[str, Any]:
    """The table of a TOML file; a syntax error is a usage error naming the file."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise click.UsageError(f"{path} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise click.UsageError(f"{path} is not valid TOML: not UTF-8 text") from None


def find_setting(key: str, source: Path) -> Setting:
    """The setting a recipe key names; a usage error with the closest key when none does."""
    name = key.replace("_", "-")
    for item in all_settings():
        if item.option == name:
            return item
    if name in COMMAND_LINE_ONLY:
        raise click.UsageError(f"{source}: '{key}' can only be given on the command line")
    valid = [item.option for item in all_settings()]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise click.UsageError(f"{source}: unknown key '{key}'{hint}")


def has_kind(value: Any, kind: str) -> bool:
    """Whether a TOML value has the type a setting of ``kind`` takes."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int":
        return whole
    if kind == "float":
        return whole or isinstance(value, float)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "bool|None":
        return isinstance(value, bool) or value == "auto"
    if kind == "str|tuple[str]":
        return isinstance(value, (str, list))
    if kind == "duration":
        return whole or isinstance(value, (float, str))
    return whole or isinstance(value, (str, list))  # lists: 0, "256,64", [256, 64]


def checked_value(ctx: click.Context, item: Setting, key: str, value: Any, source: Path
                  ) -> Any:
    """``value`` converted and checked by the option's own click type, as if typed."""
    value = item.upgrade(value)
    if not has_kind(value, item.kind):
        raise click.UsageError(f"{source}: {key} must be {KIND_WORDS[item.kind]}, "
                               f"got {value!r}")
    if item.kind == "bool|None":
        return None if value == "auto" else value
    param = next(p for p in ctx.command.params if p.name == item.field)
    try:
        return param.type_cast_value(ctx, value)
    except click.BadParameter as error:
        raise click.UsageError(f"{source}: {key}: {error.message}") from None


def recipe_defaults(ctx: click.Context, table: dict[str, Any], source: Path
                    ) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The option defaults a recipe gives ``ctx``'s command, and the keys it does not take."""
    command = ctx.command.name or ""
    defaults: dict[str, Any] = {}
    ignored: list[tuple[str, Any]] = []
    seen: dict[str, str] = {}
    for key, value in table.items():
        item = find_setting(key, source)
        if item.option in seen:
            raise click.UsageError(f"{source}: '{key}' and '{seen[item.option]}' are the "
                                   "same setting; give it once")
        seen[item.option] = key
        if command not in item.commands:
            ignored.append((item.option, value))
            continue
        defaults[item.field] = checked_value(ctx, item, key, value, source)
    return defaults, ignored


def load_recipe_option(ctx: click.Context, param: click.Parameter, value: str | None
                       ) -> Path | None:
    """``--config`` callback: the file's settings become the defaults of the other options."""
    if value is None or ctx.resilient_parsing:
        return None
    path = recipe_path(value)
    defaults, ignored = recipe_defaults(ctx, read_toml(path), path)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[IGNORED_KEY] = [(key, value, path) for key, value in ignored]
    return path


def ignored_settings(ctx: click.Context) -> list[tuple[str, Any, Path]]:
    """The ``(key, value, file)`` of recipe settings that this command does not take."""
    return list(ctx.meta.get(IGNORED_KEY, []))


def toml_value(value: Any, item: Setting) -> str:
    """One value in TOML."""
    if item.kind == "bool|None" and value is None:
        return '"auto"'
    if item.kind == "duration":
        return json.dumps(format_duration(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(json.dumps(unit) for unit in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def recipe_text(command: str, model: ModelConfig, training: TrainConfig) -> str:
    """The settings of ``command`` in effect, as a TOML recipe that ``--config`` reads back."""
    lines = [f"# catsdogs {command} settings; use with: catsdogs {command} --config FILE"]
    group = ""
    for item in all_settings():
        if command not in item.commands:
            continue
        if item.group != group:
            group = item.group
            lines.append(f"# {group}")
        config = model if item.group == "model" else training
        lines.append(f"{item.option} = {toml_value(getattr(config, item.field), item)}")
    return "\n".join(lines) + "\n"
