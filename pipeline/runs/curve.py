"""Data-fraction curves: `run_curve(features, *, config)`.

How much does each head gain from more labelled images? Every head is
trained on each `fraction` of the training split, `repeats` times, and
scored on the full validation and test splits, which never change. A point
of the curve is exactly a `train-head` run with that `fraction` and seed
(`CurveConfig.train_config`): the same `training_splits`, `sweep_head` and
`fit_head`, so there is one way to fit. The subsets are cut once per
(fraction, repeat) and shared by every head, and for one repeat they are
nested (`subsample` shuffles each class once per seed and keeps a prefix).

The scikit-learn heads are fitted in threads: their numerics (BLAS, libsvm,
OpenMP trees) release the GIL, and threads share the feature matrix without
copying it or starting processes. A Keras head trains one point at a time,
as Keras models sharing cores would only slow each other down.

The outputs are written into a staged folder published as
`<runs_dir>/<feature set>/curve-<id>/` when complete (see `layout`): a
crash leaves no folder that looks finished.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from matplotlib.figure import Figure

from .. import _atomic, config as config_lib
from ..errors import ConfigError, WriteError
from ..heads import fit_head, plan_params, training_splits
from ..heads.registry import uses_keras
from ..heads.sweep import add_transforms, check_sweep_rows, plan_sweep, sweep_head
from ..heads.transforms import check_transforms
from ..store import FeatureSet
from ..store.fused import read_features
from . import layout
from .train import feature_lineage, save_figure

__all__ = ["CURVE_COLUMNS", "CurveResult", "plot_curve", "run_curve"]

log = logging.getLogger("bottleneck")

CURVE_COLUMNS = (
    "head",
    "fraction",
    "repeat",
    "seed",
    "n_train",
    "val_accuracy",
    "val_macro_f1",
    "val_log_loss",
    "test_accuracy",
    "test_macro_f1",
    "test_log_loss",
    "fit_seconds",
    "params",
    "transform",
    "error",
)
_SCORES = ("accuracy", "macro_f1", "log_loss")


@dataclasses.dataclass(frozen=True)
class CurveResult:
    """A finished curve.

    Attributes:
        run_dir: the published `curve-<id>/` folder.
        rows: one dict per head x fraction x repeat, keyed by
            `CURVE_COLUMNS`, as `curve.csv` holds them (scores `None` where
            a split is empty; `params` the head's parameters as JSON;
            `error` empty, or why the head could not be fitted at that
            point, e.g. a calibrated head on fewer examples per class than
            its cross-validation folds: that point has no scores, the
            others are kept).
    """

    run_dir: Path
    rows: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "rows": layout.jsonable(self.rows)}


def run_curve(features: str | os.PathLike | None, *, config: config_lib.CurveConfig, n_jobs: int = -1) -> CurveResult:
    """Trains every head of `config` at every fraction and repeat, into one curve folder.

    Heads, parameters and sweep grids are checked before the features are
    read; the features are read once.

    Args:
        features: the feature set: a path, a short name or `None`; see
            `resolve_features`.
        config: the resolved `CurveConfig`.
        n_jobs: joblib threads fitting scikit-learn heads side by side.
            Defaults to `-1` (one per core).

    Returns:
        A `CurveResult`.

    Raises:
        ConfigError: an unknown head or parameter, a sweep without
            validation rows, a head failing to fit (`field` names the
            config field to change).
        FeatureStoreError: the feature set is missing, damaged, of a single
            class or constant.
        WriteError: the curve folder could not be written; nothing of it is kept.

    Example:

    ```python
    result = run_curve("cache/digits-mobilenet_v2-224-avg-1a2b3c4d",
                       config=CurveConfig(heads=("logreg", "dense"), fractions=(0.1, 1.0)))
    print(result.run_dir / "curve.png")
    ```
    """
    if not isinstance(config, config_lib.CurveConfig):
        raise TypeError(f"`config` must be a CurveConfig. Received: {type(config).__name__}.")
    plans = [plan_params(config.heads, config.params, config.seed + r) for r in range(config.repeats)]
    grids = add_transforms(plan_sweep(plans[0], config.sweep, config.params), check_transforms(config.transform))
    _atomic.check_writable(config.runs_dir, field="runs_dir")  # before minutes of fitting
    fs = read_features(features, config.cache_dir)
    points = [
        (fraction, repeat, training_splits(fs, config=config.train_config(fraction, repeat)))
        for fraction in config.fractions
        for repeat in range(config.repeats)
    ]
    if any(grids.values()):
        check_sweep_rows(fs.name, points[0][2], splits=config.splits, refit="train")
    jobs = [
        (head, params, fraction, repeat, parts)
        for fraction, repeat, parts in points
        for head, params in plans[repeat]
    ]
    keras = {head: uses_keras(head) for head, _ in plans[0]}
    rows: list[dict[str, Any]] = [{}] * len(jobs)
    threaded = [i for i, job in enumerate(jobs) if not keras[job[0]]]
    fitted = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_point)(fs, *jobs[i], grids[jobs[i][0]], config) for i in threaded
    )
    for i, row in zip(threaded, fitted):
        rows[i] = row
    for i in sorted(set(range(len(jobs))) - set(threaded)):
        rows[i] = _point(fs, *jobs[i], grids[jobs[i][0]], config)
    return CurveResult(_write_curve(fs, rows, plans[0], config), rows)


def _point(fs: FeatureSet, head: str, params, fraction: float, repeat: int, parts, grid, config) -> dict[str, Any]:
    """One head at one fraction and repeat: swept on validation if asked (never test), fitted, scored."""
    row = {"head": head, "fraction": fraction, "repeat": repeat, "seed": config.seed + repeat}
    transform = config.transform[0]
    try:
        if grid is not None:
            train, val = parts["train"], parts["validation"]
            search = sweep_head(
                head, params, grid,
                train=(fs.features[train], fs.labels[train]),
                validation=(fs.features[val], fs.labels[val]),
                class_names=fs.class_names, select=config.select, n_jobs=1, transform=transform,
            )
            params, transform = search.params, search.chosen_transform
        fitted = fit_head(head, params, fs, parts, transform=transform)
    except ConfigError as e:
        # One point a head cannot learn from (fewer examples than its folds) must not cost the whole curve.
        log.warning("curve: %s at fraction %g, repeat %d not fitted: %s", head, fraction, repeat, e)
        return {
            **row, "n_train": len(parts["train"]), **{c: None for c in CURVE_COLUMNS if c.startswith(("val_", "test_"))},
            "fit_seconds": None, "params": json.dumps(layout.jsonable(params), sort_keys=True), "transform": transform,
            "error": str(e),
        }
    scores = {
        f"{prefix}_{name}": None if fitted.metrics[split] is None else float(fitted.metrics[split][name])
        for prefix, split in (("val", "validation"), ("test", "test"))
        for name in _SCORES
    }
    return {
        **row, "n_train": fitted.sizes["train"], **scores, "fit_seconds": round(fitted.fit_seconds, 4),
        "params": json.dumps(layout.jsonable(params), sort_keys=True), "transform": transform, "error": "",
    }


def _write_curve(fs: FeatureSet, rows: list[dict[str, Any]], params, config) -> Path:
    out_root = Path(config.runs_dir) / fs.name

    def fresh_name() -> str:
        return f"{layout.CURVE_PREFIX}{layout.run_id()}"

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    lineage = {
        **feature_lineage(fs),
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
    }
    try:
        with _atomic.staged_folder(out_root / fresh_name(), fresh_name=fresh_name) as staged:
            _atomic.write_text(staged.path / layout.CURVE_CSV, buffer.getvalue())
            save_figure(plot_curve(rows), staged.path / layout.CURVE_PLOT)
            layout.write_json(staged.path / layout.CONFIG, {
                "curve_config": config_lib.to_dict(config), "params": dict(params),
            })
            layout.write_json(staged.path / layout.LINEAGE, lineage)
    except OSError as e:
        raise WriteError(f"Cannot write the curve under '{out_root}' ({e}); nothing of it was kept.") from e
    return staged.published


def plot_curve(rows: list[dict[str, Any]]) -> Figure:
    """Draw test accuracy against the number of training images, one line per head.

    Each line is the mean over repeats at each fraction, with the min-max
    spread shaded; the x-axis (training images, the mean over repeats) is
    logarithmic. Without a test split, validation accuracy is drawn.

    Args:
        rows: `CurveResult.rows`.

    Returns:
        A `matplotlib.figure.Figure` with one axes.
    """
    split = "test" if any(r["test_accuracy"] is not None for r in rows) else "val"
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    fitted = [r for r in rows if not r["error"]]
    for head in dict.fromkeys(r["head"] for r in fitted):
        fractions = sorted({r["fraction"] for r in fitted if r["head"] == head})
        at = [[r for r in fitted if r["head"] == head and r["fraction"] == f] for f in fractions]
        x = [np.mean([r["n_train"] for r in point]) for point in at]
        y = [np.array([r[f"{split}_accuracy"] for r in point], dtype=np.float64) for point in at]
        line, = ax.plot(x, [v.mean() for v in y], marker="o", label=head)
        ax.fill_between(x, [v.min() for v in y], [v.max() for v in y], color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel(f"{'test' if split == 'test' else 'validation'} accuracy")
    ax.set_title("accuracy against training images (mean, min-max over repeats)")
    ax.legend(fontsize=8)
    return fig
