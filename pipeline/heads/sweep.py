"""Parameter sweeps chosen on the validation split: `sweep_head`.

Each candidate of a grid is fitted on the training rows and scored on the
validation rows: the validation split is the one held-out fold
(scikit-learn's `PredefinedSplit` with a single split, written out here so
that the scores keep their full metrics). The search functions take the
training and validation arrays only, so the test labels cannot influence
the choice: they are not an argument. The caller then fits the chosen
parameters the usual way (`fit_head`), on the rows `refit_rows` gives, and
the test split measures that model alone.

A grid can hold the feature transform (`TRANSFORM`, see `transforms`) as
one more dimension. When the winner sits on the edge of a numeric,
log-spaced dimension (`C=0.01,0.1,1` won by `C=1`), the search goes on
past it, one log step at a time with the other values fixed at the
winner's, until a step no longer wins or `MAX_EXTENSIONS` steps were
taken on that edge; `SweepResult.extended` records what was added.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..errors import ConfigError
from .apply import aligned_proba, feature_matrix
from .metrics import classification_metrics
from .registry import (
    create_head, estimate_seconds, format_seconds, get_head_cfg, list_heads, parse_param, plan_params, uses_keras,
)
from .transforms import STANDARD, with_transform
from . import sweep_budget
from .workers import call_in_child, cores, in_threads, limit_main_threads, wait_seconds

__all__ = [
    "MAX_EXTENSIONS", "TRANSFORM", "SweepResult", "add_transforms", "check_sweep_rows", "parse_sweep", "plan_sweep",
    "plot_sweep", "refit_rows", "sweep_head",
]

log = logging.getLogger("bottleneck")

# +1: higher is better; -1: lower is better. The other metric breaks ties
# (a coarse validation accuracy often ties), then grid order.
_DIRECTION = {"accuracy": 1, "macro_f1": 1, "log_loss": -1}
_TIE_BREAK = {"accuracy": "log_loss", "macro_f1": "log_loss", "log_loss": "accuracy"}
_RECORDED = ("accuracy", "log_loss", "macro_f1")
# A numeric grid spanning two decades or more is drawn on a log axis.
_LOG_SPAN = 100
# The grid key of the feature transform, swept like a parameter.
TRANSFORM = "transform"
# Log steps a sweep may add past each edge of a dimension: 4 decades for a grid in decades.
MAX_EXTENSIONS = 4
# Consecutive ratios equal within this (relative) make a grid log-spaced; at least _MIN_RATIO apart.
_RATIO_RTOL = 1e-3
_MIN_RATIO = 1.5


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Every candidate of one head's sweep, and the one chosen.

    Attributes:
        head: the head's name.
        base_params: the parameters every candidate shares (`plan_params`'s).
        grid: parameter name -> tuple of values searched, those added past
            an edge included (sorted then); `record()` keeps the grid as given.
        select: the validation metric that chose (see `TrainConfig.select`).
        candidates: one dict per combination, in grid order: `params` (the
            swept values), `metrics` (`classification_metrics` on
            validation) and `fit_seconds`.
        chosen: index of the winner in `candidates`.
        chosen_on_rows: training rows each candidate fitted on, when a
            large set was subsampled to keep the sweep in its budget (see
            `sweep_rows`); `None` when they fitted on every one.
        transform: the feature transform of candidates whose params do not
            sweep `TRANSFORM`.
        extended: one dict per grid edge the search went past: `param`,
            `edge` (`"upper"` or `"lower"`), `added` (values, in the order
            tried) and `capped` (whether it stopped at `MAX_EXTENSIONS`
            steps with the last one still winning).
    """

    head: str
    base_params: Mapping[str, Any]
    grid: Mapping[str, tuple]
    select: str
    candidates: tuple[dict[str, Any], ...]
    chosen: int
    chosen_on_rows: int | None = None
    transform: str = STANDARD
    extended: tuple[dict[str, Any], ...] = ()

    @property
    def params(self) -> dict[str, Any]:
        """The run's parameters: the shared ones with the winner's swept values on top (its transform aside)."""
        swept = {k: v for k, v in self.candidates[self.chosen]["params"].items() if k != TRANSFORM}
        return {**self.base_params, **swept}

    @property
    def chosen_transform(self) -> str:
        """The winner's feature transform."""
        return self.candidates[self.chosen]["params"].get(TRANSFORM, self.transform)

    @property
    def validation_metrics(self) -> dict[str, Any]:
        """The winner's validation metrics, from a fit on the training rows alone."""
        return self.candidates[self.chosen]["metrics"]

    def record(self) -> dict[str, Any]:
        """Grid, every score and the choice, as a run's `metrics.json` keeps them."""
        added = {(e["param"], v) for e in self.extended for v in e["added"]}
        return {
            "grid": {name: [v for v in values if (name, v) not in added] for name, values in self.grid.items()},
            "select": self.select,
            "chosen": dict(self.candidates[self.chosen]["params"]),
            "chosen_on_rows": self.chosen_on_rows,
            "extended": [dict(e) for e in self.extended],
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


def add_transforms(grids: Mapping[str, Mapping[str, tuple] | None], transforms: Sequence[str]) -> dict[str, dict | None]:
    """Each head's grid (as `plan_sweep` gives them) with the transforms crossed in when there are several."""
    if len(transforms) < 2:
        return dict(grids)
    return {head: {**(grid or {}), TRANSFORM: tuple(transforms)} for head, grid in grids.items()}


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
    transform: str = STANDARD,
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
        transform: the feature transform of every candidate, unless the
            grid sweeps `TRANSFORM`. Defaults to `"standard"`.

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
    # The dense head runs in order, here (see `sweep_budget.side_by_side`). Other
    # candidates each fit in a child process (see `workers`), `n_jobs` at a
    # time, each with its share of the cores.
    keras = uses_keras(head)
    n_jobs = sweep_budget.side_by_side(head, len(combos), n_jobs)
    threads = max(cores() // n_jobs, 1)
    n_features = int(np.prod(train[0].shape[1:]))
    if budget is None:
        budget = sweep_budget.SWEEP_BUDGET if deadline is None else wait_seconds(deadline)
    rows = sweep_budget.sweep_rows(head, train[1], n_features, len(combos), n_jobs, budget=budget)
    chosen_on = f" on a stratified {len(rows):,} of {len(train[1]):,} training rows" if rows is not None else ""
    if rows is not None:
        train = (train[0][rows], train[1][rows])

    def job(c: dict[str, Any], threads: int = threads):
        args = (head, {**params, **c}, c, train, validation, list(class_names), transform)
        if keras:
            return lambda: _score(*args)
        return lambda: call_in_child(_score, *args, time_limit=wait_seconds(deadline), threads=threads)

    estimate = estimate_seconds(head, len(train[1]), n_features)
    shown = "" if estimate is None else f", estimated {format_seconds(estimate * len(combos) / n_jobs)}"
    log.info("Sweeping %s over %d candidates%s (%s%s) ...", head, len(combos), chosen_on, ", ".join(names), shown)
    candidates = list(in_threads([job(c) for c in combos], n_jobs))
    values = {n: tuple(grid[n]) for n in names}
    extended = _extend_edges(candidates, values, select, lambda c: job(c, cores())())
    chosen = _best(candidates, select)
    log.info("Chose %s: validation %s %.4f.", _shown(candidates[chosen]["params"]), select,
             candidates[chosen]["metrics"][select])
    return SweepResult(head, dict(params), values, select, tuple(candidates), chosen,
                       chosen_on_rows=None if rows is None else len(rows), transform=transform,
                       extended=tuple(extended))


def _extend_edges(candidates: list[dict[str, Any]], values: dict[str, tuple], select: str, score) -> list[dict]:
    """Scores one log step past the edge the winner sits on, again and again; grows `candidates` and `values`.

    Returns the `SweepResult.extended` records.
    """
    records: dict[tuple[str, str], dict[str, Any]] = {}
    while True:
        winner = candidates[_best(candidates, select)]["params"]
        steps = (_next_value(name, values[name], winner[name]) for name in values)
        step = next((s for s in steps if s and not records.get(s[:2], {}).get("capped")), None)
        if step is None:
            return list(records.values())
        name, edge, value = step
        record = records.setdefault((name, edge), {"param": name, "edge": edge, "added": [], "capped": False})
        if len(record["added"]) == MAX_EXTENSIONS:
            record["capped"] = True
            log.warning("%s=%r still wins at the %s edge after %d added steps; the sweep stops there "
                        "(search further with --sweep %s=...).", name, winner[name], edge, MAX_EXTENSIONS, name)
            continue
        log.info("%s=%r won at the %s edge of its grid: trying %s=%r.", name, winner[name], edge, name, value)
        try:
            candidates.append(score({**winner, name: value}))
        except ConfigError as e:
            log.warning("The sweep stops at %s=%r: the next step does not fit (%s).", name, winner[name], e)
            return list(records.values())
        record["added"].append(value)
        values[name] = tuple(sorted((*values[name], value)))


def _next_value(name: str, values: Sequence, won) -> tuple[str, str, Any] | None:
    """`(name, edge, value one log step past it)` when `won` sits on an edge of a log-spaced grid, else `None`."""
    if name == TRANSFORM or len(values) < 2:
        return None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0 for v in values):
        return None
    ordered = sorted(values)
    ratios = [b / a for a, b in zip(ordered, ordered[1:])]
    ratio = ratios[0]
    if ratio < _MIN_RATIO or any(abs(r / ratio - 1) > _RATIO_RTOL for r in ratios):
        return None
    if won == ordered[-1]:
        edge, value = "upper", won * ratio
    elif won == ordered[0]:
        edge, value = "lower", won / ratio
    else:
        return None
    if isinstance(won, numbers.Integral):
        if value != int(value) or value < 1:
            return None  # an integer grid steps to integers only
        value = int(value)
    else:
        value = float(f"{value:.12g}")  # 10 * 10.000000000000002 reads back as 100.0
    return name, edge, value


def _shown(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


def _score(head, params, swept, train, validation, class_names, transform=STANDARD) -> dict[str, Any]:
    params = {k: v for k, v in params.items() if k != TRANSFORM}
    estimator = with_transform(create_head(head, **params), swept.get(TRANSFORM, transform))
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
    value (over the other parameters) as a line, and the winner as a star
    labelled with its value; values the sweep added past the grid's edges
    are shaded.
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
        ax.annotate(f"{name}={result.candidates[result.chosen]['params'][name]!r}", (x[result.chosen], scores[result.chosen]),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7, color="red")
        for record in result.extended:
            if record["param"] == name and record["added"]:
                ax.axvspan(*_added_span(sorted(values), record), color="gold", alpha=0.25,
                           label=f"added past the {record['edge']} edge")
        if numeric and min(values) > 0 and max(values) / min(values) >= _LOG_SPAN:
            ax.set_xscale("log")
        elif not numeric:
            ax.set_xticks(at, labels=[str(v) for v in values])
        ax.set_xlabel(name)
        ax.set_ylabel(f"validation {result.select}")
        ax.set_title(f"{result.head}: {name}")
        ax.legend(fontsize=7)
    return fig


def _added_span(ordered: list, record: Mapping[str, Any]) -> tuple[float, float]:
    """From the grid's original edge to the farthest value added past it."""
    added = record["added"]
    if record["edge"] == "upper":
        return ordered[ordered.index(min(added)) - 1], max(added)
    return min(added), ordered[ordered.index(max(added)) + 1]


def _position(values: Sequence, value) -> int:
    return next(i for i, v in enumerate(values) if v is value or (type(v) is type(value) and v == value))
