"""Near-duplicate and split-leakage check (`pipeline.heads.leakage`): correct, and bounded in memory."""

import tracemalloc

import numpy as np
import pytest

from pipeline.heads.leakage import find_leakage, near_duplicate_pairs


def _brute_force(features, threshold):
    x = features.reshape(len(features), -1).astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return {(int(a), int(b)) for a, b in zip(i, j)}


def _clustered(n=300, dim=32, seed=0):
    """Random rows plus a few near-copies (noise 1e-3), so some pairs sit above any threshold."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    copies = rng.choice(n, size=20, replace=False)
    x[copies[10:]] = x[copies[:10]] + rng.normal(scale=1e-3, size=(10, dim)).astype(np.float32)
    return x


@pytest.mark.parametrize("block_size", [1, 7, 64, 1024])
@pytest.mark.parametrize("threshold", [0.98, 0.3])
def test_blocked_pairs_equal_a_brute_force_check(block_size, threshold):
    x = _clustered()
    pairs, n_found = near_duplicate_pairs(x, threshold, block_size=block_size, max_pairs=10**6)
    assert {(p.i, p.j) for p in pairs} == _brute_force(x, threshold)
    assert n_found == len(pairs) > 0
    assert all(p.i < p.j for p in pairs)
    assert [p.similarity for p in pairs] == sorted((p.similarity for p in pairs), reverse=True)


def test_planted_duplicates_across_splits_are_found_and_a_clean_set_has_none():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 64)).astype(np.float32)
    splits = np.array(["train"] * 160 + ["validation"] * 20 + ["test"] * 20, dtype=object)
    clean = find_leakage(x, splits=splits)
    assert clean.pairs == () and clean.cross_split == () and clean.n_pairs == 0

    leaky = x.copy()
    leaky[185] = leaky[3] * 2.0  # same direction: a rescaled copy, in test and train
    leaky[170] = leaky[4] + rng.normal(scale=1e-3, size=64)  # validation and train
    leaky[5] = leaky[6]  # both in train: a duplicate, but no leak
    check = find_leakage(leaky, splits=splits)
    assert {(p.i, p.j) for p in check.pairs} == {(3, 185), (4, 170), (5, 6)}
    assert {(p.i, p.j) for p in check.cross_split} == {(3, 185), (4, 170)}


def test_the_same_file_under_two_labels_is_a_conflict():
    x = np.eye(4, dtype=np.float32)
    check = find_leakage(x, sha256=["a", "b", "a", "c"], labels=[0, 1, 1, 1])
    assert check.conflicts == ((0, 2),)
    assert find_leakage(x, sha256=["a", "b", "a", "c"], labels=[1, 1, 1, 0]).conflicts == ()


def test_max_pairs_keeps_the_most_similar_and_counts_them_all():
    x = np.ones((50, 4), dtype=np.float32)
    x[0, 0] = 1.05  # slightly less similar to the rest
    pairs, n_found = near_duplicate_pairs(x, 0.9, block_size=8, max_pairs=30)
    assert n_found == 50 * 49 // 2 and len(pairs) == 30
    assert all(p.i > 0 for p in pairs)


def test_cross_split_pairs_are_all_counted_when_the_kept_pairs_are_capped():
    """Many train-only copies are the most similar pairs: the cap must not hide the cross-split count."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 16)).astype(np.float32)
    x[:40] = x[0]  # 780 exact pairs, all in train
    x[40:70] = x[1] + rng.normal(scale=1e-3, size=(30, 16)).astype(np.float32)  # near copies of row 1
    splits = np.array(["train"] * 55 + ["test"] * 35, dtype=object)
    expected = {(i, j) for i, j in _brute_force(x, 0.98) if splits[i] != splits[j]}
    check = find_leakage(x, splits=splits, block_size=16, max_pairs=50)
    assert len(expected) > 50 and check.n_cross_split == len(expected)
    assert len(check.pairs) == len(check.cross_split) == 50
    assert {(p.i, p.j) for p in check.cross_split} <= expected


def test_zero_rows_match_nothing_and_bad_arguments_name_themselves():
    x = np.zeros((3, 4), dtype=np.float32)
    assert near_duplicate_pairs(x)[0] == []
    for kwargs, name in (({"threshold": 1.5}, "threshold"), ({"block_size": 0}, "block_size")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            near_duplicate_pairs(x, **kwargs)
    with pytest.raises(ValueError, match="`splits`"):
        find_leakage(x, splits=["train"])


@pytest.mark.slow
def test_memory_stays_bounded_on_20000_rows_of_dimension_512():
    n, dim = 20_000, 512
    x = np.random.default_rng(2).normal(size=(n, dim)).astype(np.float32)
    x[19_999] = x[7]
    tracemalloc.start()
    try:
        pairs, _ = near_duplicate_pairs(x, block_size=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(p.i, p.j) for p in pairs] == [(7, 19_999)]
    full_matrix = n * n * 4  # 1.6 GB
    # A normalised copy (41 MB), one 1024 x n block (82 MB), its mask and BLAS's copies: ~200 MB.
    assert peak < 250e6 < full_matrix / 6, f"peak {peak / 1e6:.0f} MB"
