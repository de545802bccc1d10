"""Applying a fitted head to features: the one place that shapes inputs and aligns outputs.

Training (metrics on validation and test) and prediction (new images) both
go through these, so a head sees the same matrix and its probability
columns mean the same classes in both.
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from .dense import is_keras_head

__all__ = ["aligned_proba", "feature_matrix", "linear_softmax_weights"]


def feature_matrix(estimator, features: np.ndarray) -> np.ndarray:
    """`features` as the head takes them: spatial maps kept for the dense head, flattened for the others."""
    if is_keras_head(estimator):
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


def linear_softmax_weights(estimator, n_classes: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A linear head as one dense layer: `proba = softmax(link(X @ kernel + bias))`.

    Covers `logreg` (`LogisticRegression`: `link` is `"linear"`, the
    layer's outputs are the logits) and the sigmoid-calibrated `linear_svm`
    and `ridge` (`CalibratedClassifierCV(method="sigmoid", ensemble=False)`
    over `LinearSVC` or `RidgeClassifier`: `link` is `"log_sigmoid"`, the
    outputs are the logs of each class's calibrated sigmoid, which the
    softmax normalises exactly as scikit-learn divides by their sum). A
    leading `StandardScaler` is folded into the kernel and bias. Pure
    NumPy, so `heads/` stays free of Keras.

    Args:
        estimator: a fitted head, as `create_head` builds it.
        n_classes: int, the number of the run's classes; the head must
            have been trained on every one of them.

    Returns:
        `(kernel, bias, link)`: float64 arrays of shapes `(d, n_classes)`
        and `(n_classes,)`, and the activation before the softmax.

    Raises:
        ValueError: the head is not one of these linear forms; the message
            says why.
    """
    steps = list(estimator.steps) if isinstance(estimator, Pipeline) else [("clf", estimator)]
    scaler = steps[0][1] if len(steps) == 2 and isinstance(steps[0][1], StandardScaler) else None
    if len(steps) != (2 if scaler is not None else 1):
        raise ValueError(f"a pipeline of {[name for name, _ in steps]} is not a scaler and a linear classifier")
    clf = steps[-1][1]
    classes = np.asarray(getattr(clf, "classes_", []))
    if not np.array_equal(classes, np.arange(n_classes)):
        raise ValueError(f"the head knows classes {classes.tolist()}, not every one of the {n_classes} run classes")
    if isinstance(clf, LogisticRegression):
        weights, intercept, link = _logreg_logits(clf)
    elif isinstance(clf, CalibratedClassifierCV):
        weights, intercept = _calibrated_margins(clf)
        link = "log_sigmoid"
    else:
        raise ValueError(f"{type(clf).__name__} is not LogisticRegression or a sigmoid-calibrated linear classifier")
    if scaler is not None:
        # ((x - mean) / scale) @ W + c  ==  x @ (W / scale) + (c - (mean / scale) @ W)
        mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(len(weights))
        scale = scaler.scale_ if scaler.scale_ is not None else np.ones(len(weights))
        weights = weights / scale[:, None]
        intercept = intercept - mean @ weights
    return weights, intercept, link


def _logreg_logits(clf) -> tuple[np.ndarray, np.ndarray, str]:
    coef, intercept = np.asarray(clf.coef_, np.float64), np.asarray(clf.intercept_, np.float64)
    if len(clf.classes_) == 2:
        # Binary: P(class 1) = sigmoid(z) = softmax([0, z])[1].
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    return coef.T, intercept, "linear"


def _calibrated_margins(clf) -> tuple[np.ndarray, np.ndarray]:
    """Per class, `-(a * margin + b)`: the argument of the calibrated sigmoid, as a linear map."""
    if clf.method != "sigmoid" or len(clf.calibrated_classifiers_) != 1:
        raise ValueError(
            f"calibration method={clf.method!r} over {len(clf.calibrated_classifiers_)} fold(s) is not one "
            "sigmoid per class over one estimator (method='sigmoid', ensemble=False)"
        )
    fitted = clf.calibrated_classifiers_[0]
    base = fitted.estimator
    if not isinstance(base, (LinearSVC, RidgeClassifier)):
        raise ValueError(f"the calibrated estimator {type(base).__name__} is not LinearSVC or RidgeClassifier")
    coef, intercept = np.asarray(base.coef_, np.float64), np.atleast_1d(np.asarray(base.intercept_, np.float64))
    a = np.array([c.a_ for c in fitted.calibrators], np.float64)
    b = np.array([c.b_ for c in fitted.calibrators], np.float64)
    weights, bias = -(a[:, None] * coef), -(a * intercept + b)
    if len(clf.classes_) == 2:
        # Binary: one calibrator for class 1, and P(class 0) = 1 - P(class 1) = sigmoid(-argument).
        weights, bias = np.vstack([-weights, weights]), np.concatenate([-bias, bias])
    return weights.T, bias
