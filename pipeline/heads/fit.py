"""Fitting one head on a feature set's training rows, and measuring it on the others."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError
from ..store import FeatureSet
from .apply import aligned_proba, feature_matrix
from .dense import DenseClassifier
from .metrics import classification_metrics
from .registry import create_head

__all__ = ["FittedHead", "fit_head"]

log = logging.getLogger("bottleneck")

# Seconds between the "still fitting" lines of a long fit (hist_gb on
# thousands of images takes minutes), so a log without a progress bar
# shows the run is alive.
STILL_FITTING_INTERVAL = 15.0


@dataclasses.dataclass(frozen=True)
class FittedHead:
    """One head fitted by `fit_head`, with how well it did.

    Attributes:
        estimator: the fitted scikit-learn estimator.
        metrics: `{"validation": dict | None, "test": dict | None}`, each
            from `metrics.classification_metrics`; `None` for an empty split.
        fit_seconds: wall time of `fit` alone (no predicting or saving).
        sizes: rows per split actually used: `train` (after `fraction`),
            `validation`, `test`.
        history: the dense head's per-epoch `history_`; `None` for others.
        epochs_run: the dense head's `epochs_run_`; `None` for others.
        best_epoch: the dense head's `best_epoch_` (from 1, by validation
            loss, or by training loss without a validation split); `None`
            for others.
        warnings: one line per problem worth a look, each naming the head
            and the parameter to change; so far only a dense head whose
            best epoch is its last (still improving when `epochs` stopped it).
    """

    estimator: Any
    metrics: dict[str, dict[str, Any] | None]
    fit_seconds: float
    sizes: dict[str, int]
    history: dict[str, list[float]] | None
    epochs_run: int | None = None
    best_epoch: int | None = None
    warnings: tuple[str, ...] = ()

    @property
    def convergence(self) -> dict[str, Any]:
        """`epochs_run`, `best_epoch` and `warnings` for a run's metrics; `{}` for heads without epochs."""
        if self.epochs_run is None:
            return {}
        return {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch, "warnings": list(self.warnings)}

    @property
    def estimator_params(self) -> dict[str, Any]:
        """Every plain parameter of the estimator, nested steps flattened (`clf__C`)."""
        get_params = getattr(self.estimator, "get_params", None)
        if get_params is None:
            return {}
        return {k: v for k, v in get_params(deep=True).items() if not hasattr(v, "get_params")}


def fit_head(
    head: str,
    params: Mapping[str, Any],
    feature_set: FeatureSet,
    parts: Mapping[str, np.ndarray],
    *,
    callbacks_dir: str | os.PathLike | None = None,
) -> FittedHead:
    """Fits `create_head(head, **params)` on the training rows and scores it.

    Args:
        head: a head name or import path (see `create_head`).
        params: its parameters, as `plan_params` gives them.
        feature_set: the `FeatureSet` the rows index.
        parts: `{"train", "validation", "test"}` row indices, as
            `training_splits` gives them.
        callbacks_dir: folder for the dense head's checkpoint and logs (see
            `DenseClassifier.fit`); other heads write nothing.
            Defaults to `None`.

    Returns:
        A `FittedHead`.

    Raises:
        ConfigError: the head fails to fit (its message says why; usually
            a parameter that does not suit this many examples).
    """
    estimator = create_head(head, **params)
    X = feature_matrix(estimator, feature_set.features)
    y = feature_set.labels
    train, val, test = parts["train"], parts["validation"], parts["test"]
    is_dense = isinstance(estimator, DenseClassifier)
    fit_kwargs = {}
    if is_dense:
        fit_kwargs = {"validation_data": (X[val], y[val]) if len(val) else None, "callbacks_dir": callbacks_dir}
    log.info("Training %s on %d examples ...", head, len(train))
    started = time.perf_counter()
    try:
        with _still_fitting(head):
            estimator.fit(X[train], y[train], **fit_kwargs)
    except ValueError as e:
        raise ConfigError(f"Head {head!r} failed to fit on {len(train)} training examples: {e}", field="params") from e
    fit_seconds = time.perf_counter() - started
    n_classes = len(feature_set.class_names)
    metrics = {
        name: classification_metrics(y[rows], aligned_proba(estimator, X[rows], n_classes), feature_set.class_names)
        if len(rows)
        else None
        for name, rows in (("validation", val), ("test", test))
    }
    sizes = {"train": int(len(train)), "validation": int(len(val)), "test": int(len(test))}
    if not is_dense:
        return FittedHead(estimator, metrics, fit_seconds, sizes, None)
    warnings = _convergence_warnings(head, estimator)
    for line in warnings:
        log.warning("Warning: %s", line)
    return FittedHead(
        estimator, metrics, fit_seconds, sizes, estimator.history_,
        epochs_run=estimator.epochs_run_, best_epoch=estimator.best_epoch_, warnings=warnings,
    )


@contextlib.contextmanager
def _still_fitting(head: str):
    """Logs "still fitting <head>: 30 s" every `STILL_FITTING_INTERVAL` seconds until the body ends."""
    started, done = time.perf_counter(), threading.Event()

    def report() -> None:
        while not done.wait(STILL_FITTING_INTERVAL):
            log.info("still fitting %s: %.0f s", head, time.perf_counter() - started)

    reporter = threading.Thread(target=report, name=f"still-fitting-{head}", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        done.set()
        reporter.join()


def _convergence_warnings(head: str, estimator: DenseClassifier) -> tuple[str, ...]:
    # A head cut off while still improving would lose a comparison it has
    # not finished: say so wherever its scores are read.
    if estimator.best_epoch_ < estimator.epochs_run_:
        return ()
    loss = "val_loss" if "val_loss" in estimator.history_ else "loss"
    return (
        f"{head}: best epoch = last epoch {estimator.epochs_run_} ({loss} still falling when "
        f"`epochs`={estimator.epochs} stopped training); raise `epochs` (or `learning_rate`) "
        "to train it to convergence.",
    )
