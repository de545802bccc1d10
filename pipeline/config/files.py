"""Where config values come from: a TOML file's table, then flags over the dataclass defaults."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def load_toml(path: str | os.PathLike | None) -> dict[str, Any]:
    """Reads a TOML config file; `None` gives an empty config."""
    if path is None:
        return {}
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file '{path}' does not exist.", field="config") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Config file '{path}' is not valid TOML: {e}", field="config") from None


def resolve(cls, table: dict[str, Any] | None = None, **overrides):
    """Builds `cls` from a TOML table, then non-`None` overrides on top.

    Unknown keys in the table raise a `ConfigError` naming the valid keys.
    """
    table = dict(table or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - valid)
    if unknown:
        raise ConfigError(
            f"Unknown config keys {unknown} for {cls.__name__}. Valid keys: {sorted(valid)}.", field="config"
        )
    table.update({k: v for k, v in overrides.items() if v is not None})
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in table]
    if missing:
        raise ConfigError(
            f"{cls.__name__} needs {', '.join(f'`{m}`' for m in missing)}: set it (or in the config file).",
            field=missing[0],
        )
    return cls(**table)


# Fields holding paths; stored absolute, so a feature set or run records
# where its inputs were whatever folder a later command runs from.
_PATH_FIELDS = ("data", "cache_dir", "runs_dir", "weights")
_NOT_PATHS = ("imagenet", "none")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(value: str) -> bool:
    """Whether a path field holds a URL (`s3://b/x`, `https://h/x`): kept as given, never made absolute."""
    return bool(_URL.match(value))


def to_dict(config) -> dict[str, Any]:
    """The config as stored with an artifact: plain values, path fields made absolute."""
    values = dataclasses.asdict(config)
    for field in _PATH_FIELDS:
        if isinstance(values.get(field), str) and values[field] not in _NOT_PATHS and not is_url(values[field]):
            values[field] = os.path.abspath(values[field])
    return values
