"""Head sweeps: grids per registry row, the choice on validation, what a swept run records.

Synthetic feature sets as in test_train.py (no Keras except the one dense test).
"""

import csv
import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.heads import create_head, get_head_cfg, list_heads, plan_params, split_indices
from pipeline.heads import sweep as sweep_lib
from pipeline.heads import sweep_budget
from pipeline.runs import leaderboard, train
from pipeline.store import read_feature_set
from helpers import make_set
from helpers import run_cli as _main
from helpers import train_config as _config

GRIDS = {
    "logreg": {"C"},
    "linear_svm": {"C"},
    "svm_rbf": {"C", "gamma"},
    "svm_nystroem": {"C", "gamma"},
    "knn": {"n_neighbors"},
    "ridge": {"alpha"},
    "dense": {"learning_rate", "dropout"},
}


@pytest.fixture
def overlapping(tmp_path):
    # Overlapping blobs, so validation accuracy differs between values of C.
    return make_set(tmp_path / "cache" / "blobs-synthetic-8-avg-ffffffff", per_class=60, spread=3.0, seed=3)


def _sweep_csv(run_dir):
    with open(run_dir / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- grids and config ---------------------------------------------------------


@pytest.mark.parametrize("name", list_heads())
def test_rows_promised_a_grid_have_one_that_builds(name):
    grid = get_head_cfg(name).sweep_grid
    assert set(grid) == GRIDS.get(name, set())
    with pytest.raises(TypeError):
        grid["C"] = (1,)  # read-only, like default_params
    for key, values in grid.items():
        assert isinstance(values, tuple) and len(values) >= 3
        for value in values:
            create_head(name, **{key: value})  # every value reaches the estimator


@pytest.mark.parametrize(
    "texts, expected",
    [
        (["C=0.001,0.01,0.1,1"], {"C": (0.001, 0.01, 0.1, 1)}),
        (["logreg.C=1", "knn.n_neighbors=1,5"], {"logreg.C": (1,), "knn.n_neighbors": (1, 5)}),
        (["class_weight=None,balanced"], {"class_weight": (None, "balanced")}),
        (["dense.hidden_units=(64,),(128,64)"], {"dense.hidden_units": ((64,), (128, 64))}),
    ],
)
def test_parse_sweep(texts, expected):
    assert sweep_lib.parse_sweep(texts) == expected


def test_parse_sweep_true_asks_for_the_default_grids_and_does_not_mix():
    assert sweep_lib.parse_sweep([True, True]) is True
    with pytest.raises(ConfigError, match="not both") as info:
        sweep_lib.parse_sweep([True, "C=1"])
    assert info.value.field == "sweep"


@pytest.mark.parametrize("text", ["C", "C=", ".C=1", "1C=2"])
def test_parse_sweep_refuses_malformed_entries_naming_sweep(text):
    with pytest.raises(ConfigError, match="A `sweep` entry must look like") as info:
        sweep_lib.parse_sweep([text])
    assert info.value.field == "sweep"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"sweep": {"C": []}}, "sweep"),
        ({"sweep": {"C": 0.1}}, "sweep"),
        ({"sweep": "yes"}, "sweep"),
        ({"select": "f1"}, "select"),
        ({"sweep": True, "refit": "all"}, "refit"),
        ({"refit": "train+validation"}, "refit"),  # nothing to refit without a sweep
    ],
)
def test_train_config_validates_sweep_select_and_refit(overrides, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**overrides)
    assert info.value.field == field and "Received" in str(info.value)


def test_train_config_defaults_and_normalises_sweep():
    config = TrainConfig()
    assert (config.sweep, config.select, config.refit) == (None, "accuracy", "train")
    assert TrainConfig(sweep=False).sweep is None
    assert TrainConfig(sweep={"C": [0.1, 1]}).sweep == {"C": (0.1, 1)}


def test_plan_sweep_routes_keys_like_params_and_refuses_what_it_cannot_search():
    plans = plan_params(["logreg", "knn"], {}, seed=0)
    assert sweep_lib.plan_sweep(plans, {"C": [0.1, 1], "knn.n_neighbors": [1, 3]}, {}) == {
        "logreg": {"C": (0.1, 1)}, "knn": {"n_neighbors": (1, 3)},
    }
    assert sweep_lib.plan_sweep(plans, {"C": [1]}, {}) == {"logreg": {"C": (1,)}, "knn": None}
    assert sweep_lib.plan_sweep(plans, True, {}) == {h: dict(get_head_cfg(h).sweep_grid) for h in ("logreg", "knn")}
    for sweep, message in [
        ({"gamma": [1]}, "Unknown parameter 'gamma'"),
        ({"dense.dropout": [0.5]}, "not being trained"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            sweep_lib.plan_sweep(plans, sweep, {})
        assert info.value.field == "sweep"
    with pytest.raises(ConfigError, match="Head 'random_forest' has no default sweep grid") as info:
        sweep_lib.plan_sweep(plan_params(["random_forest"], {}, seed=0), True, {})
    assert info.value.field == "sweep" and "logreg" in str(info.value)
    clashing = plan_params(["logreg"], {"C": 0.5}, seed=0)
    with pytest.raises(ConfigError, match="both sets and sweeps 'C'") as info:
        sweep_lib.plan_sweep(clashing, True, {"C": 0.5})
    assert info.value.field == "sweep"


# -- the choice ---------------------------------------------------------------


def _train_and_validation(path):
    fs = read_feature_set(path)
    parts = split_indices(fs)
    return fs, {
        "train": (fs.features[parts["train"]], fs.labels[parts["train"]]),
        "validation": (fs.features[parts["validation"]], fs.labels[parts["validation"]]),
        "class_names": fs.class_names,
    }


@pytest.mark.slow
def test_the_choice_is_the_validation_argmax(overlapping):
    fs, data = _train_and_validation(overlapping)
    grid = {"C": (1e-4, 1e-3, 1e-2, 1e-1, 1.0)}
    result = sweep_lib.sweep_head("logreg", {"max_iter": 1000}, grid, **data)
    X_val, y_val = data["validation"]
    accuracy = []
    for C in grid["C"]:  # fitted independently of the sweep
        head = create_head("logreg", max_iter=1000, C=C).fit(*data["train"])
        accuracy.append((head.predict(X_val) == y_val).mean())
    assert [c["metrics"]["accuracy"] for c in result.candidates] == pytest.approx(accuracy)
    assert len(set(accuracy)) > 1, "the fixture must separate the candidates"
    assert result.candidates[result.chosen]["metrics"]["accuracy"] == max(accuracy)
    assert result.params == {"max_iter": 1000, "C": result.candidates[result.chosen]["params"]["C"]}
    by_loss = sweep_lib.sweep_head("logreg", {"max_iter": 1000}, grid, select="log_loss", **data)
    losses = [c["metrics"]["log_loss"] for c in by_loss.candidates]
    assert by_loss.chosen == int(np.argmin(losses))


def test_the_sweep_is_never_given_test_rows():
    parameters = list(inspect.signature(sweep_lib.sweep_head).parameters)
    assert "test" not in parameters and "feature_set" not in parameters and "parts" not in parameters


@pytest.mark.slow
def test_permuting_the_test_labels_changes_the_test_metrics_not_the_choice(overlapping, tmp_path, monkeypatch):
    config = _config(tmp_path, heads=("logreg", "knn"), sweep=True)
    first = train.train_heads(overlapping, config=config)
    test_rows = split_indices(read_feature_set(overlapping))["test"]
    real_read = train.read_features

    def permuted(spec, cache_dir):
        fs = real_read(spec, cache_dir)
        labels = fs.labels.copy()
        labels[test_rows] = np.random.default_rng(0).permutation(labels[test_rows])
        return dataclasses.replace(fs, labels=labels)

    monkeypatch.setattr(train, "read_features", permuted)
    second = train.train_heads(overlapping, config=config)
    for a, b in zip(first, second):
        assert a.params == b.params
        swept = [json.loads((r.run_dir / "metrics.json").read_text())["sweep"] for r in (a, b)]
        assert swept[0]["chosen"] == swept[1]["chosen"]
        assert [c["val_accuracy"] for c in swept[0]["candidates"]] == [c["val_accuracy"] for c in swept[1]["candidates"]]
        assert a.metrics["validation"] == b.metrics["validation"]
        assert a.metrics["test"]["confusion_matrix"] != b.metrics["test"]["confusion_matrix"]


# -- what a swept run records -------------------------------------------------


@pytest.mark.slow
def test_a_swept_run_records_every_candidate_and_the_winner(overlapping, tmp_path):
    (run,) = train.train_heads(overlapping, config=_config(tmp_path, heads=("svm_rbf",), sweep=True, select="macro_f1"))
    grid = get_head_cfg("svm_rbf").sweep_grid
    rows = _sweep_csv(run.run_dir)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    added = sum(len(e["added"]) for e in metrics["sweep"]["extended"])  # steps past the grid's edge, if any
    assert len(rows) == len(grid["C"]) * len(grid["gamma"]) + added
    assert list(rows[0]) == ["C", "gamma", "val_accuracy", "val_log_loss", "val_macro_f1", "fit_seconds", "chosen"]
    (winner,) = [r for r in rows if r["chosen"] == "1"]
    assert float(winner["val_macro_f1"]) == max(float(r["val_macro_f1"]) for r in rows)
    assert (run.run_dir / "sweep.png").stat().st_size > 0
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    swept = metrics["sweep"]
    assert swept["grid"] == {k: list(v) for k, v in grid.items()} and swept["select"] == "macro_f1"
    assert swept["refit"] == "train" and len(swept["candidates"]) == len(rows)
    assert swept["chosen"] == {"C": float(winner["C"]), "gamma": float(winner["gamma"])}
    # The run is the winner refitted on train: its validation score is the sweep's.
    assert metrics["validation"]["macro_f1"] == pytest.approx(float(winner["val_macro_f1"]))
    assert run.params["C"] == swept["chosen"]["C"] and run.params["gamma"] == swept["chosen"]["gamma"]
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["params"] == {**swept["chosen"], "random_state": 0}
    assert config["train_config"]["sweep"] is True


@pytest.mark.slow
def test_the_leaderboard_params_show_the_winner(overlapping, tmp_path):
    (run,) = train.train_heads(overlapping, config=_config(tmp_path, sweep={"logreg.C": [1e-4, 1e-3, 1e-2, 1.0]}))
    chosen = json.loads((run.run_dir / "metrics.json").read_text())["sweep"]["chosen"]["C"]
    (row,) = leaderboard.list_runs(tmp_path / "runs")
    assert json.loads(row["params"]) == {"C": chosen, "random_state": 0}


@pytest.mark.slow
def test_refit_on_train_and_validation_keeps_the_sweeps_validation_score(overlapping, tmp_path):
    config = _config(tmp_path, heads=("knn",), sweep={"n_neighbors": [1, 7, 15]}, refit="train+validation")
    (run,) = train.train_heads(overlapping, config=config)
    parts = split_indices(read_feature_set(overlapping))
    assert run.sizes == {"train": len(parts["train"]) + len(parts["validation"]),
                         "validation": len(parts["validation"]), "test": len(parts["test"])}
    swept = json.loads((run.run_dir / "metrics.json").read_text())["sweep"]
    (winner,) = [c for c in swept["candidates"] if c["params"] == swept["chosen"]]
    assert swept["refit"] == "train+validation" and run.val_accuracy == pytest.approx(winner["val_accuracy"])


def test_a_sweep_without_a_validation_split_is_refused_before_fitting(overlapping, tmp_path):
    with pytest.raises(ConfigError, match="chooses on the validation split") as info:
        train.train_heads(overlapping, config=_config(tmp_path, sweep=True, splits=(0.9, 0.0, 0.1)))
    assert info.value.field == "splits" and not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="no test example") as info:
        train.train_heads(overlapping, config=_config(tmp_path, sweep=True, refit="train+validation", splits=(0.9, 0.1, 0.0)))
    assert info.value.field == "refit" and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_dense_sweep_runs_its_candidates_one_at_a_time(overlapping, tmp_path, monkeypatch):
    workers = []
    real_in_threads = sweep_lib.in_threads

    def recording(calls, n_jobs):
        workers.append(n_jobs)
        return real_in_threads(calls, n_jobs)

    monkeypatch.setattr(sweep_lib, "in_threads", recording)
    params = {"dense.epochs": 3, "dense.hidden_units": (8,)}
    config = _config(tmp_path, heads=("dense",), params=params, sweep={"dense.dropout": [0.0, 0.5]})
    (run,) = train.train_heads(overlapping, config=config)
    assert workers == [1]
    assert len(_sweep_csv(run.run_dir)) == 2 and run.params["dropout"] in (0.0, 0.5)
    assert {"sweep.csv", "sweep.png", "history.png", "model.keras"} <= {p.name for p in run.run_dir.iterdir()}


@pytest.mark.slow
def test_categorical_values_plot_as_categories(overlapping):
    _, data = _train_and_validation(overlapping)
    result = sweep_lib.sweep_head("logreg", {}, {"class_weight": (None, "balanced"), "C": (0.01, 1.0)}, n_jobs=1, **data)
    fig = sweep_lib.plot_sweep(result)
    weights, cs = fig.axes
    assert [t.get_text() for t in weights.get_xticklabels()] == ["None", "balanced"]
    assert cs.get_xscale() == "log" and weights.get_xlabel() == "class_weight"  # C spans two decades


# -- CLI ----------------------------------------------------------------------


@pytest.mark.slow
def test_cli_sweeps_given_values_and_each_heads_grid(overlapping, tmp_path):
    runs = str(tmp_path / "runs")
    status, out, err = _main("train-head", str(overlapping), "--runs-dir", runs, "--head", "logreg", "--head", "knn",
                             "--sweep", "C=0.001,0.01,0.1,1", "--select", "log_loss", "--json", "-q")
    assert status == 0, err
    logreg, knn = json.loads(out.splitlines()[-1])["runs"]
    extended = json.loads((Path(logreg["run_dir"]) / "metrics.json").read_text())["sweep"]["extended"]
    assert len(_sweep_csv(Path(logreg["run_dir"]))) == 4 + sum(len(e["added"]) for e in extended)
    assert not (Path(knn["run_dir"]) / "sweep.csv").exists()  # knn has no C: trained as usual
    status, out, err = _main("train-head", str(overlapping), "--runs-dir", runs, "--head", "knn", "--sweep", "--json", "-q")
    assert status == 0, err
    (knn,) = json.loads(out.splitlines()[-1])["runs"]
    assert len(_sweep_csv(Path(knn["run_dir"]))) == len(get_head_cfg("knn").sweep_grid["n_neighbors"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--head", "random_forest", "--sweep"], "no default sweep grid"),
        (["--sweep", "--sweep", "C=1"], "each head's default grid (True) or the values given, not both"),
        (["--sweep", "10"], "A `sweep` entry must look like key=value"),
        (["--sweep", "--select", "f1"], "`select` must be one of"),
        (["--refit", "train+validation"], "no `sweep` is set"),
    ],
)
def test_cli_sweep_errors_are_exit_2_with_the_flag_to_change(overlapping, tmp_path, argv, message):
    status, _, err = _main("train-head", str(overlapping), "--runs-dir", str(tmp_path / "runs"), *argv)
    assert status == 2 and message in err
    assert any(f"[set with --{flag}; make train-head: {flag.upper()}=...]" in err for flag in ("sweep", "select", "refit"))


# -- large sets: choose on a subsample, or refuse up front --------------------


@pytest.fixture
def larger(tmp_path):
    return make_set(tmp_path / "cache" / "many-synthetic-8-avg-eeeeeeee", per_class=200, spread=3.0, seed=4)


def _halving_budget(head, n_rows, n_features, n_candidates, n_jobs):
    # The final fit on every row, plus the candidates on about half of them.
    cost = get_head_cfg(head).cost
    return cost.estimate(n_rows, n_features) + n_candidates / n_jobs * cost.estimate(n_rows // 2, n_features)


@pytest.mark.slow
def test_a_sweep_past_its_budget_chooses_on_a_stratified_subsample_then_fits_every_row(larger, tmp_path, monkeypatch):
    fs = read_feature_set(larger)
    n_train = len(split_indices(fs)["train"])
    grid = {"C": [1e-3, 1e-2, 1.0]}
    n_jobs = min(sweep_lib.cores(), 3)
    monkeypatch.setattr(sweep_budget, "SWEEP_BUDGET", _halving_budget("logreg", n_train, 8, 3, n_jobs))
    (run,) = train.train_heads(larger, config=_config(tmp_path, sweep={"logreg.C": grid["C"]}))
    swept = json.loads((run.run_dir / "metrics.json").read_text())["sweep"]
    assert 0.4 * n_train <= swept["chosen_on_rows"] <= 0.6 * n_train
    assert run.sizes["train"] == n_train  # the winner is fitted on every training row

    labels = fs.labels[split_indices(fs)["train"]]
    rows = sweep_budget.sweep_rows("logreg", labels, 8, 3, n_jobs, budget=sweep_budget.SWEEP_BUDGET)
    assert len(rows) == swept["chosen_on_rows"] and len(set(rows.tolist())) == len(rows)
    shares = np.bincount(labels[rows]) / len(rows)
    np.testing.assert_allclose(shares, np.bincount(labels) / len(labels), atol=0.02)  # stratified
    assert sweep_budget.sweep_rows("logreg", labels, 8, 3, n_jobs, budget=1e6) is None  # within budget: every row


def test_a_sweep_whose_final_fit_alone_is_past_budget_is_refused_before_any_fit(larger, tmp_path, monkeypatch):
    fs = read_feature_set(larger)
    n_train = len(split_indices(fs)["train"])
    final = get_head_cfg("svm_rbf").cost.estimate(n_train, 8)
    monkeypatch.setattr(sweep_budget, "SWEEP_BUDGET", final / 2)
    monkeypatch.setattr(train, "fit_head", lambda *a, **k: pytest.fail("a head was fitted"))
    config = _config(tmp_path, heads=("knn", "svm_rbf"), sweep=True)  # knn alone would fit
    with pytest.raises(ConfigError, match=r"Sweeping svm_rbf over 16 candidates on .* is estimated at") as info:
        train.train_heads(larger, config=config)
    message = str(info.value)
    assert info.value.field == "sweep" and "svm_nystroem" in message and "time_limit" in message
    needed = float(message.split("`time_limit` of at least ")[1].split(" s")[0])
    assert needed > final and not (tmp_path / "runs").exists()
    # The same sweep with a `time_limit` that allows it is not refused.
    sweep_budget.check_sweep_budget({"svm_rbf": get_head_cfg("svm_rbf").sweep_grid}, fs.labels, 8, time_limit=needed)


def test_fits_and_sweeps_set_the_main_process_threads_to_its_cores(overlapping, tmp_path, monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    from pipeline.heads import workers

    monkeypatch.setattr(workers, "_main_limits", None)
    monkeypatch.setattr(workers, "cores", lambda: 1)
    with threadpool_limits(limits=2):  # as a library sizing its pool by the machine's CPUs would
        assert {pool["num_threads"] for pool in threadpool_info()} == {2}
        fs, data = _train_and_validation(overlapping)
        sweep_lib.sweep_head("logreg", {}, {"C": (0.1, 1.0)}, **data)
        assert {pool["num_threads"] for pool in threadpool_info()} == {1}
    workers._main_limits.restore_original_limits()
