"""A run folder is loaded without unpickling: a crafted head file in one never runs its code.

Run folders get copied and shared like bundles, and the sha256 in their
lineage.json sits beside the head it checks, so whoever edits the head
recomputes it. Each case below plants a head that writes a marker file when
rebuilt, reseals the lineage, and runs every command that reads a run.
"""

import hashlib
import json
import pickle
import shutil
import types

import numpy as np
import pytest

from helpers import CodeRunningMarker, run_cli
from imagegen import make_dataset
from pipeline import cli
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.features.extract import extract_features
from pipeline.heads import load_head
from pipeline.heads.apply import feature_matrix
from pipeline.runs.predict import Predictor
from pipeline.runs.train import train_heads
from pipeline.store import read_feature_set


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe-runs")
    data = make_dataset(root / "data")  # 3 classes x 6 PNGs
    result = extract_features(config=ExtractConfig(
        data=str(data), cache_dir=str(root / "cache"), model="resnet50", size=32, weights="none", batch_size=8))
    runs = train_heads(result.path, config=TrainConfig(
        heads=("logreg", "dense"), params={"dense.epochs": 2}, runs_dir=str(root / "runs"),
        cache_dir=str(root / "cache")))
    return types.SimpleNamespace(root=root, data=data, features=read_feature_set(result.path),
                                 runs={r.head: r.run_dir for r in runs})


def _copy_run(trained, tmp_path, head="logreg"):
    run = tmp_path / "runs" / "set" / f"{head}-copy"
    shutil.copytree(trained.runs[head], run)
    return run


def _reseal(run, name, payload, field):
    """Writes a head file and records its sha256 in lineage.json, as an attacker can."""
    (run / name).write_bytes(payload)
    lineage = json.loads((run / "lineage.json").read_text())
    lineage[field] = hashlib.sha256(payload).hexdigest()
    (run / "lineage.json").write_text(json.dumps(lineage))


def _every_command(run, trained, tmp_path, *extra):
    """Exit status and stderr of predict, evaluate, export and report on `run`."""
    image = next(trained.data.glob("*/*.png"))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return {
        "predict": run_cli("predict", run, image, "-o", out / "p.csv", "--force", *extra),
        "evaluate": run_cli("evaluate", run, trained.data, "--cache-dir",
                            trained.root / "cache", *extra),
        "export": run_cli("export", run, out / "bundle", "--format", "bundle", "--force", *extra),
        "report": run_cli("report", run.parent.parent, "--output", out / "report.html", "--force"),
    }


@pytest.mark.slow
def test_new_runs_load_their_head_without_unpickling(trained):
    for head, run in trained.runs.items():
        lineage = json.loads((run / "lineage.json").read_text())
        assert lineage["head_skops_sha256"] == hashlib.sha256((run / "head.skops").read_bytes()).hexdigest()
        predictor = Predictor.load(run)
        assert predictor.source.head_format == "skops", head
        pickled, _ = load_head(run / "head.joblib")
        X = feature_matrix(pickled, trained.features.features)
        np.testing.assert_allclose(predictor.head.predict_proba(X), pickled.predict_proba(X), atol=1e-6)


@pytest.mark.slow
def test_a_crafted_pickle_in_a_run_folder_never_runs_its_code(trained, tmp_path):
    run, marker = _copy_run(trained, tmp_path), tmp_path / "marker"
    _reseal(run, "head.joblib", pickle.dumps({"estimator": CodeRunningMarker(marker)}), "head_sha256")

    results = _every_command(run, trained, tmp_path)

    assert not marker.exists()
    for command, (status, _, stderr) in results.items():
        assert status == cli.ExitStatus.OK, (command, stderr)
    assert (tmp_path / "out" / "p.csv").read_text().count("\n") == 2  # header and the one image


@pytest.mark.slow
def test_a_run_folder_with_only_a_pickle_is_refused_unless_trusted(trained, tmp_path):
    run, marker = _copy_run(trained, tmp_path), tmp_path / "marker"
    (run / "head.skops").unlink()
    lineage = json.loads((run / "lineage.json").read_text())
    del lineage["head_skops_sha256"]  # as a run trained before head.skops existed
    (run / "lineage.json").write_text(json.dumps(lineage))
    _reseal(run, "head.joblib", pickle.dumps({"estimator": CodeRunningMarker(marker)}), "head_sha256")

    results = _every_command(run, trained, tmp_path)

    assert not marker.exists()
    for command in ("predict", "evaluate", "export"):
        status, _, stderr = results[command]
        assert status == cli.ExitStatus.BAD_INPUT, (command, stderr)
        assert "is a pickle" in stderr.splitlines()[0] and "--trust" in stderr and str(run) in stderr
    assert results["report"][0] == cli.ExitStatus.OK  # the report reads no head

    shutil.copyfile(trained.runs["logreg"] / "head.joblib", run / "head.joblib")  # the genuine pickle, trusted
    _reseal(run, "head.joblib", (run / "head.joblib").read_bytes(), "head_sha256")
    status, _, stderr = _every_command(run, trained, tmp_path, "--trust")["predict"]
    assert status == cli.ExitStatus.OK, stderr
    assert stderr.splitlines()[0].startswith("warning: Trusting run folder") and "sources you trust" in stderr


def test_a_crafted_skops_head_in_a_run_folder_is_refused(trained, tmp_path):
    import skops.io

    run, marker = _copy_run(trained, tmp_path), tmp_path / "marker"
    _reseal(run, "head.skops", skops.io.dumps({"estimator": CodeRunningMarker(marker), "metadata": {}}), "head_skops_sha256")

    status, _, stderr = run_cli("predict", run, next(trained.data.glob("*/*.png")), "-o", tmp_path / "p.csv",
                                "--trust")

    assert status == cli.ExitStatus.BAD_INPUT
    assert "CodeRunningMarker" in stderr and "nothing was built" in stderr
    assert not marker.exists()


def test_a_changed_skops_head_is_caught_by_its_recorded_sha256(trained, tmp_path):
    run = _copy_run(trained, tmp_path)
    shutil.copyfile(trained.runs["dense"] / "head.skops", run / "head.skops")  # another run's head

    status, _, stderr = run_cli("predict", run, next(trained.data.glob("*/*.png")), "-o", tmp_path / "p.csv")

    assert status == cli.ExitStatus.BAD_INPUT
    assert "head.skops" in stderr and "sha256" in stderr
