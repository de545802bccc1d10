"""predict, evaluate and report on the data sources `features` reads: URL folders, tar shards, Parquet image columns.

Each source serves the images of a local folder, and each answer is compared
with the answer for that folder: the same metrics, the same probabilities,
the same thumbnails. Servers run on 127.0.0.1 (tests/servers.py).
"""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import types

import pytest

from helpers import run_cli
from imagegen import make_dataset
from pipeline import cli
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.features.extract import extract_features
from pipeline.runs import report as report_module
from pipeline.runs.evaluate import evaluate_run
from pipeline.runs.inputs import expand_inputs
from pipeline.runs.predict import Predictor
from pipeline.runs.report import build_report
from pipeline.runs.train import train_heads
from servers import TINY_MODEL, moto_s3, serve_folder, upload
from sourcefiles import shards_of, write_hf_parquet, write_shard

pytest.importorskip("fsspec")
pytestmark = pytest.mark.slow


def _train(root, data):
    result = extract_features(config=ExtractConfig(data=str(data), cache_dir=str(root / "cache"), **TINY_MODEL))
    (run,) = train_heads(result.path, config=TrainConfig(heads=("logreg",), runs_dir=str(root / "runs")))
    return run.run_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A logreg run on 3 classes x 6 PNGs, and a new labelled folder of 3 x 3 PNGs served as every source."""
    root = tmp_path_factory.mktemp("runs-sources")
    run = _train(root, make_dataset(root / "train"))
    new = make_dataset(root / "site" / "new", per_class=3, start=50)
    images = sorted(p.relative_to(new).as_posix() for p in new.rglob("*.png"))
    shards_of(new, root / "site" / "shards")  # 3 samples per shard, keys s0000.. in sorted-image order
    write_hf_parquet(new, root / "site" / "new.parquet")
    return types.SimpleNamespace(root=root, run=run, new=new, images=images, site=root / "site")


# Each source's item id -> the relpath of the same image in the local folder.
_AS_LOCAL = {
    "url-folder": lambda images: {p: p for p in images},
    "tar-shards": lambda images: {f"{i // 3:03d}.tar/s{i:04d}.png": p for i, p in enumerate(images)},
    "parquet-images": lambda images: {f"new.parquet/{i:08d}": p for i, p in enumerate(images)},
}
_DATA = {
    "url-folder": "{base}/new/",
    "tar-shards": "{base}/shards/{{000..002}}.tar",
    "parquet-images": "{base}/new.parquet",
}


def test_evaluate_on_an_s3_folder_equals_evaluate_on_the_local_folder(tiny, tmp_path, monkeypatch):
    local = evaluate_run(tiny.run, tiny.new, output=_folder(tmp_path / "local"), cache_dir=tmp_path / "c1")
    with moto_s3(monkeypatch) as s3:  # credentials from the environment, as fsspec reads them
        s3.mkdir("bucket")
        upload(s3, tiny.new, "bucket/new")
        remote = evaluate_run(tiny.run, "s3://bucket/new", output=_folder(tmp_path / "remote"),
                              cache_dir=tmp_path / "c2")
    assert remote.extracted == len(tiny.images) and remote.metrics == local.metrics
    assert _predictions(remote.out_dir) == _predictions(local.out_dir)


def test_the_commands_take_a_source_and_print_its_items(tiny, tmp_path):
    with serve_folder(tiny.site) as (base, _):
        status, stdout, _ = run_cli("evaluate", tiny.run, base + "/shards/{000..002}.tar", "--output",
                                    _folder(tmp_path / "eval"), "--cache-dir", tmp_path / "c", "--json")
        assert status == cli.ExitStatus.OK and json.loads(stdout.splitlines()[-1])["n_images"] == len(tiny.images)
        status, stdout, _ = run_cli("predict", tiny.run, base + "/new/", "-o", tmp_path / "preds.csv")
    assert status == cli.ExitStatus.OK and f"{base}/new/{tiny.images[0]}" in stdout
    with open(tmp_path / "preds.csv", newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == [f"{base}/new/{rel}" for rel in tiny.images]


def _predictions(out_dir):
    with open(out_dir / "predictions.csv", newline="") as f:
        return {row.pop("path"): row for row in csv.DictReader(f)}


@pytest.mark.parametrize("kind", sorted(_DATA))
def test_evaluate_on_a_served_source_equals_evaluate_on_the_local_folder(tiny, tmp_path, kind):
    local = evaluate_run(tiny.run, tiny.new, output=_folder(tmp_path / "local"), cache_dir=tmp_path / "c1")
    with serve_folder(tiny.site) as (base, _):
        remote = evaluate_run(tiny.run, _DATA[kind].format(base=base), output=_folder(tmp_path / "remote"),
                              cache_dir=tmp_path / "c2")
    assert remote.extracted == local.extracted == len(tiny.images)  # read from the source, not a cache
    assert remote.n_images == local.n_images == len(tiny.images) and remote.skipped == []
    assert remote.accuracy == local.accuracy
    assert remote.metrics["confusion_matrix"] == local.metrics["confusion_matrix"]
    assert remote.metrics["log_loss"] == pytest.approx(local.metrics["log_loss"], rel=1e-12)
    as_local = _AS_LOCAL[kind](tiny.images)
    got = {as_local[path]: row for path, row in _predictions(remote.out_dir).items()}
    assert got == _predictions(local.out_dir)  # true class, predicted class and probability of every image


def test_evaluate_twice_on_a_served_folder_reads_no_image_the_second_time(tiny, tmp_path):
    requests = []
    with serve_folder(tiny.site, requests=requests) as (base, _):
        first = evaluate_run(tiny.run, base + "/new/", output=_folder(tmp_path / "out"), cache_dir=tmp_path / "c")
        before = len(requests)
        again = evaluate_run(tiny.run, base + "/new/", output=tmp_path / "out", cache_dir=tmp_path / "c")
    assert first.extracted == len(tiny.images) and again.extracted == 0 and again.accuracy == first.accuracy
    assert [p for method, p in requests[before:] if method == "GET" and p.endswith(".png")] == []


def test_predict_on_sources_names_items_as_features_does_and_equals_local_files(tiny, tmp_path):
    site = shutil.copytree(tiny.site, tmp_path / "site")
    bad = b"not an image"
    (site / "bad.png").write_bytes(bad)
    write_shard(site / "shards" / "003.tar", [("broken", {"png": bad, "txt": b"class0"})])
    (site / "shards" / "004.tar").write_bytes(b"this is no tar archive")
    predictor = Predictor.load(tiny.run)  # one extractor for every call

    def predict(*paths):
        return predictor.predict(expand_inputs(paths))

    # Each source alone, so its batches hold the images the local folder's batches hold: equal bit for bit.
    local = {p.path: p for p in predict(tiny.new, site / "bad.png")}
    expected = {rel: local[str(tiny.new / rel)].probabilities for rel in tiny.images}
    with serve_folder(site) as (base, _):
        served = {
            ("url-folder", f"{base}/new/"): predict(base + "/new/"),
            ("tar-shards", f"{base}/shards/"): predict(base + "/shards/{000..004}.tar"),
            ("parquet-images", f"{base}/"): predict(base + "/new.parquet"),
        }
        one = predict(f"{base}/new/{tiny.images[0]}")
    for (kind, prefix), got in served.items():
        as_local = _AS_LOCAL[kind](tiny.images)
        assert [p.path for p in got[:len(as_local)]] == [prefix + item_id for item_id in as_local]
        assert {as_local[p.path[len(prefix):]]: p.probabilities for p in got[:len(as_local)]} == expected, kind
    (alone,) = predict(tiny.new / tiny.images[0])  # a batch of one image, as the URL of that image gives
    assert [(p.path, p.probabilities) for p in one] == [(f"{base}/new/{tiny.images[0]}", alone.probabilities)]
    corrupt, broken = served["tar-shards", f"{base}/shards/"][len(tiny.images):]
    assert corrupt.path == f"{base}/shards/003.tar/broken.png" and corrupt.predicted_class is None
    assert corrupt.error == local[str(site / "bad.png")].error  # the reason a bad local file gets
    assert broken.path == f"{base}/shards/004.tar" and broken.predicted_class is None
    assert re.search("cannot be read|breaks off", broken.error)


def test_test_time_views_of_served_images_equal_those_of_the_local_files(tiny):
    predictor = Predictor.load(tiny.run)
    local = predictor.predict(expand_inputs([tiny.new]), tta=2)
    with serve_folder(tiny.site) as (base, _):
        served = predictor.predict(expand_inputs([base + "/new/"]), tta=2)
    assert [p.views for p in served] == [2] * len(tiny.images)
    assert [p.probabilities for p in served] == [p.probabilities for p in local]


@pytest.mark.parametrize("kind", ["tar-shards", "parquet-images"])
def test_report_thumbnails_of_tar_shards_and_parquet_rows_are_those_of_the_local_files(tiny, kind):
    data = str(tiny.site / ("shards/{000..002}.tar" if kind == "tar-shards" else "new.parquet"))
    as_local = _AS_LOCAL[kind](tiny.images)
    dataset = report_module.Dataset("new", "set", "resnet50", data, ["class0"], {}, [], None, [], [],
                                    frozenset(as_local))
    thumbnails = report_module._Thumbnails()
    for item_id, rel in as_local.items():
        assert thumbnails.get(dataset, item_id) == report_module._thumbnail(tiny.new / rel) != ""
    assert thumbnails.get(dataset, "000.tar/not-listed.png") == "" and dataset.notes == []


def test_report_thumbnails_of_a_served_set_are_read_through_it_and_left_out_when_it_is_gone(tmp_path):
    data = tmp_path / "site"
    make_dataset(data / "train", per_class=4)
    make_dataset(data / "test", per_class=2, start=50)
    shutil.copy(data / "train" / "class0" / "000.png", data / "test" / "class0" / "leaked.png")  # a pair to show
    with serve_folder(data) as (base, _):
        _train(tmp_path, base + "/")
        shown = build_report(tmp_path / "runs", tmp_path / "report.html")
    page = html.unescape(shown.path.read_text())
    for path in ("train/class0/000.png", "test/class0/leaked.png"):  # the same JPEG as the local file gives
        assert f"src='{report_module._thumbnail(data / path)}'" in page

    # The server has stopped. Its threads would still answer on connections kept open in this process, which a
    # new process never has: a fresh filesystem opens new ones, and they are refused.
    from fsspec.implementations.http import HTTPFileSystem

    HTTPFileSystem.clear_instance_cache()
    gone = build_report(tmp_path / "runs", tmp_path / "gone.html")
    page = html.unescape(gone.path.read_text())
    assert gone.n_runs == 1 and "data:image/jpeg" not in page
    assert len(re.findall(r"Images of '[^']*' cannot be read now, so none is shown", page)) == 1
    assert "missing:" in page  # the placeholders name the images


def _folder(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
