"""Fitting one head on a feature set's training rows, and measuring it on the others."""

from __future__ import annotations

import dataclasses
import logging
import os
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
    """

    estimator: Any
    metrics: dict[str, dict[str, Any] | None]
    fit_seconds: float
    sizes: dict[str, int]
    history: dict[str, list[float]] | None

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
    return FittedHead(estimator, metrics, fit_seconds, sizes, estimator.history_ if is_dense else None)
