"""The errors the library raises on purpose, and the exit status each maps to.

Every error a user can cause or fix is a `BottleneckError`: its message names
the file, value, config field or function argument at fault and says what to
do; `field` names the config field (an `ExtractConfig` or `TrainConfig`
attribute) the fix concerns, so the CLI can add the matching flag and Make
variable. Anything else that escapes is a bug, and the CLI says so.

Each class also derives from the built-in type Python code expects
(`ValueError` for bad values, `OSError` for a failed write, ...), so library
users can keep catching those.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable

__all__ = [
    "BottleneckError",
    "ConfigError",
    "DataError",
    "ExitStatus",
    "FeatureStoreError",
    "RunError",
    "StoreBusyError",
    "WeightsUnavailableError",
    "WriteError",
    "did_you_mean",
]


class ExitStatus(enum.IntEnum):
    """Exit statuses of the `bottleneck` command (documented in the README)."""

    OK = 0
    UNEXPECTED = 1  # a bug: run again with --traceback and report it
    BAD_INPUT = 2  # input, config, data, weights, feature set or run folder: the message says what to fix
    CANNOT_WRITE = 3  # disk full, read-only or unwritable folder: nothing half-written was kept
    INTERRUPTED = 130  # Ctrl-C, SIGTERM or SIGHUP: finished work is kept


class BottleneckError(Exception):
    """Base of the errors the library raises on purpose.

    Args:
        message: what is wrong, naming the file or value, and the fix.
        field: the config field the fix concerns (e.g. `"size"`), or `None`.
    """

    exit_status = ExitStatus.BAD_INPUT

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConfigError(BottleneckError, ValueError):
    """A config field or function argument has a value that cannot be used."""


class DataError(BottleneckError, ValueError):
    """The data folder cannot be used: missing, empty, or laid out wrongly."""


class WeightsUnavailableError(BottleneckError, RuntimeError):
    """The requested backbone weights cannot be had or do not fit the model."""


class FeatureStoreError(BottleneckError, ValueError):
    """A feature set is missing, incomplete, corrupt or of another format."""


class StoreBusyError(BottleneckError, RuntimeError):
    """Another process holds the write lock of a feature set."""


class RunError(BottleneckError, ValueError):
    """A run folder or bundle cannot be used: missing, changed or tampered."""


class WriteError(BottleneckError, OSError):
    """An output could not be written (disk full, quota, read-only folder, I/O error)."""

    exit_status = ExitStatus.CANNOT_WRITE


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """` Did you mean 'a', 'b'?` for the up to 3 choices closest to a mistyped `name`, else `""`."""
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""
