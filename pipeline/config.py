"""Typed configuration for both stages.

Each stage has one frozen dataclass. Values come, in increasing priority,
from the dataclass defaults, a TOML file (`--config FILE`, tables
`[features]` and `[train]`) and command-line flags. Flags left unset are
`None` and are dropped before overriding, so an unset flag never hides a
value from the file (timm's "kwargs set to None are pruned").

The resolved config is stored as JSON with every artifact it produced.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

POOLINGS = ("avg", "max", "none")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STORAGE_DTYPES = ("float32", "float16")


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """What `bottleneck features` extracts, and how.

    Args:
        data: folder of images, one subfolder per class, optionally under
            `train/`, `validation/` and `test/`.
        model: backbone name from `bottleneck list`, e.g. `"mobilenet_v2"`.
        size: square input size in pixels. `None` uses the backbone's
            default size. Defaults to `None`.
        pooling: `"avg"` or `"max"` global pooling of the last feature map,
            or `"none"` to keep the spatial map. Defaults to `"avg"`.
        layer: name of a layer of the backbone whose output is taken
            instead of the last one. `None` takes the last. Defaults to `None`.
        weights: `"imagenet"` (downloaded by Keras into its cache), `"none"`
            (random weights, for smoke runs only) or the path of a weights
            file. Defaults to `"imagenet"`.
        precision: Keras dtype policy for the forward pass, one of
            `"float32"`, `"mixed_bfloat16"`, `"mixed_float16"`.
            Defaults to `"float32"`.
        storage_dtype: dtype of the stored features, `"float32"` or
            `"float16"`. Defaults to `"float32"`.
        batch_size: images per forward pass. Defaults to `64`.
        workers: decoding threads running ahead of the model.
            Defaults to `min(8, cpu_count)`.
        shard_size: images per shard file; a kill loses at most one shard
            of work. Defaults to `1024`.
        cache_dir: folder holding the feature sets. Defaults to `"cache"`.
        name: dataset name used in the feature set's folder name. `None`
            uses the data folder's name. Defaults to `None`.
    """

    data: str
    model: str
    size: int | None = None
    pooling: str = "avg"
    layer: str | None = None
    weights: str = "imagenet"
    precision: str = "float32"
    storage_dtype: str = "float32"
    batch_size: int = 64
    workers: int = dataclasses.field(default_factory=_default_workers)
    shard_size: int = 1024
    cache_dir: str = "cache"
    name: str | None = None

    def __post_init__(self):
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("storage_dtype", self.storage_dtype, STORAGE_DTYPES)
        for field in ("batch_size", "workers", "shard_size"):
            _check_positive(field, getattr(self, field))
        if self.size is not None:
            _check_positive("size", self.size)


def load_toml(path: str | os.PathLike | None) -> dict[str, Any]:
    """Reads a TOML config file; `None` gives an empty config."""
    if path is None:
        return {}
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"Config file '{path}' does not exist.") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"Config file '{path}' is not valid TOML: {e}") from None


def resolve(cls, table: dict[str, Any] | None = None, **overrides):
    """Builds `cls` from a TOML table, then non-`None` overrides on top.

    Unknown keys in the table raise a `ValueError` naming the valid keys.
    """
    table = dict(table or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - valid)
    if unknown:
        raise ValueError(
            f"Unknown config keys {unknown} for {cls.__name__}. "
            f"Valid keys: {sorted(valid)}."
        )
    table.update({k: v for k, v in overrides.items() if v is not None})
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in table]
    if missing:
        raise ValueError(
            f"{cls.__name__} needs {', '.join(f'`{m}`' for m in missing)}: pass "
            + ", ".join(f"--{m.replace('_', '-')}" for m in missing)
            + " (or set it in the config file)."
        )
    return cls(**table)


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}. Received: {name}={value!r}")


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
