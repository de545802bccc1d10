"""Typed configuration for both stages.

Each stage has one frozen dataclass whose fields are declared once, with
their flag, Make variable, help and check (`options`, whose docstring says
how to add an option). Values come, in increasing priority, from the
dataclass defaults, a TOML file (`--config FILE`, tables `[features]`,
`[train]`, `[curve]` and `[finetune]`) and command-line flags. Flags left
unset are `None` and are dropped before overriding, so an unset flag never
hides a value from the file (timm's "kwargs set to None are pruned").

The resolved config is stored as JSON with every artifact it produced.
"""

from __future__ import annotations

from .features import DECODE_MODES, DECODERS, DEFAULT_AUGMENT_OPS, ENGINES, POOLINGS, PRECISIONS, RUNTIMES, STORAGE_DTYPES, ExtractConfig
from .files import load_toml, resolve, to_dict
from .finetune import DEFAULT_UNFREEZE, FinetuneConfig
from .options import Option, key_fields, options_of
from .train import (DEFAULT_FRACTIONS, DEFAULT_SPLITS, SWEEP_REFITS, SWEEP_SELECTS, CurveConfig, TrainConfig,
                    _parse_splits)

__all__ = [
    "DECODE_MODES", "DECODERS", "DEFAULT_AUGMENT_OPS", "DEFAULT_FRACTIONS", "DEFAULT_SPLITS", "DEFAULT_UNFREEZE", "ENGINES",
    "POOLINGS", "PRECISIONS", "RUNTIMES", "STORAGE_DTYPES", "SWEEP_REFITS", "SWEEP_SELECTS", "CurveConfig", "ExtractConfig",
    "FinetuneConfig", "Option", "TrainConfig", "key_fields", "load_toml", "options_of", "resolve", "to_dict",
]
# `_parse_splits` is the store's reader of a `splits` value (store/splits.py).
