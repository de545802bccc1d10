"""Head stage: splits, fractions, run folders, leaderboard, errors and the CLI.

Most tests train on small synthetic feature sets written straight through
`FeatureStore` (no Keras needed). The accuracy checks use real MobileNetV2
features of the sign-language digits photos, extracted once per session by
the `sign_digits_features` fixture in conftest.py.
"""

import csv
import importlib.util
import json
import logging
import re
import shutil
import subprocess
import time
import types

import h5py
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from helpers import KEY, make_set
from helpers import run_cli as _main
from helpers import train_config as _config
from imagegen import PYTHON, REPO, SIGN_DIGITS, require_shared
from pipeline import cli
from pipeline.runs import layout, leaderboard, train
from pipeline.config import ExtractConfig, TrainConfig, load_toml, resolve
from pipeline.errors import ConfigError, WriteError
from pipeline.heads import (
    SPLITS, get_head_cfg, list_heads, load_head, parse_params, plan_params, split_indices, subsample,
)
from pipeline.store import FeatureStoreError, read_feature_set, resolve_features

@pytest.fixture
def blobs(tmp_path):
    return make_set(tmp_path / "cache" / "blobs-synthetic-8-avg-ffffffff")


# -- splits and fractions ----------------------------------------------------


def _fake(keys, folders=None, labels=None):
    keys = np.asarray(keys, dtype=np.float64)
    return types.SimpleNamespace(split_keys=keys, folder_splits=np.array(folders or [""] * len(keys)), labels=labels)


def test_split_keys_are_cut_at_the_split_fractions():
    keys = np.linspace(0, 1, 100, endpoint=False)
    parts = split_indices(_fake(keys), (0.8, 0.1, 0.1))
    assert [len(parts[s]) for s in SPLITS] == [80, 10, 10]
    assert keys[parts["train"]].max() < 0.8 <= keys[parts["validation"]].min()
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(100))
    assert len(split_indices(_fake(keys), (0.9, 0.1, 0.0))["test"]) == 0


def test_folder_splits_win_and_validation_is_carved_from_train_when_missing():
    folders = ["train"] * 6 + ["validation"] * 2 + ["test"] * 2
    keys = [0.05, 0.5, 0.95, 0.1, 0.2, 0.99, 0.1, 0.9, 0.3, 0.7]
    parts = split_indices(_fake(keys, folders), (0.8, 0.1, 0.1))
    assert parts["train"].tolist() == [0, 1, 2, 3, 4, 5] and parts["validation"].tolist() == [6, 7]
    # train/ and test/ only: validation takes 0.1 / (0.8 + 0.1) of train/ by split key.
    folders = ["train"] * 8 + ["test"] * 2
    parts = split_indices(_fake(keys, folders), (0.8, 0.1, 0.1))
    assert parts["validation"].tolist() == [0, 3, 6] and parts["test"].tolist() == [8, 9]
    assert parts["train"].tolist() == [1, 2, 4, 5, 7]


def test_subsample_is_stratified_seeded_nested_and_keeps_every_class():
    labels = np.repeat([0, 1, 2], [100, 50, 3])
    indices = np.arange(len(labels))
    tenth = subsample(indices, labels, 0.1, seed=1)
    assert np.bincount(labels[tenth]).tolist() == [10, 5, 1]  # round(0.3) = 0 -> still one
    one = subsample(indices, labels, 0.01, seed=1)
    assert np.bincount(labels[one]).tolist() == [1, 1, 1]
    assert set(one) <= set(tenth)  # 1% lies inside 10% for one seed
    assert np.array_equal(tenth, subsample(indices, labels, 0.1, seed=1))
    assert not np.array_equal(tenth, subsample(indices, labels, 0.1, seed=2))
    assert np.array_equal(subsample(indices[::-1], labels, 1.0), indices)


# -- config and inputs -------------------------------------------------------


def test_train_config_validates_and_resolves_from_toml(tmp_path):
    assert TrainConfig(splits="0.7, 0.2, 0.1").splits == (0.7, 0.2, 0.1)
    assert TrainConfig(heads="dense").heads == ("dense",)
    for bad, match in [
        (dict(splits="0.8,0.1"), "three"), (dict(splits=(0.8, 0.3, 0.1)), "sum to 1"),
        (dict(splits=(1, 0, 0)), "evaluate"), (dict(fraction=0), "fraction"), (dict(fraction=1.5), "fraction"),
        (dict(heads=()), "heads"), (dict(heads=("logreg", "logreg")), "more than once"), (dict(seed=-1), "seed"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    path = tmp_path / "c.toml"
    path.write_text('[train]\nheads = ["logreg", "knn"]\nsplits = [0.6, 0.2, 0.2]\n[train.params]\nC = 0.5\n')
    config = resolve(TrainConfig, load_toml(path)["train"], seed=4, fraction=None)
    assert config.heads == ("logreg", "knn") and config.splits == (0.6, 0.2, 0.2)
    assert config.params == {"C": 0.5} and config.seed == 4 and config.fraction == 1.0


def test_parse_params_targets_heads_including_import_paths():
    assert parse_params(["C=0.5", "dense.hidden_units=(512,256)", "class_weight=balanced"]) == {
        "C": 0.5, "dense.hidden_units": (512, 256), "class_weight": "balanced",
    }
    assert parse_params(["sklearn.neighbors:NearestCentroid.shrink_threshold=0.1"]) == {
        "sklearn.neighbors:NearestCentroid.shrink_threshold": 0.1,
    }
    for bad in ("C", ".C=1", "dense.=1"):
        with pytest.raises(ConfigError, match="key=value") as info:
            parse_params([bad])
        assert info.value.field == "params" and "--param" not in str(info.value)


def test_features_are_found_by_path_name_prefix_or_as_the_only_set(tmp_path):
    cache = tmp_path / "cache"
    only = make_set(cache / "digits-resnet50-32-avg-1234abcd")
    assert resolve_features(None, cache) == only
    assert resolve_features(only.parent, cache) == only
    assert resolve_features(str(only), cache) == only
    assert resolve_features("digits-resnet50-32-avg-1234abcd", cache) == only
    assert resolve_features("digits-res", cache) == only
    make_set(cache / "digits-vgg16-32-avg-9999abcd")
    with pytest.raises(ValueError, match="2 feature sets"):
        resolve_features(None, cache)
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_features("digits", cache)
    with pytest.raises(FeatureStoreError, match="Did you mean 'digits-vgg16-32-avg-9999abcd'"):
        resolve_features("digits-vgg61-32-avg-9999abcd", cache)
    with pytest.raises(ValueError, match="No feature set under"):
        resolve_features(None, tmp_path / "empty")


# -- runs --------------------------------------------------------------------


@pytest.mark.slow
def test_run_folder_holds_a_reloadable_head_metrics_lineage_and_config(blobs, tmp_path):
    (result,) = train.train_heads(blobs, config=_config(tmp_path, heads=("logreg",), params={"C": 0.5}))
    run = result.run_dir
    assert run.parent == tmp_path / "runs" / "blobs-synthetic-8-avg-ffffffff" and run.name.startswith("logreg-")
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json", "confusion_matrix.png", "head.joblib", "head.skops", "lineage.json", "metrics.json",
        "test_predictions.csv",
    ]
    assert not list(run.parent.glob(".tmp-*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == result.test_accuracy > 0.9
    assert metrics["validation"]["accuracy"] == result.val_accuracy
    assert metrics["fit_seconds"] == pytest.approx(result.fit_seconds) and result.fit_seconds > 0
    fs = read_feature_set(blobs)
    assert metrics["sizes"] == result.sizes and sum(result.sizes.values()) == len(fs.labels)
    lineage = json.loads((run / "lineage.json").read_text())
    assert lineage["features_path"] == str(blobs.resolve()) and lineage["content_hash"] == fs.content_hash
    assert lineage["feature_key"] == KEY and lineage["backbone"] == "synthetic" and lineage["weights"] == "none"
    assert lineage["extraction_config"] == {"model": "synthetic"} and lineage["head_sha256"] == result.head_sha256
    config = json.loads((run / "config.json").read_text())
    assert config["params"] == {"C": 0.5, "random_state": 0} and config["estimator_params"]["clf__C"] == 0.5
    assert config["train_config"]["heads"] == ["logreg"] and config["train_config"]["splits"] == [0.8, 0.1, 0.1]
    head, meta = load_head(run / "head.joblib", expected_sha256=lineage["head_sha256"])
    assert meta["class_names"] == fs.class_names and meta["content_hash"] == fs.content_hash
    assert (head.predict(fs.features) == fs.labels).mean() > 0.9


@pytest.mark.slow
def test_dense_run_adds_keras_model_checkpoint_logs_and_history(blobs, tmp_path):
    params = {"dense.epochs": 4, "dense.hidden_units": (16,), "dense.learning_rate": 1e-2, "dense.class_weight": "balanced"}
    (result,) = train.train_heads(blobs, config=_config(tmp_path, heads=("dense",), params=params))
    names = {p.name for p in result.run_dir.iterdir()}
    assert {"model.keras", "best.keras", "history.png", "head.joblib", "metrics.json", "lineage.json"} <= names
    # TensorBoard event files need the `tensorboard` package (the head warns and skips them without it).
    assert ("logs" in names) == (importlib.util.find_spec("tensorboard") is not None)
    head, _ = load_head(result.run_dir / "head.joblib", expected_sha256=result.head_sha256)
    assert len(head.history_["val_loss"]) == 4 and head.class_weight == "balanced"
    assert result.params["random_state"] == 0


@pytest.mark.slow
def test_dense_run_warns_when_the_epoch_cap_stops_a_falling_loss(blobs, tmp_path, caplog):
    params = {"dense.epochs": 3, "dense.hidden_units": (16,), "dense.learning_rate": 1e-3}
    logreg, dense = train.train_heads(blobs, config=_config(tmp_path, heads=("logreg", "dense"), params=params))
    metrics = json.loads((dense.run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == metrics["best_epoch"] == 3
    (line,) = metrics["warnings"]
    assert line.startswith("dense: best epoch = last epoch 3 (val_loss still falling")
    assert "raise `epochs`" in line and "--" not in line and "EPOCHS" not in line
    assert f"Warning: {line}" in caplog.messages
    assert not {"epochs_run", "best_epoch", "warnings"} & set(json.loads((logreg.run_dir / "metrics.json").read_text()))


@pytest.mark.slow
def test_dense_run_that_early_stopping_ended_does_not_warn(tmp_path, caplog):
    noise = make_set(tmp_path / "cache" / "noise-synthetic-8-avg-ffffffff", spread=30.0)  # val_loss soon stalls
    params = {"epochs": 100, "hidden_units": (64,), "learning_rate": 3e-2, "early_stopping_patience": 2}
    (dense,) = train.train_heads(noise, config=_config(tmp_path, heads=("dense",), params=params))
    metrics = json.loads((dense.run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] + 2 == metrics["epochs_run"] < 100 and metrics["warnings"] == []
    assert "best epoch" not in caplog.text


class SlowHead(LogisticRegression):
    """A head whose fit takes a while, as hist_gb's does on thousands of images."""

    def fit(self, X, y):
        time.sleep(0.6)
        return super().fit(X, y)


@pytest.mark.slow
def test_a_long_fit_says_it_is_still_fitting_until_it_ends(blobs, tmp_path, caplog, monkeypatch):
    import threading

    from pipeline.heads import fit

    monkeypatch.setattr(fit, "STILL_FITTING_INTERVAL", 0.1)
    caplog.set_level(logging.INFO, logger="bottleneck")
    train.train_heads(blobs, config=_config(tmp_path, heads=(f"{__name__}:SlowHead",)))
    lines = [m for m in caplog.messages if m.startswith("still fitting")]
    assert len(lines) >= 2 and all(re.fullmatch(rf"still fitting {__name__}:SlowHead: \d+ s", m) for m in lines)
    assert not [t for t in threading.enumerate() if t.name.startswith("still-fitting")]  # stopped with the fit
    time.sleep(0.3)
    assert [m for m in caplog.messages if m.startswith("still fitting")] == lines


@pytest.mark.slow
def test_each_fit_prints_its_estimate_first_and_json_records_it(blobs, tmp_path):
    status, out, err = _main("train-head", str(blobs), "--runs-dir", str(tmp_path / "runs"), "--head", "logreg", "--json")
    assert status == 0, err
    (run,) = json.loads(out.strip().splitlines()[-1])["runs"]
    assert run["estimated_seconds"] is not None and run["estimated_seconds"] >= 0
    assert re.search(r"Training logreg on \d+ examples x 8 features \(estimated ~\d+ s\)", err), err


@pytest.mark.slow
def test_same_features_head_and_seed_give_the_same_metrics(blobs, tmp_path):
    config = _config(tmp_path, heads=("logreg", "dense"), params={"dense.epochs": 3, "dense.hidden_units": (16,)}, seed=7)
    first = train.train_heads(blobs, config=config)
    second = train.train_heads(blobs, config=config)
    for a, b in zip(first, second):
        assert a.run_dir != b.run_dir
        _assert_close(a.metrics, b.metrics, a.head)


def _assert_close(a, b, where):
    """Nested metric dicts equal, numbers within 1e-6."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    else:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=where)


@pytest.mark.slow
def test_fraction_trains_on_a_stratified_subset_and_keeps_validation_and_test(blobs, tmp_path):
    full, tenth = (
        train.train_heads(blobs, config=_config(tmp_path, heads=("knn",), params={"n_neighbors": 1}, fraction=f))[0]
        for f in (1.0, 0.1)
    )
    assert tenth.sizes["validation"] == full.sizes["validation"] and tenth.sizes["test"] == full.sizes["test"]
    assert tenth.sizes["train"] == pytest.approx(full.sizes["train"] / 10, abs=3)


@pytest.mark.slow
def test_leaderboard_gains_a_row_per_run_and_runs_ls_sorts_by_validation(blobs, tmp_path):
    config = _config(tmp_path, heads=("knn", "logreg"), params={"n_neighbors": 1})
    results = train.train_heads(blobs, config=config)
    train.train_heads(blobs, config=_config(tmp_path, heads=("knn",), params={"n_neighbors": 1}, fraction=0.05))
    with open(tmp_path / "runs" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["head"] for r in rows] == ["knn", "logreg", "knn"]
    assert rows[0]["run_dir"] == str(results[0].run_dir) and rows[2]["fraction"] == "0.05"
    assert rows[0]["backbone"] == "synthetic" and json.loads(rows[0]["params"]) == {"n_neighbors": 1}
    assert float(rows[1]["val_accuracy"]) == pytest.approx(results[1].val_accuracy, abs=1e-4)
    assert list(rows[0]) == list(leaderboard.LEADERBOARD_COLUMNS)
    ranked = leaderboard.list_runs(tmp_path / "runs")
    # The CSV keeps 4 decimals.
    assert [float(r["val_accuracy"]) for r in ranked] == pytest.approx(
        sorted((float(r["val_accuracy"]) for r in rows), reverse=True), abs=1e-4)
    markdown = (tmp_path / "runs" / "leaderboard.md").read_text().splitlines()
    assert len(markdown) == 2 + 3 and "val_accuracy" in markdown[0]
    status, out, _ = _main("runs", "ls", "--runs-dir", str(tmp_path / "runs"))
    assert status == 0 and ranked[0]["run_dir"].endswith("-" + out.splitlines()[1].split()[-1])  # the run id
    assert not list((tmp_path / "runs").glob(".tmp-*"))


@pytest.mark.slow
def test_a_crash_leaves_no_run_folder_and_no_leaderboard_row(blobs, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(train, "save_head", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        train.train_heads(blobs, config=_config(tmp_path, heads=("logreg",)))
    out_root = tmp_path / "runs" / blobs.parent.name
    assert list(out_root.iterdir()) == []
    assert not (tmp_path / "runs" / "leaderboard.csv").exists()


@pytest.mark.slow
def test_run_ids_never_collide(blobs, tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "run_id", iter(["t-1", "t-1", "t-2"]).__next__)
    config = _config(tmp_path, heads=("knn",))
    (first,) = train.train_heads(blobs, config=config)  # knn-t-1
    (second,) = train.train_heads(blobs, config=config)  # knn-t-1 is taken: draws t-2
    assert first.run_dir.name == "knn-t-1" and second.run_dir.name == "knn-t-2"
    assert (first.run_dir / "head.joblib").exists() and (second.run_dir / "head.joblib").exists()
    assert load_head(first.run_dir / "head.joblib", expected_sha256=first.head_sha256)
    assert sorted(r["run_dir"] for r in leaderboard.list_runs(tmp_path / "runs")) == [str(first.run_dir), str(second.run_dir)]


@pytest.mark.slow
def test_an_unwritable_runs_folder_is_a_write_error_that_keeps_nothing(blobs, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layout, "write_json", full)
    with pytest.raises(WriteError, match="No space left") as info:
        train.train_heads(blobs, config=_config(tmp_path, heads=("logreg",)))
    assert info.value.exit_status == 3
    assert list((tmp_path / "runs" / blobs.parent.name).iterdir()) == []


# -- leaderboard kept by the run folders ------------------------------------

_DAMAGES = {
    # Excel's "CSV UTF-8": a byte-order mark and CRLF line ends.
    "bom-crlf": lambda text: ("\ufeff" + text.replace("\n", "\r\n")).encode("utf-8"),
    "renamed-header": lambda text: text.replace("val_accuracy", "Validation accuracy", 1).encode(),
    "non-utf8-byte": lambda text: text.encode().replace(b"knn", b"kn\xe9n", 1),
    "truncated": lambda text: text.encode()[: len(text) // 2],
    "emptied": lambda text: b"",
}


def _csv_rows(runs):
    with open(runs / "leaderboard.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(_DAMAGES))
def test_a_damaged_leaderboard_keeps_every_row_and_records_the_next_run(damage, blobs, tmp_path):
    runs = tmp_path / "runs"
    first = train.train_heads(blobs, config=_config(tmp_path, heads=("knn", "logreg")))
    before = _csv_rows(runs)
    csv_path = runs / "leaderboard.csv"
    csv_path.write_bytes(_DAMAGES[damage](csv_path.read_text()))
    assert len(leaderboard.list_runs(runs)) == 2  # listed from the run folders, whatever the CSV holds
    (third,) = train.train_heads(blobs, config=_config(tmp_path, heads=("knn",), fraction=0.5))
    rows = _csv_rows(runs)
    assert list(rows[0]) == list(leaderboard.LEADERBOARD_COLUMNS)
    assert rows[:2] == before and [r["run_dir"] for r in rows] == [str(r.run_dir) for r in [*first, third]]
    plain = ("transform", "sweep", "variant")  # empty for a run with no transform, sweep or other variant
    assert all(r[c] for r in rows for c in leaderboard.LEADERBOARD_COLUMNS if c not in plain)  # no blanked cell
    assert rows[2]["fraction"] == "0.5" and float(rows[2]["val_accuracy"]) == pytest.approx(third.val_accuracy, abs=1e-4)
    assert len((runs / "leaderboard.md").read_text().splitlines()) == 2 + 3
    assert {r["run_dir"] for r in leaderboard.list_runs(runs)} == {r["run_dir"] for r in rows}


@pytest.mark.slow
def test_rebuild_leaderboard_writes_the_same_files_from_the_run_folders(blobs, tmp_path):
    runs = tmp_path / "runs"
    train.train_heads(blobs, config=_config(tmp_path, heads=("knn", "logreg", "ridge")))
    written = {name: (runs / name).read_text() for name in ("leaderboard.csv", "leaderboard.md")}
    for name in written:
        (runs / name).write_text("edited\n")
    rows = leaderboard.rebuild_leaderboard(runs)
    assert [r["head"] for r in rows] == ["knn", "logreg", "ridge"]  # run order, within one second too
    assert {name: (runs / name).read_text() for name in written} == written
    assert leaderboard.rebuild_leaderboard(tmp_path / "nowhere") == [] and not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_runs_ls_rebuild_drops_deleted_runs_from_the_leaderboard_files(blobs, tmp_path):
    runs = tmp_path / "runs"
    knn, _ = train.train_heads(blobs, config=_config(tmp_path, heads=("knn", "logreg")))
    shutil.rmtree(knn.run_dir)
    assert "knn" in (runs / "leaderboard.csv").read_text()
    status, out, _ = _main("runs", "ls", "--rebuild", "--runs-dir", str(runs))
    assert status == 0 and "logreg" in out and "knn" not in out
    assert "knn" not in (runs / "leaderboard.csv").read_text() + (runs / "leaderboard.md").read_text()


@pytest.mark.slow
def test_a_damaged_run_folder_is_left_out_with_a_warning(blobs, tmp_path, caplog):
    runs = tmp_path / "runs"
    knn, logreg = train.train_heads(blobs, config=_config(tmp_path, heads=("knn", "logreg")))
    (knn.run_dir / "metrics.json").write_text("{not json")
    (runs / blobs.parent.name / ".tmp-0000-knn-half-written").mkdir()
    assert [r["head"] for r in leaderboard.list_runs(runs)] == ["logreg"]
    assert str(knn.run_dir / "metrics.json") in caplog.text and "damaged" in caplog.text


# -- errors ------------------------------------------------------------------


def test_unknown_head_and_parameters_are_refused_before_reading_features(tmp_path):
    missing = tmp_path / "nowhere" / "features.h5"
    cases = [
        (dict(heads=("logregg",)), "heads", "Valid heads: .*logreg"),
        (dict(heads=("logreg", "knn"), params={"n_neighbours": 3}), "params",
         r"no head being trained accepts it\. Did you mean 'n_neighbors'.*knn:"),
        (dict(heads=("logreg", "knn"), params={"logreg.n_neighbors": 3}), "params",
         "Unknown parameter 'n_neighbors' for head 'logreg'"),
        (dict(heads=("logreg",), params={"svm_rbf.C": 3}), "params",
         "'svm_rbf', which is not being trained.* Add 'svm_rbf' to `heads`"),
        (dict(heads=("os.path:join",)), "heads", "`fit` and `predict`"),
    ]
    for overrides, field, match in cases:
        with pytest.raises(ConfigError, match=match) as info:
            train.train_heads(missing, config=_config(tmp_path, **overrides))
        assert info.value.field == field and "--" not in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_plan_params_gives_each_head_its_params_and_the_seed():
    assert plan_params(["logreg", "knn", "dense"], {"C": 0.5, "knn.n_neighbors": 3, "dense.epochs": 2}, seed=4) == [
        ("logreg", {"C": 0.5, "random_state": 4}),
        ("knn", {"n_neighbors": 3}),
        ("dense", {"epochs": 2, "random_state": 4}),
    ]
    assert plan_params(["logreg"], {"random_state": 9}, seed=4) == [("logreg", {"random_state": 9})]


@pytest.mark.slow
def test_a_shared_param_goes_only_to_heads_that_accept_it(blobs, tmp_path):
    config = _config(tmp_path, heads=("logreg", "knn"), params={"C": 0.25, "knn.n_neighbors": 2})
    logreg, knn = train.train_heads(blobs, config=config)
    assert logreg.params == {"C": 0.25, "random_state": 0} and knn.params == {"n_neighbors": 2}


def test_broken_feature_sets_are_clear_errors(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(FeatureStoreError, match="make features"):
        train.train_heads(tmp_path / "cache" / "gone-set", config=config)
    incomplete = make_set(tmp_path / "incomplete")
    with h5py.File(incomplete, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(FeatureStoreError, match="not a complete feature set"):
        train.train_heads(incomplete, config=config)
    corrupt = make_set(tmp_path / "corrupt")
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    with pytest.raises(FeatureStoreError, match="damaged"):
        train.train_heads(corrupt, config=config)
    assert not (tmp_path / "runs").exists()


def test_a_class_without_training_examples_or_a_single_class_is_refused(tmp_path):
    config = _config(tmp_path)
    # class2's split keys all fall in validation/test.
    keys = np.r_[np.linspace(0, 0.99, 60), np.full(30, 0.9)]
    with pytest.raises(ConfigError, match="Class 'class2' .* no example in the training split: .*`splits`") as info:
        train.train_heads(make_set(tmp_path / "a", keys=keys), config=config)
    assert info.value.field == "splits"
    with pytest.raises(FeatureStoreError, match="single class"):
        train.train_heads(make_set(tmp_path / "b", classes=1), config=config)
    only_test = make_set(tmp_path / "c", folder_splits=lambda i: "test" if i >= 60 else "train")
    with pytest.raises(ConfigError, match="Class 'class2'"):
        train.train_heads(only_test, config=config)
    assert not (tmp_path / "runs").exists()


def test_a_bad_subsample_fraction_or_seed_names_the_field():
    with pytest.raises(ConfigError, match=r"`fraction` must be a number in \(0, 1\]") as info:
        subsample(np.arange(4), np.zeros(4), 0)
    assert info.value.field == "fraction"
    with pytest.raises(ConfigError, match="`seed` must be an integer >= 0") as info:
        subsample(np.arange(4), np.zeros(4), 0.5, seed=-1)
    assert info.value.field == "seed"


@pytest.mark.parametrize("case", ["float16-underflow", "all-zero", "one-value"])
def test_constant_features_are_refused_before_fitting(case, tmp_path):
    # Random weights give features near 1e-12: float16 stores them as 0.
    make = {
        "float16-underflow": dict(scale=1e-12, dtype="float16", config={"model": "synthetic", "storage_dtype": "float16"}),
        "all-zero": dict(scale=0.0),
        "one-value": dict(scale=0.0, offset=3.5),
    }[case]
    path = make_set(tmp_path / "cache" / "flat-synthetic-8-avg-ffffffff", **make)
    assert np.ptp(read_feature_set(path).features) == 0
    with pytest.raises(FeatureStoreError, match="no head can learn") as info:
        train.train_heads(path, config=_config(tmp_path, heads=("logreg", "dense")))
    message = str(info.value)
    assert "'flat-synthetic-8-avg-ffffffff'" in message and "storage_dtype='float32'" in message
    assert "`weights`" in message and info.value.field == "storage_dtype" and "--" not in message
    assert ("stored as float16" in message) == (case == "float16-underflow")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_tiny_float32_features_still_train(tmp_path):
    # Tiny (float32, ~1e-12) random-weight features are not constant: logreg's scaler restores them.
    (result,) = train.train_heads(make_set(tmp_path / "tiny", scale=1e-12), config=_config(tmp_path, heads=("logreg",)))
    assert result.test_accuracy > 0.9


# -- CLI ---------------------------------------------------------------------


@pytest.mark.slow
def test_cli_trains_several_heads_and_prints_json_last(blobs, tmp_path):
    status, out, err = _main(
        "train-head", "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"),
        "--head", "logreg", "--head", "knn", "--param", "C=2", "--param", "knn.n_neighbors=3",
        "--splits", "0.7,0.15,0.15", "--seed", "3", "--json", "-q",
    )
    assert status == 0, err
    runs = json.loads(out.strip().splitlines()[-1])["runs"]
    assert [r["head"] for r in runs] == ["logreg", "knn"]
    assert runs[0]["params"] == {"C": 2, "random_state": 3} and runs[1]["params"] == {"n_neighbors": 3}
    assert runs[0]["test_accuracy"] > 0.9 and runs[0]["fit_seconds"] > 0
    config = json.loads((tmp_path / runs[0]["run_dir"] / "config.json").read_text())["train_config"]
    assert config["splits"] == [0.7, 0.15, 0.15] and config["seed"] == 3


def test_cli_maps_bad_input_to_exit_status_2(blobs, tmp_path):
    common = ("--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"))
    status, _, err = _main("train-head", *common, "--head", "lgoreg")
    assert status == 2 and "Did you mean 'logreg'" in err and "Valid heads" in err
    status, _, err = _main("train-head", *common, "--param", "bogus=1")
    assert status == 2 and "Valid parameters" in err
    status, _, err = _main("train-head", "no-such-set", *common)
    assert status == 2 and "blobs-synthetic" in err
    status, _, err = _main("train-head", *common, "--fraction", "2")
    assert status == 2 and "fraction" in err
    assert not (tmp_path / "runs").exists()


# -- no TensorFlow, no Keras -------------------------------------------------

_BLOCKED = """
import importlib.abc, json, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
for name in ("tensorflow", "keras"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the blocker let {name} through")

from pipeline.config import TrainConfig
from pipeline.runs.train import train_heads

heads = tuple(sys.argv[3:])
lean = {"hist_gb.max_iter": 10, "random_forest.n_estimators": 20}
params = {k: v for k, v in lean.items() if k.split(".")[0] in heads}
results = train_heads(sys.argv[1], config=TrainConfig(heads=heads, params=params, runs_dir=sys.argv[2]))
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print(json.dumps({"accuracy": [r.test_accuracy for r in results], "leaked": leaked}))
"""


@pytest.mark.slow
def test_scikit_learn_heads_train_where_tensorflow_and_keras_cannot_be_imported(blobs, tmp_path):
    sklearn_heads = [h for h in list_heads() if not get_head_cfg(h).uses_keras]
    proc = subprocess.run(
        [PYTHON, "-c", _BLOCKED, str(blobs), str(tmp_path / "runs"), *sklearn_heads],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["leaked"] == [] and len(report["accuracy"]) == len(sklearn_heads)
    assert min(report["accuracy"]) > 0.8
    # The blocker really blocks: the same preamble, then a dense head, fails on its Keras import.
    proc = subprocess.run(
        [PYTHON, "-c", _BLOCKED, str(blobs), str(tmp_path / "runs"), "dense"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "keras is blocked in this test" in proc.stderr


# -- real features -----------------------------------------------------------

# Lighter settings for the heads that are slow on 1,667 x 1280 features
# (measured on a loaded 2-core CPU: hist_gb defaults take minutes, these 7 s
# for 0.86; linear_svm's default C=1 converges slowly, C=0.001 takes 12 s for
# 0.94). Every other head runs with its registry defaults.
_LEAN = {
    "hist_gb": {"max_iter": 20, "max_depth": 2, "max_bins": 16, "learning_rate": 0.3},
    "linear_svm": {"C": 0.001},
    "random_forest": {"n_estimators": 100},
}


@pytest.mark.parametrize("head", list_heads())
def test_every_registry_head_learns_real_features(head, sign_digits_features, tmp_path):
    config = TrainConfig(heads=(head,), params=_LEAN.get(head, {}), runs_dir=str(tmp_path / "runs"))
    (result,) = train.train_heads(sign_digits_features, config=config)
    # Chance is 0.1; the weakest heads (knn, random forest) score about 0.81.
    assert result.sizes["test"] > 150 and result.test_accuracy >= 0.75, result.metrics["test"]
    assert (result.run_dir / "head.joblib").exists() and (result.run_dir / "confusion_matrix.png").exists()


def test_logreg_separates_real_from_random_weights(sign_digits_features, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    (real,) = train.train_heads(sign_digits_features, config=TrainConfig(heads=("logreg",), runs_dir=str(runs)))
    assert real.test_accuracy >= 0.90, real.metrics["test"]  # measured 0.943

    # Random against real weights on the same 300 images (30 per class), at
    # 96 px, on the same split (half held out, ~165 test images): only the
    # weights differ. A random-weight pass costs as much as a real one, so a
    # second full 224 px extraction would add minutes; the subset takes
    # seconds and random features score the same at 96 and 224 px here.
    # Random weights do not score chance (0.1) with `logreg`: its
    # StandardScaler undoes their ~1e-12 scale, and random ReLU conv features
    # still see hand shapes (measured 0.45 here, 0.82 on all images at
    # 224 px). What the pretrained weights buy is the gap.
    subset = tmp_path_factory.mktemp("signs300")
    for digit in sorted(p.name for p in require_shared(SIGN_DIGITS).iterdir() if p.is_dir()):
        (subset / digit).mkdir()
        for src in sorted((SIGN_DIGITS / digit).iterdir())[:30]:
            shutil.copyfile(src, subset / digit / src.name)
    from pipeline.features.extract import extract_features

    config = TrainConfig(heads=("logreg",), splits=(0.5, 0.0, 0.5), runs_dir=str(runs))
    scores = {}
    for weights in (str(_mobilenet_v2_weights()), "none"):
        features = extract_features(config=ExtractConfig(
            data=str(subset), model="mobilenet_v2", size=96, weights=weights,
            cache_dir=str(tmp_path_factory.mktemp("subset-cache")), batch_size=50, workers=2,
        )).path
        (result,) = train.train_heads(features, config=config)
        assert result.sizes["test"] > 150
        scores[weights] = result.test_accuracy
    real_subset, random_subset = scores.values()
    assert real_subset >= 0.7 and random_subset <= 0.6, scores  # measured 0.76 and 0.45
    assert real_subset - random_subset >= 0.2, scores


def _mobilenet_v2_weights():
    from imagegen import WEIGHTS

    return require_shared(WEIGHTS / "mobilenet_v2_1.0_224_no_top.weights.h5")


@pytest.mark.weights
def test_default_dense_is_within_two_points_of_logreg(sign_digits_features_96, tmp_path):
    # Issue 16: seed 003's settings (Adam 1e-4, a fixed 30 epochs) stop the
    # dense head while it is still improving, so a leaderboard would rank an
    # unfinished head. The default trains to convergence instead. Measured on
    # the default 0.8/0.1/0.1 split (1,667 / 202 / 193 images): logreg 0.911
    # validation accuracy; dense 0.916 after 29 epochs (best 19); seed 003's
    # 0.896, best epoch 30 of 30.
    heads = ("logreg", "dense", "dense_seed003")
    logreg, dense, seed003 = train.train_heads(
        sign_digits_features_96, config=TrainConfig(heads=heads, runs_dir=str(tmp_path / "runs"))
    )
    assert dense.val_accuracy >= logreg.val_accuracy - 0.02, (logreg.val_accuracy, dense.val_accuracy)
    converged = json.loads((dense.run_dir / "metrics.json").read_text())
    assert converged["best_epoch"] < converged["epochs_run"] < 200 and converged["warnings"] == []
    unfinished = json.loads((seed003.run_dir / "metrics.json").read_text())
    assert unfinished["best_epoch"] == unfinished["epochs_run"] == 30
    assert unfinished["warnings"][0].startswith("dense_seed003: best epoch = last epoch 30")


def test_an_unwritable_runs_folder_exits_3_before_any_head_is_fitted(blobs, tmp_path, caplog):
    """Issue 15 #10: a runs folder that cannot be written failed after minutes of fitting."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should go")
    status, _, err = _main("train-head", str(blobs), "--head", "logreg", "--runs-dir", str(blocker / "runs"))
    assert status == cli.ExitStatus.CANNOT_WRITE
    assert f"'{blocker / 'runs'}'" in err and "--runs-dir" in err and len(err.strip().splitlines()) == 1
    assert "Training" not in caplog.text


# -- interrupting a fit inside compiled code ---------------------------------

# liblinear's dual solver with a tolerance it never reaches on overlapping
# classes: one fit runs for minutes inside compiled code, unaware of signals.
# On standardised features (`--transform standard`): liblinear then runs for minutes.
_ENDLESS_SVM = ("--head", "linear_svm", "--param", "dual=True", "--param", "C=1000",
                "--param", "max_iter=100000000", "--param", "tol=1e-12", "--transform", "standard")


# A forest grown on joblib's threads in the fit child: killing it leaves the pool's locks to Python's resource
# tracker, which must not print after "Interrupted.".
_LONG_FOREST = ("--head", "random_forest", "--param", "n_estimators=5000")


@pytest.mark.slow
@pytest.mark.parametrize("signum, head", [("SIGTERM", _ENDLESS_SVM), ("SIGINT", _ENDLESS_SVM), ("SIGTERM", _LONG_FOREST)])
def test_a_signal_ends_a_fit_inside_compiled_code_within_two_seconds(signum, head, tmp_path):
    import signal
    import threading

    features = make_set(tmp_path / "cache" / "long-synthetic-ffffffff", classes=4, per_class=500, dim=256, spread=3.0)
    proc = subprocess.Popen(
        [PYTHON, "-m", "pipeline", "train-head", str(features), "--runs-dir", str(tmp_path / "runs"), *head],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines, fitting = [], threading.Event()

    def read_stderr():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(f"Training {head[1]}"):
                fitting.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert fitting.wait(120), "".join(lines)
        time.sleep(3)  # well inside liblinear
        assert proc.poll() is None, "".join(lines)
        sent = time.monotonic()
        proc.send_signal(getattr(signal, signum))
        status = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    reader.join(5)
    assert status == 130 and took < 2.0, (status, took, "".join(lines))
    assert lines[-1].startswith("Interrupted.") and "Traceback" not in "".join(lines)
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.rglob("*") if p.is_dir() and p.parent != runs]


@pytest.mark.slow
def test_a_head_past_its_time_limit_is_stopped_recorded_and_the_next_head_trains(tmp_path):
    features = make_set(tmp_path / "cache" / "long-synthetic-ffffffff", classes=4, per_class=500, dim=256, spread=3.0)
    runs = tmp_path / "runs"
    started = time.monotonic()
    endless = [a.replace("=", "", 0) if not a.startswith(("dual", "C=", "max_iter", "tol")) else f"linear_svm.{a}"
               for a in _ENDLESS_SVM]
    status, out, err = _main("train-head", str(features), "--runs-dir", str(runs), *endless,
                             "--head", "logreg", "--time-limit", "3", "--json")
    assert status == 0, err
    assert time.monotonic() - started < 60
    stopped, finished = json.loads(out.strip().splitlines()[-1])["runs"]
    assert stopped["head"] == "linear_svm" and "time limit of 3 s" in stopped["stopped"]
    assert stopped["val_accuracy"] is None and stopped["fit_seconds"] >= 3
    assert finished["head"] == "logreg" and finished["stopped"] is None and finished["val_accuracy"] is not None
    folders = [p.name for p in (runs / "long-synthetic-ffffffff").iterdir()]
    assert not [f for f in folders if f.startswith(("linear_svm", ".tmp"))] and any(f.startswith("logreg") for f in folders)
    assert "linear_svm: stopped at the time limit of 3 s" in err
