"""Image folders behind URLs (HTTP, S3) extract as the same folder on disk does, against real servers on 127.0.0.1."""

from __future__ import annotations

import pytest

from imagegen import make_dataset, write_image
from pipeline.config import ExtractConfig, to_dict
from pipeline.features.items import shown_url
from pipeline.store import read_feature_set
from servers import extract_tiny, moto_s3, serve_folder, upload

pytest.importorskip("fsspec")


def _rows(result):
    fs = read_feature_set(result.path)
    return {p: (fs.class_names[label], f.tobytes()) for p, label, f in zip(fs.paths, fs.labels, fs.features)}


@pytest.fixture
def local_folder(tmp_path):
    return make_dataset(tmp_path / "data", classes=2, per_class=4)


def _same_as_local_then_reused_then_one_changed(url, local_folder, tmp_path, change):
    local = extract_tiny(local_folder, tmp_path / "local-cache")
    remote = extract_tiny(url, tmp_path / "cache")
    assert remote.counts == {"extracted": 8, "reused": 0, "skipped": 0, "removed": 0}
    assert _rows(remote) == _rows(local)  # same ids, labels and features, bit for bit
    assert extract_tiny(url, tmp_path / "cache").counts["extracted"] == 0
    change()
    again = extract_tiny(url, tmp_path / "cache")
    assert again.counts == {"extracted": 1, "reused": 7, "skipped": 0, "removed": 0}
    return again


@pytest.mark.slow
def test_http_folder_equals_local_folder_and_reextracts_one_changed_object(local_folder, tmp_path):
    requests = []
    with serve_folder(local_folder, requests=requests) as (base, _):
        local = extract_tiny(local_folder, tmp_path / "local-cache")
        remote = extract_tiny(base + "/", tmp_path / "cache")
        assert remote.counts == {"extracted": 8, "reused": 0, "skipped": 0, "removed": 0}
        assert _rows(remote) == _rows(local)  # same ids, labels and features, bit for bit
        before = len(requests)
        assert extract_tiny(base + "/", tmp_path / "cache").counts["extracted"] == 0
        # The index pages list names only; HEAD requests gave sizes and ETags, so no image byte was read.
        assert [path for method, path in requests[before:] if method == "GET" and path.endswith(".png")] == []
        write_image(local_folder / "class1" / "001.png", seed=99)
        again = extract_tiny(base + "/", tmp_path / "cache")
    assert again.counts == {"extracted": 1, "reused": 7, "skipped": 0, "removed": 0}


@pytest.mark.slow
def test_s3_folder_equals_local_folder_and_reextracts_one_changed_object(local_folder, tmp_path, monkeypatch):
    with moto_s3(monkeypatch) as s3:
        s3.mkdir("bucket")
        upload(s3, local_folder, "bucket/photos")
        changed = write_image(tmp_path / "new.png", seed=99)
        _same_as_local_then_reused_then_one_changed(
            "s3://bucket/photos", local_folder, tmp_path,
            lambda: s3.pipe_file("bucket/photos/class0/001.png", changed.read_bytes()))


@pytest.mark.slow
def test_flaky_server_ends_with_every_item_extracted_or_skipped_with_its_reason(local_folder, tmp_path):
    with serve_folder(local_folder, fail_every=10) as (base, failures):
        result = extract_tiny(base + "/", tmp_path / "cache")
    assert failures  # the server did fail requests
    assert result.counts["extracted"] + result.counts["skipped"] == 8
    assert all(s.reason for s in result.skipped)


@pytest.mark.slow
def test_url_is_kept_as_given_and_recorded_without_credentials(local_folder, tmp_path):
    url = "s3://bucket/x"
    assert to_dict(ExtractConfig(data=url))["data"] == url
    assert shown_url("https://user:secret@host:9/a/b?X-Amz-Signature=s") == "https://host:9/a/b"
    with serve_folder(local_folder) as (base, _):
        result = extract_tiny(base.replace("http://", "http://user:secret@") + "/", tmp_path / "cache")
    from pipeline.store import FeatureStore

    state = FeatureStore(result.path.parent).read_index_state()
    assert state.data_root == base + "/" and "secret" not in str(result.path)


@pytest.mark.slow
def test_http_folder_reads_each_new_image_once_and_skips_a_corrupt_one_with_its_reason(local_folder, tmp_path):
    (local_folder / "class0" / "bad.png").write_bytes(b"not an image")
    requests = []
    with serve_folder(local_folder, requests=requests) as (base, _):
        result = extract_tiny(base + "/", tmp_path / "cache")
    local = extract_tiny(local_folder, tmp_path / "local-cache")
    assert result.counts == local.counts == {"extracted": 8, "reused": 0, "skipped": 1, "removed": 0}
    assert [s.reason for s in result.skipped] == [s.reason for s in local.skipped]
    assert _rows(result) == _rows(local)
    gets = [path for method, path in requests if method == "GET" and path.endswith(".png")]
    assert sorted(gets) == sorted({f"/{p.relative_to(local_folder).as_posix()}" for p in local_folder.rglob("*.png")})


@pytest.mark.slow
def test_http_folder_reuses_a_renamed_object_without_extracting_it(local_folder, tmp_path):
    with serve_folder(local_folder) as (base, _):
        extract_tiny(base + "/", tmp_path / "cache")
        (local_folder / "class1" / "001.png").rename(local_folder / "class1" / "renamed.png")
        again = extract_tiny(base + "/", tmp_path / "cache")
    assert again.counts == {"extracted": 0, "reused": 8, "skipped": 0, "removed": 1}


def test_http_folder_with_split_folders_lists_as_the_same_folder_on_disk(tmp_path):
    from pipeline.features.sources import open_source

    for split, n in (("train", 3), ("validation", 2)):
        make_dataset(tmp_path / "data" / split, classes=2, per_class=n)
    (tmp_path / "data" / "train" / "class0" / ".hidden.png").write_bytes(b"x")

    def listed(data):
        dataset = open_source(data).list()
        return dataset.class_names, [(e.relpath, e.label, e.folder_split, e.size) for e in dataset.entries]

    with serve_folder(tmp_path / "data", latency_s=0.01) as (base, _):
        assert listed(base + "/") == listed(str(tmp_path / "data"))


@pytest.mark.slow
def test_two_feature_sets_of_an_http_folder_read_each_image_once_and_equal_the_local_sets(local_folder, tmp_path):
    import shutil

    from pipeline.features.extract import extract_many
    from servers import TINY_MODEL

    shutil.copy(local_folder / "class0" / "000.png", local_folder / "class1" / "copy.png")  # one content, two ids

    def both(data, cache):
        return extract_many([ExtractConfig(data=data, cache_dir=str(tmp_path / cache), pooling=pooling, **TINY_MODEL)
                             for pooling in ("avg", "max")])

    requests = []
    with serve_folder(local_folder, requests=requests) as (base, _):
        remote = both(base + "/", "cache")
    local = both(str(local_folder), "local-cache")
    assert [r.counts for r in remote] == [r.counts for r in local] == [
        {"extracted": 9, "reused": 0, "skipped": 0, "removed": 0}] * 2
    assert [_rows(r) for r in remote] == [_rows(r) for r in local]
    gets = sorted(path for method, path in requests if method == "GET" and path.endswith(".png"))
    assert gets == sorted(f"/{p.relative_to(local_folder).as_posix()}" for p in local_folder.rglob("*.png"))
