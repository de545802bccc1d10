"""Training heads into run folders: `train_heads(features, *, config)`.

The feature set is read once per call and shared by every head named; the
head stage (`pipeline.heads`) plans, splits, fits and measures, and this
module writes what it returns. No backbone is ever built here, and nothing
imported at module level imports Keras or TensorFlow: the dense head
imports Keras itself, on `fit`, so scikit-learn heads train on machines
without either.

Each run is written into a staged `.tmp-` folder and renamed to
`<runs_dir>/<feature set>/<head>-<id>/` only when every file is in it (see
`layout` for the files), never onto another run. Then the leaderboard is
rebuilt from the run folders (see `leaderboard`).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic, config as config_lib
from ..errors import ConfigError, FeatureStoreError, WriteError
from ..heads import FittedHead, fit_head, plan_params, save_head, training_splits
from ..heads.apply import aligned_proba, feature_matrix
from ..heads.registry import estimate_seconds
from ..heads.workers import FitTimeLimit, wait_seconds
from ..heads.metrics import plot_confusion_matrix, plot_history
from ..heads.sweep import SweepResult, add_transforms, check_sweep_rows, plan_sweep, plot_sweep, refit_rows, sweep_head
from ..heads.sweep_budget import check_sweep_budget
from ..heads.transforms import check_transforms
from ..features.augment import format_augment_ops, parse_augment_ops
from ..store import INDEX_NAME, FeatureSet, FeatureStore, feature_key, read_feature_set
from ..store.fused import member_record, read_features
from ..store.lookup import list_view_sets
from ..store.splits import SPLITS, duplicates_across_splits, duplicates_note
from . import layout, safe_head
from .leaderboard import rebuild_leaderboard, scores
from .predict import csv_text

__all__ = ["RunResult", "train_heads"]

log = logging.getLogger("bottleneck")


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One trained head, as written to its run folder.

    Attributes:
        head: the head's name, as given.
        params: the parameters passed to `create_head` (seed included).
        run_dir: the finished run folder.
        metrics: `{"validation": dict | None, "test": dict | None}`, each
            from `heads.metrics.classification_metrics`.
        fit_seconds: wall time of `fit` alone (no reading, predicting or
            saving), for benchmarks.
        sizes: examples per split actually used: `train` (after
            `fraction`), `validation`, `test`.
        head_sha256: sha256 of `head.joblib`, for `load_head(expected_sha256=)`.
        estimated_seconds: the fit's estimate printed before it started
            (`heads.estimate_seconds`); `None` for a head without a measured cost.
        stopped: `None`, or why the head was stopped before it finished
            (`TrainConfig.time_limit`): then no run folder was written
            (`run_dir` is where it would have gone, `head_sha256` is empty,
            `metrics` are `None` and `fit_seconds` the time it ran).
        augmented: `None`, or the view set trained on (`augmented`), as
            `add_views` records it.
        duplicates_across_splits: how many image contents sit in more
            than one of the splits used (`split_copies`): exact copies
            that make test scores read too high.
    """

    head: str
    params: dict[str, Any]
    run_dir: Path
    metrics: dict[str, dict[str, Any] | None]
    fit_seconds: float
    sizes: dict[str, int]
    head_sha256: str
    estimated_seconds: float | None = None
    stopped: str | None = None
    augmented: list[dict[str, Any]] | None = None
    duplicates_across_splits: int = 0

    @property
    def val_accuracy(self) -> float | None:
        return scores(self.metrics)["val_accuracy"]

    @property
    def test_accuracy(self) -> float | None:
        return scores(self.metrics)["test_accuracy"]

    @property
    def test_macro_f1(self) -> float | None:
        return scores(self.metrics)["test_macro_f1"]

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "params": layout.jsonable(self.params),
            "run_dir": str(self.run_dir),
            **scores(self.metrics),
            "fit_seconds": round(self.fit_seconds, 4),
            "estimated_seconds": None if self.estimated_seconds is None else round(self.estimated_seconds, 2),
            "sizes": self.sizes,
            "head_sha256": self.head_sha256,
            "stopped": self.stopped,
            **({"augmented": self.augmented} if self.augmented else {}),
            "duplicates_across_splits": self.duplicates_across_splits,
        }


def train_heads(features: str | os.PathLike | None, *, config: config_lib.TrainConfig) -> list[RunResult]:
    """Trains every head of `config` on one cached feature set.

    Head names and parameters are checked before the features are read;
    the features are read once and shared by all heads. Each head gets its
    own run folder (see the module doc) and leaderboard row.

    Args:
        features: the feature set: a path, a short name or `None`; see
            `resolve_features`. Several joined by `+` (`A+B`) train on
            their fusion, rows matched by content hash (`store.fused`).
        config: the resolved `TrainConfig`.

    Returns:
        One `RunResult` per head, in `config.heads` order.

    Raises:
        ConfigError: an unknown head or parameter; a split or fraction
            leaving a class without training examples; a head that fails
            to fit (`field` names the config field to change).
        FeatureStoreError: the feature set is missing, incomplete, corrupt,
            of a single class, or its features are all the same (the
            message says how to rebuild it).
        WriteError: a run folder or the leaderboard could not be written.

    Example:

    ```python
    results = train_heads("cache/digits-mobilenet_v2-224-avg-1a2b3c4d",
                          config=TrainConfig(heads=("logreg", "dense")))
    for r in results:
        print(r.head, r.test_accuracy, r.fit_seconds, r.run_dir)
    ```
    """
    if not isinstance(config, config_lib.TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig. Received: {type(config).__name__}.")
    plans = plan_params(config.heads, config.params, config.seed)
    grids = add_transforms(plan_sweep(plans, config.sweep, config.params), check_transforms(config.transform))
    _atomic.check_writable(config.runs_dir, field="runs_dir")  # before minutes of fitting
    fs = read_features(features, config.cache_dir)
    if config.augmented and "members" in fs.attrs:
        raise ConfigError(
            f"`augmented` adds one feature set's cached views, and '{fs.name}' fuses several sets. Train the "
            "fusion on clean features, or train each set alone with `augmented`.",
            field="augmented",
        )
    parts = training_splits(fs, config=config)
    if any(grids.values()):
        check_sweep_rows(fs.name, parts, splits=config.splits, refit=config.refit)
    copies = split_copies(fs, parts)
    if copies:
        log.warning("%s", duplicates_note(copies))
    views = None
    if config.views is not None and not config.augmented:
        raise ConfigError(
            f"`views` names the view set that `augmented` trains on. Received: views={config.views!r} without "
            "augmented. Pass `augmented` too, or leave `views` unset.", field="views")
    if config.augmented:
        fs, parts, views = add_views(fs, parts, views=config.views)
    if any(grids.values()):
        n_features = int(np.prod(fs.features.shape[1:]))
        check_sweep_budget(grids, fs.labels[parts["train"]], n_features, time_limit=config.time_limit)
    results = [_run_one(fs, parts, head, params, config, grids[head], views, len(copies)) for head, params in plans]
    return [dataclasses.replace(r, augmented=views) for r in results] if views else results


def split_copies(fs: FeatureSet, parts) -> list[tuple[str, ...]]:
    """The paths of each image content held in more than one of the splits `parts` trains and measures on.

    Exact copies of a test image in the training rows make test scores read
    too high (every copy is remembered, not recognised); runs record the
    count as `duplicates_across_splits` in metrics.json and the leaderboard.
    """
    sha = _sha256_by_path(Path(fs.path).parent)
    rows = [int(row) for split in SPLITS for row in parts[split]]
    split_of = [split for split in SPLITS for _ in parts[split]]
    groups = duplicates_across_splits([sha[fs.paths[row]] for row in rows], split_of)
    return [tuple(fs.paths[rows[i]] for i in group) for group in groups]


def add_views(
    fs: FeatureSet, parts, *, views: str | None = None
) -> tuple[FeatureSet, dict[str, np.ndarray], list[dict[str, Any]]]:
    """Appends the cached augmented views of the training rows, from one view set, to a feature set and its training split.

    A view set is the views made with one ops text and seed (`features`
    with `augment`); views of other ops are never mixed in. The set is the
    one `views` names, else the latest written. Views are matched to
    training rows by path and content hash; a view whose content is also a
    validation or test image (a duplicate file) is left out, so training
    never sees a view of an image it is measured on. Validation and test
    keep their clean rows only. Training images without a view (added after
    the views were made) are counted, and a warning gives the coverage.

    Args:
        fs: the clean `FeatureSet`.
        parts: its `{"train", "validation", "test"}` rows, after `fraction`.
        views: `None` for the latest view set, or the ops text of the one
            to use (as given to `augment_ops`; the latest seed of those ops).
            Defaults to `None`.

    Returns:
        `(feature set with the view rows appended, parts with them added to
        "train", record)`, the record a one-item list holding
        `{"ops", "seed", "views", "rows", "chosen", "coverage", "not_used"}`:
        `chosen` is `"named"` or `"latest"`, `coverage` counts the
        training images with a view, `not_used` lists the other view sets.

    Raises:
        ConfigError: the set has no views (`field="augmented"`), or none
            made with the ops `views` names (`field="views"`).
        FeatureStoreError: a view set does not belong to this feature set.
    """
    folders = list_view_sets(fs.path)
    if not folders:
        raise ConfigError(
            f"`augmented` trains on cached augmented views, and feature set '{fs.name}' has none. "
            "Extract them first with the features stage's `augment` (e.g. `bottleneck features DATA "
            "--augment 4` with the same model and settings), or leave `augmented` unset.",
            field="augmented",
        )
    groups: dict[tuple[str, int], list[tuple[Path, FeatureSet, dict[str, Any]]]] = {}
    for folder in folders:
        view = read_feature_set(folder)
        augment = _check_view(fs, view)
        groups.setdefault((augment["ops"], augment["seed"]), []).append((folder, view, augment))
    ops, seed = _chosen_view_set(fs, groups, views)
    sha = _sha256_by_path(Path(fs.path).parent)
    train_keys = {(fs.paths[i], sha[fs.paths[i]]) for i in parts["train"]}
    held_out = {sha[fs.paths[i]] for split in ("validation", "test") for i in parts[split]}
    blocks, rows, covered = [fs.features], [], set()
    for folder, view, augment in groups[ops, seed]:
        view_sha = _sha256_by_path(folder)
        keep = [i for i, p in enumerate(view.paths) if (p, view_sha[p]) in train_keys and view_sha[p] not in held_out]
        covered.update((view.paths[i], view_sha[view.paths[i]]) for i in keep)
        blocks.append(view.features[keep])
        rows.append((view, keep))
    record = {
        "ops": ops, "seed": seed, "views": sorted(a["view"] for _, _, a in groups[ops, seed]),
        "rows": sum(len(keep) for _, keep in rows), "chosen": "latest" if views is None else "named",
        "coverage": {"images": len(covered), "train_images": len(train_keys)},
        "not_used": [f"{o} seed {s}" for o, s in sorted(groups) if (o, s) != (ops, seed)],
    }
    if len(covered) < len(train_keys):
        log.warning(
            "The views (%s, seed %d) cover %d of %d training images (%.0f%%): images added since they were made "
            "train on their clean row only. Extract their views with `features --augment %d --augment-ops '%s'`.",
            ops, seed, len(covered), len(train_keys), 100 * len(covered) / max(1, len(train_keys)),
            len(record["views"]), ops)
    n = len(fs.labels)
    added = np.arange(n, n + record["rows"])
    grown = dataclasses.replace(
        fs,
        features=np.concatenate(blocks),
        labels=np.concatenate([fs.labels] + [v.labels[keep] for v, keep in rows]),
        paths=fs.paths + [v.paths[i] for v, keep in rows for i in keep],
        split_keys=np.concatenate([fs.split_keys] + [v.split_keys[keep] for v, keep in rows]),
        folder_splits=np.concatenate([fs.folder_splits] + [v.folder_splits[keep] for v, keep in rows]),
    )
    return grown, {**parts, "train": np.concatenate([parts["train"], added])}, [record]


def _chosen_view_set(fs: FeatureSet, groups, views: str | None) -> tuple[str, int]:
    """The `(ops, seed)` of the view set `views` names, else of the latest written."""

    def written(key) -> int:
        return max((folder / INDEX_NAME).stat().st_mtime_ns for folder, _, _ in groups[key])

    if views is None:
        return max(groups, key=written)
    try:
        ops = format_augment_ops(parse_augment_ops(views))
    except ConfigError as e:
        raise ConfigError(str(e).replace("`augment_ops`", "`views`"), field="views") from None
    named = [key for key in groups if key[0] == ops]
    if not named:
        made = "; ".join(sorted({o for o, _ in groups}))
        raise ConfigError(
            f"`views` names no view set of feature set '{fs.name}'. Received: views={views!r}. Its view sets "
            f"were made with: {made}. Name one of them, leave `views` unset for the latest, or extract views "
            f"with `features --augment K --augment-ops '{ops}'`.",
            field="views",
        )
    return max(named, key=written)


def _sha256_by_path(root: Path) -> dict[str, str]:
    state = FeatureStore(root).read_index_state()
    if state is None:
        raise FeatureStoreError(f"Feature set '{root}' changed while it was read; train again.", field="features")
    return {path: f.sha256 for path, f in state.files.items()}


def _check_view(fs: FeatureSet, view: FeatureSet) -> dict[str, Any]:
    """The view's `augment` record, once its spec is the clean set's plus `augment`."""
    spec = view.attrs.get("spec")
    spec = dict(spec) if isinstance(spec, dict) else {}
    augment = spec.pop("augment", None)
    if not isinstance(augment, dict) or feature_key(spec) != fs.attrs.get("feature_key") or view.class_names != fs.class_names:
        raise FeatureStoreError(
            f"View set '{view.path}' is not a view of feature set '{fs.name}' (another spec or classes). "
            "Delete that folder and extract the views again with `augment`.",
            field="features",
        )
    return augment


def _run_one(
    fs: FeatureSet, parts, head: str, params: dict[str, Any], config: config_lib.TrainConfig, grid=None, views=None,
    copies: int = 0,
) -> RunResult:
    started = time.monotonic()
    deadline = None if config.time_limit is None else started + config.time_limit
    try:
        return _fit_and_write(fs, parts, head, params, config, grid, views, deadline, copies)
    except FitTimeLimit:
        # Recorded, not raised: the heads after it still train.
        seconds = time.monotonic() - started
        reason = f"stopped at the time limit of {config.time_limit:g} s (`time_limit`); lower the head's cost or raise the limit"
        log.warning("%s: %s", head, reason)
        estimate = estimate_seconds(head, len(parts["train"]), int(np.prod(fs.features.shape[1:])))
        return RunResult(head, params, Path(config.runs_dir) / fs.name, {"validation": None, "test": None},
                         seconds, {k: int(len(v)) for k, v in parts.items()}, "", estimate, stopped=reason,
                         duplicates_across_splits=copies)


def _fit_and_write(fs: FeatureSet, parts, head: str, params, config, grid, views, deadline, copies) -> RunResult:
    out_root = Path(config.runs_dir) / fs.name
    search = None if grid is None else _sweep(fs, parts, head, params, grid, config, deadline)
    transform = config.transform[0]
    if search is not None:
        params, parts, transform = search.params, refit_rows(parts, config.refit), search.chosen_transform

    def fresh_name() -> str:
        return f"{layout.slug(head)}-{layout.run_id()}"

    try:
        with _atomic.staged_folder(out_root / fresh_name(), fresh_name=fresh_name) as staged:
            fitted = fit_head(head, params, fs, parts, callbacks_dir=staged.path, time_limit=wait_seconds(deadline),
                              transform=transform)
            head_sha256 = _write_run(staged.path, fs, head, params, fitted, config, views, copies, transform)
            _write_test_predictions(staged.path, fs, parts, fitted)
            if search is not None:
                fitted = _write_sweep(staged.path, search, fitted, config)
    except OSError as e:
        raise WriteError(f"Cannot write the {head!r} run under '{out_root}' ({e}); nothing of it was kept.") from e
    rebuild_leaderboard(config.runs_dir)
    estimate = estimate_seconds(head, fitted.sizes["train"], int(np.prod(fs.features.shape[1:])))
    return RunResult(head, params, staged.published, fitted.metrics, fitted.fit_seconds, fitted.sizes, head_sha256,
                     estimate, duplicates_across_splits=copies)


def _sweep(fs: FeatureSet, parts, head: str, params, grid, config, deadline=None) -> SweepResult:
    """Searches `grid` on the training and validation rows; the test rows are not passed on."""
    train, val = parts["train"], parts["validation"]
    return sweep_head(
        head, params, grid,
        train=(fs.features[train], fs.labels[train]),
        validation=(fs.features[val], fs.labels[val]),
        class_names=fs.class_names,
        select=config.select,
        deadline=deadline,
        transform=config.transform[0],
    )


def _write_sweep(folder: Path, search: SweepResult, fitted: FittedHead, config) -> FittedHead:
    """Adds `sweep.csv`, `sweep.png` and the `sweep` key of `metrics.json`; returns the run's measurement.

    After a refit on train and validation, the refit model has seen the
    validation rows: the run's validation metrics are the winner's from the
    sweep instead.
    """
    if config.refit != "train":
        fitted = dataclasses.replace(fitted, metrics={**fitted.metrics, "validation": search.validation_metrics})
    rows = search.table()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(layout.jsonable(rows))
    _atomic.write_text(folder / layout.SWEEP_CSV, buffer.getvalue())
    save_figure(plot_sweep(search), folder / layout.SWEEP_PLOT)
    metrics = layout.read_json(folder / layout.METRICS, "run folder")
    metrics["validation"] = fitted.metrics["validation"]
    metrics["sweep"] = {**search.record(), "refit": config.refit}
    layout.write_json(folder / layout.METRICS, metrics)
    return fitted


def _write_run(
    folder: Path, fs: FeatureSet, head: str, params, fitted: FittedHead, config, views, copies, transform: str
) -> str:
    """Writes every file of a run into `folder`; returns the head file's sha256."""
    shown = "test" if fitted.metrics["test"] is not None else "validation"
    save_figure(plot_confusion_matrix(fitted.metrics[shown]["confusion_matrix"], fs.class_names),
                 folder / layout.CONFUSION_MATRIX)
    if fitted.history is not None:
        save_figure(plot_history(fitted.history), folder / layout.HISTORY)
        fitted.estimator.save_keras(folder / layout.MODEL)
    lineage = feature_lineage(fs)
    if views:
        lineage["n_images"] -= sum(v["rows"] for v in views)
        lineage["augmented"] = views  # the view sets trained on: ops, seed, view indices, rows
    lineage["transform"] = transform  # fitted inside the head; recorded for the leaderboard
    recorded = ("feature_set", "content_hash", "feature_key", "backbone", "weights", "class_names")
    metadata = {**{k: lineage[k] for k in recorded}, "head": head, "params": layout.jsonable(params),
                "transform": transform}
    lineage["head_sha256"] = save_head(folder / layout.HEAD, fitted.estimator, metadata=metadata)
    lineage["head_skops_sha256"] = safe_head.write_run_head(folder / layout.HEAD_SKOPS, fitted.estimator, metadata)
    # Orders the leaderboard: run ids only tell the second a run started.
    lineage["trained_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    layout.write_json(folder / layout.METRICS, {
        **fitted.metrics, "fit_seconds": fitted.fit_seconds, "sizes": fitted.sizes, **fitted.convergence,
        "transform": transform,
        **({"augmented": views} if views else {}), "duplicates_across_splits": copies,
    })
    layout.write_json(folder / layout.CONFIG, {
        "train_config": config_lib.to_dict(config),
        "head": head,
        "params": params,
        "transform": transform,
        "estimator_params": fitted.estimator_params,
    })
    layout.write_json(folder / layout.LINEAGE, lineage)
    return lineage["head_sha256"]


def _write_test_predictions(folder: Path, fs: FeatureSet, parts, fitted: FittedHead) -> None:
    """`test_predictions.csv`: each image of the split the confusion matrix shows, for the report."""
    split = "test" if len(parts["test"]) else "validation"
    rows = parts[split]
    proba = aligned_proba(fitted.estimator, feature_matrix(fitted.estimator, fs.features[rows]), len(fs.class_names))
    predicted = proba.argmax(axis=1)
    truth = fs.labels[rows]
    lines = (
        (split, fs.paths[row], fs.class_names[t], fs.class_names[p], float(proba[k, p]), float(proba[k, t]))
        for k, (row, t, p) in enumerate(zip(rows, truth, predicted))
    )
    _atomic.write_text(folder / layout.TEST_PREDICTIONS, csv_text(layout.TEST_PREDICTIONS_COLUMNS, lines))


def feature_lineage(fs: FeatureSet) -> dict[str, Any]:
    """What a run trained on: the feature set's path, name, content hash, key, backbone, weights, config, size.

    A fused set adds `members` (the same record for each set it joins,
    which `source.RunSource` rebuilds every base from) and `fusion` (the
    images left out); its top-level path and config are its first member's.
    """
    lineage = {**member_record(fs), "class_names": list(fs.class_names)}
    if "members" in fs.attrs:
        lineage["members"] = fs.attrs["members"]
        lineage["fusion"] = fs.attrs["fusion"]
    return lineage


def save_figure(fig, path: Path) -> None:
    # heads.metrics builds Figures without pyplot: nothing to close.
    with _atomic.replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
