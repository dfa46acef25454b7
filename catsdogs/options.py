"""Click options made from the settings of :mod:`catsdogs.config`, and the configs they give.

``setting_options("train")`` adds one option per setting that ``train`` takes, with the
field's default, help, bounds and choices, plus ``--config FILE`` (a recipe file, see
:mod:`catsdogs.recipe`) and ``--print-config``. ``configs_from`` turns the parsed values back
into a ``ModelConfig`` and a ``TrainConfig``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from catsdogs.config import (
    LIST_KINDS,
    ModelConfig,
    PerBlockError,
    Setting,
    TrainConfig,
    all_settings,
    parse_duration,
    parse_int_list,
    settings_of,
)


class IntList(click.ParamType):
    """Whole numbers separated by commas (``256,64``), checked against a setting's bounds."""

    name = "N[,N...]"

    def __init__(self, item: Setting) -> None:
        self.setting = item

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int | tuple[int, ...]:
        try:
            units: Any = to_int_tuple(value, self.setting)
            if self.setting.kind == "int|tuple[int]" and len(units) == 1:
                units = units[0]  # one number: the setting's single-value meaning
            self.setting.check(units)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        return units


class StrList(click.ParamType):
    """One of a setting's choices, or one per block separated by commas (``same,valid``)."""

    name = "choice list"

    def __init__(self, item: Setting) -> None:
        self.setting = item
        self.choices = tuple(item.choices or ())

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return f"[{'|'.join(self.choices)}][,...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> str | tuple[str, ...]:
        try:
            words: Any = to_str_tuple(value, self.setting)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        for word in words:
            if word not in self.choices:  # worded as click.Choice words it
                self.fail(f"{word!r} is not one of {', '.join(map(repr, self.choices))}.",
                          param, ctx)
        return words[0] if len(words) == 1 else words  # one word: the same for every block


class DurationType(click.ParamType):
    """A length of time (``90s``, ``5m``, ``1h``) as seconds."""

    name = "DURATION"

    def __init__(self, item: Setting) -> None:
        self.setting = item

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        try:
            seconds = parse_duration(value)
            self.setting.check(seconds)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        return seconds


def legacy_off_option(item: Setting) -> Callable[[Callable], Callable]:
    """``--no-OPTION`` of a setting that used to be on/off: the value ``False`` means now."""
    value = item.legacy[False]

    def set_default(ctx: click.Context, param: click.Parameter, given: bool) -> None:
        if given and not ctx.resilient_parsing:
            ctx.default_map = {**(ctx.default_map or {}), item.field: value}

    return click.option(f"--no-{item.option}", is_flag=True, expose_value=False,
                        is_eager=True, callback=set_default,
                        help=f"Same as --{item.option} {value}.")


def to_str_tuple(value: Any, item: Setting) -> tuple[str, ...]:
    """A tuple of strings from text (``"same,valid"``) or a list of strings."""
    if isinstance(value, (list, tuple)):
        words = tuple(value)
    else:
        words = tuple(word.strip() for word in str(value).split(","))
    if not words or not all(isinstance(word, str) and word for word in words):
        raise ValueError(f"{item.option} takes one or more comma-separated names, "
                         f"got {value!r}")
    return words


def to_int_tuple(value: Any, item: Setting) -> tuple[int, ...]:
    """A tuple of whole numbers from text (``"256,64"``), one number or a list of them."""
    if isinstance(value, (list, tuple)):
        if not value and not item.zero_means_none:
            raise ValueError(f"{item.option} takes at least one whole number")
        if not all(isinstance(unit, int) and not isinstance(unit, bool) for unit in value):
            raise ValueError(f"{item.option} takes whole numbers, got {value!r}")
        units = tuple(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        units = (value,)
    else:
        return parse_int_list(value, item.option, item.zero_means_none)
    if item.zero_means_none and units == (0,):
        return ()
    return units


def format_default(item: Setting) -> Any:
    """The default as the command line writes it: ``0`` for an empty list when 0 means none."""
    if isinstance(item.default, tuple):
        return ",".join(str(unit) for unit in item.default) or "0"
    return item.default


def click_type(item: Setting) -> Any:
    """The click type that parses and checks one setting's values."""
    bounded = item.min is not None or item.max is not None
    bounds = dict(min=item.min, max=item.max, min_open=item.min_open, max_open=item.max_open)
    if item.kind in LIST_KINDS:
        return IntList(item)
    if item.kind == "str|tuple[str]":
        return StrList(item)
    if item.kind == "duration":
        return DurationType(item)
    if item.choices is not None:
        return click.Choice(item.choices)
    if item.kind == "int":
        return click.IntRange(**bounds) if bounded else int
    if item.kind == "float":
        return click.FloatRange(**bounds) if bounded else float
    return str


def make_option(item: Setting) -> Callable[[Callable], Callable]:
    """The click option of one setting: ``--kernel-size`` for the field ``kernel_size``."""
    text = item.help
    if item.default_text:  # click would put it in parentheses
        text = f"{text.rstrip('.')} [default: {item.default_text}]."
    show_default = item.default_text is None
    if item.kind in ("bool", "bool|None"):
        return click.option(f"--{item.option}/--no-{item.option}", item.field,
                            default=item.default, show_default=show_default, help=text)
    return click.option(f"--{item.option}", item.field, type=click_type(item),
                        default=format_default(item), show_default=show_default, help=text)


def command_settings(command: str) -> tuple[Setting, ...]:
    """The settings that ``command`` takes as options, model first."""
    return tuple(item for item in all_settings() if command in item.commands)


def setting_options(command: str) -> Callable[[Callable], Callable]:
    """Add the options of ``command``'s settings, ``--config`` and ``--print-config``."""
    from catsdogs.recipe import load_recipe_option

    options = [make_option(item) for item in command_settings(command)]
    options += [legacy_off_option(item) for item in command_settings(command)
                if False in item.legacy]
    options.append(click.option(
        "--config", metavar="FILE|NAME", expose_value=False, is_eager=True,
        callback=load_recipe_option,
        help="TOML file of settings (keys: the option names, without dashes), or the name "
             "of a built-in recipe (demo, article, ...); options given here win over it."))
    options.append(click.option(
        "--print-config", is_flag=True,
        help="Print the settings in effect as TOML (for --config) and exit."))

    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def configs_from(values: dict[str, Any], check_size: bool = True
                 ) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """Split parsed option values into the two configs and the other options.

    Settings missing from ``values`` (those a command does not take) keep their defaults.
    ``check_size=False`` leaves the check that the blocks fit the image size to later (``train``
    learns the size from the dataset). A per-block list whose length is not the number of
    blocks is a usage error naming its option.
    """
    rest = dict(values)
    model = {item.field: rest.pop(item.field) for item in settings_of(ModelConfig)
             if item.field in rest}
    training = {item.field: rest.pop(item.field) for item in settings_of(TrainConfig)
                if item.field in rest}
    try:
        model_config = ModelConfig(**model, check_size=check_size)
    except PerBlockError as error:
        raise click.BadParameter(error.detail, param_hint=f"'--{error.option}'") from None
    return model_config, TrainConfig(**training), rest
