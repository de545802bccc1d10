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
from .registry import create_head, estimate_seconds, format_seconds, uses_keras
from .transforms import STANDARD, with_transform
from .workers import FitTimeLimit, call_in_child, limit_main_threads

__all__ = ["FitTimeLimit", "FittedHead", "fit_and_score", "fit_head"]

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
    time_limit: float | None = None,
    threads: int | None = None,
    transform: str = STANDARD,
) -> FittedHead:
    """Fits `create_head(head, **params)` on the training rows and scores it.

    A scikit-learn head is fitted, and its validation and test rows
    scored, in a child process (`workers.call_in_child`), so that Ctrl-C or
    SIGTERM end it at once; the Keras head trains here, where Keras sees
    the interrupt between batches.

    Args:
        head: a head name or import path (see `create_head`).
        params: its parameters, as `plan_params` gives them.
        feature_set: the `FeatureSet` the rows index.
        parts: `{"train", "validation", "test"}` row indices, as
            `training_splits` gives them.
        callbacks_dir: folder for the dense head's checkpoint and logs (see
            `DenseClassifier.fit`); other heads write nothing.
            Defaults to `None`.
        time_limit: seconds the fit may take before it is stopped
            (`FitTimeLimit`); `None` for no limit. A Keras head is not
            limited. Defaults to `None`.
        threads: BLAS/OpenMP threads of the fit; `None` for every core.
            Defaults to `None`.
        transform: the feature transform fitted in front of the head, on
            the training rows only (see `transforms`). Defaults to
            `"standard"`.

    Returns:
        A `FittedHead`.

    Raises:
        ConfigError: the head fails to fit (its message says why; usually
            a parameter that does not suit this many examples).
        FitTimeLimit: `time_limit` ran out.
    """
    limit_main_threads()
    estimator = with_transform(create_head(head, **params), transform)
    X = feature_matrix(estimator, feature_set.features)
    y = feature_set.labels
    train, val, test = parts["train"], parts["validation"], parts["test"]
    n_classes = len(feature_set.class_names)
    is_dense = uses_keras(head)
    estimate = estimate_seconds(head, len(train), int(np.prod(X.shape[1:])))
    shown = f" (estimated {format_seconds(estimate)})" if estimate is not None else ""
    log.info("Training %s on %d examples x %d features%s ...", head, len(train), int(np.prod(X.shape[1:])), shown)
    try:
        with _still_fitting(head):
            if is_dense:
                started = time.perf_counter()
                validation_data = (X[val], y[val]) if len(val) else None
                estimator.fit(X[train], y[train], validation_data=validation_data, callbacks_dir=callbacks_dir)
                fit_seconds = time.perf_counter() - started
                probas = [aligned_proba(estimator, X[rows], n_classes) for rows in (val, test)]
            else:
                estimator, probas, fit_seconds = call_in_child(
                    fit_and_score, estimator, X[train], y[train], [X[val], X[test]], n_classes,
                    time_limit=time_limit, threads=threads,
                )
    except ValueError as e:
        raise ConfigError(f"Head {head!r} failed to fit on {len(train)} training examples: {e}", field="params") from e
    metrics = {
        name: classification_metrics(y[rows], proba, feature_set.class_names) if len(rows) else None
        for name, rows, proba in (("validation", val, probas[0]), ("test", test, probas[1]))
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


def fit_and_score(estimator, X: np.ndarray, y: np.ndarray, scored: list[np.ndarray], n_classes: int):
    """`(fitted estimator, aligned probabilities of each of scored, fit seconds)`: what a fit child returns."""
    started = time.perf_counter()
    estimator.fit(X, y)
    fit_seconds = time.perf_counter() - started
    return estimator, [aligned_proba(estimator, rows, n_classes) for rows in scored], fit_seconds


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
