"""`bottleneck report`: one self-contained HTML page, checked in headless Chromium.

One small real pipeline (tiny PNGs, a random-weight MobileNetV2 at 32 px,
two heads) is built once per module; tests copy its runs folder before
damaging it. The browser test is marked `browser`: without `chromium` it
skips locally and fails on CI (tests/needs.py), where .ci/run installs it.
"""

import csv
import html
import io
import json
import re
import shutil
import subprocess
import types

import numpy as np
import pytest

from helpers import run_cli as _main
from imagegen import make_dataset
from needs import require
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.features.extract import extract_features
from pipeline.runs import layout
from pipeline.runs.report import build_report
from pipeline.runs.train import train_heads
from pipeline.store import read_feature_set


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """Split folders; one train image copied into test (a leak), one file stored under two classes."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    make_dataset(data / "train", per_class=8)
    make_dataset(data / "test", per_class=4, start=50)
    shutil.copy(data / "train/class0/000.png", data / "test/class0/leaked.png")
    shutil.copy(data / "train/class1/001.png", data / "train/class2/mislabelled.png")
    features = extract_features(config=ExtractConfig(
        data=str(data), model="mobilenet_v2_035", size=32, weights="none", cache_dir=str(root / "cache"),
        workers=2, batch_size=16,
    )).path
    runs = train_heads(features, config=TrainConfig(heads=("logreg", "knn"), runs_dir=str(root / "runs")))
    return types.SimpleNamespace(root=root, data=data, features=features, runs=runs, runs_dir=root / "runs")


def _copy_runs(pipeline_runs, tmp_path):
    return shutil.copytree(pipeline_runs.runs_dir, tmp_path / "runs")


def _chromium_check(page, screenshot):
    """(self-check dict, stderr) of the page opened in headless Chromium; a screenshot saved beside."""
    require("browser")
    browser = shutil.which("chromium")
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0"]
    url = page.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    subprocess.run([*flags, "--window-size=1300,2000", f"--screenshot={screenshot}", url],
                   capture_output=True, timeout=120, check=True)
    match = re.search(r'data-selfcheck="([^"]*)"', dom.stdout)
    assert match, f"the page's self-check never ran: {dom.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1))), dom.stderr


def test_run_folders_record_each_test_image_prediction(pipeline_runs):
    fs = read_feature_set(pipeline_runs.features)
    for run in pipeline_runs.runs:
        with open(run.run_dir / layout.TEST_PREDICTIONS, newline="") as f:
            rows = list(csv.DictReader(f))
        matrix = np.array(run.metrics["test"]["confusion_matrix"])
        assert len(rows) == matrix.sum() == run.sizes["test"]
        assert {r["path"] for r in rows} == {p for p, s in zip(fs.paths, fs.folder_splits) if s == "test"}
        wrong = sum(r["true"] != r["predicted"] for r in rows)
        assert wrong == matrix.sum() - np.trace(matrix)
        assert all(0 <= float(r["true_probability"]) <= float(r["probability"]) <= 1 for r in rows)


@pytest.mark.browser
def test_report_renders_in_chromium_with_every_image_and_a_row_per_run(pipeline_runs, tmp_path):
    runs_dir = _copy_runs(pipeline_runs, tmp_path)
    set_dir = next(p for p in runs_dir.iterdir() if p.is_dir())
    damaged = shutil.copytree(pipeline_runs.runs[0].run_dir, set_dir / "logreg-damaged")
    (damaged / layout.METRICS).write_text('{"test": {"confusion_matrix": "x"')
    result = build_report(runs_dir, tmp_path / "report.html")
    assert result.n_runs == 2 and [s[0] for s in result.skipped] == [str(damaged)]
    page = result.path.read_text()
    assert "logreg-damaged" in page and "is damaged" in page
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", page)  # nothing fetched from a network
    check, stderr = _chromium_check(result.path, tmp_path / "report.png")
    assert check["errors"] == [] and "Uncaught" not in stderr
    assert check["broken"] == [] and check["images"] >= 2
    assert check["rows"] == {"runs-0": 2}
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_shows_leaks_conflicts_and_misclassified_images(pipeline_runs, tmp_path):
    result = build_report(pipeline_runs.runs_dir, tmp_path / "report.html")
    page = html.unescape(result.path.read_text())
    assert result.n_cross_split >= 1
    assert re.search(r"test/class0/leaked\.png \(test, class0\)|train/class0/000\.png \(train, class0\) ~ test/class0/leaked", page)
    assert "Same file in two classes" in page and "train/class2/mislabelled.png" in page
    for run in pipeline_runs.runs:
        wrong = np.array(run.metrics["test"]["confusion_matrix"]).sum() - np.trace(run.metrics["test"]["confusion_matrix"])
        assert page.count(f"<p>{run.run_dir}</p>") == 1
        assert (wrong > 0) == ("Misclassified test images" in page)
    assert "Confusion matrix, normalised by true class" in page and "Confusion matrix, counts" in page


def test_missing_images_damaged_plots_and_hostile_predictions_become_notes(pipeline_runs, tmp_path):
    runs_dir = _copy_runs(pipeline_runs, tmp_path)
    logreg, knn = (runs_dir / r.run_dir.parent.name / r.run_dir.name for r in pipeline_runs.runs)
    (logreg / layout.SWEEP_PLOT).write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows = list(csv.reader(io.StringIO((logreg / layout.TEST_PREDICTIONS).read_text())))
    rows[1][1:4] = ["../../../../etc/outside.png", "class0", "class1"]
    rows[2][1:4] = ["test/class1/gone.png", "class1", "class2"]
    (logreg / layout.TEST_PREDICTIONS).write_text("\n".join(",".join(r) for r in rows))
    (knn / layout.TEST_PREDICTIONS).write_text("split,path\n")
    page = html.unescape(build_report(runs_dir, tmp_path / "report.html").path.read_text())
    assert "is not a readable PNG" in page
    assert "missing:<br>../../../../etc/outside.png" in page and "missing:<br>test/class1/gone.png" in page
    assert f"'{knn / layout.TEST_PREDICTIONS}' is damaged" in page


def test_features_filter_threshold_and_overwrite_are_checked(pipeline_runs, tmp_path):
    out = tmp_path / "r.html"
    with pytest.raises(ConfigError, match="Feature sets with runs: data-mobilenet_v2_035"):
        build_report(pipeline_runs.runs_dir, out, features="nope")
    with pytest.raises(ConfigError, match="duplicate_threshold"):
        build_report(pipeline_runs.runs_dir, out, duplicate_threshold=1.5)
    assert not out.exists()
    status, stdout, stderr = _main("report", pipeline_runs.runs_dir, "--output", out, "--features", "data-", "--json")
    assert status == 0 and json.loads(stdout.splitlines()[-1])["n_runs"] == 2
    status, _, stderr = _main("report", pipeline_runs.runs_dir, "--output", out)
    assert status == 2 and "--force" in stderr
    status, _, stderr = _main("report", pipeline_runs.runs_dir, "-o", out, "--force", "--duplicate-threshold", "7")
    assert status == 2 and "--duplicate-threshold" in stderr
