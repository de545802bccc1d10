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
from imagegen import make_dataset, write_image
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


def _chromium_check(page, screenshot, window="1300,2000"):
    """(self-check dict, stderr) of the page opened in headless Chromium; a screenshot saved beside."""
    require("browser")
    browser = shutil.which("chromium")
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0"]
    url = page.resolve().as_uri()
    dom = subprocess.run([*flags, f"--window-size={window}", "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    subprocess.run([*flags, f"--window-size={window}", f"--screenshot={screenshot}", url],
                   capture_output=True, timeout=120, check=True)
    match = re.search(r'data-selfcheck="([^"]*)"', dom.stdout)
    assert match, f"the page's self-check never ran: {dom.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1))), dom.stderr


@pytest.mark.slow
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
    assert "; 1 file stored under two classes" in page  # not "1 files"
    for run in pipeline_runs.runs:
        wrong = np.array(run.metrics["test"]["confusion_matrix"]).sum() - np.trace(run.metrics["test"]["confusion_matrix"])
        assert page.count(f"<p class=sub>{run.run_dir}</p>") == 1
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


# -- many runs: best first, the best in full, the rest folded; the first screen -----------------------


@pytest.fixture(scope="module")
def thirteen_runs(tmp_path_factory):
    """13 runs on one 10-class set: two trained, eleven copies with other validation scores and variants."""
    root = tmp_path_factory.mktemp("thirteen")
    make_dataset(root / "digits" / "train", classes=10, per_class=6)
    make_dataset(root / "digits" / "test", classes=10, per_class=2, start=50)
    features = extract_features(config=ExtractConfig(
        data=str(root / "digits"), model="mobilenet_v2_035", size=32, weights="none", cache_dir=str(root / "cache"),
        workers=2, batch_size=32,
    )).path
    runs = train_heads(features, config=TrainConfig(heads=("logreg", "knn"), runs_dir=str(root / "runs")))
    folders = [run.run_dir for run in runs]
    for i in range(11):
        source = folders[i % 2]
        folders.append(shutil.copytree(source, source.parent / f"{source.name.split('-')[0]}-20200101T000000-{i:08x}"))
    scores = {}
    for i, folder in enumerate(folders):
        metrics = json.loads((folder / layout.METRICS).read_text())
        metrics["validation"]["accuracy"] = round(0.05 + 0.07 * ((i * 5) % 13), 4)  # a shuffled spread of scores
        if i == 3:
            metrics["sweep"] = {"chosen": {"C": 0.01}}
        (folder / layout.METRICS).write_text(json.dumps(metrics))
        scores[folder.name] = metrics["validation"]["accuracy"]
    return types.SimpleNamespace(runs_dir=root / "runs", scores=scores)


@pytest.mark.slow
def test_thirteen_runs_are_ordered_by_validation_score_with_all_but_the_best_three_folded(thirteen_runs, tmp_path):
    page = build_report(thirteen_runs.runs_dir, tmp_path / "report.html").path.read_text()
    ranked = sorted(thirteen_runs.scores, key=lambda name: -thirteen_runs.scores[name])
    table = page[page.index("<table class=runs"):page.index("</table>", page.index("<table class=runs"))]
    assert re.findall(r"<a href='#run-([^']+)'>", table) == ranked  # the table: best validation first
    shown = re.findall(r"<div class='run[^']*' id='run-([^']+)'", page)
    folded = re.findall(r"<details class='run[^']*' id='run-([^']+)'><summary>", page)
    assert shown == ranked[:3] and folded == ranked[3:]  # the best three in full, the other ten folded
    assert page.index(f"id='run-{ranked[0]}'") < page.index("Per-class F1") < page.index("Near-duplicates")
    assert re.search(r"<h1>Model report: digits</h1>", page)
    assert "C=0.01" in page and not re.search(r"\b1 pairs\b|\b1 files\b", page)


@pytest.mark.slow
def test_the_first_screen_of_a_thirteen_run_report_holds_the_table_and_the_best_runs_detail(thirteen_runs, tmp_path):
    result = build_report(thirteen_runs.runs_dir, tmp_path / "report.html")
    check, stderr = _chromium_check(result.path, tmp_path / "first-screen.png", window="1280,900")
    assert check["errors"] == [] and "Uncaught" not in stderr and check["broken"] == []
    screen = check["screen"]
    # Headless Chromium keeps 87 px of a 900 px window for its own bars, as a browser does.
    assert screen["height"] >= 800 and screen["scrollWidth"] <= 1280, screen  # nothing scrolls sideways
    assert 0 < screen["table"] < screen["best"] <= screen["height"], screen  # the leaderboard, then the best matrix
    assert (tmp_path / "first-screen.png").stat().st_size > 10_000


# -- hostile names: formula-like classes, bidi controls, manifest paths outside its folder -------------

HOSTILE_CLASSES = ("-neg", "+pos", "=eq", "@at\u202eevil")


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory):
    """A manifest in `lists/` naming images in `../photos/`, with classes a spreadsheet would run.

    Image 7 of each class (test) is image 0 (train) again, so the leakage section lists it whatever the head predicts.
    """
    root = tmp_path_factory.mktemp("hostile")
    lines = ["path,label,split"]
    for c, name in enumerate(HOSTILE_CLASSES):
        for i in range(8):
            file = f"photo{i}\u202egnp.png" if i == 7 else f"{i}.png"
            write_image(root / "photos" / f"c{c}" / file, seed=100 * c + (7 if i == 0 else i))  # 0 and 7: a leak
            lines.append(f"../photos/c{c}/{file},{name},{'test' if i >= 5 else 'train'}")
    (root / "lists").mkdir()
    (root / "lists" / "set.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    features = extract_features(config=ExtractConfig(
        data=str(root / "lists" / "set.csv"), model="mobilenet_v2_035", size=32, weights="none",
        cache_dir=str(root / "cache"), workers=2, batch_size=32,
    )).path
    train_heads(features, config=TrainConfig(heads=("knn",), runs_dir=str(root / "runs")))
    return root / "runs"


@pytest.mark.slow
def test_formula_like_class_names_and_manifest_paths_outside_its_folder_show_every_image(hostile_runs, tmp_path):
    page = build_report(hostile_runs, tmp_path / "report.html").path.read_text()
    assert "is damaged" not in page and "misclassified images not shown" not in page
    assert "Misclassified test images" in page and "missing:" not in page
    assert "<b>4 cross train/validation/test</b>" in page  # the pairs' thumbnails are the ones checked above
    status, stdout, _ = _main("report", hostile_runs, "--output", tmp_path / "again.html")
    assert status == 0 and "4 near-duplicate pairs across splits" in stdout
    assert page.count("data:image/jpeg;base64,") >= 1
    text = html.unescape(page)
    for name in ("-neg", "+pos", "=eq"):
        assert f"true <b>{name}</b>" in text or f"predicted <b>{name}</b>" in text or f"<th>{name}</th>" in text


def test_bidi_controls_in_class_and_file_names_are_shown_escaped(hostile_runs, tmp_path):
    page = build_report(hostile_runs, tmp_path / "report.html").path.read_text()
    assert not re.search("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]", page)
    assert "@at\\u202eevil" in page and "photo7\\u202egnp.png" in page


# -- size: large class counts do not grow the page with their square --------------------------------


def test_a_report_of_400_classes_stays_small_and_lists_the_most_confused_pairs(pipeline_runs, tmp_path):
    runs_dir = tmp_path / "runs"
    k, rng = 400, np.random.default_rng(0)
    names = [f"class-{i:03d}" for i in range(k)]
    for n, run in enumerate(pipeline_runs.runs):
        folder = shutil.copytree(run.run_dir, runs_dir / "big" / f"logreg-20200101T000000-{n:08x}")
        (folder / layout.TEST_PREDICTIONS).unlink()
        lineage = json.loads((folder / layout.LINEAGE).read_text())
        (folder / layout.LINEAGE).write_text(json.dumps({**lineage, "class_names": names,
                                                         "features_path": str(tmp_path / "gone")}))
        matrix = (np.eye(k, dtype=int) * 20 + rng.integers(0, 2, size=(k, k)) * (rng.random((k, k)) < 0.02))
        matrix[7, 9] = 15  # the most confused pair
        split = {"accuracy": 0.9, "macro_f1": 0.9, "confusion_matrix": matrix.tolist(),
                 "per_class": {c: {"precision": 0.9, "recall": 0.9, "f1": 0.9} for c in names}}
        (folder / layout.METRICS).write_text(json.dumps({"validation": split, "test": split}))
    page = build_report(runs_dir, tmp_path / "report.html").path.read_text()
    assert len(page.encode()) < 600_000, len(page.encode())
    assert page.count("Most confused classes") == 2 and "Confusion matrix, counts" not in page
    first = re.search(r"<tr><td class=t>(class-\d+)</td><td class=t>(class-\d+)</td><td>(\d+)</td>", page)
    assert first.groups() == ("class-007", "class-009", "15")
