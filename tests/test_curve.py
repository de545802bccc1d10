"""Data-fraction curves (`run_curve`, `bottleneck curve`) and the notebook split (`FeatureSet.split`).

Feature sets are the Gaussian blobs of test_train.py, written straight
through `FeatureStore`; no Keras is built except for the dense head's one
point in the CLI test.
"""

import csv
import json
import re

import numpy as np
import pytest

from pipeline.config import CurveConfig, TrainConfig
from pipeline.heads import training_splits
from pipeline.heads.sweep import MAX_EXTENSIONS
from pipeline.runs import curve, layout, leaderboard
from pipeline.store import read_feature_set
from helpers import make_set
from helpers import run_cli as _main


@pytest.fixture
def blobs(tmp_path):
    # 4 classes x 40: the 5% subset keeps 2 examples of each class.
    return make_set(tmp_path / "cache" / "blobs-synthetic-8-avg-ffffffff", classes=4, per_class=40)


def _config(tmp_path, **overrides):
    return CurveConfig(runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), **overrides)


# -- FeatureSet.split: the rows of the head stage ---------------------------


@pytest.mark.parametrize("folders", [False, True])
@pytest.mark.parametrize("splits, seed, fraction", [((0.8, 0.1, 0.1), 0, 1.0), ((0.6, 0.2, 0.2), 3, 0.3)])
def test_split_gives_the_rows_train_head_trains_and_measures_on(folders, splits, seed, fraction, tmp_path):
    cut = (lambda i: ("train", "test")[i % 5 == 0]) if folders else None  # train/ and test/ only: validation carved
    fs = read_feature_set(make_set(tmp_path / "set", folder_splits=cut))
    parts = training_splits(fs, config=TrainConfig(splits=splits, seed=seed, fraction=fraction))
    arrays = fs.split(splits=splits, seed=seed, fraction=fraction)
    assert len(arrays) == 6
    for (X, y), name in zip(zip(arrays[::2], arrays[1::2]), ("train", "validation", "test")):
        assert len(parts[name]) > 0
        np.testing.assert_array_equal(X, fs.features[parts[name]])
        np.testing.assert_array_equal(y, fs.labels[parts[name]])


def test_the_split_docstring_example_runs_a_grid_search(blobs):
    # The README's notebook example is this docstring's: it must keep working.
    code = re.search(r"```python\n(.*?)```", type(read_feature_set(blobs)).split.__doc__, re.S).group(1)
    code = "\n".join(line[8:] for line in code.splitlines())
    code = re.sub(r'read_feature_set\("[^"]*"\)', f"read_feature_set({str(blobs.parent)!r})", code)
    scope = {}
    exec(compile(code, "split-example", "exec"), scope)
    assert scope["search"].best_params_["C"] in (0.01, 0.1, 1.0)
    assert scope["search"].score(scope["X_test"], scope["y_test"]) > 0.9


# -- run_curve ----------------------------------------------------------------


@pytest.mark.slow
def test_curve_writes_a_row_per_head_fraction_and_repeat_with_its_lineage(blobs, tmp_path, caplog):
    config = _config(tmp_path, heads=("logreg", "knn"), params={"knn.n_neighbors": 1}, fractions="1,0.05,0.5", repeats=2)
    result = curve.run_curve(blobs, config=config)
    assert result.run_dir.parent == tmp_path / "runs" / blobs.parent.name
    assert result.run_dir.name.startswith("curve-") and not list(result.run_dir.parent.glob(".tmp-*"))
    with open(result.run_dir / layout.CURVE_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == curve.CURVE_COLUMNS
    assert [(r["fraction"], r["repeat"], r["head"]) for r in rows] == [
        (str(f), str(r), h) for f in (0.05, 0.5, 1.0) for r in (0, 1) for h in ("logreg", "knn")
    ]
    assert [r["seed"] for r in rows[:4]] == ["0", "0", "1", "1"]
    fs = read_feature_set(blobs)
    per_class = np.bincount(fs.split()[1])  # training examples of each class
    n_train = {float(r["fraction"]): int(r["n_train"]) for r in rows}
    for fraction, n in n_train.items():  # stratified: each class's share, at least one
        assert n == sum(max(1, round(fraction * c)) for c in per_class)
    for column in ("val_accuracy", "test_accuracy", "test_macro_f1", "test_log_loss"):
        assert all(0 <= float(r[column]) for r in rows)
    assert all(float(r["test_accuracy"]) > 0.9 for r in rows if r["fraction"] == "1.0")
    assert (result.run_dir / layout.CURVE_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lineage = json.loads((result.run_dir / layout.LINEAGE).read_text())
    assert lineage["content_hash"] == fs.content_hash and lineage["features_path"] == str(blobs.resolve())
    saved = json.loads((result.run_dir / layout.CONFIG).read_text())
    assert saved["curve_config"]["fractions"] == [0.05, 0.5, 1.0] and saved["curve_config"]["repeats"] == 2
    assert saved["params"] == {"logreg": {"random_state": 0}, "knn": {"n_neighbors": 1}}
    # A curve is no run: the leaderboard leaves it out, without a warning.
    assert leaderboard.rebuild_leaderboard(tmp_path / "runs") == [] and "Left out" not in caplog.text
    assert all(r["error"] == "" for r in rows)


@pytest.mark.slow
def test_a_point_a_head_cannot_fit_is_a_row_with_the_reason_and_the_rest_is_kept(blobs, tmp_path, caplog):
    """linear_svm calibrates with 3 folds: at 5% (2 examples per class) it cannot fit, at 100% it can."""
    result = curve.run_curve(blobs, config=_config(tmp_path, heads=("linear_svm", "logreg"), fractions="0.05,1", repeats=1))
    by_point = {(r["head"], r["fraction"]): r for r in result.rows}
    failed = by_point[("linear_svm", 0.05)]
    assert failed["error"] and failed["test_accuracy"] is None
    assert failed["n_train"] == by_point[("logreg", 0.05)]["n_train"]  # the same subset, not fitted
    assert "linear_svm at fraction 0.05, repeat 0 not fitted" in caplog.text
    assert all(r["error"] == "" and r["test_accuracy"] > 0.5 for key, r in by_point.items() if key != ("linear_svm", 0.05))
    assert (result.run_dir / layout.CURVE_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_every_head_trains_on_the_same_nested_subsets_and_never_on_test(blobs, tmp_path, monkeypatch):
    seen = []

    def spy(head, params, fs, parts, **kwargs):
        seen.append((head, params["random_state"], {k: v.copy() for k, v in parts.items()}))
        return fit_head(head, params, fs, parts, **kwargs)

    fit_head = curve.fit_head
    monkeypatch.setattr(curve, "fit_head", spy)
    config = _config(
        tmp_path, heads=("logreg", "random_forest"), params={"n_estimators": 10}, fractions=(0.1, 0.5, 1), repeats=2
    )
    curve.run_curve(blobs, config=config, n_jobs=1)
    fs = read_feature_set(blobs)
    full = training_splits(fs, config=TrainConfig())
    train_of = {}
    for head, seed, parts in seen:
        assert not set(parts["train"]) & (set(full["test"]) | set(full["validation"]))
        np.testing.assert_array_equal(parts["test"], full["test"])
        train_of.setdefault((len(parts["train"]), seed), []).append(parts["train"])
    assert len(train_of) == 3 * 2  # fractions x repeats, each fitted by both heads on the same rows
    for subsets in train_of.values():
        assert len(subsets) == 2 and np.array_equal(*subsets)
    for seed in (0, 1):
        small, middle, whole = (train_of[size, seed][0] for size in sorted({s for s, _ in train_of}))
        assert set(small) <= set(middle) <= set(whole)  # nested within a repeat
    assert not np.array_equal(train_of[min(train_of)][0], train_of[min(train_of)[0], 1][0])  # repeats differ
    # Deterministic per (fraction, repeat): fitting in threads gives the same numbers.
    def numbers(result):
        return [{k: v for k, v in r.items() if k != "fit_seconds"} for r in result.rows]

    assert numbers(curve.run_curve(blobs, config=config, n_jobs=1)) == numbers(curve.run_curve(blobs, config=config))


@pytest.mark.slow
def test_a_swept_curve_chooses_on_validation_without_seeing_test(blobs, tmp_path, monkeypatch):
    test_rows = {tuple(x) for x in read_feature_set(blobs).split()[4]}
    searched = []

    def spy(head, params, grid, *, train, validation, **kwargs):
        searched.append(head)
        assert not {tuple(x) for x in (*train[0], *validation[0])} & test_rows
        return sweep_head(head, params, grid, train=train, validation=validation, **kwargs)

    sweep_head = curve.sweep_head
    monkeypatch.setattr(curve, "sweep_head", spy)
    config = _config(tmp_path, heads=("logreg",), fractions=(0.25, 1), repeats=1, sweep={"C": [0.01, 10.0]})
    result = curve.run_curve(blobs, config=config, n_jobs=1)
    assert searched == ["logreg", "logreg"]
    # The grid's values, or its log steps (x1000) past the top edge where C=10 still won there.
    allowed = {0.01, 10.0} | {float(f"{10.0 * 1000 ** k:.12g}") for k in range(1, MAX_EXTENSIONS + 1)}
    assert all(json.loads(r["params"])["C"] in allowed for r in result.rows)


def test_curve_config_refuses_bad_fractions_and_repeats():
    for bad in ("0,0.5", "0.5,0.5", "1.5", "", "a,b"):
        with pytest.raises(Exception, match="fractions") as info:
            CurveConfig(fractions=bad)
        assert info.value.field == "fractions"
    with pytest.raises(Exception, match="repeats"):
        CurveConfig(repeats=0)
    with pytest.raises(Exception, match="Unknown head"):
        curve.run_curve("anything", config=CurveConfig(heads=("lgoreg",)))  # before reading features


@pytest.mark.slow
def test_cli_curve_prints_a_summary_and_json_last(blobs, tmp_path):
    common = ("--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"))
    status, out, err = _main(
        "curve", *common, "--head", "logreg", "--head", "dense", "--param", "dense.epochs=2",
        "--fractions", "0.25,1", "--repeats", "1", "--json",
    )
    assert status == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["head", "fraction", "n_train"] and len(lines) == 1 + 4 + 2
    report = json.loads(lines[-1])
    assert [r["head"] for r in report["rows"]] == ["logreg", "dense"] * 2
    assert isinstance(report["rows"][0]["test_accuracy"], float)
    status, _, err = _main("curve", *common, "--fractions", "0,1")
    assert status == 2 and "[set with --fractions; make curve: FRACTIONS=...]" in err
