"""argparse pieces every subcommand shares: the common flags, and options that refuse repeats."""

from __future__ import annotations

import argparse

__all__ = ["Parser", "common_flags"]


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
