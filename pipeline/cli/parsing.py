"""argparse pieces every subcommand shares: the common flags, options that refuse repeats, and
the options of each stage's command, generated from the config declarations (`pipeline.config.options`)."""

from __future__ import annotations

import argparse

from ..config import CurveConfig, ExtractConfig, FinetuneConfig, Option, TrainConfig, options_of

__all__ = ["STAGE_OPTIONS", "Parser", "add_options", "add_stage_parser", "common_flags", "flag_values", "options_doc"]


def _config_file(table: str) -> Option:
    return Option(flag="--config", make="CONFIG", help=f"TOML file with a [{table}] table")


_FEATURES_ARGUMENT = Option(
    argument="the feature set", make="FEATURES", cli={"nargs": "?"},
    help="feature set: a name (or unique prefix) from `bottleneck cache ls`, or a path to the set folder "
    "or its features.h5; may be left out when the cache holds exactly one set")
_RUN_ARGUMENT = Option(argument="the run folder", make="RUN",
                       help="run folder of a dense head (runs/<feature set>/dense-<id>)")

# Each stage command's arguments and options, in --help order: its config's
# declarations plus the arguments that are not config fields.
STAGE_OPTIONS: dict[str, dict[str, Option]] = {
    "features": {**options_of(ExtractConfig), "config": _config_file("features")},
    "train-head": {"features": _FEATURES_ARGUMENT, **options_of(TrainConfig), "config": _config_file("train")},
    "curve": {"features": Option(argument="the feature set", make="FEATURES", cli={"nargs": "?"},
                                 help="feature set, as for train-head"),
              **options_of(CurveConfig), "config": _config_file("curve")},
    "finetune": {"run": _RUN_ARGUMENT, **options_of(FinetuneConfig), "config": _config_file("finetune")},
}


def add_options(parser: argparse.ArgumentParser, options: dict[str, Option]) -> None:
    """One argument per declared option; each is stored under its field's name."""
    for name, opt in options.items():
        if opt.argument or opt.flag:
            parser.add_argument(*([name] if opt.argument else [opt.flag]), **opt.argparse_kwargs(name))


def add_stage_parser(sub, command: str, handler, *, help: str) -> argparse.ArgumentParser:
    """The subcommand of a stage: its declared options, `--json` and the common flags."""
    parser = sub.add_parser(command, help=help)
    add_options(parser, STAGE_OPTIONS[command])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    common_flags(parser, default=argparse.SUPPRESS)
    parser.set_defaults(handler=handler)
    return parser


def flag_values(args: argparse.Namespace, cls) -> dict:
    """The parsed value of each of `cls`'s declared options (`None` where the flag was not given)."""
    return {name: getattr(args, name) for name, opt in options_of(cls).items() if opt.argument or opt.flag}


def options_doc() -> str:
    """docs/options.md: the Make variable and flag of every stage option, from the declarations."""
    lines = [
        "# Options of the stage commands",
        "",
        "Generated from the declarations in `pipeline/config/` (a test checks it is current); regenerate with",
        "`python -c \"from pipeline.cli.parsing import options_doc; print(options_doc(), end='')\" > docs/options.md`.",
        "A Make variable of `ARGS` means the flag is passed as `make ... ARGS=\"--flag value\"`.",
        "Every command also takes `--json`, `--quiet` (`-q`), `--traceback` and `--verbose` (`-v`).",
    ]
    for command, options in STAGE_OPTIONS.items():
        lines += ["", f"## `bottleneck {command}` (`make {command}`)", "", "| Make variable | flag | meaning |",
                  "| --- | --- | --- |"]
        for name, opt in options.items():
            flag = "positional" if opt.argument else f"`{opt.flag}`"
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
