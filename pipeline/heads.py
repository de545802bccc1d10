"""Classifier heads that train on cached features.

Every head is a scikit-learn estimator: the registry rows below build
scikit-learn models (wrapped in a `StandardScaler` pipeline where the
estimator needs scaled inputs), and `DenseClassifier` wraps the small Keras
network of the classic "extract once, train a dense head" recipe in the same
`fit` / `predict` / `predict_proba` contract.

Keras is imported lazily, inside `DenseClassifier`'s methods only, so that
scikit-learn heads never pull Keras (or its backend) in. TensorFlow itself is
never imported here: the dense head runs on any Keras 3 backend.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import numbers
import os
import platform
import re
import tempfile
import types
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

__all__ = [
    "HEADS",
    "DenseClassifier",
    "HeadCfg",
    "HeadVersionWarning",
    "create_head",
    "get_head_cfg",
    "list_heads",
    "load_head",
    "parse_param",
    "save_head",
]

# --------------------------------------------------------------------------
# Dense (Keras) head
# --------------------------------------------------------------------------

_OPTIMIZERS = ("adagrad", "adam", "adamax", "adamw", "nadam", "rmsprop", "sgd")
_PREDICT_CHUNK = 1024  # rows per forward pass in predict_proba
_TENSORBOARD_NEEDS = ("tensorflow", "tensorboard")


def _import_keras():
    """Import Keras on first use (never at module level, see module doc)."""
    import keras

    return keras


def _check_param(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class DenseClassifier(ClassifierMixin, BaseEstimator):
    """Small Keras network on cached features, as a scikit-learn classifier.

    The default network is the classic bottleneck-features head:
    `[Flatten] -> Dense(256, relu) -> Dropout(0.5) -> Dense(n_classes,
    softmax)`, trained with Adam(learning_rate=1e-4) for 30 epochs in batches
    of 64 on sparse categorical cross-entropy. `Flatten` is added only when
    `X` has more than 2 dims (spatial features such as `(N, 4, 4, 512)`).
    Two-class problems also use a 2-unit softmax (not a 1-unit sigmoid), so
    `predict_proba` always has shape `(n_samples, n_classes)` and one code
    path serves every problem.

    Keras is imported when `fit` (or unpickling) needs it; the backend is
    whatever Keras is configured with (TensorFlow, JAX or PyTorch).

    Args:
        hidden_units: tuple of ints, the width of each hidden `Dense(relu)`
            layer, in order (an int means one layer). `()` gives a linear
            softmax classifier.
            Defaults to `(256,)`.
        dropout: float in `[0, 1)`, the rate of the `Dropout` after each
            hidden layer. `0` adds no dropout layer. Defaults to `0.5`.
        optimizer: str, the Keras optimizer, one of `"adagrad"`, `"adam"`,
            `"adamax"`, `"adamw"`, `"nadam"`, `"rmsprop"`, `"sgd"`.
            Defaults to `"adam"`.
        learning_rate: float > 0, the optimizer's learning rate.
            Defaults to `1e-4`.
        epochs: int >= 1, the maximum number of passes over the data.
            Defaults to `30`.
        batch_size: int >= 1, samples per gradient step.
            Defaults to `64`.
        class_weight: `None`, `"balanced"` or a dict mapping class label to
            weight; turned into per-sample weights of the loss.
            Defaults to `None`.
        early_stopping_patience: int >= 0 or `None`. With `validation_data`
            passed to `fit`, stop after this many epochs without a lower
            `val_loss` and restore the best weights. `None` disables early
            stopping; without `validation_data` it is ignored.
            Defaults to `5`.
        random_state: int or `None`. Passed to
            `keras.utils.set_random_seed` at the start of `fit` (this seeds
            Python, NumPy and the backend globally), which makes two fits on
            the same data give the same model on CPU. `None` leaves the
            global seeds alone. Defaults to `0`.
        verbose: int, Keras' `fit` verbosity: `0` silent, `1` progress bar,
            `2` one line per epoch. Defaults to `0`.

    Attributes:
        classes_: array of the class labels seen in `fit`.
        n_features_in_: int, features per sample (the product of
            `feature_shape_`).
        feature_shape_: tuple, the shape of one sample, e.g. `(512,)` or
            `(4, 4, 512)`.
        history_: dict of per-epoch lists: `loss`, `accuracy`, plus
            `val_loss`, `val_accuracy` when `validation_data` was given.
        model_: the trained `keras.Model`.

    Example:

    ```python
    head = DenseClassifier(epochs=10).fit(X_train, y_train,
                                          validation_data=(X_val, y_val))
    proba = head.predict_proba(X_test)
    ```
    """

    def __init__(
        self,
        hidden_units=(256,),
        dropout=0.5,
        optimizer="adam",
        learning_rate=1e-4,
        epochs=30,
        batch_size=64,
        class_weight=None,
        early_stopping_patience=5,
        random_state=0,
        verbose=0,
    ):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.early_stopping_patience = early_stopping_patience
        self.random_state = random_state
        self.verbose = verbose

    # -- validation -------------------------------------------------------

    def _hidden_units(self) -> tuple[int, ...]:
        units = self.hidden_units
        if _is_int(units):
            units = (units,)
        ok = isinstance(units, (tuple, list)) and all(
            _is_int(u) and u > 0 for u in units
        )
        _check_param(
            "hidden_units", self.hidden_units, ok, "a tuple of positive ints, e.g. (256,)"
        )
        return tuple(int(u) for u in units)

    def _validate_params(self) -> None:
        _check_param(
            "dropout",
            self.dropout,
            _is_real(self.dropout) and 0 <= self.dropout < 1,
            "a float in [0, 1)",
        )
        _check_param(
            "optimizer",
            self.optimizer,
            isinstance(self.optimizer, str) and self.optimizer.lower() in _OPTIMIZERS,
            "one of " + ", ".join(repr(o) for o in _OPTIMIZERS),
        )
        _check_param(
            "learning_rate",
            self.learning_rate,
            _is_real(self.learning_rate) and self.learning_rate > 0,
            "a float > 0",
        )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            _check_param(name, value, _is_int(value) and value >= 1, "an int >= 1")
        _check_param(
            "class_weight",
            self.class_weight,
            self.class_weight is None
            or self.class_weight == "balanced"
            or isinstance(self.class_weight, Mapping),
            "None, 'balanced' or a dict {class label: weight}",
        )
        patience = self.early_stopping_patience
        _check_param(
            "early_stopping_patience",
            patience,
            patience is None or (_is_int(patience) and patience >= 0),
            "None or an int >= 0",
        )
        _check_param(
            "random_state",
            self.random_state,
            self.random_state is None or _is_int(self.random_state),
            "None or an int",
        )
        _check_param("verbose", self.verbose, self.verbose in (0, 1, 2), "0, 1 or 2")

    def _validate_X(self, X) -> np.ndarray:
        """Validate X at predict time against the shape seen in `fit`."""
        if len(self.feature_shape_) == 1:
            X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        else:
            X = check_array(X, allow_nd=True, dtype=[np.float32, np.float64])
            if X.shape[1:] != self.feature_shape_:
                raise ValueError(
                    f"X has samples of shape {X.shape[1:]}, but {type(self).__name__} "
                    f"is expecting samples of shape {self.feature_shape_} as input."
                )
        return np.asarray(X, dtype=np.float32)

    def _encode(self, y, what: str) -> np.ndarray:
        """Map labels to indices into `classes_`; unknown labels are an error."""
        y = np.asarray(y)
        index = np.searchsorted(self.classes_, y)
        index = np.clip(index, 0, len(self.classes_) - 1)
        unknown = self.classes_[index] != y
        if np.any(unknown):
            raise ValueError(
                f"{what} has labels not seen in y: {sorted(set(y[unknown].tolist()))!r}. "
                f"Known labels: {self.classes_.tolist()!r}."
            )
        return index.astype(np.int32)

    def _sample_weight(self, y_index: np.ndarray) -> np.ndarray | None:
        if self.class_weight is None:
            return None
        if self.class_weight == "balanced":
            weights = compute_class_weight("balanced", classes=self.classes_, y=self.classes_[y_index])
        else:
            unknown = set(self.class_weight) - set(self.classes_.tolist())
            if unknown:
                raise ValueError(
                    f"`class_weight` has labels not seen in y: {sorted(unknown)!r}. "
                    f"Known labels: {self.classes_.tolist()!r}."
                )
            weights = np.array([float(self.class_weight.get(c, 1.0)) for c in self.classes_.tolist()])
        return weights[y_index].astype(np.float32)

    # -- estimator API ----------------------------------------------------

    def fit(self, X, y, *, validation_data=None, callbacks_dir=None):
        """Train the network on `X`, `y`.

        Args:
            X: array of shape `(n_samples, n_features)` or
                `(n_samples, *spatial_shape)` (flattened by the network).
            y: array of shape `(n_samples,)`, the class labels.
            validation_data: `None` or a tuple `(X_val, y_val)`. Enables
                per-epoch validation (`val_loss`, `val_accuracy` in
                `history_`) and, unless `early_stopping_patience` is `None`,
                early stopping on `val_loss` with the best weights restored.
                Defaults to `None`.
            callbacks_dir: `None` or a folder. Enables a `ModelCheckpoint` of
                the best model to `callbacks_dir/best.keras` (best by
                `val_loss`, or by `loss` without validation data) and
                TensorBoard logs under `callbacks_dir/logs` (these need the
                `tensorflow` and `tensorboard` packages, whatever the Keras
                backend; without them a warning is issued and no logs are
                written). Defaults to `None`.

        Returns:
            self.
        """
        self._validate_params()
        hidden_units = self._hidden_units()
        X, y = validate_data(self, X, y, allow_nd=True, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes to train; "
                f"got 1 class ({self.classes_[0]!r})."
            )
        self.feature_shape_ = tuple(int(d) for d in X.shape[1:])
        self.n_features_in_ = int(np.prod(self.feature_shape_))
        X = np.asarray(X, dtype=np.float32)
        y_index = y_index.astype(np.int32)

        validation = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise TypeError(
                    "`validation_data` must be a tuple (X_val, y_val). "
                    f"Received: {type(validation_data).__name__}."
                )
            X_val = self._validate_X(validation_data[0])
            y_val = np.asarray(validation_data[1]).ravel()
            if len(y_val) != len(X_val):
                raise ValueError(
                    "`validation_data` must hold as many labels as samples. "
                    f"Received: {len(X_val)} samples and {len(y_val)} labels."
                )
            validation = (X_val, self._encode(y_val, "validation_data"))

        keras = _import_keras()
        if self.random_state is not None:
            keras.utils.set_random_seed(int(self.random_state))
        layers = [keras.Input(shape=self.feature_shape_)]
        if len(self.feature_shape_) > 1:
            layers.append(keras.layers.Flatten())
        for units in hidden_units:
            layers.append(keras.layers.Dense(units, activation="relu"))
            if self.dropout > 0:
                layers.append(keras.layers.Dropout(float(self.dropout)))
        layers.append(keras.layers.Dense(len(self.classes_), activation="softmax"))
        model = keras.Sequential(layers, name="dense_head")
        model.compile(
            optimizer=keras.optimizers.get(
                {
                    "class_name": self.optimizer.lower(),
                    "config": {"learning_rate": float(self.learning_rate)},
                }
            ),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        history = model.fit(
            X,
            y_index,
            sample_weight=self._sample_weight(y_index),
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            validation_data=validation,
            callbacks=self._callbacks(keras, validation is not None, callbacks_dir),
            verbose=self.verbose,
        )
        self.model_ = model
        self.history_ = {
            key: [float(v) for v in history.history[key]]
            for key in ("loss", "accuracy", "val_loss", "val_accuracy")
            if key in history.history
        }
        return self

    def _callbacks(self, keras, has_validation: bool, callbacks_dir) -> list:
        callbacks = []
        if has_validation and self.early_stopping_patience is not None:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=int(self.early_stopping_patience),
                    restore_best_weights=True,
                )
            )
        if callbacks_dir is not None:
            folder = Path(callbacks_dir)
            folder.mkdir(parents=True, exist_ok=True)
            callbacks.append(
                keras.callbacks.ModelCheckpoint(
                    str(folder / "best.keras"),
                    monitor="val_loss" if has_validation else "loss",
                    save_best_only=True,
                )
            )
            # Keras writes TensorBoard events through `tensorflow.summary` (which
            # needs the `tensorboard` package) on every backend; look for both
            # without importing them.
            missing = [p for p in _TENSORBOARD_NEEDS if importlib.util.find_spec(p) is None]
            if not missing:
                callbacks.append(keras.callbacks.TensorBoard(log_dir=str(folder / "logs")))
            else:
                warnings.warn(
                    "TensorBoard logs need the packages "
                    f"{', '.join(_TENSORBOARD_NEEDS)}; not installed: {', '.join(missing)}. "
                    f"No logs are written to {folder / 'logs'}.",
                    stacklevel=3,
                )
        return callbacks

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape `(n_samples, n_classes)`, rows sum to 1."""
        check_is_fitted(self)
        X = self._validate_X(X)
        keras = _import_keras()
        chunks = [
            keras.ops.convert_to_numpy(self.model_(X[i : i + _PREDICT_CHUNK], training=False))
            for i in range(0, len(X), _PREDICT_CHUNK)
        ]
        proba = np.concatenate(chunks).astype(np.float64)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Predicted class labels, shape `(n_samples,)`."""
        check_is_fitted(self)
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def save_keras(self, path) -> None:
        """Write the trained network as a plain `.keras` file.

        Args:
            path: str or Path ending in `.keras`. The file is written to a
                temporary name in the same folder, then moved into place.
        """
        check_is_fitted(self)
        path = Path(path)
        if path.suffix != ".keras":
            raise ValueError(f"`path` must end with '.keras'. Received: path={str(path)!r}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".keras", dir=path.parent)
        os.close(fd)
        try:
            self.model_.save(tmp)
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    # -- pickling ---------------------------------------------------------
    # A Keras model does not pickle on every backend, so the fitted network
    # travels as the bytes of a `.keras` file (architecture, weights and
    # optimizer state, backend-independent).

    def __getstate__(self):
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:
            with tempfile.TemporaryDirectory() as folder:
                file = Path(folder) / "model.keras"
                model.save(file)
                state["_keras_model_bytes"] = file.read_bytes()
        return state

    def __setstate__(self, state):
        state = dict(state)
        data = state.pop("_keras_model_bytes", None)
        super().__setstate__(state)
        if data is not None:
            keras = _import_keras()
            with tempfile.TemporaryDirectory() as folder:
                file = Path(folder) / "model.keras"
                file.write_bytes(data)
                self.model_ = keras.saving.load_model(file)


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeadCfg:
    """One row of `HEADS`.

    Attributes:
        name: str, the registry name.
        factory: callable returning the bare estimator (before scaling and
            parameters are applied).
        default_params: read-only mapping of parameters applied on creation,
            with plain names (see `create_head`).
        description: str, one line for `bottleneck list`.
        needs_scaling: bool, whether `create_head` puts a `StandardScaler`
            before the estimator (as step `"scale"`; the estimator is step
            `"clf"`).
        proba: str, how `predict_proba` is produced: `"native"`,
            `"softmax"` (network output) or `"calibrated"`
            (`CalibratedClassifierCV` on the decision function).
        uses_keras: bool, whether the head needs Keras.
    """

    name: str
    factory: Callable[[], Any]
    default_params: Mapping[str, Any]
    description: str
    needs_scaling: bool = False
    proba: str = "native"
    uses_keras: bool = False


def _calibrated(estimator) -> Callable[[], CalibratedClassifierCV]:
    # Probabilities for margin classifiers (SVMs, ridge) come from
    # CalibratedClassifierCV(ensemble=False): sigmoid (Platt) calibration
    # fitted on cross-validated decision values, then the base estimator
    # refitted once on all data. This is what scikit-learn >= 1.9 recommends
    # in place of the deprecated SVC(probability=True) (the same Platt scaling,
    # done inside libsvm, whose predict could disagree with the argmax of its
    # predict_proba), and it serves LinearSVC and RidgeClassifier, which have
    # no probability option, the same way. A softmax of raw margins
    # would be cheaper but uncalibrated (ridge margins live near [-1, 1], so
    # rows come out almost uniform and log loss is meaningless). Here predict
    # is the argmax of predict_proba, so both always agree. Cost: `cv` + 1
    # fits of the base estimator.
    return lambda: CalibratedClassifierCV(estimator(), method="sigmoid", ensemble=False)


def _rows(*rows: HeadCfg) -> dict[str, HeadCfg]:
    return {row.name: row for row in rows}


def _frozen(**params) -> Mapping[str, Any]:
    return types.MappingProxyType(params)


HEADS: Mapping[str, HeadCfg] = types.MappingProxyType(
    _rows(
        HeadCfg(
            name="dense",
            factory=DenseClassifier,
            default_params=_frozen(),
            description="Keras Dense(256, relu) -> Dropout(0.5) -> softmax, Adam 1e-4, 30 epochs.",
            proba="softmax",
            uses_keras=True,
        ),
        HeadCfg(
            name="logreg",
            factory=LogisticRegression,
            default_params=_frozen(C=1.0, max_iter=1000),
            description="Multinomial logistic regression (lbfgs) on standardised features.",
            needs_scaling=True,
        ),
        HeadCfg(
            name="linear_svm",
            factory=_calibrated(LinearSVC),
            default_params=_frozen(C=1.0, max_iter=5000, random_state=0, cv=3),
            description="Linear SVM (one-vs-rest), sigmoid-calibrated probabilities.",
            needs_scaling=True,
            proba="calibrated",
        ),
        HeadCfg(
            name="svm_rbf",
            factory=_calibrated(SVC),
            default_params=_frozen(C=1.0, kernel="rbf", gamma="scale", cv=3),
            description="RBF-kernel SVM, sigmoid-calibrated probabilities.",
            needs_scaling=True,
            proba="calibrated",
        ),
        HeadCfg(
            name="knn",
            factory=KNeighborsClassifier,
            default_params=_frozen(n_neighbors=5),
            description="k-nearest neighbours on standardised features.",
            needs_scaling=True,
        ),
        HeadCfg(
            name="random_forest",
            factory=RandomForestClassifier,
            default_params=_frozen(n_estimators=200, random_state=0),
            description="Random forest of 200 trees.",
        ),
        HeadCfg(
            name="hist_gb",
            factory=HistGradientBoostingClassifier,
            default_params=_frozen(random_state=0),
            description="Histogram gradient boosting (early stopping above 10k samples).",
        ),
        HeadCfg(
            name="ridge",
            factory=_calibrated(RidgeClassifier),
            default_params=_frozen(alpha=1.0, cv=3),
            description="Ridge classifier, sigmoid-calibrated probabilities.",
            needs_scaling=True,
            proba="calibrated",
        ),
    )
)

_PARAMS_DOC = """params: keyword arguments for the estimator. Plain names (`C`,
            `n_neighbors`) reach the classifier wherever it sits inside the
            head (`C` of the `logreg` row sets `clf__C`; of `svm_rbf`,
            `clf__estimator__C`); a name found at several depths sets the
            deepest (the classifier's) one. scikit-learn's `step__param`
            keys are accepted as well. They override the row's
            `default_params`; `None` is passed on as a value (drop unset CLI
            options before calling)."""


def list_heads(pattern: str = "") -> list[str]:
    """Sorted names of the registry heads, optionally filtered.

    Args:
        pattern: str, an `fnmatch` pattern such as `"*svm*"`; `""` lists
            all heads. Defaults to `""`.

    Returns:
        Sorted list of head names.
    """
    names = sorted(HEADS)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def get_head_cfg(name: str) -> HeadCfg:
    """The `HeadCfg` row of a registry head.

    Args:
        name: str, one of `list_heads()`.

    Returns:
        The frozen `HeadCfg`.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str. Received: {type(name).__name__}.")
    try:
        return HEADS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(HEADS), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown head {name!r}.{hint} Valid heads: {', '.join(list_heads())}; "
            "or an import path 'module:Class' of a scikit-learn estimator."
        ) from None


def create_head(name: str, **params):
    """Build an unfitted head by registry name or import path.

    Args:
        name: str, one of `list_heads()`, or the import path of any
            scikit-learn-style estimator class as `"module:Class"` (for
            example `"sklearn.neighbors:NearestCentroid"`); such an
            estimator is used as is (no scaling, no default parameters).
        {params}

    Returns:
        A scikit-learn estimator (a `Pipeline(scale, clf)` for rows with
        `needs_scaling`).

    Example:

    ```python
    head = create_head("logreg", C=0.5)          # sets clf__C
    head = create_head("svm_rbf", C=10, cv=5)    # clf__estimator__C, clf__cv
    head = create_head("dense", hidden_units=(512, 256), epochs=10)
    head = create_head("sklearn.neighbors:NearestCentroid")
    ```
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str. Received: {type(name).__name__}.")
    if ":" in name:
        cls = _import_class(name)
        if not hasattr(cls, "set_params"):
            try:
                return cls(**params)
            except TypeError as err:
                raise ValueError(f"Cannot build head {name!r} with {params!r}: {err}") from err
        estimator = cls()
        defaults: Mapping[str, Any] = {}
    else:
        cfg = get_head_cfg(name)
        estimator = cfg.factory()
        if cfg.needs_scaling:
            estimator = Pipeline([("scale", StandardScaler()), ("clf", estimator)])
        defaults = cfg.default_params
    resolved: dict[str, Any] = {}
    for source in (defaults, params):
        for key, value in source.items():
            resolved[_resolve_param(estimator, key, name)] = value
    return estimator.set_params(**resolved) if resolved else estimator


if create_head.__doc__:
    create_head.__doc__ = create_head.__doc__.replace("{params}", _PARAMS_DOC)


def _resolve_param(estimator, key: str, head: str) -> str:
    """Map a plain parameter name to the estimator's `step__param` key."""
    valid = estimator.get_params(deep=True)
    if "__" in key and key in valid:
        return key
    matches = [k for k in valid if k == key or k.endswith("__" + key)]
    if matches:
        depth = max(m.count("__") for m in matches)
        deepest = [m for m in matches if m.count("__") == depth]
        if len(deepest) == 1:
            return deepest[0]
        raise ValueError(
            f"Parameter {key!r} of head {head!r} is ambiguous: it matches "
            f"{', '.join(deepest)}. Pass one of these full names instead."
        )
    plain = sorted({k.rsplit("__", 1)[-1] for k in valid})
    close = difflib.get_close_matches(key, plain, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown parameter {key!r} for head {head!r}.{hint} "
        f"Valid parameters: {', '.join(plain)} (scikit-learn's step__param keys "
        "are accepted too)."
    )


def _import_class(path: str) -> type:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(
            "An import-path head must look like 'module:Class', e.g. "
            f"'sklearn.neighbors:NearestCentroid'. Received: {path!r}."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"Cannot import module {module_name!r} for head {path!r}: {err}") from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"Module {module_name!r} has no attribute {attr!r} (head {path!r})."
            ) from None
    if not isinstance(obj, type) or not all(
        callable(getattr(obj, m, None)) for m in ("fit", "predict")
    ):
        raise TypeError(
            f"Head {path!r} must be a scikit-learn-style estimator class with "
            f"`fit` and `predict` methods. Received: {obj!r}."
        )
    return obj


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_param(text: str) -> tuple[str, Any]:
    """Parse one CLI `--param key=value` string.

    The value is read as a Python literal when it is one (`0.5`, `200`,
    `(512, 256)`, `None`, `True`, `'a b'`), and kept as a string otherwise
    (`balanced`, `sqrt`).

    Args:
        text: str of the form `key=value`; the key is a parameter name,
            plain (`C`) or scikit-learn's `step__param` (`clf__C`).

    Returns:
        Tuple `(key, value)`.

    Example:

    ```python
    parse_param("C=0.5")                   # ("C", 0.5)
    parse_param("hidden_units=(512,256)")  # ("hidden_units", (512, 256))
    parse_param("class_weight=balanced")   # ("class_weight", "balanced")
    ```
    """
    if not isinstance(text, str):
        raise TypeError(f"`--param` must be a str. Received: {type(text).__name__}.")
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ValueError(
            "`--param` must look like key=value with a parameter name as key, "
            f"e.g. C=0.5. Received: {text!r}."
        )
    raw = raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = raw
    return key, value


# --------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------

_FORMAT = "bottleneck-head"
_FORMAT_VERSION = 1


class HeadVersionWarning(UserWarning):
    """A loaded head was saved with other library versions than the running ones."""


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _uses_keras(estimator) -> bool:
    if isinstance(estimator, DenseClassifier):
        return True
    get_params = getattr(estimator, "get_params", None)
    if get_params is None:
        return False
    return any(isinstance(v, DenseClassifier) for v in get_params(deep=True).values())


def _versions(include_keras: bool) -> dict[str, str]:
    # Read from package metadata, so that recording the Keras version never
    # imports Keras.
    versions = {
        "python": platform.python_version(),
        "bottleneck": _package_version("bottleneck"),
        "sklearn": _package_version("scikit-learn"),
        "numpy": np.__version__,
    }
    if include_keras:
        versions["keras"] = _package_version("keras")
    return versions


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def save_head(path, estimator, *, metadata: dict) -> str:
    """Save a fitted head with its metadata and library versions.

    Writes `joblib.dump({"estimator", "metadata", "versions", ...})` to a
    temporary file in the target folder and moves it into place, so a crash
    never leaves a partial file under `path`.

    Args:
        path: str or Path of the file to write (conventionally `.joblib`).
        estimator: the fitted head.
        metadata: dict, JSON-like facts about the head, such as
            `class_names`, `backbone` and `feature_key`.

    Returns:
        The sha256 hex digest of the written file; pass it to `load_head`
        as `expected_sha256`.
    """
    if not isinstance(metadata, dict):
        raise TypeError(f"`metadata` must be a dict. Received: {type(metadata).__name__}.")
    if not callable(getattr(estimator, "predict", None)):
        raise TypeError(f"`estimator` must have a `predict` method. Received: {estimator!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "estimator": estimator,
        "metadata": metadata,
        "versions": _versions(include_keras=_uses_keras(estimator)),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            joblib.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return digest


def load_head(path, *, expected_sha256: str | None = None) -> tuple[Any, dict]:
    """Load a head written by `save_head`.

    joblib runs code while loading, so only load files you trust. With
    `expected_sha256`, the file's bytes are hashed and compared *before*
    anything is unpickled, and the very bytes that were checked are loaded.

    Args:
        path: str or Path of the file.
        expected_sha256: str or `None`, the hex digest `save_head` returned.
            A mismatch raises `ValueError`. Defaults to `None` (no check).

    Returns:
        Tuple `(estimator, metadata)`.

    Warns:
        HeadVersionWarning: when the recorded library versions (Python by
            major.minor) differ from the running ones.
    """
    path = Path(path)
    data = path.read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != str(expected_sha256).strip().lower():
            raise ValueError(
                f"Refusing to load head file {str(path)!r}: its sha256 is {actual}, "
                f"expected {expected_sha256}. The file changed since it was saved "
                "(or the wrong file was given); it was not unpickled."
            )
    payload = joblib.load(io.BytesIO(data))
    if not (
        isinstance(payload, dict)
        and payload.get("format") == _FORMAT
        and {"estimator", "metadata", "versions"} <= set(payload)
    ):
        raise ValueError(
            f"{str(path)!r} is not a head file written by save_head "
            "(expected a dict with 'estimator', 'metadata' and 'versions')."
        )
    recorded = payload["versions"]
    running = _versions(include_keras="keras" in recorded)
    differ = [
        f"{lib} {recorded[lib]} (running {running[lib]})"
        for lib in recorded
        if lib in running and _comparable(lib, recorded[lib]) != _comparable(lib, running[lib])
    ]
    if differ:
        warnings.warn(
            f"Head file {str(path)!r} was saved with other library versions: "
            f"{', '.join(differ)}. Predictions may differ; refit the head if they do.",
            HeadVersionWarning,
            stacklevel=2,
        )
    return payload["estimator"], payload["metadata"]


def _comparable(lib: str, version: str) -> str:
    # Python patch releases do not change pickles; compare major.minor only.
    return ".".join(version.split(".")[:2]) if lib == "python" else version
