"""Tests for pipeline.heads: the HEADS registry, DenseClassifier and head files."""

import dataclasses
import hashlib
import importlib.util
import os
import pickle
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from pipeline import heads
from pipeline.errors import ConfigError, RunError
from pipeline.heads import persist
from pipeline.heads import (
    HEADS,
    DenseClassifier,
    HeadCfg,
    HeadVersionWarning,
    create_head,
    get_head_cfg,
    list_heads,
    load_head,
    parse_param,
    save_head,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED_HEADS = [
    "dense",
    "dense_small_lr",
    "hist_gb",
    "knn",
    "linear_svm",
    "logreg",
    "random_forest",
    "ridge",
    "svm_nystroem",
    "svm_rbf",
]



@pytest.fixture(autouse=True)
def _one_native_thread():
    # On a busy 2-core machine, spin-waiting OpenMP/BLAS threads make hist_gb
    # ~25x slower (44 s instead of 1.7 s for one fit); one thread keeps the
    # timings stable. Keras' own thread pools are not affected.
    with threadpool_limits(limits=1):
        yield


# --------------------------------------------------------------------------
# scikit-learn's estimator checks over every registry head
# --------------------------------------------------------------------------

# Cheap settings for the check instances (the checks fit dozens of times).
CHECK_PARAMS = {
    # SGD: its update traces in half the time of Adam's, and tracing is most of a small fit.
    "dense": dict(hidden_units=(16,), dropout=0.0, optimizer="sgd", learning_rate=0.3, epochs=3, batch_size=32),
    "hist_gb": dict(max_iter=10),
    "random_forest": dict(n_estimators=10),
}
CHECK_INSTANCES = {name: create_head(name, **CHECK_PARAMS.get(name, {})) for name in list_heads()}

_PIPELINE = "Pipeline changes its `steps` parameter during fit (it fits the steps in place)."
XFAIL_PIPELINE = {  # as in scikit-learn's own PER_ESTIMATOR_XFAIL_CHECKS[Pipeline]
    "check_dont_overwrite_parameters": _PIPELINE,
    "check_estimators_overwrite_params": _PIPELINE,
}
XFAIL_CALIBRATED = {
    "check_supervised_y_2d": (
        "CalibratedClassifierCV(ensemble=False) raises IndexError on a column-vector y "
        "in scikit-learn 1.9 (upstream; 1-d y works)."
    ),
}
_WEIGHTS = "sample_weight is not equivalent to removing/repeating samples."
XFAIL_BY_HEAD = {
    # Same reasons as scikit-learn's PER_ESTIMATOR_XFAIL_CHECKS for these classes.
    "random_forest": {
        "check_sample_weight_equivalence_on_dense_data": _WEIGHTS,
        "check_sample_weight_equivalence_on_sparse_data": _WEIGHTS,
    },
    # On dense data, 10 boosting iterations give equal results either way.
    "hist_gb": {"check_sample_weight_equivalence_on_sparse_data": _WEIGHTS},
    "ridge": {
        "check_classifiers_one_label": (
            "CalibratedClassifierCV(RidgeClassifier()) fails on a single class with "
            "'y should be a 1d array, got an array of shape ()' (upstream), which does "
            "not name the cause."
        ),
    },
}


def _expected_failed_checks(estimator):
    name = next(n for n, e in CHECK_INSTANCES.items() if e is estimator)
    cfg = get_head_cfg(name)
    failed = {}
    if cfg.needs_scaling:
        failed.update(XFAIL_PIPELINE)
    if cfg.proba == "calibrated":
        failed.update(XFAIL_CALIBRATED)
    failed.update(XFAIL_BY_HEAD.get(name, {}))
    return failed


# The Keras rows share one class: `test_dense_sklearn_compatible` checks it once.
@parametrize_with_checks(
    [est for name, est in CHECK_INSTANCES.items() if not get_head_cfg(name).uses_keras],
    expected_failed_checks=_expected_failed_checks,
)
@pytest.mark.slow
def test_sklearn_compatible(estimator, check):
    check(estimator)


# Each check refits the network (~90 Keras fits, ~35 s), hence `slow`. Two
# repeats of check_classifiers_train (12 fits) are skipped: they only change
# the input to a read-only memmap (float64 / float32), which dense's
# check_readonly_memmap_input, check_estimators_pickle(readonly_memmap=True)
# and check_estimators_dtypes already feed it.
DENSE_SKIPPED = ("check_classifiers_train(readonly_memmap=True",)
DENSE_ROUNDING = ("check_methods_sample_order_invariance", "check_methods_subset_invariance")
DENSE_ROUNDING_REASON = (
    "float32 network: the row order/subset changes the matmul blocking, so "
    "probabilities move by ~1e-7 relative (float32 rounding; labels unaffected)."
)


@pytest.mark.slow
@parametrize_with_checks([CHECK_INSTANCES["dense"]], expected_failed_checks=_expected_failed_checks)
def test_dense_sklearn_compatible(estimator, check, request):
    if any(skipped in request.node.name for skipped in DENSE_SKIPPED):
        pytest.skip("read-only memmap repeat of check_classifiers_train; see DENSE_SKIPPED")
    if any(name in request.node.name for name in DENSE_ROUNDING):
        # Not strict: whether float32 rounding moves a probability depends on the
        # BLAS blocking of this machine, so the check passes on some and fails on others.
        request.applymarker(pytest.mark.xfail(strict=False, reason=DENSE_ROUNDING_REASON))
    check(estimator)


# --------------------------------------------------------------------------
# Every head learns
# --------------------------------------------------------------------------

FAST_PARAMS = {
    "dense": dict(learning_rate=1e-2, epochs=8),
    "hist_gb": dict(max_iter=30),
    "random_forest": dict(n_estimators=50),
}
N_CLASSES = 10


@pytest.fixture(scope="module")
def problem():
    X, y = make_classification(
        n_samples=500,
        n_features=64,
        n_informative=16,
        n_classes=N_CLASSES,
        n_clusters_per_class=1,
        class_sep=2.0,
        random_state=0,
    )
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def fitted(problem):
    """Heads fitted on `problem`, by name, fitted once per module."""
    X_train, _, y_train, _ = problem
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = create_head(name, **FAST_PARAMS.get(name, {})).fit(X_train, y_train)
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", list_heads())
def test_head_learns_separable_problem(name, problem, fitted):
    _, X_test, _, y_test = problem
    head = fitted(name)
    proba = head.predict_proba(X_test)
    assert proba.shape == (len(X_test), N_CLASSES)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(proba >= 0)
    assert np.array_equal(head.classes_, np.arange(N_CLASSES))
    accuracy = np.mean(head.predict(X_test) == y_test)
    assert accuracy >= 0.5, f"{name}: accuracy {accuracy:.2f} (chance is 0.10)"


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


def test_list_heads():
    assert list_heads() == EXPECTED_HEADS == sorted(HEADS)
    with pytest.raises(TypeError):
        HEADS["mine"] = HEADS["logreg"]  # the table is read-only
    assert list_heads("*svm*") == ["linear_svm", "svm_nystroem", "svm_rbf"]
    assert list_heads("nothing*") == []


@pytest.mark.parametrize("name", list_heads())
def test_rows_are_frozen_and_consistent(name):
    cfg = get_head_cfg(name)
    assert isinstance(cfg, HeadCfg) and cfg.name == name and cfg.description
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"
    with pytest.raises(TypeError):
        cfg.default_params["x"] = 1
    head = create_head(name)
    if cfg.needs_scaling:
        assert isinstance(head, Pipeline)
        assert isinstance(head.steps[0][1], StandardScaler)
    else:
        assert not isinstance(head, Pipeline)
    assert hasattr(head, "predict_proba")
    assert cfg.uses_keras == isinstance(head, DenseClassifier) == name.startswith("dense")


def test_dense_row_shows_the_estimators_own_defaults():
    # `bottleneck list --heads` prints `default_params`: it must not print `{}` for dense.
    shown = get_head_cfg("dense").default_params
    assert {"learning_rate", "epochs", "early_stopping_patience", "hidden_units"} <= set(shown)
    assert shown.items() <= DenseClassifier().get_params().items()


def test_dense_small_lr_row_has_the_tutorial_settings_and_answers_to_its_old_name():
    # ../shared/seeds/003: Dense(256, relu) -> Dropout(0.5) -> Dense, Adam(learning_rate=1e-4),
    # epochs=30, batch_size=64, validation_data only watched (no early stopping).
    cfg = get_head_cfg("dense_small_lr")
    head = create_head("dense_small_lr")
    assert get_head_cfg("dense_seed003") is cfg and "dense_seed003" not in list_heads()
    assert "seed" not in cfg.description.lower()
    assert isinstance(head, DenseClassifier) and cfg.uses_keras and cfg.proba == "softmax"
    seed = dict(hidden_units=(256,), dropout=0.5, optimizer="adam", learning_rate=1e-4, epochs=30,
                batch_size=64, early_stopping_patience=None)
    assert dict(cfg.default_params) == seed
    assert head.get_params().items() >= seed.items()
    assert "30 epochs" in cfg.description and "1e-4" in cfg.description


def test_unknown_head_lists_valid_names_and_close_matches():
    with pytest.raises(ConfigError, match="Did you mean 'logreg'") as info:
        create_head("logreg2")
    for name in EXPECTED_HEADS:
        assert name in str(info.value)
    assert info.value.field == "heads"
    with pytest.raises(ConfigError, match="svm_rbf"):
        get_head_cfg("svm-rbf")
    with pytest.raises(TypeError, match="`name` must be a str"):
        create_head(3)


def test_unknown_param_names_param_head_and_valid_params():
    with pytest.raises(ConfigError) as info:
        create_head("logreg", CC=1.0)
    assert info.value.field == "params"
    message = str(info.value)
    assert "'CC'" in message and "'logreg'" in message
    assert "Did you mean 'C'" in message
    assert "max_iter" in message and "class_weight" in message
    with pytest.raises(ConfigError, match="'hidden_unit'.*'dense'.*hidden_units"):
        create_head("dense", hidden_unit=(8,))


def test_plain_param_names_reach_the_classifier():
    assert create_head("logreg", C=0.5).get_params()["clf__C"] == 0.5
    assert create_head("logreg", clf__C=0.25).get_params()["clf__C"] == 0.25
    assert create_head("logreg").get_params()["clf__max_iter"] == 1000  # row default
    svm = create_head("svm_rbf", C=10, estimator__gamma=0.1, cv=5).get_params()
    assert (svm["clf__estimator__C"], svm["clf__estimator__gamma"], svm["clf__cv"]) == (10, 0.1, 5)
    # A name at several depths sets the deepest one: the classifier's.
    logreg = create_head("logreg", verbose=1).get_params()
    assert logreg["clf__verbose"] == 1 and logreg["verbose"] is False
    assert create_head("knn", with_mean=False).get_params()["scale__with_mean"] is False
    assert create_head("random_forest", n_estimators=7).n_estimators == 7
    assert create_head("dense", hidden_units=(8, 4)).hidden_units == (8, 4)
    # None is a value, not "unset".
    assert create_head("random_forest", random_state=None).random_state is None


def test_import_path_heads(problem):
    X_train, X_test, y_train, y_test = problem
    head = create_head("sklearn.neighbors:NearestCentroid", shrink_threshold=0.1)
    assert head.shrink_threshold == 0.1
    assert np.mean(head.fit(X_train, y_train).predict(X_test) == y_test) >= 0.5
    for name, match in [
        ("no_such_module:Thing", "Cannot import module 'no_such_module'"),
        ("sklearn.neighbors:Nope", "has no attribute 'Nope'"),
        ("sklearn.neighbors:", "'module:Class'"),
        ("sklearn.preprocessing:StandardScaler", "`fit` and `predict`"),
        ("os.path:join", "`fit` and `predict`"),
    ]:
        with pytest.raises(ConfigError, match=match) as info:
            create_head(name)
        assert info.value.field == "heads"
    with pytest.raises(ConfigError, match="'shrink'.*shrink_threshold") as info:
        create_head("sklearn.neighbors:NearestCentroid", shrink=0.1)
    assert info.value.field == "params"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("C=0.5", ("C", 0.5)),
        ("max_iter=200", ("max_iter", 200)),
        ("layers=(512,256)", ("layers", (512, 256))),
        ("class_weight=balanced", ("class_weight", "balanced")),
        ("max_features=sqrt", ("max_features", "sqrt")),
        ("random_state=None", ("random_state", None)),
        ("fit_intercept=False", ("fit_intercept", False)),
        ("clf__C=1e-3", ("clf__C", 0.001)),
        (" C = 2 ", ("C", 2)),
        ("name='a b'", ("name", "a b")),
        ("expr=a=b", ("expr", "a=b")),
        ("empty=", ("empty", "")),
    ],
)
def test_parse_param(text, expected):
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["C", "=1", "1C=2", "a-b=1", ""])
def test_parse_param_rejects_malformed(text):
    with pytest.raises(ConfigError, match="`params` entry must look like key=value") as info:
        parse_param(text)
    assert info.value.field == "params" and "--param" not in str(info.value)


def test_parse_param_feeds_create_head():
    head = create_head("logreg", **dict(map(parse_param, ["C=0.5", "class_weight=balanced"])))
    assert head.get_params()["clf__C"] == 0.5
    assert head.get_params()["clf__class_weight"] == "balanced"


# --------------------------------------------------------------------------
# DenseClassifier
# --------------------------------------------------------------------------

SMALL_DENSE = dict(hidden_units=(16,), learning_rate=1e-2, epochs=3, batch_size=32)


def test_dense_defaults_train_to_convergence():
    # Seed 003's network, but Adam 1e-3 with early stopping under a generous
    # cap instead of its fixed 30 epochs at 1e-4 (see `dense_seed003`).
    params = DenseClassifier().get_params()
    assert params == {
        "hidden_units": (256,),
        "dropout": 0.5,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "epochs": 200,
        "batch_size": 64,
        "class_weight": None,
        "early_stopping_patience": 10,
        "random_state": 0,
        "verbose": 0,
        "feature_transform": "standard",
    }


def test_dense_fit_sets_attributes_and_history(problem, fitted):
    head = fitted("dense")
    assert head.n_features_in_ == 64 and head.feature_shape_ == (64,)
    assert set(head.history_) == {"loss", "accuracy"}
    assert len(head.history_["loss"]) == FAST_PARAMS["dense"]["epochs"] == head.epochs_run_
    assert head.best_epoch_ == int(np.argmin(head.history_["loss"])) + 1
    assert all(isinstance(v, float) for v in head.history_["loss"])
    with pytest.raises(ValueError, match="X has 3 features, but DenseClassifier is expecting 64"):
        head.predict(np.zeros((2, 3)))


@pytest.mark.slow
def test_dense_is_deterministic(problem):
    X_train, X_test, y_train, _ = problem
    first = DenseClassifier(**SMALL_DENSE).fit(X_train, y_train).predict_proba(X_test)
    second = DenseClassifier(**SMALL_DENSE).fit(X_train, y_train).predict_proba(X_test)
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_dense_spatial_input_binary_balanced():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 2, 2, 8)).astype(np.float32)
    y = np.where(np.arange(80) < 60, "cat", "dog")
    X[y == "dog"] += 1.0
    head = DenseClassifier(**SMALL_DENSE, class_weight="balanced").fit(X, y)
    assert head.feature_shape_ == (2, 2, 8) and head.n_features_in_ == 32
    assert [type(layer).__name__ for layer in head.model_.layers][:2] == ["InputLayer", "Flatten"]
    proba = head.predict_proba(X)
    assert proba.shape == (80, 2)  # two classes: softmax over 2 units
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert set(head.predict(X)) <= {"cat", "dog"}
    with pytest.raises(ValueError, match=r"shape \(4, 8\).*\(2, 2, 8\)"):
        head.predict(np.zeros((3, 4, 8)))


HAS_TENSORBOARD = all(importlib.util.find_spec(p) for p in ("tensorflow", "tensorboard"))


@pytest.mark.slow
def test_dense_early_stopping_and_callbacks_dir(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 16))
    y = rng.integers(0, 3, size=200)  # pure noise: val_loss soon stops improving
    X_val, y_val = X[150:], y[150:]
    head = DenseClassifier(
        hidden_units=(64,), dropout=0.0, learning_rate=3e-2, epochs=40, early_stopping_patience=2
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head.fit(X[:150], y[:150], validation_data=(X_val, y_val), callbacks_dir=tmp_path)
    no_logs = [w for w in caught if "TensorBoard logs need" in str(w.message)]
    history = head.history_
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) < 40, "early stopping did not stop"
    assert head.epochs_run_ == len(history["loss"]) == head.best_epoch_ + 2  # patience 2
    assert head.best_epoch_ == int(np.argmin(history["val_loss"])) + 1
    # The best weights were restored: the model's validation loss is the best epoch's.
    best = min(history["val_loss"])
    assert log_loss(y_val, head.predict_proba(X_val)) == pytest.approx(best, rel=1e-3)
    assert (tmp_path / "best.keras").is_file()
    if HAS_TENSORBOARD:
        assert list((tmp_path / "logs").rglob("events.out.tfevents*"))
        assert not no_logs
    else:  # TensorFlow 2.21 no longer installs tensorboard: say so, write no logs
        assert no_logs and not (tmp_path / "logs").exists()

    import keras

    checkpoint = keras.saving.load_model(tmp_path / "best.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(checkpoint(X_val.astype(np.float32))),
        head.predict_proba(X_val),
        atol=1e-5,
    )


@pytest.mark.slow
def test_dense_without_validation_data_stops_on_the_training_loss():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(200, 16)), rng.integers(0, 3, size=200)
    # Dropout at a high learning rate makes the training loss stall at once.
    head = DenseClassifier(hidden_units=(8,), learning_rate=1e-1, epochs=100, early_stopping_patience=2).fit(X, y)
    assert set(head.history_) == {"loss", "accuracy"}
    assert head.epochs_run_ == len(head.history_["loss"]) == head.best_epoch_ + 2 < 100
    assert head.best_epoch_ == int(np.argmin(head.history_["loss"])) + 1


@pytest.mark.slow
def test_dense_best_epoch_is_the_last_when_the_cap_stops_a_falling_loss():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(200, 16)), rng.integers(0, 3, size=200)
    head = DenseClassifier(hidden_units=(16,), learning_rate=1e-4, epochs=3)
    head.fit(X[:150], y[:150], validation_data=(X[150:], y[150:]))
    assert np.all(np.diff(head.history_["val_loss"]) < 0)
    assert head.best_epoch_ == head.epochs_run_ == 3
    no_stopping = DenseClassifier(hidden_units=(8,), learning_rate=1e-1, epochs=12, early_stopping_patience=None)
    no_stopping.fit(X, y)  # the stalled loss above, but nothing stops it
    assert no_stopping.epochs_run_ == 12 and no_stopping.best_epoch_ < 12


@pytest.mark.slow
def test_dense_best_epoch_is_never_a_diverged_one():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(200, 16)), rng.integers(0, 3, size=200)
    head = DenseClassifier(hidden_units=(16,), optimizer="sgd", learning_rate=1e6, epochs=4)
    head.fit(X[:150], y[:150], validation_data=(X[150:], y[150:]))
    assert np.isnan(head.history_["val_loss"][1:]).all()  # diverged after epoch 1
    assert head.best_epoch_ == 1


def test_dense_validates_params_and_validation_data():
    X, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ConfigError, match=r"`dropout` must be a float in \[0, 1\). Received: dropout=1.5"):
        DenseClassifier(dropout=1.5).fit(X, y)
    with pytest.raises(ConfigError, match="`optimizer` must be one of"):
        DenseClassifier(optimizer="adamm").fit(X, y)
    with pytest.raises(ConfigError, match="`hidden_units` must be"):
        DenseClassifier(hidden_units=(0,)).fit(X, y)
    with pytest.raises(ValueError, match=r"validation_data has labels not seen in y: \[7\]"):
        DenseClassifier().fit(X, y, validation_data=(X, [0, 1, 7, 1]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        DenseClassifier().fit(X, np.zeros(4))


def test_dense_save_keras_and_pickle(problem, fitted, tmp_path):
    _, X_test, _, _ = problem
    head = fitted("dense")
    expected = head.predict_proba(X_test)
    head.save_keras(tmp_path / "model.keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
    with pytest.raises(ValueError, match=r"must end with '\.keras'"):
        head.save_keras(tmp_path / "model.h5")
    clone = pickle.loads(pickle.dumps(head))
    np.testing.assert_array_equal(clone.predict_proba(X_test), expected)
    assert clone.history_ == head.history_


# --------------------------------------------------------------------------
# save_head / load_head
# --------------------------------------------------------------------------

METADATA = {"class_names": [f"c{i}" for i in range(N_CLASSES)], "backbone": "vgg16", "feature_key": "abc"}


@pytest.mark.parametrize("name", ["logreg", "svm_rbf", "dense"])
def test_save_load_round_trip(name, problem, fitted, tmp_path):
    _, X_test, _, _ = problem
    head = fitted(name)
    path = tmp_path / "head.joblib"
    digest = save_head(path, head, metadata=METADATA)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert os.listdir(tmp_path) == ["head.joblib"]  # no temp file left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, metadata = load_head(path, expected_sha256=digest)
    assert metadata == METADATA
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.predict(X_test), head.predict(X_test))
    versions = joblib.load(path)["versions"]
    assert {"python", "bottleneck-features", "sklearn", "numpy"} <= set(versions)
    assert ("keras" in versions) == (name == "dense")


def test_modified_file_is_refused_before_unpickling(problem, fitted, tmp_path):
    path = tmp_path / "head.joblib"
    digest = save_head(path, fitted("logreg"), metadata=METADATA)
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    joblib.dump({"estimator": Payload()}, path)
    with pytest.raises(RunError, match=r"Refusing to load head file .*head\.joblib.*sha256"):
        load_head(path, expected_sha256=digest)
    assert not marker.exists()


def test_version_mismatch_warns(problem, fitted, tmp_path, monkeypatch):
    path = tmp_path / "head.joblib"
    running = persist._versions(include_keras=False)
    monkeypatch.setattr(persist, "_versions", lambda include_keras: {**running, "sklearn": "0.0.1"})
    save_head(path, fitted("logreg"), metadata=METADATA)
    monkeypatch.undo()
    with pytest.warns(HeadVersionWarning, match=r"sklearn 0\.0\.1 \(running .*\)"):
        load_head(path)


def test_save_head_writes_a_world_readable_file(fitted, tmp_path):
    path = tmp_path / "head.joblib"
    old_umask = os.umask(0o077)  # a strict umask must not make the head private
    try:
        save_head(path, fitted("logreg"), metadata=METADATA)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_save_head_is_atomic(problem, fitted, tmp_path, monkeypatch):
    path = tmp_path / "head.joblib"

    def broken_dump(value, file):
        file.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(persist.joblib, "dump", broken_dump)
    with pytest.raises(KeyboardInterrupt):
        save_head(path, fitted("logreg"), metadata=METADATA)
    assert os.listdir(tmp_path) == []


def test_save_load_reject_bad_input(fitted, tmp_path):
    with pytest.raises(TypeError, match="`metadata` must be a dict"):
        save_head(tmp_path / "h.joblib", fitted("logreg"), metadata=["a"])
    joblib.dump({"something": "else"}, tmp_path / "other.joblib")
    with pytest.raises(RunError, match="not a head file written by save_head"):
        load_head(tmp_path / "other.joblib")


# --------------------------------------------------------------------------
# scikit-learn heads never need Keras or TensorFlow
# --------------------------------------------------------------------------

NO_KERAS = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("tensorflow", "keras"):
                raise ImportError(f"blocked by test: {name}")
            return None

    sys.meta_path.insert(0, Blocker())

    import numpy as np
    from pipeline.heads import create_head, load_head, save_head

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8))
    y = (X[:, 0] > 0).astype(int)
    head = create_head("logreg", C=0.5).fit(X, y)
    digest = save_head(sys.argv[1], head, metadata={"class_names": ["a", "b"]})
    loaded, metadata = load_head(sys.argv[1], expected_sha256=digest)
    assert (loaded.predict(X) == head.predict(X)).all()
    assert not {"keras", "tensorflow"} & set(sys.modules), sorted(sys.modules)
    print("HEADS-OK")

    try:
        import keras  # noqa: F401
    except ImportError:
        print("KERAS-BLOCKED")
    """
)


@pytest.mark.slow
def test_sklearn_heads_run_without_keras_and_tensorflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", NO_KERAS, str(tmp_path / "head.joblib")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "HEADS-OK" in result.stdout
    assert "KERAS-BLOCKED" in result.stdout, "the blocker does not block `import keras`"


HEADS_IMPORT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    import pipeline.heads

    for info in pkgutil.iter_modules(pipeline.heads.__path__):
        importlib.import_module(f"pipeline.heads.{info.name}")
    outside = ("keras", "tensorflow", "pipeline.features", "pipeline.runs", "pipeline.cli")
    print(json.dumps(sorted(m for m in sys.modules if m.startswith(outside))))
    """
)


@pytest.mark.slow
def test_importing_the_head_stage_loads_neither_keras_nor_another_stage():
    result = subprocess.run(
        [sys.executable, "-c", HEADS_IMPORT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert all(hasattr(heads, name) for name in heads.__all__)


def test_a_parameter_given_twice_is_refused_pointing_to_sweep():
    from pipeline.errors import ConfigError
    from pipeline.heads import parse_params

    with pytest.raises(ConfigError, match=r"sets 'C' twice \(0\.1, then 1\.0\).*sweep") as info:
        parse_params(["C=0.1", "C=1.0"])
    assert info.value.field == "params"
    assert parse_params(["C=0.1", "logreg.C=1.0"]) == {"C": 0.1, "logreg.C": 1.0}  # different targets


def test_all_heads_run_cheapest_first_and_every_row_has_a_measured_cost():
    from pipeline.heads.registry import estimate_seconds, expand_heads

    order = expand_heads(["all"])
    assert sorted(order) == list_heads() and order[:3] == ["knn", "logreg", "ridge"]
    estimates = [estimate_seconds(head, 1000, 1000) for head in order]
    assert None not in estimates and estimates == sorted(estimates)
    # A kernel SVM grows with the square of the rows, a linear model linearly.
    assert estimate_seconds("svm_rbf", 10_000, 1000) == pytest.approx(100 * estimate_seconds("svm_rbf", 1000, 1000))
    assert estimate_seconds("logreg", 10_000, 1000) == pytest.approx(10 * estimate_seconds("logreg", 1000, 1000))


def test_svm_nystroem_fits_a_set_smaller_than_its_components_without_a_warning(problem):
    """Fewer rows than the 1,000 components is the exact kernel: scikit-learn's warning would say each fit."""
    X, y = problem[0][:60], problem[2][:60]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head = create_head("svm_nystroem").fit(X, y)
    assert head.named_steps["clf"].named_steps["kernel"].components_.shape[0] == 60


def test_fit_children_run_n_jobs_estimators_on_threads():
    """A daemon child cannot start joblib's processes: `n_jobs=-1` (random_forest) would get one core and a warning."""
    from pipeline.heads.workers import call_in_child

    assert call_in_child(joblib.effective_n_jobs, -1, threads=2) == 2
