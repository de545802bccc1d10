"""Which rows of a feature set are train, validation and test, and a training fraction's subset.

These are pure functions of what the set stores (split folders and split
keys) plus a seed for the fraction, so the head stage (`heads.splits`) and
a notebook (`FeatureSet.split`) cut exactly the same rows; this module is
their one home.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import config as config_lib
from ..config.options import integer
from ..errors import ConfigError
from .shards import shown_path

__all__ = ["SPLITS", "duplicates_across_splits", "duplicates_note", "split_indices", "subsample"]

SPLITS = ("train", "validation", "test")


def split_indices(feature_set, splits: Sequence[float] = config_lib.DEFAULT_SPLITS) -> dict[str, np.ndarray]:
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
    seed = integer(min=0)("seed", seed)
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


def duplicates_across_splits(sha256: Sequence[str], splits: Sequence) -> list[tuple[int, ...]]:
    """Rows holding one content (same sha256) in more than one split: exact copies that leak.

    Args:
        sha256: the content hash of each row.
        splits: each row's split, or anything that decides it (a split key
            before the split fractions are known).

    Returns:
        One tuple of row indices per such content (every row holding it),
        sorted by first row; empty when no content crosses a split.
    """
    rows_of: dict[str, list[int]] = {}
    for row, digest in enumerate(sha256):
        rows_of.setdefault(digest, []).append(row)
    return sorted(tuple(rows) for rows in rows_of.values() if len({splits[r] for r in rows}) > 1)



def duplicates_note(groups: Sequence[Sequence[str]], *, may: bool = False) -> str:
    """A sentence for people on the exact copies `duplicates_across_splits` found: count, first three paths.

    Args:
        groups: the paths of each content found in several splits.
        may: bool, the splits are not cut yet (extraction), so the copies
            only can fall apart. Defaults to `False`.
    """
    shown = "; ".join(" = ".join(f"'{shown_path(p)}'" for p in paths) for paths in groups[:3])
    more = f"; and {len(groups) - 3} more" if len(groups) > 3 else ""
    where = "that can fall in different splits" if may else "in different splits"
    return (
        f"{len(groups)} image content{'s are' if len(groups) > 1 else ' is'} stored at several paths {where}, "
        f"so test scores would read too high: {shown}{more}. Keep one copy, or give the copies one group in a manifest."
    )
