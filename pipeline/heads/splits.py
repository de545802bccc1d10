"""Which rows of a feature set a head trains on, and which it is measured on.

Splits come from the feature set alone (split folders, or each image's
stored split key), never from a seed, so runs with other seeds, fractions or
heads are scored on the same validation and test images.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from .. import config as config_lib
from ..errors import ConfigError, FeatureStoreError
from ..store import FeatureSet

__all__ = ["SPLITS", "split_indices", "subsample", "training_splits"]

SPLITS = ("train", "validation", "test")


def split_indices(
    feature_set: FeatureSet, splits: Sequence[float] = config_lib.DEFAULT_SPLITS
) -> dict[str, np.ndarray]:
    """Row indices of the train, validation and test splits.

    Folder splits win when the data had them: `train/`, `validation/` and
    `test/` rows as they are; with no `validation/` folder, validation is
    carved out of `train/` by split key, in the ratio `splits[1] : splits[0]`.
    Otherwise the stored split keys (stable per image path, uniform in
    [0, 1)) are cut at the cumulative `splits`, so adding images never moves
    an existing image to another split. No seed is involved.

    Args:
        feature_set: a `FeatureSet` (only `split_keys` and `folder_splits`
            are read).
        splits: train, validation, test shares summing to 1.
            Defaults to `(0.8, 0.1, 0.1)`.

    Returns:
        `{"train": idx, "validation": idx, "test": idx}`, sorted int64 row
        indices; validation or test may be empty.
    """
    train_share, val_share, _ = config_lib._parse_splits(splits)
    keys = np.asarray(feature_set.split_keys, dtype=np.float64)
    folders = np.asarray(feature_set.folder_splits).astype(str)
    rows = np.arange(len(keys))
    if np.any(folders != ""):
        out = {name: rows[folders == name] for name in SPLITS}
        if not len(out["validation"]):
            train = out["train"]
            carved = keys[train] < val_share / (train_share + val_share)
            out["validation"], out["train"] = train[carved], train[~carved]
        return out
    return {
        "train": rows[keys < train_share],
        "validation": rows[(keys >= train_share) & (keys < train_share + val_share)],
        "test": rows[keys >= train_share + val_share],
    }


def subsample(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A stratified, seeded subset of `indices` (the 1% / 10% experiments).

    Each class keeps `round(fraction * its count)` rows, at least one. The
    rows of a class are shuffled once by `seed` and the first ones kept, so
    for one seed the 1% subset lies inside the 10% subset.

    Args:
        indices: row indices to draw from (the training split).
        labels: the labels of *all* rows (indexed by `indices`).
        fraction: float in (0, 1]; `1` returns `indices` unchanged.
        seed: int seeding the draw. Defaults to `0`.

    Returns:
        Sorted int64 row indices.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not 0 < fraction <= 1:
        raise ConfigError(f"`fraction` must be a number in (0, 1]. Received: fraction={fraction!r}", field="fraction")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"`seed` must be an integer >= 0. Received: seed={seed!r}", field="seed")
    if fraction == 1:
        return np.sort(indices)
    rng = np.random.default_rng(seed)
    of_rows = np.asarray(labels)[indices]
    kept = []
    for label in np.unique(of_rows):
        members = indices[of_rows == label]
        members = members[rng.permutation(len(members))]
        kept.append(members[: max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(kept)) if kept else indices


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
