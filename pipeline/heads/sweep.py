"""Parameter sweeps chosen on the validation split: `sweep_head`.

Each candidate of a grid is fitted on the training rows and scored on the
validation rows: the validation split is the one held-out fold
(scikit-learn's `PredefinedSplit` with a single split, written out here so
that the scores keep their full metrics). The search functions take the
training and validation arrays only, so the test labels cannot influence
the choice: they are not an argument. The caller then fits the chosen
parameters the usual way (`fit_head`), on the rows `refit_rows` gives, and
the test split measures that model alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..errors import ConfigError
from ..store.splits import subsample
from .apply import aligned_proba, feature_matrix
from .metrics import classification_metrics
from .registry import (
    create_head, estimate_seconds, format_seconds, get_head_cfg, list_heads, parse_param, plan_params, uses_keras,
)
from .workers import call_in_child, cores, in_threads, limit_main_threads, wait_seconds

__all__ = [
    "SWEEP_BUDGET", "SweepResult", "check_sweep_budget", "check_sweep_rows", "parse_sweep", "plan_sweep", "plot_sweep",
    "refit_rows", "sweep_head", "sweep_rows",
]

log = logging.getLogger("bottleneck")

# +1: higher is better; -1: lower is better. The other metric breaks ties
# (a coarse validation accuracy often ties), then grid order.
_DIRECTION = {"accuracy": 1, "macro_f1": 1, "log_loss": -1}
_TIE_BREAK = {"accuracy": "log_loss", "macro_f1": "log_loss", "log_loss": "accuracy"}
_RECORDED = ("accuracy", "log_loss", "macro_f1")
# A numeric grid spanning two decades or more is drawn on a log axis.
_LOG_SPAN = 100
# Seconds a sweep (its candidates and the final fit) may be estimated to take
# without a `time_limit`: past it, candidates fit on a stratified subsample of
# the training rows; if the final fit alone is past it, the sweep is refused.
SWEEP_BUDGET = 300.0
# Candidates need this many training rows per class to rank parameters that
# suit the whole set; a budget that allows fewer refuses instead.
_MIN_ROWS_PER_CLASS = 30
# Heads to name instead of one that cannot sweep this many rows in budget: linear in the rows.
_FASTER = {"svm_nystroem": "an RBF kernel approximation", "logreg": "linear", "ridge": "linear"}


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Every candidate of one head's sweep, and the one chosen.

    Attributes:
        head: the head's name.
        base_params: the parameters every candidate shares (`plan_params`'s).
        grid: parameter name -> tuple of values searched.
        select: the validation metric that chose (see `TrainConfig.select`).
        candidates: one dict per combination, in grid order: `params` (the
            swept values), `metrics` (`classification_metrics` on
            validation) and `fit_seconds`.
        chosen: index of the winner in `candidates`.
        chosen_on_rows: training rows each candidate fitted on, when a
            large set was subsampled to keep the sweep in its budget (see
            `sweep_rows`); `None` when they fitted on every one.
    """

    head: str
    base_params: Mapping[str, Any]
    grid: Mapping[str, tuple]
    select: str
    candidates: tuple[dict[str, Any], ...]
    chosen: int
    chosen_on_rows: int | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The run's parameters: the shared ones with the winner's swept values on top."""
        return {**self.base_params, **self.candidates[self.chosen]["params"]}

    @property
    def validation_metrics(self) -> dict[str, Any]:
        """The winner's validation metrics, from a fit on the training rows alone."""
        return self.candidates[self.chosen]["metrics"]

    def record(self) -> dict[str, Any]:
        """Grid, every score and the choice, as a run's `metrics.json` keeps them."""
        return {
            "grid": {name: list(values) for name, values in self.grid.items()},
            "select": self.select,
            "chosen": dict(self.candidates[self.chosen]["params"]),
            "chosen_on_rows": self.chosen_on_rows,
            "candidates": [
                {"params": c["params"], **{f"val_{m}": c["metrics"][m] for m in _RECORDED}, "fit_seconds": c["fit_seconds"]}
                for c in self.candidates
            ],
        }

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate: each swept parameter, the validation scores, fit seconds, chosen (0/1)."""
        return [
            {**c["params"], **{f"val_{m}": c["metrics"][m] for m in _RECORDED},
             "fit_seconds": c["fit_seconds"], "chosen": int(i == self.chosen)}
            for i, c in enumerate(self.candidates)
        ]


def parse_sweep(texts: Sequence[str | bool]) -> bool | dict[str, tuple]:
    """Parse `key=v1,v2,...` and `head.key=v1,v2,...` strings into `TrainConfig.sweep`.

    Keys work as in `parse_params`. Each value is read by `parse_param`
    (Python literals, else strings), so `C=0.001,0.01` gives two floats and
    `hidden_units=(64,),(256,)` two tuples.

    Args:
        texts: the strings, in order (the CLI's `--sweep`); a later key
            wins. Entries that are `True` (a `--sweep` without values) ask
            for each head's default grid, and then all must be `True`.

    Returns:
        `True`, or a dict of keys (`"C"` or `"dense.dropout"`) to tuples of values.

    Example:

    ```python
    parse_sweep(["C=0.01,0.1,1", "knn.n_neighbors=1,5"])
    # {"C": (0.01, 0.1, 1), "knn.n_neighbors": (1, 5)}
    parse_sweep([True])  # True
    ```
    """
    if all(text is True for text in texts):
        return True
    if any(text is True for text in texts):
        raise ConfigError(
            "`sweep` searches either each head's default grid (True) or the values given, not both. "
            f"Received: {list(texts)!r}.",
            field="sweep",
        )
    sweep: dict[str, tuple] = {}
    for text in texts:
        key, sep, raw = str(text).partition("=")
        head, dot, name = key.strip().rpartition(".")
        try:
            if not sep or not raw.strip() or (dot and not head):
                raise ConfigError("malformed")
            name, value = parse_param(f"{name}={raw}")
        except ConfigError:
            raise ConfigError(
                "A `sweep` entry must look like key=value,value,... or head.key=value,value,..., "
                f"e.g. C=0.01,0.1,1 or dense.dropout=0,0.5. Received: {text!r}.",
                field="sweep",
            ) from None
        if isinstance(value, str) and "," in value:
            values = tuple(parse_param(f"{name}={part}")[1] for part in value.split(","))
        else:
            values = value if isinstance(value, tuple) else (value,)
        sweep[f"{head}.{name}" if dot else name] = values
    return sweep


def plan_sweep(
    plans: Sequence[tuple[str, Mapping[str, Any]]],
    sweep: bool | Mapping[str, Sequence] | None,
    params: Mapping[str, Any],
) -> dict[str, dict[str, tuple] | None]:
    """The grid each head searches; unknown heads, parameters and clashes fail here, before any work.

    Args:
        plans: `(head, params)` pairs as `plan_params` gives them.
        sweep: as in `TrainConfig.sweep`: `None`, `True` (each row's
            `sweep_grid`) or a dict keyed like `TrainConfig.params`.
        params: `TrainConfig.params`, to refuse a parameter both set and swept.

    Returns:
        `{head: {name: values} or None}`; `None` trains the head without a sweep.
    """
    heads = [head for head, _ in plans]
    if sweep is None:
        return {head: None for head in heads}
    if sweep is True:
        grids = {head: _row_grid(head) for head in heads}
    else:
        try:
            routed = plan_params(heads, sweep, seed=0)
        except ConfigError as e:
            raise ConfigError(f"In `sweep`: {e}", field="sweep") from None
        grids = {
            head: {k: tuple(v) for k, v in planned.items() if _given(head, k, sweep)} or None
            for head, planned in routed
        }
    for head, planned in plans:
        clash = sorted(k for k in grids[head] or () if k in planned and _given(head, k, params))
        if clash:
            raise ConfigError(
                f"Head {head!r} both sets and sweeps {', '.join(map(repr, clash))} "
                f"(params: {', '.join(f'{k}={planned[k]!r}' for k in clash)}). Drop it from `params` or from `sweep`.",
                field="sweep",
            )
    return grids


def _given(head: str, key: str, keyed: Mapping[str, Any]) -> bool:
    return key in keyed or f"{head}.{key}" in keyed


def _row_grid(head: str) -> dict[str, tuple]:
    grid = {} if ":" in head else dict(get_head_cfg(head).sweep_grid)
    if not grid:
        with_grid = [name for name in list_heads() if get_head_cfg(name).sweep_grid]
        raise ConfigError(
            f"Head {head!r} has no default sweep grid (heads with one: {', '.join(with_grid)}). "
            f"Give the values to search instead, e.g. sweep={{'{head}.<param>': [value, ...]}}.",
            field="sweep",
        )
    return grid


def check_sweep_rows(feature_set_name: str, parts: Mapping[str, np.ndarray], *, splits, refit: str) -> None:
    """Refuses a sweep without validation rows to choose on (or, refitting on them, test rows to measure on)."""
    shares = ",".join(f"{s:g}" for s in splits)
    if not len(parts["validation"]):
        raise ConfigError(
            f"A `sweep` chooses on the validation split, and feature set '{feature_set_name}' has no "
            f"validation example with splits={shares}. Give validation a share in `splits` "
            "(e.g. 0.8,0.1,0.1), or train without `sweep`.",
            field="splits",
        )
    if refit == "train+validation" and not len(parts["test"]):
        raise ConfigError(
            f"refit='train+validation' trains on every example left to measure on: feature set "
            f"'{feature_set_name}' has no test example with splits={shares}. Give test a share in "
            "`splits`, or refit on 'train'.",
            field="refit",
        )


def refit_rows(parts: Mapping[str, np.ndarray], refit: str) -> dict[str, np.ndarray]:
    """The rows the chosen parameters are fitted on: `train`, or train and validation together.

    Validation stays as it is, so the run still records its size; its
    metrics come from the sweep (the refit model has seen those rows), and
    a dense head's early stopping on them then follows a training loss.
    """
    if refit == "train":
        return dict(parts)
    return {**parts, "train": np.sort(np.concatenate([parts["train"], parts["validation"]]))}


def sweep_head(
    head: str,
    params: Mapping[str, Any],
    grid: Mapping[str, Sequence],
    *,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    class_names: Sequence[str],
    select: str = "accuracy",
    n_jobs: int = -1,
    deadline: float | None = None,
    budget: float | None = None,
) -> SweepResult:
    """Fits every combination of `grid` on `train` and picks the best on `validation`.

    Args:
        head: a head name or import path (see `create_head`).
        params: the parameters every candidate shares (`plan_params`'s);
            the grid's values go on top.
        grid: parameter name -> values; every combination is a candidate,
            in the order of `sklearn.model_selection.ParameterGrid` with
            the names as given.
        train: `(features, labels)` of the training rows.
        validation: `(features, labels)` of the validation rows.
        class_names: the feature set's classes; labels index them.
        select: `"accuracy"`, `"macro_f1"` (highest wins) or `"log_loss"`
            (lowest wins); ties go to the better other metric, then to
            the earlier candidate. Defaults to `"accuracy"`.
        n_jobs: candidates fitted side by side for scikit-learn heads;
            the dense head always runs one candidate at a time.
            Defaults to `-1` (one per core).
        deadline: `time.monotonic()` time by which every candidate must
            be done, else `FitTimeLimit`; `None` for none. Defaults to `None`.
        budget: estimated seconds the sweep may take (see `sweep_rows`);
            `None` for the time left before `deadline`, or `SWEEP_BUDGET`
            without one. Defaults to `None`.

    Returns:
        A `SweepResult`.

    Raises:
        ConfigError: a candidate fails to fit (the message names its values),
            or the sweep cannot keep to `budget` (see `sweep_rows`).

    Example:

    ```python
    result = sweep_head("logreg", {"max_iter": 1000}, {"C": (0.01, 0.1, 1)},
                        train=(X_tr, y_tr), validation=(X_val, y_val), class_names=names)
    result.params  # {"max_iter": 1000, "C": 0.1}
    ```
    """
    if select not in _DIRECTION:
        raise ConfigError(f"`select` must be one of {', '.join(map(repr, _DIRECTION))}. Received: select={select!r}", field="select")
    limit_main_threads()
    names = list(grid)
    combos = [dict(zip(names, values)) for values in itertools.product(*(tuple(grid[n]) for n in names))]
    # The dense head runs in order, here (see `_side_by_side`). Other
    # candidates each fit in a child process (see `workers`), `n_jobs` at a
    # time, each with its share of the cores.
    keras = uses_keras(head)
    n_jobs = _side_by_side(head, len(combos), n_jobs)
    threads = max(cores() // n_jobs, 1)
    n_features = int(np.prod(train[0].shape[1:]))
    if budget is None:
        budget = SWEEP_BUDGET if deadline is None else wait_seconds(deadline)
    rows = sweep_rows(head, train[1], n_features, len(combos), n_jobs, budget=budget)
    chosen_on = f" on a stratified {len(rows):,} of {len(train[1]):,} training rows" if rows is not None else ""
    if rows is not None:
        train = (train[0][rows], train[1][rows])

    def job(c: dict[str, Any]):
        args = (head, {**params, **c}, c, train, validation, list(class_names))
        if keras:
            return lambda: _score(*args)
        return lambda: call_in_child(_score, *args, time_limit=wait_seconds(deadline), threads=threads)

    estimate = estimate_seconds(head, len(train[1]), n_features)
    shown = "" if estimate is None else f", estimated {format_seconds(estimate * len(combos) / n_jobs)}"
    log.info("Sweeping %s over %d candidates%s (%s%s) ...", head, len(combos), chosen_on, ", ".join(names), shown)
    candidates = tuple(in_threads([job(c) for c in combos], n_jobs))
    chosen = _best(candidates, select)
    log.info("Chose %s: validation %s %.4f.", _shown(candidates[chosen]["params"]), select,
             candidates[chosen]["metrics"][select])
    return SweepResult(head, dict(params), {n: tuple(grid[n]) for n in names}, select, candidates, chosen,
                       chosen_on_rows=None if rows is None else len(rows))


def _side_by_side(head: str, n_candidates: int, n_jobs: int = -1) -> int:
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
            sweep_rows(head, labels, n_features, n_candidates, _side_by_side(head, n_candidates),
                       budget=SWEEP_BUDGET if time_limit is None else time_limit)


def _shown(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


def _score(head, params, swept, train, validation, class_names) -> dict[str, Any]:
    estimator = create_head(head, **params)
    (X, y), (X_val, y_val) = train, validation
    X, X_val = feature_matrix(estimator, X), feature_matrix(estimator, X_val)
    # The dense head stops early on validation, exactly as `fit_head` trains it.
    fit_kwargs = {"validation_data": (X_val, y_val)} if uses_keras(head) else {}
    started = time.perf_counter()
    try:
        estimator.fit(X, y, **fit_kwargs)
    except ValueError as e:
        raise ConfigError(f"Head {head!r} failed to fit with {swept!r} in the sweep: {e}", field="sweep") from e
    fit_seconds = time.perf_counter() - started
    proba = aligned_proba(estimator, X_val, len(class_names))
    return {"params": swept, "metrics": classification_metrics(y_val, proba, class_names), "fit_seconds": fit_seconds}


def _best(candidates: Sequence[dict[str, Any]], select: str) -> int:
    tie = _TIE_BREAK[select]

    def key(i: int) -> tuple[float, float]:
        metrics = candidates[i]["metrics"]
        return _DIRECTION[select] * metrics[select], _DIRECTION[tie] * metrics[tie]

    return max(range(len(candidates)), key=key)  # max keeps the first of equals


def plot_sweep(result: SweepResult) -> Figure:
    """Draw the validation metric against each swept parameter.

    Each axes shows every candidate as a grey dot, the best score at each
    value (over the other parameters) as a line, and the winner as a star.
    A numeric grid spanning two decades or more gets a log x-axis; other
    values are drawn as evenly spaced categories.

    Args:
        result: a `SweepResult`.

    Returns:
        A `matplotlib.figure.Figure` with one axes per swept parameter.
    """
    fig = Figure(figsize=(4.5 * len(result.grid), 3.6), layout="constrained")
    scores = np.array([c["metrics"][result.select] for c in result.candidates], dtype=np.float64)
    pick = np.max if _DIRECTION[result.select] > 0 else np.min
    for index, (name, values) in enumerate(result.grid.items(), start=1):
        ax = fig.add_subplot(1, len(result.grid), index)
        numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
        at = list(values) if numeric else list(range(len(values)))
        x = np.array([at[_position(values, c["params"][name])] for c in result.candidates], dtype=np.float64)
        ax.scatter(x, scores, color="0.7", s=16, label="candidate")
        ax.plot(at, [pick(scores[x == a]) for a in at], color="blue", marker="o", label="best at value")
        ax.scatter([x[result.chosen]], [scores[result.chosen]], color="red", marker="*", s=160, zorder=3, label="chosen")
        if numeric and min(values) > 0 and max(values) / min(values) >= _LOG_SPAN:
            ax.set_xscale("log")
        elif not numeric:
            ax.set_xticks(at, labels=[str(v) for v in values])
        ax.set_xlabel(name)
        ax.set_ylabel(f"validation {result.select}")
        ax.set_title(f"{result.head}: {name}")
        ax.legend(fontsize=7)
    return fig


def _position(values: Sequence, value) -> int:
    return next(i for i, v in enumerate(values) if v is value or (type(v) is type(value) and v == value))
