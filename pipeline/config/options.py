"""Options declared once: each config field carries its flag, Make variable, help, check and key role.

A stage's config is a frozen dataclass whose fields are declared with
`option(...)`. From those declarations come the command's argparse flags
(`pipeline.cli.parsing.add_command`), the hint an error prints
(`[set with --size; make features: SIZE=...]`), docs/options.md, the
validation run by `__post_init__` (`validate`) and, for the features stage,
the fields hashed into the feature key (`key_fields`).

Adding an option to a stage is one field. In `TrainConfig` (config/train.py):

    time_limit: float | None = option(
        None, flag="--time-limit", make="ARGS", check=number(low=0, open_low=True, optional=True),
        help="stop a head's fit after this many seconds (default: no limit)")

`bottleneck train-head --time-limit 60`, `make train-head ARGS="--time-limit 60"`,
`time_limit = 60` in the `[train]` table and the hint of an error naming
`time_limit` all follow; the library reads `config.time_limit`. A command
without a config (predict, evaluate, export, cache, runs, report) declares
its options in `pipeline/cli/options.py` the same way, with `Option(...)`,
and its handler reads `args.<name>`:

    "trust": Option(flag="--trust", make="ARGS", switch=True, cli={"default": False},
                    help="load a bundle whose files are not the ones recorded"),

Then regenerate docs/options.md (its first lines say how; a test checks).

The keywords of `option` (those of `Option`):

- `flag`: the command-line flag (`short`: its one-letter alias);
  `argument="the data folder"` instead makes it a positional argument
  (`DATA (the data folder argument)` in hints).
- `make`: the Make variable that sets it; `"ARGS"` when it is passed as
  `ARGS="--flag ..."`. A variable of its own also needs one
  `$(call opt,--flag,$(VAR))` in the Makefile's `<TARGET>_FLAGS` and a
  `VAR ?=` line (a test checks both ways).
- `check`: `integer`, `number`, `one_of`, `boolean`, `folder` or any
  `(name, value) -> value` callable raising `ConfigError`; its `arg_type`
  and `choices` become argparse's `type=` and `choices=`
  (`flag_choices=False` leaves a wrong value to the config's message).
- `key=True`: the value changes the extracted numbers (features stage): it
  goes into the feature key (`features.extract.feature_spec`).
- `switch=True`: a flag that takes no value (`--verify`); `cli={...}` holds
  further argparse keywords (`nargs`, `action`, `metavar`, `dest`).
- `help`: the flag's help, also the meaning column of docs/options.md; a
  config class's `option_help` dict replaces it for fields it inherits.

Values come from the command line, the TOML table and the dataclass
default, in that order of priority (`files.resolve`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError

__all__ = [
    "Option", "boolean", "folder", "integer", "is_int", "is_real", "key_fields", "number", "one_of", "option",
    "options_of", "validate",
]


@dataclasses.dataclass(frozen=True)
class Option:
    """How one config field is set, shown and checked; see the module docstring."""

    flag: str | None = None
    short: str | None = None
    make: str | None = None
    help: str | None = None
    check: Callable[[str, Any], Any] | None = None
    key: bool = False
    argument: str | None = None
    switch: bool = False
    flag_choices: bool = True
    cli: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def names(self, name: str) -> list[str]:
        """What `add_argument` takes first: the field's name for an argument, else the flags."""
        return [name] if self.argument else [self.flag, *([self.short] if self.short else [])]

    def shown(self, name: str) -> str:
        """The flag as a hint names it: `--size`, or `DATA (the data folder argument)`."""
        return f"{name.upper()} ({self.argument} argument)" if self.argument else self.flag

    def argparse_kwargs(self, name: str) -> dict[str, Any]:
        """The keywords of `add_argument` for this option, stored under the field's name."""
        if self.argument:
            return {"help": self.help, **self.cli}
        kwargs: dict[str, Any] = {"dest": name, "help": self.help}
        if self.switch:
            kwargs.update(action="store_true", default=None)  # None: unset, the file's value stands
        else:
            if getattr(self.check, "arg_type", None):
                kwargs["type"] = self.check.arg_type
            if self.flag_choices and getattr(self.check, "choices", None):
                kwargs["choices"] = self.check.choices
        return {**kwargs, **self.cli}


def option(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, **declaration) -> Any:
    """A dataclass field declared with its `Option` (keywords as in `Option`)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"option": Option(**declaration)})


def options_of(cls) -> dict[str, Option]:
    """The declared options of a config class (or instance), in field order.

    A class's `option_help` dict replaces the help of fields it shares with
    another command (a curve's `--seed` seeds repeats, not one run).
    """
    helps = getattr(cls, "option_help", {})
    return {
        f.name: dataclasses.replace(f.metadata["option"], help=helps.get(f.name, f.metadata["option"].help))
        for f in dataclasses.fields(cls)
        if "option" in f.metadata
    }


def key_fields(cls) -> tuple[str, ...]:
    """The fields declared `key=True`: those that change the extracted numbers."""
    return tuple(name for name, opt in options_of(cls).items() if opt.key)


def validate(config) -> None:
    """Runs every declared check, in field order, storing what each returns (e.g. a tuple for a list)."""
    for name, opt in options_of(config).items():
        if opt.check is not None:
            object.__setattr__(config, name, opt.check(name, getattr(config, name)))


def is_int(value) -> bool:
    """An integer (NumPy's too) that is not a bool (`True` is an int to Python, never a count to a user)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number (NumPy's too) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class integer:
    """An integer (not a bool) `>= min`, at most `max` (`why` says why), or `None` when `optional`; returned as an int.

    The one home of the "integer but not bool" rule: configs declare it, and
    library entry points with a count argument call it (`integer(min=1)("top_k", top_k)`).
    """

    min: int = 0
    max: int | None = None
    why: str = ""
    optional: bool = False
    arg_type = int

    def __call__(self, name: str, value):
        if value is None and self.optional:
            return value
        if not is_int(value) or value < self.min:
            what = "a positive integer" if self.min == 1 else f"an integer >= {self.min}"
            what = f"None or {what}" if self.optional and self.min != 1 else what
            raise ConfigError(f"`{name}` must be {what}. Received: {name}={value!r}", field=name)
        if self.max is not None and value > self.max:
            raise ConfigError(f"`{name}` must be at most {self.max}. Received: {name}={value}. {self.why}", field=name)
        return int(value)


@dataclasses.dataclass(frozen=True)
class number:
    """A finite int or float (not a bool) in the range `bounds` writes, e.g. `"in (0, 1]"` or `">= 0"`.

    `low`/`high` are the limits, `open_low`/`open_high` exclude them; `e_g`
    ends the message with an example. Stored as a float when `as_float`;
    `None` passes when `optional`.
    """

    low: float = 0
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    e_g: str = ""
    as_float: bool = True
    optional: bool = False
    arg_type = float

    def bounds(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"

    def __call__(self, name: str, value):
        if value is None and self.optional:
            return value
        ok = is_real(value) and (
            (self.low < value if self.open_low else self.low <= value)
            and (value < self.high if self.open_high or self.high == math.inf else value <= self.high)
        )
        if not ok:
            example = f", e.g. {self.e_g}" if self.e_g else ""
            raise ConfigError(f"`{name}` must be a number {self.bounds()}{example}. Received: {name}={value!r}",
                              field=name)
        return float(value) if self.as_float else value


@dataclasses.dataclass(frozen=True)
class one_of:
    """One of `choices`."""

    choices: tuple

    def __call__(self, name: str, value):
        if value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise ConfigError(f"`{name}` must be one of {allowed}. Received: {name}={value!r}", field=name)
        return value


def boolean(name: str, value) -> bool:
    """True or False, nothing that merely tests true."""
    if not isinstance(value, bool):
        raise ConfigError(f"`{name}` must be True or False. Received: {name}={value!r}", field=name)
    return value


def folder(name: str, value) -> str:
    """A non-empty path, stored as a str."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"`{name}` must be a folder path. Received: {name}={value!r}", field=name)
    return os.fspath(value)
