"""The leaderboard at scale (`runs ls`) and `heads=("all",)`, which fills it in one call.

Feature sets are the Gaussian blobs of test_train.py; run folders are
trained by `train_heads`, or copied as their three JSON files where a test
needs many.
"""

import csv
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagegen import PYTHON, REPO
from pipeline.config import TrainConfig
from pipeline.config.train import DEFAULT_TRANSFORM
from pipeline.heads import get_head_cfg, list_heads, plan_params
from pipeline.runs import layout, leaderboard, train
from pipeline.store import read_feature_set
from helpers import make_set
from helpers import run_cli as _main
from helpers import train_config as _config

SET = "blobs-synthetic-8-avg-ffffffff"


@pytest.fixture
def runs(tmp_path):
    """Three runs: logreg and a long-named head on 90 images, logreg again after 30 more were added."""
    root = tmp_path / "cache" / SET
    make_set(root)
    train.train_heads(root, config=_config(tmp_path, heads=("logreg", "sklearn.neighbors:NearestCentroid")))
    shutil.rmtree(root)
    make_set(root, per_class=40)  # images added: same set name, new content hash
    train.train_heads(root, config=_config(tmp_path, heads=("logreg",), fraction=0.5))
    return tmp_path / "runs"


@pytest.mark.slow
def test_runs_ls_fits_100_columns_and_tells_sets_before_and_after_new_images_apart(runs):
    status, out, err = _main("runs", "ls", "--runs-dir", str(runs))
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 + 3 and max(map(len, lines)) <= 100
    assert lines[0].split() == ["backbone", "images", "hash", "head", "variant", "val", "test", "f1", "run"]
    hashes = {r["n_images"]: r["features_hash"] for r in leaderboard.list_runs(runs)}
    assert sorted(hashes) == [90, 120] and hashes[90] != hashes[120]
    for n, content_hash in hashes.items():
        assert sum(f" {n} {content_hash[:8]} " in line for line in lines) == (2 if n == 90 else 1)
    assert any("sklearn.neigh~" in line for line in lines)  # cut to its column, marked


def _variant_of(runs, name, *, lineage=None, metrics=None):
    """A copy of the first logreg run named `name`, its lineage and metrics updated as another run would write them."""
    first = next(r["run_dir"] for r in leaderboard.list_runs(runs, head="logreg") if r["fraction"] == 1)
    copy = shutil.copytree(first, runs / SET / name)
    for file, changes in ((layout.LINEAGE, lineage), (layout.METRICS, metrics)):
        record = json.loads((copy / file).read_text())
        (copy / file).write_text(json.dumps({**record, **(changes or {})}))
    return copy


@pytest.mark.slow
def test_runs_ls_leaderboard_and_json_tell_augmented_transformed_swept_and_fine_tuned_runs_apart(runs):
    views = [{"ops": "flip=horizontal,rotation=0.1", "seed": 0, "views": [1, 2], "rows": 60}]
    _variant_of(runs, "logreg-29990101T000000-aaaaaaa1", lineage={"augmented": views})
    _variant_of(runs, "logreg-29990101T000000-aaaaaaa2", lineage={"transform": "pca64"})
    _variant_of(runs, "logreg-29990101T000000-aaaaaaa3", metrics={"sweep": {"chosen": {"C": 0.01}, "select": "x"}})
    parent = Path(leaderboard.list_runs(runs, head="logreg")[0]["run_dir"])
    _variant_of(runs, "finetune-29990101T000000-aaaaaaa4",
                lineage={"kind": "finetune", "parent_run": str(parent), "unfrozen_layers": 20})
    status, out, err = _main("runs", "ls", "--runs-dir", str(runs), "--sort", "fraction")
    assert status == 0, err
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100, out
    by_id = {line.split()[-1][-1]: line + " " for line in lines if "aaaaaaa" in line}
    assert " aug 2v flip,rotation " in by_id["1"]
    assert " tf pca64 " in by_id["2"]
    assert " C=0.01 " in by_id["3"]
    assert f" ft of {parent.name[-8:]} +20" in by_id["4"]
    assert sum(" frac 0.5 " in line for line in lines) == 1  # the run on half the training images
    rows = {r["run_dir"][-1]: r for r in json.loads(_main("runs", "ls", "--runs-dir", str(runs), "--json")[1])
            if "aaaaaaa" in r["run_dir"]}
    assert rows["1"]["augmented"].startswith("2 views flip=horizontal,rotation=0.1")
    assert rows["2"]["transform"] == "pca64" and rows["1"]["transform"] == DEFAULT_TRANSFORM  # recorded, not shown
    assert rows["3"]["sweep"] == '{"C":0.01}' and rows["1"]["sweep"] == ""
    assert rows["4"]["parent"] == str(parent) and rows["4"]["kind"] == "finetune"
    written = list(csv.DictReader(io.StringIO((runs / layout.LEADERBOARD_CSV).read_text())))
    assert {r["variant"] for r in written} >= {rows[k]["variant"] for k in "1234"}
    assert "tf pca64" in (runs / layout.LEADERBOARD_MD).read_text()


@pytest.mark.slow
def test_leaderboard_csv_escapes_every_text_cell_and_reads_back_losslessly(runs):
    hostile = {"backbone": "=cmd|' /C calc'!A0", "feature_set": "-SUM1", "transform": "@x",
               "parent_run": "'quoted"}
    _variant_of(runs, "logreg-29990101T000000-bbbbbbb1",
                lineage={"backbone": hostile["backbone"], "feature_set": hostile["feature_set"],
                         "transform": hostile["transform"], "kind": "finetune", "parent_run": hostile["parent_run"]})
    rows = leaderboard.rebuild_leaderboard(runs)
    cells = list(csv.reader(io.StringIO((runs / layout.LEADERBOARD_CSV).read_text())))
    assert cells[0] == list(leaderboard.LEADERBOARD_COLUMNS)
    for line in cells[1:]:
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in line), line
    from pipeline.runs import csvcells

    text = {c.name: c for c in leaderboard.COLUMNS}
    read_back = [{k: csvcells.unescape(v) for k, v in zip(cells[0], line)} for line in cells[1:]]
    assert read_back == [{k: text[k].text(v) for k, v in row.items()} for row in rows]
    mine = next(r for r in read_back if r["run_dir"].endswith("bbbbbbb1"))
    assert (mine["backbone"], mine["features"], mine["transform"], mine["parent"]) == (
        hostile["backbone"], hostile["feature_set"], hostile["transform"], hostile["parent_run"])


@pytest.mark.slow
def test_runs_ls_filters_sorts_limits_and_gives_json_numbers(runs):
    status, out, _ = _main("runs", "ls", "--runs-dir", str(runs), "--json")
    rows = json.loads(out)
    assert status == 0 and len(rows) == 3 and list(rows[0]) == list(leaderboard.LEADERBOARD_COLUMNS)
    for row in rows:
        assert isinstance(row["n_images"], int) and isinstance(row["fit_seconds"], float)
        assert all(isinstance(row[c], float) for c in ("fraction", "val_accuracy", "test_accuracy", "test_macro_f1"))
    new_hash = next(r["features_hash"] for r in rows if r["n_images"] == 120)
    _, out, _ = _main("runs", "ls", "--runs-dir", str(runs), "--json", "--features", new_hash[:10])
    assert [(r["head"], r["fraction"]) for r in json.loads(out)] == [("logreg", 0.5)]
    _, out, _ = _main("runs", "ls", "--runs-dir", str(runs), "--json", "--head", "logreg", "--sort", "fraction")
    assert [r["fraction"] for r in json.loads(out)] == [1.0, 0.5]
    _, out, _ = _main("runs", "ls", "--runs-dir", str(runs), "--json", "--sort", "fit_seconds", "--limit", "2")
    fastest = sorted(r["fit_seconds"] for r in rows)[:2]
    assert [r["fit_seconds"] for r in json.loads(out)] == fastest
    _, out, _ = _main("runs", "ls", "--runs-dir", str(runs), "--features", "elsewhere")
    assert "No runs" in out and "filters" in out
    status, _, err = _main("runs", "ls", "--runs-dir", str(runs), "--sort", "accuracy")
    assert status == 2 and "`sort` must be one of" in err and "--sort" in err
    status, _, err = _main("runs", "ls", "--runs-dir", str(runs), "--limit", "0")
    assert status == 2 and "`limit`" in err


@pytest.mark.slow
def test_leaderboard_files_follow_the_run_folders_without_a_rebuild_flag(runs):
    csv_path, md_path = runs / layout.LEADERBOARD_CSV, runs / layout.LEADERBOARD_MD
    before = (csv_path.stat().st_ino, csv_path.stat().st_mtime_ns)
    leaderboard.list_runs(runs)
    assert (csv_path.stat().st_ino, csv_path.stat().st_mtime_ns) == before  # agreeing files are left alone
    written = csv_path.read_text(), md_path.read_text()
    gone = leaderboard.list_runs(runs, head="sklearn.neighbors:NearestCentroid")[0]["run_dir"]
    shutil.rmtree(gone)
    md_path.write_text("edited in a spreadsheet\n")
    assert len(leaderboard.list_runs(runs)) == 2
    assert gone not in csv_path.read_text() + md_path.read_text()
    assert csv_path.read_text().count("\n") == written[0].count("\n") - 1
    assert md_path.read_text().count("\n") == written[1].count("\n") - 1


@pytest.mark.slow
def test_runs_ls_piped_into_head_exits_0_without_a_traceback(runs):
    # More rows than a pipe holds, so `head` closes it while runs ls still writes.
    first = next(p for p in runs.glob(f"{SET}/logreg-*"))
    for i in range(1500):
        copy = runs / SET / f"logreg-20200101T000000-{i:08x}"
        copy.mkdir()
        for name in (layout.CONFIG, layout.METRICS, layout.LINEAGE):
            shutil.copy(first / name, copy / name)
    command = f"'{PYTHON}' -m pipeline runs ls --runs-dir '{runs}' | head -1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["backbone", "images", "hash", "head", "variant", "val", "test", "f1", "run"]
    assert done.stderr == ""


# -- heads=("all",) -------------------------------------------------------------


def test_all_expands_to_every_registry_head_with_its_light_defaults():
    from pipeline.heads.registry import expand_heads

    plans = dict(plan_params(["all"], {"n_estimators": 7}, seed=3))
    assert list(plans) == expand_heads(["all"]) and sorted(plans) == list_heads()  # cheapest first
    for head, params in plans.items():
        light = dict(get_head_cfg(head).light_params)
        assert {k: v for k, v in params.items() if k in light and k != "n_estimators"} == {
            k: v for k, v in light.items() if k != "n_estimators"
        }
    assert any(get_head_cfg(h).light_params for h in list_heads())
    assert plans["random_forest"]["n_estimators"] == 7 and plans["random_forest"]["random_state"] == 3  # given params win
    assert plans["hist_gb"]["max_iter"] == get_head_cfg("hist_gb").light_params["max_iter"]
    assert "max_iter" not in dict(plan_params(["hist_gb"], {}, seed=0))["hist_gb"]  # only `all` is light
    both = [h for h, _ in plan_params(["logreg", "all"], {}, seed=0)]
    assert both[0] == "logreg" and sorted(both) == list_heads()  # each head once, in the order given
    with pytest.raises(Exception, match="'all' for every one"):
        plan_params(["alll"], {}, seed=0)


@pytest.mark.slow
def test_train_head_all_puts_every_head_on_the_leaderboard(tmp_path):
    root = tmp_path / "cache" / SET
    make_set(root)
    params = {"dense.epochs": 2, "dense_seed003.epochs": 2}
    status, out, err = _main(
        "train-head", str(root), "--runs-dir", str(tmp_path / "runs"), "--head", "all",
        *(f"--param={k}={v}" for k, v in params.items()), "--json", "-q",
    )
    assert status == 0, err
    from pipeline.heads.registry import expand_heads

    assert [r["head"] for r in json.loads(out.splitlines()[-1])["runs"]] == expand_heads(["all"])  # cheapest first
    rows = leaderboard.list_runs(tmp_path / "runs")
    assert sorted(r["head"] for r in rows) == sorted(list_heads())
    forest = next(r for r in rows if r["head"] == "random_forest")
    saved = json.loads((Path(forest["run_dir"]) / layout.CONFIG).read_text())
    assert saved["params"]["n_estimators"] == get_head_cfg("random_forest").light_params["n_estimators"]
    assert saved["train_config"]["heads"] == ["all"]
    assert read_feature_set(root).content_hash == rows[0]["features_hash"]
    assert TrainConfig(heads="all").heads == ("all",)
