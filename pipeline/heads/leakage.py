"""Near-duplicate images and split leakage, found in cached features (pure NumPy).

Two photos of one scene (a burst, a resized copy, a file saved twice) land
in different splits by chance, and a head then scores on what it was
trained on. `find_leakage` lists the pairs of rows whose features have a
cosine similarity at or above a threshold, the pairs of those that cross
splits, and the files (same sha256) stored under two classes.

No `n x n` matrix is ever held: similarities are computed one block of
`block_size` rows against the rows after it, in float32, so memory stays
at `block_size x n` whatever the size of the set.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Sequence

import numpy as np

from ..config.options import integer, number

__all__ = ["DEFAULT_THRESHOLD", "DuplicatePair", "LeakageCheck", "find_leakage", "near_duplicate_pairs"]

DEFAULT_THRESHOLD = 0.98
"""Cosine similarity at or above which two rows count as near-duplicates."""

_DEFAULT_BLOCK = 1024
_DEFAULT_MAX_PAIRS = 10_000


@dataclasses.dataclass(frozen=True)
class DuplicatePair:
    """Rows `i < j` whose features have cosine similarity `similarity`."""

    i: int
    j: int
    similarity: float


@dataclasses.dataclass(frozen=True)
class LeakageCheck:
    """What `find_leakage` found.

    Attributes:
        threshold: the cosine similarity threshold used.
        pairs: near-duplicate pairs, most similar first (at most `max_pairs`).
        n_pairs: every near-duplicate pair found, kept or not.
        cross_split: the most similar pairs whose rows are in different
            splits (at most `max_pairs`).
        n_cross_split: every cross-split pair found, kept or not.
        conflicts: groups of rows holding the same file (sha256) under
            different labels, each a tuple of row indices.
    """

    threshold: float
    pairs: tuple[DuplicatePair, ...]
    n_pairs: int
    cross_split: tuple[DuplicatePair, ...]
    n_cross_split: int
    conflicts: tuple[tuple[int, ...], ...]


def near_duplicate_pairs(
    features, threshold: float = DEFAULT_THRESHOLD, *, block_size: int = _DEFAULT_BLOCK,
    max_pairs: int = _DEFAULT_MAX_PAIRS,
) -> tuple[list[DuplicatePair], int]:
    """Pairs of rows whose features have cosine similarity >= `threshold`.

    Args:
        features: array of shape `(n, ...)`; each row is flattened.
        threshold: float in (-1, 1]. Defaults to `0.98`.
        block_size: rows compared against the rest at a time; memory is
            about `block_size x n` float32. Defaults to `1024`.
        max_pairs: most pairs returned (the most similar); a set of
            identical features would otherwise give `n^2 / 2`.
            Defaults to `10000`.

    Returns:
        `(pairs, n_found)`: `DuplicatePair`s with `i < j`, most similar
        first (ties by `i`, `j`), and how many pairs were found in all.
        An all-zero row is similar to nothing.

    Example:

    ```python
    pairs, n = near_duplicate_pairs(fs.features, 0.99)
    ```
    """
    _check_arguments(threshold, block_size, max_pairs)
    top, n_found = _TopPairs(max_pairs), 0
    for i, j, sims in _similar_blocks(features, threshold, block_size):
        top.add(i, j, sims)
        n_found += len(i)
    return top.pairs(), n_found


def _similar_blocks(features, threshold: float, block_size: int):
    """`(i, j, similarity)` arrays of the pairs `i < j` at or above `threshold`, one block of rows at a time."""
    x = np.asarray(features, dtype=np.float32)
    x = x.reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1)
    for start in range(0, len(x), block_size):
        sims = x[start : start + block_size] @ x[start:].T  # this block against itself and every later row
        rows, cols = np.nonzero(sims >= threshold)
        upper = cols > rows  # j > i, each pair once, no row with itself
        rows, cols = rows[upper], cols[upper]
        yield rows + start, cols + start, sims[rows, cols]


class _TopPairs:
    """The `keep` most similar pairs of those added, trimmed as they come so memory stays bounded."""

    def __init__(self, keep: int):
        self._keep = keep
        self._i, self._j, self._s = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)

    def add(self, i, j, s) -> None:
        self._i = np.concatenate([self._i, i])
        self._j = np.concatenate([self._j, j])
        self._s = np.concatenate([self._s, s])
        if len(self._s) > 2 * self._keep:
            self._trim()

    def pairs(self) -> list[DuplicatePair]:
        self._trim()
        return [DuplicatePair(int(i), int(j), float(min(s, 1.0))) for i, j, s in zip(self._i, self._j, self._s)]

    def _trim(self) -> None:
        order = np.lexsort((self._j, self._i, -self._s))[: self._keep]
        self._i, self._j, self._s = self._i[order], self._j[order], self._s[order]


def find_leakage(
    features, *, splits: Sequence[str] | None = None, sha256: Sequence[str] | None = None,
    labels: Sequence[int] | None = None, threshold: float = DEFAULT_THRESHOLD,
    block_size: int = _DEFAULT_BLOCK, max_pairs: int = _DEFAULT_MAX_PAIRS,
) -> LeakageCheck:
    """Near-duplicates, those crossing splits, and one file under two labels.

    Args:
        features: array of shape `(n, ...)`, e.g. `FeatureSet.features`.
        splits: the split name of each row (`"train"`, `"validation"`,
            `"test"`); `None` finds no cross-split pairs. Defaults to `None`.
        sha256: the content hash of each row's file; with `labels`, finds
            one file stored under two classes. Defaults to `None`.
        labels: the class index of each row. Defaults to `None`.
        threshold, block_size, max_pairs: as `near_duplicate_pairs`.

    Returns:
        A `LeakageCheck`.

    Example:

    ```python
    parts = split_indices(fs)
    names = np.empty(len(fs.labels), dtype=object)
    for name, rows in parts.items():
        names[rows] = name
    check = find_leakage(fs.features, splits=names, threshold=0.98)
    ```
    """
    n = len(features)
    for name, values in (("splits", splits), ("sha256", sha256), ("labels", labels)):
        if values is not None and len(values) != n:
            raise ValueError(f"`{name}` must give one value per row of `features` ({n}). Received {len(values)}.")
    _check_arguments(threshold, block_size, max_pairs)
    split_of = None if splits is None else np.asarray(splits, dtype=object)
    top, top_cross = _TopPairs(max_pairs), _TopPairs(max_pairs)
    n_found = n_cross = 0
    for i, j, sims in _similar_blocks(features, threshold, block_size):
        top.add(i, j, sims)
        n_found += len(i)
        if split_of is not None:
            # Counted and kept apart from `pairs`: the most similar pairs overall can
            # crowd the cross-split ones out of the kept few.
            crossing = split_of[i] != split_of[j]
            top_cross.add(i[crossing], j[crossing], sims[crossing])
            n_cross += int(crossing.sum())
    return LeakageCheck(float(threshold), tuple(top.pairs()), n_found, tuple(top_cross.pairs()), n_cross,
                        _label_conflicts(sha256, labels))


def _label_conflicts(sha256, labels) -> tuple[tuple[int, ...], ...]:
    if sha256 is None or labels is None:
        return ()
    rows_of = defaultdict(list)
    for row, digest in enumerate(sha256):
        rows_of[digest].append(row)
    return tuple(
        tuple(rows) for rows in rows_of.values() if len({int(labels[r]) for r in rows}) > 1
    )


def _check_arguments(threshold, block_size, max_pairs) -> None:
    number(low=-1, high=1, open_low=True, e_g="0.98", as_float=False)("threshold", threshold)
    integer(min=1)("block_size", block_size)
    integer(min=1)("max_pairs", max_pairs)
