"""Applying a fitted head to features: the one place that shapes inputs and aligns outputs.

Training (metrics on validation and test) and prediction (new images) both
go through these, so a head sees the same matrix and its probability
columns mean the same classes in both.
"""

from __future__ import annotations

import numpy as np

from .dense import DenseClassifier

__all__ = ["aligned_proba", "feature_matrix"]


def feature_matrix(estimator, features: np.ndarray) -> np.ndarray:
    """`features` as the head takes them: spatial maps kept for the dense head, flattened for the others."""
    if isinstance(estimator, DenseClassifier):
        return features
    return features.reshape(len(features), -1)


def aligned_proba(estimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """`(n, n_classes)` probabilities, column i for label i.

    A head trained without some class has fewer columns (its `classes_`);
    they are put where their labels say. Heads without `predict_proba` give
    one-hot rows of `predict`.
    """
    proba = np.zeros((len(X), n_classes))
    if not len(X):
        return proba
    classes = np.asarray(estimator.classes_).astype(np.int64)
    if hasattr(estimator, "predict_proba"):
        raw = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    else:
        raw = (np.asarray(estimator.predict(X))[:, None] == classes[None, :]).astype(np.float64)
    proba[:, classes] = raw
    return proba
