"""Evaluation of a trained head: metrics as dicts, plots as Figures.

`classification_metrics` returns plain Python types only (floats, ints,
lists, dicts keyed by class name), ready for `json.dump`. The plot functions
return a `matplotlib.figure.Figure` built without pyplot (no global state,
no GUI backend); the caller saves it with `fig.savefig(path)`.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

__all__ = ["TOP_K", "classification_metrics", "plot_confusion_matrix", "plot_history"]

TOP_K = 5
"""`classification_metrics` reports `top_5_accuracy` when there are more than 5 classes."""

_ROW_SUM_TOLERANCE = 1e-4
_ANNOTATE_MAX_CLASSES = 30

_CLASS_NAMES_DOC = """class_names: sequence of str, the name of each class, in
            class-index order; `class_names[i]` names column `i` of `proba`
            and label `i` of `y_true`. Names must be unique."""


def _check_class_names(class_names) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence | np.ndarray):
        raise TypeError(
            "`class_names` must be a sequence of str. "
            f"Received: {type(class_names).__name__}."
        )
    names = [str(c) for c in class_names]
    if len(names) < 2:
        raise ValueError(f"`class_names` must name at least 2 classes. Received: {names!r}.")
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"`class_names` must be unique. Received duplicates: {duplicates!r}.")
    return names


def _check_labels(y_true, n_classes: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(
            f"`y_true` must be 1-D (one class index per sample). Received shape {y.shape}."
        )
    if y.size and not (
        np.issubdtype(y.dtype, np.integer)
        or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))
    ):
        raise TypeError(
            "`y_true` must hold integer class indices into `class_names`. "
            f"Received dtype {y.dtype}."
        )
    y = y.astype(np.int64)
    out_of_range = (y < 0) | (y >= n_classes)
    if np.any(out_of_range):
        raise ValueError(
            f"`y_true` must hold class indices in [0, {n_classes - 1}] "
            f"({n_classes} class names). Received: {sorted(set(y[out_of_range].tolist()))[:10]!r}."
        )
    return y


def _check_proba(proba, n_samples: int, n_classes: int) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.shape != (n_samples, n_classes):
        raise ValueError(
            f"`proba` must have shape (n_samples, n_classes) = ({n_samples}, {n_classes}), "
            f"from len(y_true) and len(class_names). Received shape {p.shape}."
        )
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("`proba` must hold finite probabilities in [0, 1].")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > _ROW_SUM_TOLERANCE:
        raise ValueError(
            "Each row of `proba` must sum to 1 (use `predict_proba`, not "
            f"`decision_function`). Received: row {worst} sums to {sums[worst]:.6g}."
        )
    # Remove float32 rounding (rows summing to 0.99999994), which log_loss warns about.
    return p / sums[:, None]


def classification_metrics(y_true, proba, class_names) -> dict:
    """Classification metrics of predicted probabilities, as a JSON-ready dict.

    Predictions are `argmax(proba, axis=1)`.

    Args:
        y_true: array-like of shape `(n_samples,)`, the true class index of
            each sample, in `[0, n_classes)`.
        proba: array-like of shape `(n_samples, n_classes)`, predicted class
            probabilities (rows sum to 1), e.g. from `head.predict_proba`.
        {class_names}

    Returns:
        dict with keys:
            `n_samples` (int), `n_classes` (int), `accuracy`,
            `balanced_accuracy` (mean recall over the classes present in
            `y_true`), `macro_f1` (unweighted mean F1 over the classes
            present in `y_true` or predicted), `log_loss` (over all
            `n_classes`, so classes missing from `y_true` are fine),
            `top_5_accuracy` (only when `n_classes > 5`),
            `per_class` (dict class name -> `precision`, `recall`, `f1`,
            `support`; 0.0 where undefined), and `confusion_matrix` (list of
            lists of int, rows true class, columns predicted class, in
            `class_names` order).

    Example:

    ```python
    metrics = classification_metrics(y_test, head.predict_proba(X_test),
                                     class_names)
    json.dump(metrics, f, indent=2)
    ```
    """
    names = _check_class_names(class_names)
    n_classes = len(names)
    y = _check_labels(y_true, n_classes)
    if len(y) == 0:
        raise ValueError("`y_true` must hold at least one sample. Received 0.")
    p = _check_proba(proba, len(y), n_classes)
    labels = np.arange(n_classes)
    y_pred = np.argmax(p, axis=1)

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        # Predicting a class absent from y_true is normal on small test sets.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = skm.balanced_accuracy_score(y, y_pred)
    result = {
        "n_samples": int(len(y)),
        "n_classes": int(n_classes),
        "accuracy": float(skm.accuracy_score(y, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(skm.f1_score(y, y_pred, average="macro", zero_division=0)),
        "log_loss": float(skm.log_loss(y, p, labels=labels)),
    }
    if n_classes > TOP_K:
        result[f"top_{TOP_K}_accuracy"] = float(
            skm.top_k_accuracy_score(y, p, k=TOP_K, labels=labels)
        )
    result["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    result["confusion_matrix"] = skm.confusion_matrix(y, y_pred, labels=labels).astype(int).tolist()
    return result


if classification_metrics.__doc__:
    classification_metrics.__doc__ = classification_metrics.__doc__.replace(
        "{class_names}", _CLASS_NAMES_DOC
    )


def plot_confusion_matrix(
    cm, class_names, *, normalize: bool = False, title: str = "Confusion matrix"
) -> Figure:
    """Draw a confusion matrix.

    Args:
        cm: array-like of shape `(n_classes, n_classes)` of non-negative
            counts, rows true class and columns predicted class, such as
            `classification_metrics(...)["confusion_matrix"]`.
        {class_names}
        normalize: bool, divide each row by its total, so the diagonal shows
            per-class recall. Defaults to `False`.
        title: str, the axes title. Defaults to `"Confusion matrix"`.

    Returns:
        A `matplotlib.figure.Figure` with one image axes (plus its colorbar);
        cells are annotated when there are at most 30 classes.

    Example:

    ```python
    fig = plot_confusion_matrix(metrics["confusion_matrix"], class_names)
    fig.savefig("confusion.png", dpi=150)
    ```
    """
    names = _check_class_names(class_names)
    n = len(names)
    counts = np.asarray(cm)
    if counts.shape != (n, n):
        raise ValueError(
            f"`cm` must have shape (n_classes, n_classes) = ({n}, {n}) for "
            f"{n} class names. Received shape {counts.shape}."
        )
    if not np.issubdtype(counts.dtype, np.number) or np.any(counts < 0):
        raise ValueError("`cm` must hold non-negative counts.")
    values = counts.astype(np.float64)
    if normalize:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)

    side = float(np.clip(0.45 * n + 3.0, 4.0, 24.0))
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", interpolation="nearest", vmin=0.0)
    fig.colorbar(image, ax=ax)
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=names)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title)
    if n <= _ANNOTATE_MAX_CLASSES:
        threshold = values.max() / 2.0 if values.size else 0.0
        for (i, j), value in np.ndenumerate(values):
            text = f"{value:.2f}" if normalize else f"{int(counts[i, j])}"
            color = "white" if value > threshold else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    return fig


if plot_confusion_matrix.__doc__:
    plot_confusion_matrix.__doc__ = plot_confusion_matrix.__doc__.replace(
        "{class_names}", _CLASS_NAMES_DOC
    )


_HISTORY_PANELS = (("accuracy", "Accuracy"), ("loss", "Loss"))


def plot_history(history: Mapping) -> Figure:
    """Draw training curves: accuracy and loss per epoch, train and validation.

    Args:
        history: mapping of per-epoch lists, such as `DenseClassifier.history_`
            or `keras.callbacks.History.history`. Uses `accuracy` and `loss`
            (at least one is required) and, when present, `val_accuracy` and
            `val_loss`, each as long as its training list.

    Returns:
        A `matplotlib.figure.Figure` with one axes per metric present, in
        the order accuracy, loss, titled `"Accuracy"` and `"Loss"`, each with
        a `train` line and, when recorded, a `validation` line.

    Example:

    ```python
    fig = plot_history(head.history_)
    fig.savefig("history.png")
    ```
    """
    if not isinstance(history, Mapping):
        raise TypeError(
            "`history` must be a mapping of per-epoch lists, such as "
            f"`DenseClassifier.history_`. Received: {type(history).__name__}."
        )
    panels = [(key, label) for key, label in _HISTORY_PANELS if key in history]
    if not panels:
        raise ValueError(
            "`history` must hold 'accuracy' and/or 'loss'. "
            f"Received keys: {sorted(map(str, history))!r}."
        )
    fig = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    for index, (key, label) in enumerate(panels, start=1):
        train = _series(history, key)
        ax = fig.add_subplot(1, len(panels), index)
        epochs = np.arange(1, len(train) + 1)
        ax.plot(epochs, train, color="red", label="train")
        if f"val_{key}" in history:
            val = _series(history, f"val_{key}")
            if len(val) != len(train):
                raise ValueError(
                    f"`history['val_{key}']` must have one value per epoch, like "
                    f"`history['{key}']` ({len(train)}). Received {len(val)}."
                )
            ax.plot(epochs, val, color="blue", label="validation")
        ax.set_title(label)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.legend()
    return fig


def _series(history: Mapping, key: str) -> np.ndarray:
    values = history[key]
    if isinstance(values, (str, bytes)) or not all(
        isinstance(v, numbers.Real) for v in np.asarray(values).ravel().tolist()
    ):
        raise TypeError(f"`history[{key!r}]` must be a list of numbers. Received: {values!r}.")
    series = np.asarray(values, dtype=np.float64)
    if series.ndim != 1 or series.size == 0:
        raise ValueError(
            f"`history[{key!r}]` must be a non-empty list of per-epoch values. "
            f"Received shape {series.shape}."
        )
    return series
