"""argparse pieces every subcommand shares: the common flags, options that refuse repeats, and
each command's arguments, generated from their declarations (`cli.options`)."""

from __future__ import annotations

import argparse

from ..config import Option, options_of
from .options import COMMAND_OPTIONS

__all__ = ["Parser", "add_command", "add_options", "common_flags", "flag_values", "options_doc"]


def add_options(parser: argparse.ArgumentParser, options: dict[str, Option]) -> None:
    """One argument per declared option; each is stored under its field's name."""
    for name, opt in options.items():
        if opt.argument or opt.flag:
            parser.add_argument(*opt.names(name), **opt.argparse_kwargs(name))


def add_command(sub, command: str, handler, *, help: str, json_help="print one JSON object as the last line"):
    """The subcommand `command`: its declared arguments and options, `--json` and the common flags."""
    parser = sub.add_parser(command, help=help)
    add_options(parser, COMMAND_OPTIONS[command])
    parser.add_argument("--json", action="store_true", help=json_help)
    common_flags(parser, default=argparse.SUPPRESS)
    parser.set_defaults(handler=handler)
    return parser


def flag_values(args: argparse.Namespace, cls) -> dict:
    """The parsed value of each of `cls`'s declared options (`None` where the flag was not given)."""
    return {name: getattr(args, name) for name, opt in options_of(cls).items() if opt.argument or opt.flag}


def options_doc() -> str:
    """docs/options.md: the Make variable and flag of every option, from the declarations."""
    lines = [
        "# Options of the commands",
        "",
        "Generated from the declarations in `pipeline/config/` and `pipeline/cli/options.py` (a test checks it is",
        "current); regenerate with",
        "`python -c \"from pipeline.cli.parsing import options_doc; print(options_doc(), end='')\" > docs/options.md`.",
        "A Make variable of `ARGS` means the flag is passed as `make ... ARGS=\"--flag value\"`.",
        "Every command also takes `--json`, `--quiet` (`-q`), `--traceback` and `--verbose` (`-v`).",
    ]
    for command, options in COMMAND_OPTIONS.items():
        make = f" (`make {command}`)" if any(opt.make for opt in options.values()) else ""
        lines += ["", f"## `bottleneck {command}`{make}", ""]
        lines += ["| Make variable | flag | meaning |", "| --- | --- | --- |"]
        for name, opt in options.items():
            flag = f"`{name.upper()}` (positional)" if opt.argument else ", ".join(f"`{f}`" for f in opt.names(name))
            meaning = (opt.help or "").replace("|", "\\|").replace("<", "\\<")
            lines.append(f"| `{opt.make}` | {flag} | {meaning} |" if opt.make else f"| | {flag} | {meaning} |")
    return "\n".join(lines) + "\n"


def common_flags(parser: argparse.ArgumentParser, default=False) -> None:
    # Subcommands default to SUPPRESS so that `bottleneck -q features` keeps
    # the root's value instead of the subparser's default overwriting it.
    parser.add_argument("--quiet", "-q", action="store_true", default=default,
                        help="print only what was written (its path) and errors")
    parser.add_argument("--traceback", action="store_true", default=default,
                        help="show the full Python traceback on errors")
    parser.add_argument("--verbose", "-v", action="store_true", default=default,
                        help="also show debug messages and the warnings and logs of the libraries used")


class _StoreOnce(argparse.Action):
    """Stores an option's value, refusing a second one: argparse would silently keep the last."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in given and option_string is not None:
            parser.error(f"{option_string} is given twice; give it once.")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and its subcommands' parsers) whose plain options refuse repeats."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)
