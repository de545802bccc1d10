"""Manifests (CSV and Parquet) in place of class folders."""

import csv
import re

import numpy as np
import pytest

from imagegen import make_dataset, write_image
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.errors import DataError
from pipeline.features.discovery import split_key
from pipeline.features.extract import extract_features
from pipeline.features.manifest import read_manifest
from pipeline.heads.splits import training_splits
from pipeline.store import read_feature_set

MODEL = dict(model="resnet50", size=32, weights="none", batch_size=4, workers=2)


def _write_csv(path, rows, header=("path", "label", "split", "group")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _grouped_manifest(tmp_path, groups=12, per_group=3):
    """`groups` photo sessions of `per_group` images each, two classes, paths relative and absolute."""
    rows = []
    for g in range(groups):
        for i in range(per_group):
            image = write_image(tmp_path / "photos" / f"s{g}-{i}.png", seed=100 * g + i)
            path = str(image) if i == 0 else f"photos/{image.name}"  # some absolute, some relative
            rows.append((path, f"class{g % 2}", "", f"session{g}"))
    return _write_csv(tmp_path / "photos.csv", rows)


def test_images_of_one_group_always_share_a_split(tmp_path):
    ds = read_manifest(_grouped_manifest(tmp_path))
    assert ds.class_names == ("class0", "class1") and len(ds.entries) == 36
    by_group = {}
    for e in ds.entries:
        by_group.setdefault(e.relpath.rsplit("/", 1)[-1].split("-")[0], set()).add(e.split_key)
    assert all(len(keys) == 1 for keys in by_group.values())  # one split key per group
    assert len({k for keys in by_group.values() for k in keys}) == 12  # and groups differ


@pytest.mark.slow
def test_a_manifest_is_extracted_and_trained_like_a_folder(tmp_path):
    manifest = _grouped_manifest(tmp_path)
    config = ExtractConfig(data=str(manifest), cache_dir=str(tmp_path / "cache"), **MODEL)
    first = extract_features(config=config)
    assert first.counts["extracted"] == 36 and first.path.parent.name.startswith("photos-resnet50-")
    assert extract_features(config=config).counts == {"extracted": 0, "reused": 36, "skipped": 0, "removed": 0}

    fs = read_feature_set(first.path)
    splits = training_splits(fs, config=TrainConfig(splits=(0.5, 0.25, 0.25)))
    group_of = {p: p.rsplit("/", 1)[-1].split("-")[0] for p in fs.paths}
    split_of_group = {}
    for split, rows in splits.items():
        for row in rows:
            split_of_group.setdefault(group_of[fs.paths[row]], set()).add(split)
    assert all(len(s) == 1 for s in split_of_group.values())


def test_a_split_column_gives_folder_splits(tmp_path):
    make_dataset(tmp_path / "imgs", classes=2, per_class=3)
    rows = [(f"imgs/class{c}/{i:03d}.png", f"class{c}", split, "")
            for c in range(2) for i, split in enumerate(("train", "val", "Test"))]
    ds = read_manifest(_write_csv(tmp_path / "m.csv", rows))
    assert ds.has_folder_splits
    assert {e.relpath: e.folder_split for e in ds.entries}["imgs/class1/001.png"] == "validation"
    assert {e.folder_split for e in ds.entries} == {"train", "validation", "test"}
    assert ds.entries[0].split_key == split_key("imgs/class0/000.png")


def test_parquet_manifest_equals_the_csv_one(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is installed by make setup")
    import pyarrow as pa

    csv_path = _grouped_manifest(tmp_path, groups=4)
    with open(csv_path, newline="") as f:
        records = list(csv.DictReader(f))
    table = pa.Table.from_pylist(records)
    pq.write_table(table, tmp_path / "photos.parquet")
    assert read_manifest(tmp_path / "photos.parquet") == read_manifest(csv_path)


@pytest.mark.parametrize("rows, header, message", [
    ([("a.png", "cat")], ("path", "kind"), "no 'label' column"),
    ([("a.png", "")], ("path", "label"), "line 2: the 'label' cell is empty"),
    ([("a.png", "cat"), ("./a.png", "dog")], ("path", "label"), "lists './a.png' twice (lines 2 and 3)"),
    ([("a.png", "cat", "train"), ("b.png", "cat", "")], ("path", "label", "split"), "line 3: split ''"),
    ([("a.png", "cat", ""), ("b.png", "cat", "train")], ("path", "label", "split"), "line 3 names split 'train'"),
    ([("a.png", "cat", "holdout")], ("path", "label", "split"), "split 'holdout' is not train"),
    ([("a.png", "cat", "train", "g"), ("b.png", "cat", "test", "g")], ("path", "label", "split", "group"),
     "group 'g' in two splits (train on line 2, test on line 3)"),
])
def test_untrustworthy_manifests_are_refused_naming_the_line(tmp_path, rows, header, message):
    write_image(tmp_path / "a.png", seed=1)
    write_image(tmp_path / "b.png", seed=2)
    with pytest.raises(DataError, match="m.csv") as info:
        read_manifest(_write_csv(tmp_path / "m.csv", rows, header=header))
    assert message in str(info.value)
    assert info.value.field == "data"


@pytest.mark.slow
def test_missing_files_are_listed_and_skipped_at_extraction(tmp_path):
    write_image(tmp_path / "a.png", seed=1)
    write_image(tmp_path / "b.png", seed=2)
    manifest = _write_csv(tmp_path / "m.csv", [("a.png", "cat"), ("gone.png", "dog"), ("b.png", "dog")],
                          header=("path", "label"))
    result = extract_features(config=ExtractConfig(data=str(manifest), cache_dir=str(tmp_path / "c"), **MODEL))
    assert result.counts["extracted"] == 2 and result.counts["skipped"] == 1
    fs = read_feature_set(result.path)
    assert sorted(fs.paths) == ["a.png", "b.png"]
    np.testing.assert_array_equal(fs.labels, [0, 1])


@pytest.mark.slow
def test_cache_export_writes_every_row_in_npz_and_parquet(tmp_path):
    import json
    import subprocess

    from imagegen import PYTHON, REPO

    make_dataset(tmp_path / "data", classes=2, per_class=3)
    result = extract_features(config=ExtractConfig(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "c"), **MODEL))
    fs = read_feature_set(result.path)

    def cli(*args):
        return subprocess.run([PYTHON, "-m", "pipeline", "cache", "export", *args, "--cache-dir", str(tmp_path / "c")],
                              cwd=REPO, capture_output=True, text=True)

    npz_out = tmp_path / "f.npz"
    # `set:` names the set even where the repository holds a `data/` folder (made by `make features`).
    done = cli("set:data", "--output", str(npz_out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["format"] == "npz"
    with np.load(npz_out) as z:
        np.testing.assert_array_equal(z["features"], fs.features)
        np.testing.assert_array_equal(z["labels"], fs.labels)
        assert z["paths"].tolist() == fs.paths and z["class_names"].tolist() == fs.class_names
        np.testing.assert_array_equal(z["split_keys"], fs.split_keys)
        assert str(z["content_hash"]) == fs.content_hash

    again = cli("set:data", "--output", str(npz_out))
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr

    pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is installed by make setup")
    assert cli("set:data", "--output", str(tmp_path / "f.parquet")).returncode == 0
    table = pq.read_table(tmp_path / "f.parquet")
    np.testing.assert_array_equal(np.array(table["features"].to_pylist(), dtype=np.float32), fs.features)
    assert table["path"].to_pylist() == fs.paths
    assert json.loads(table.schema.metadata[b"class_names"]) == fs.class_names


@pytest.mark.slow
@pytest.mark.parametrize("verify", [False, True])
def test_manifest_edits_reindex_without_reextracting(tmp_path, verify):
    """A changed label (to an existing class), split or group is re-indexed; no image is extracted again."""
    for i in range(4):
        write_image(tmp_path / f"{i}.png", seed=i)
    rows = [(f"{i}.png", f"c{i % 2}", "train", "") for i in range(4)]
    manifest = _write_csv(tmp_path / "m.csv", rows)
    config = ExtractConfig(data=str(manifest), cache_dir=str(tmp_path / "c"), verify=verify, **MODEL)
    assert extract_features(config=config).counts["extracted"] == 4

    rows[0] = ("0.png", "c1", "train", "")  # label, to an existing class
    rows[1] = ("1.png", "c1", "test", "")  # split
    rows[2] = ("2.png", "c0", "train", "session")  # group, so its split key
    _write_csv(manifest, rows)
    again = extract_features(config=config)
    assert again.counts == {"extracted": 0, "reused": 4, "skipped": 0, "removed": 0}
    fs = read_feature_set(again.path)
    row = {p: i for i, p in enumerate(fs.paths)}
    assert fs.labels[row["0.png"]] == 1
    assert fs.folder_splits[row["1.png"]] == "test"
    assert fs.split_keys[row["2.png"]] == split_key("group:session")


@pytest.mark.parametrize("spelling", ["{root}/x.png", "{link}/x.png", "{link}/../{name}/./x.png", "./sub/../x.png"])
def test_a_file_listed_under_two_spellings_is_listed_twice(tmp_path, spelling):
    root = tmp_path / "data"
    write_image(root / "x.png", seed=1)
    (root / "sub").mkdir()
    (tmp_path / "link").symlink_to(root)
    rows = [("x.png", "cat"), (spelling.format(root=root, link=tmp_path / "link", name=root.name), "dog")]
    with pytest.raises(DataError, match="lists .* twice \\(lines 2 and 3\\)"):
        read_manifest(_write_csv(root / "m.csv", rows, header=("path", "label")))


@pytest.mark.slow
def test_exact_copies_across_splits_are_flagged_at_extraction(tmp_path, caplog):
    import shutil

    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    shutil.copy(tmp_path / "0.png", tmp_path / "copy-of-0.png")
    rows = [("0.png", "a", "train", ""), ("1.png", "a", "train", ""), ("2.png", "b", "train", ""),
            ("copy-of-0.png", "a", "test", "")]
    config = ExtractConfig(data=str(_write_csv(tmp_path / "m.csv", rows)), cache_dir=str(tmp_path / "c"), **MODEL)
    for _ in range(2):  # extracted, then up to date: said both times
        caplog.clear()
        result = extract_features(config=config)
        assert result.split_duplicates == (("0.png", "copy-of-0.png"),)
        assert result.to_json()["split_duplicates"] == {"count": 1, "examples": [["0.png", "copy-of-0.png"]]}
        assert "1 image content is stored at several paths that can fall in different splits" in caplog.text


@pytest.mark.slow
def test_train_head_says_how_many_exact_copies_cross_its_splits(tmp_path):
    import json
    import shutil

    from helpers import run_cli

    rows = []
    for i in range(10):
        write_image(tmp_path / f"{i}.png", seed=i)
        rows.append((f"{i}.png", f"c{i % 2}", "test" if i >= 8 else "train", ""))
    for copy in ("0", "1"):  # two training images also sit in the test split, under other names
        shutil.copy(tmp_path / f"{copy}.png", tmp_path / f"copy-of-{copy}.png")
        rows.append((f"copy-of-{copy}.png", f"c{int(copy) % 2}", "test", ""))
    config = ExtractConfig(data=str(_write_csv(tmp_path / "m.csv", rows)), cache_dir=str(tmp_path / "c"), **MODEL)
    extract_features(config=config)

    status, out, err = run_cli("train-head", "--cache-dir", tmp_path / "c", "--runs-dir", tmp_path / "runs",
                               "--head", "logreg", "--json")

    assert status == 0, err
    assert "2 image contents are stored at several paths in different splits" in err
    assert "'0.png' = 'copy-of-0.png'" in err
    (run,) = json.loads(out.splitlines()[-1])["runs"]
    assert run["duplicates_across_splits"] == 2
    metrics = json.loads((tmp_path / "runs" / run["run_dir"] / "metrics.json").read_text())
    assert metrics["duplicates_across_splits"] == 2
    with open(tmp_path / "runs" / "leaderboard.csv", newline="") as f:
        assert [row["duplicates_across_splits"] for row in csv.DictReader(f)] == ["2"]


@pytest.mark.parametrize("labels, column, shown", [
    ([float("nan"), 1.0], "label", "nan is float"),
    ([0.0, 1.0], "label", "0.0 is float"),
    ([[1, 2], [3]], "label", "[1, 2] is list"),
    ([True, False], "label", "True is bool"),
])
def test_parquet_labels_that_are_no_text_or_integer_are_refused(tmp_path, labels, column, shown):
    pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is installed by make setup")
    import pyarrow as pa

    pq.write_table(pa.table({"path": ["a.png", "b.png"], "label": labels}), tmp_path / "m.parquet")
    with pytest.raises(DataError, match=f"row (1|2) \\(column '{column}'\\).*{re.escape(shown)}"):
        read_manifest(tmp_path / "m.parquet")


def test_parquet_integer_labels_and_bytes_paths(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is installed by make setup")
    import pyarrow as pa

    write_image(tmp_path / "a.png", seed=1)
    pq.write_table(pa.table({"path": ["a.png"], "label": [7]}), tmp_path / "ok.parquet")
    assert read_manifest(tmp_path / "ok.parquet").class_names == ("7",)
    pq.write_table(pa.table({"path": [b"a.png"], "label": ["cat"]}), tmp_path / "bytes.parquet")
    with pytest.raises(DataError, match="row 1 \\(column 'path'\\).*bytes, not text"):
        read_manifest(tmp_path / "bytes.parquet")


def test_a_csv_header_naming_path_twice_is_refused(tmp_path):
    write_image(tmp_path / "a.png", seed=1)
    write_image(tmp_path / "b.png", seed=2)
    manifest = _write_csv(tmp_path / "m.csv", [("a.png", "cat", "b.png")], header=("path", "label", "path"))
    with pytest.raises(DataError, match="names column 'path' more than once"):
        read_manifest(manifest)
