"""Parquet image columns as data (bytes and Hugging Face `{bytes, path}` structs): the folder's features, row reuse."""

from __future__ import annotations


import pytest

from imagegen import make_dataset, write_image
from pipeline.features.sources import open_source
from pipeline.store import read_feature_set
from servers import extract_tiny, rows_by_content, serve_folder
from sourcefiles import write_hf_parquet

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("fsspec")


@pytest.fixture
def folder(tmp_path):
    return make_dataset(tmp_path / "data", classes=2, per_class=4)


@pytest.mark.slow
def test_parquet_structs_give_the_folder_features_then_reuse_then_reextract_one_changed_row(folder, tmp_path):
    data = write_hf_parquet(folder, tmp_path / "train.parquet")
    local = extract_tiny(folder, tmp_path / "local-cache")
    first = extract_tiny(data, tmp_path / "cache")
    assert first.counts == {"extracted": 8, "reused": 0, "skipped": 0, "removed": 0}
    assert rows_by_content(first) == rows_by_content(local)
    assert read_feature_set(first.path).paths[0] == "train.parquet/00000000"
    assert extract_tiny(data, tmp_path / "cache").counts["extracted"] == 0
    write_image(folder / "class1" / "002.png", seed=99)
    write_hf_parquet(folder, data)
    assert extract_tiny(data, tmp_path / "cache").counts == {"extracted": 1, "reused": 7, "skipped": 0, "removed": 0}


@pytest.mark.slow
def test_parquet_bytes_column_over_http_with_split_and_class_names(folder, tmp_path):
    images = sorted(folder.rglob("*.png"))
    site = tmp_path / "site"
    site.mkdir()
    pq.write_table(pa.Table.from_pydict({
        "jpeg": [p.read_bytes() for p in images], "label": [p.parent.name for p in images],
        "split": ["train"] * 6 + ["test"] * 2,
    }), site / "part-0.parquet", row_group_size=4)
    local = extract_tiny(folder, tmp_path / "local-cache")
    with serve_folder(site) as (base, _):
        source = open_source(base + "/part-{0..0}.parquet")
        assert source.kind.name == "parquet-images"
        dataset = source.list()
        assert dataset.class_names == ("class0", "class1") and dataset.has_folder_splits
        assert [e.folder_split for e in dataset.entries] == ["train"] * 6 + ["test"] * 2
        remote = extract_tiny(base + "/part-{0..0}.parquet", tmp_path / "cache")
    assert rows_by_content(remote) == rows_by_content(local)


def test_a_parquet_manifest_of_paths_is_still_a_manifest_and_a_table_without_labels_is_refused(folder, tmp_path):
    pq.write_table(pa.Table.from_pydict({"path": ["class0/000.png"], "label": ["a"]}), folder / "list.parquet")
    assert open_source(folder / "list.parquet").kind.name == "manifest"
    pq.write_table(pa.Table.from_pydict({"image": [b"x"], "cat": [1]}), tmp_path / "nolabel.parquet")
    from pipeline.errors import DataError

    with pytest.raises(DataError, match="'label' column. Columns: image, cat"):
        open_source(str(tmp_path / "nolabel.parquet")).list()
