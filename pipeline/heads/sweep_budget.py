"""A sweep's budget: the rows its candidates fit on, or a refusal before anything fits.

From each head's measured `FitCost` (`registry`): a sweep whose candidates
on every training row would run past its budget chooses on a stratified
subsample and refits the winner on every row; one whose final fit alone
would is refused up front, naming the estimate and the faster heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..store.splits import subsample
from .registry import format_seconds, get_head_cfg, uses_keras
from .workers import cores

__all__ = ["SWEEP_BUDGET", "check_sweep_budget", "side_by_side", "sweep_rows"]

# Seconds a sweep (its candidates and the final fit) may be estimated to take
# without a `time_limit`: past it, candidates fit on a stratified subsample of
# the training rows; if the final fit alone is past it, the sweep is refused.
SWEEP_BUDGET = 300.0
# Candidates need this many training rows per class to rank parameters that
# suit the whole set; a budget that allows fewer refuses instead.
_MIN_ROWS_PER_CLASS = 30
# Heads to name instead of one that cannot sweep this many rows in budget: linear in the rows.
_FASTER = {"svm_nystroem": "an RBF kernel approximation", "logreg": "linear", "ridge": "linear"}


def side_by_side(head: str, n_candidates: int, n_jobs: int = -1) -> int:
    """How many of a sweep's `n_candidates` fit at once (`n_jobs` -1: one per core)."""
    # Keras models side by side would each import Keras and fight over the
    # same cores, for no gain on a CPU: the dense head runs one at a time.
    if uses_keras(head):
        return 1
    return min(cores() if n_jobs == -1 else max(n_jobs, 1), n_candidates)


def sweep_rows(
    head: str, labels: np.ndarray, n_features: int, n_candidates: int, n_jobs: int, *,
    budget: float = SWEEP_BUDGET, seed: int = 0,
) -> np.ndarray | None:
    """The training rows a sweep's candidates fit on: `None` for all, else a stratified subsample.

    From the head's measured `FitCost`: the candidates (`n_candidates`,
    `n_jobs` side by side) and the final fit on every row must be estimated
    within `budget`. When the candidates on every row are not, they fit on
    the largest stratified subsample that is, and the winner's parameters
    are then fitted once on every row as usual; kernel SVMs (cost quadratic
    in the rows) keep the most from this. An import-path head (no cost) uses
    every row.

    Args:
        head: a head name or import path.
        labels: the training rows' labels.
        n_features: features per row.
        n_candidates: combinations in the grid.
        n_jobs: candidates fitted side by side.
        budget: seconds. Defaults to `SWEEP_BUDGET`.
        seed: seeds the subsample. Defaults to `0`.

    Returns:
        Sorted positions into `labels`, or `None` for every row.

    Raises:
        ConfigError: the final fit alone, or the candidates on the fewest
            rows worth choosing on, would run past `budget`; the message
            gives the estimate and the faster options.
    """
    cost = None if ":" in head else get_head_cfg(head).cost
    n_rows = len(labels)
    if cost is None:
        return None
    rounds = n_candidates / max(n_jobs, 1)
    final = cost.estimate(n_rows, n_features)
    if final + rounds * final <= budget:
        return None
    fewest = _MIN_ROWS_PER_CLASS * len(np.unique(labels))
    left = budget - final
    fitting = 0 if left <= 0 else int(1000 * (left / (rounds * cost.estimate(1000, n_features))) ** (1 / cost.rows_power))
    if fitting < fewest:
        needed = final + rounds * cost.estimate(fewest, n_features)
        raise ConfigError(
            f"Sweeping {head} over {n_candidates} candidates on {n_rows:,} rows x {n_features:,} features is estimated "
            f"at {format_seconds(final + rounds * final)} on {cores()} cores, the final fit on every row alone at "
            f"{format_seconds(final)}: past the sweep's budget of {format_seconds(budget)}, even choosing on "
            f"{fewest:,} rows. Use {_faster(head)}train on fewer rows (`fraction`), or allow it with a "
            f"`time_limit` of at least {math.ceil(needed)} s.",
            field="sweep",
        )
    return subsample(np.arange(n_rows), labels, min(fitting / n_rows, 1.0), seed)


def _faster(head: str) -> str:
    others = [f"{name} ({kind})" for name, kind in _FASTER.items() if name != head]
    return f"a head whose cost grows linearly with the rows, {' or '.join(others)}; "


def check_sweep_budget(
    grids: Mapping[str, Mapping[str, Sequence] | None], labels: np.ndarray, n_features: int, *,
    time_limit: float | None = None,
) -> None:
    """Refuses, before any head trains, a sweep that cannot keep to its budget (see `sweep_rows`).

    Args:
        grids: `plan_sweep`'s `{head: grid or None}`.
        labels: the training rows' labels (augmented views included).
        n_features: features per row.
        time_limit: `TrainConfig.time_limit`, each head's budget; `None`
            for `SWEEP_BUDGET`. Defaults to `None`.
    """
    for head, grid in grids.items():
        if grid:
            n_candidates = int(np.prod([len(values) for values in grid.values()]))
            sweep_rows(head, labels, n_features, n_candidates, side_by_side(head, n_candidates),
                       budget=SWEEP_BUDGET if time_limit is None else time_limit)
