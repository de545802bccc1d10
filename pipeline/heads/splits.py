"""Which rows of a feature set a head trains on, and which it is measured on.

Splits come from the feature set alone (split folders, or each image's
stored split key), never from a seed, so runs with other seeds, fractions or
heads are scored on the same validation and test images. The cutting itself
(`split_indices`, `subsample`) lives in `store.splits`, shared with
`FeatureSet.split`; this module adds the checks a head needs.
"""

from __future__ import annotations

import numpy as np

from .. import config as config_lib
from ..errors import ConfigError, FeatureStoreError
from ..store import FeatureSet
from ..store.splits import SPLITS, split_indices, subsample

__all__ = ["SPLITS", "split_indices", "subsample", "training_splits"]


def training_splits(feature_set: FeatureSet, *, config: config_lib.TrainConfig) -> dict[str, np.ndarray]:
    """The rows to train and measure on, after checking a classifier can learn from them.

    The training split is cut down to `config.fraction` (see `subsample`).
    Checked before any head is fitted: at least two classes, every class in
    the training rows, something to evaluate on, and features that are not
    all constant on the training rows.

    Args:
        feature_set: a complete `FeatureSet`.
        config: the `TrainConfig`; `splits`, `fraction` and `seed` are read.

    Returns:
        `{"train": idx, "validation": idx, "test": idx}` as `split_indices`
        gives them, with `train` subsampled.

    Raises:
        FeatureStoreError: the feature set has a single class, or its
            features are the same on every training row.
        ConfigError: `splits` or `fraction` leave a class without training
            rows, or `splits` leave nothing to evaluate on.
    """
    fs = feature_set
    if len(fs.class_names) < 2 or len(np.unique(fs.labels)) < 2:
        raise FeatureStoreError(
            f"Feature set '{fs.name}' has a single class ({', '.join(fs.class_names) or 'none'}); "
            "a classifier needs at least 2. Add a folder per class to the data and extract the features again."
        )
    parts = split_indices(fs, config.splits)
    _require_every_class(fs, parts["train"], "the training split", "use a larger train share in `splits`, or add images of it", "splits")
    parts["train"] = subsample(parts["train"], fs.labels, config.fraction, config.seed)
    _require_every_class(fs, parts["train"], f"the {config.fraction:g} training fraction", "use a larger `fraction`", "fraction")
    if not len(parts["validation"]) and not len(parts["test"]):
        raise ConfigError(
            f"Feature set '{fs.name}' leaves no validation or test example to evaluate on with "
            f"splits={','.join(f'{s:g}' for s in config.splits)}. Give validation or test a larger share in "
            "`splits`, or add images.",
            field="splits",
        )
    _require_varying_features(fs, parts["train"])
    return parts


def _require_every_class(fs: FeatureSet, rows: np.ndarray, what: str, fix: str, field: str) -> None:
    missing = sorted(set(range(len(fs.class_names))) - set(fs.labels[rows].tolist()))
    if missing:
        names = ", ".join(repr(fs.class_names[i]) for i in missing)
        raise ConfigError(f"Class {names} of feature set '{fs.name}' has no example in {what}: {fix}.", field=field)


def _require_varying_features(fs: FeatureSet, rows: np.ndarray) -> None:
    # float16 storage flushes features below ~6e-8 to zero; random-weight
    # backbones give features near 1e-12, so their sets come out all zeros
    # and every head would "train" to a constant guess with exit 0.
    X = fs.features[rows]
    if len(X) and np.all(X == X[:1]):
        recorded = {"stored as": fs.config.get("storage_dtype"), "weights": fs.attrs.get("weights")}
        facts = ", ".join(f"{what} {value}" for what, value in recorded.items() if value)
        raise FeatureStoreError(
            f"Every feature of feature set '{fs.name}' is {float(X.flat[0]):g} on all {len(X)} training "
            f"examples{f' ({facts})' if facts else ''}, so no head can learn from it. Features below "
            "float16's range are stored as 0 (random weights give features near 1e-12): extract the set "
            "again with `storage_dtype='float32'`, or with real `weights`.",
            field="storage_dtype",
        )
