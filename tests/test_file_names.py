"""File names that are not valid UTF-8 (legal on Linux): stored and shown losslessly by every stage."""

import os
from pathlib import Path

import numpy as np
import pytest

from imagegen import make_dataset
from pipeline.cli import main
from pipeline.store import read_feature_set

BAD = b"\xff\xfe-bad.png"  # not UTF-8


@pytest.fixture
def odd_names(tmp_path, monkeypatch):
    make_dataset(tmp_path / "data", classes=2, per_class=6)
    os.rename(os.fsencode(tmp_path / "data/class0/000.png"), os.fsencode(tmp_path / "data/class0") + b"/" + BAD)
    (Path(os.fsdecode(os.fsencode(tmp_path / "data/class1") + b"/\xfe-broken.png"))).write_bytes(b"not an image")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_features_train_head_and_cache_export_keep_a_non_utf8_name(odd_names, capsys):
    pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is installed by make setup")
    model = ["--model", "resnet50", "--size", "32", "--weights", "none", "--cache-dir", "c"]
    assert main(["features", "data", *model]) == 0
    out = capsys.readouterr().out
    assert "class1/\\xfe-broken.png" in out or "class1/\udcfe-broken.png" in out  # the skip is shown
    (index,) = Path("c").glob("*/features.h5")
    fs = read_feature_set(index)
    assert b"class0/" + BAD in [os.fsencode(p) for p in fs.paths]

    assert main(["train-head", "--cache-dir", "c", "--head", "logreg", "--runs-dir", "runs"]) == 0
    assert main(["cache", "export", f"set:{index.parent.name}", "--cache-dir", "c", "--output", "f.parquet"]) == 0
    table = pq.read_table("f.parquet")
    assert table.column("path_bytes").to_pylist() == [os.fsencode(p) for p in fs.paths]
    assert "class0/\\xff\\xfe-bad.png" in table.column("path").to_pylist()
    assert main(["cache", "export", f"set:{index.parent.name}", "--cache-dir", "c", "--output", "f.npz"]) == 0
    with np.load("f.npz") as z:
        assert [os.fsencode(p) for p in z["paths"]] == [os.fsencode(p) for p in fs.paths]


@pytest.mark.slow
def test_predict_evaluate_and_report_keep_a_non_utf8_name(odd_names):
    import csv
    import json
    import shutil

    from helpers import run_cli
    from pipeline.runs.csvcells import unescape

    # In the test split (by its split key), with an exact copy in train: the report shows both, as thumbnails.
    folder = os.fsencode(odd_names / "data/class0")
    test_name, train_name = b"\xff\xfe-bad32.png", b"\xfe-copy.png"
    os.rename(folder + b"/" + BAD, folder + b"/" + test_name)
    shutil.copyfile(folder + b"/" + test_name, folder + b"/" + train_name)
    model = ["--model", "resnet50", "--size", "32", "--weights", "none", "--cache-dir", "c"]
    assert run_cli("features", "data", *model)[0] == 0
    status, out, err = run_cli("train-head", "--cache-dir", "c", "--head", "logreg", "--runs-dir", "runs", "--json")
    assert status == 0, err
    assert "'class0/\\xfe-copy.png' = 'class0/\\xff\\xfe-bad32.png'" in err  # the copies across splits, named
    run = Path(json.loads(out.splitlines()[-1])["runs"][0]["run_dir"])
    with open(run / "test_predictions.csv", newline="", encoding="utf-8") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert "class0/\\xff\\xfe-bad32.png" in paths
    assert os.fsencode(unescape("class0/\\xff\\xfe-bad32.png")) == b"class0/" + test_name  # read back exactly

    odd = os.fsdecode(folder + b"/" + test_name)
    status, out, err = run_cli("predict", run, odd, "-o", "p.csv")
    assert status == 0, err
    assert "\\xff\\xfe-bad32.png" in out and "\udcff" not in out
    with open("p.csv", newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert row["path"].endswith("class0/\\xff\\xfe-bad32.png") and not row["error"]

    status, out, err = run_cli("evaluate", run, "data", "--cache-dir", "c")
    assert status == 0, err
    (evaluation,) = run.glob("eval-*")
    assert "class0/\\xff\\xfe-bad32.png" in (evaluation / "predictions.csv").read_text(encoding="utf-8")

    status, out, err = run_cli("report", "runs", "--output", "r.html")
    assert status == 0, err
    page = Path("r.html").read_text(encoding="utf-8")
    assert "<img alt='class0/\\xff\\xfe-bad32.png'" in page and "<img alt='class0/\\xfe-copy.png'" in page
