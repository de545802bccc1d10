"""Manifests listing URLs (HTTP, S3) extract as the same images in a local folder do, against real servers on 127.0.0.1."""

from __future__ import annotations

import csv

import pytest

from imagegen import make_dataset, write_image
from pipeline.errors import DataError
from pipeline.features.sources import open_source
from pipeline.store import FeatureStore, read_feature_set
from servers import extract_tiny, moto_s3, rows_by_content, serve_folder, upload

pytest.importorskip("fsspec")


@pytest.fixture
def local_folder(tmp_path):
    return make_dataset(tmp_path / "data", classes=2, per_class=4)


def _manifest(path, folder, url_of, extra=()):
    """A manifest of `folder`'s images, each row `url_of(relative path)` and its class folder as label."""
    rows = [(url_of(p.relative_to(folder).as_posix()), p.parent.name) for p in sorted(folder.rglob("*.png"))]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label"))
        writer.writerows(rows + list(extra))
    return path


@pytest.mark.slow
def test_http_url_manifest_equals_the_local_folder_reuses_and_skips_a_missing_url_with_its_reason(
        local_folder, tmp_path):
    requests = []
    with serve_folder(local_folder, requests=requests) as (base, _):
        secret = base.replace("http://", "http://user:secret@")
        manifest = _manifest(tmp_path / "urls.csv", local_folder, lambda rel: f"{secret}/{rel}?X-Amz-Signature=sig",
                             extra=[(f"{base}/class0/gone.png", "class0")])
        assert open_source(manifest).kind.name == "url-manifest"
        local = extract_tiny(local_folder, tmp_path / "local-cache")
        first = extract_tiny(manifest, tmp_path / "cache")
        assert first.counts == {"extracted": 8, "reused": 0, "skipped": 1, "removed": 0}
        assert rows_by_content(first) == rows_by_content(local)  # same labels and features, bit for bit
        [missing] = first.skipped
        assert missing.relpath == f"{base}/class0/gone.png" and "not found" in missing.reason
        gets = [path.split("?")[0] for method, path in requests if method == "GET"]
        assert sorted(g for g in gets if "gone" not in g) == sorted(  # each image read once
            f"/{p.relative_to(local_folder).as_posix()}" for p in local_folder.rglob("*.png"))

        before = len(requests)
        again = extract_tiny(manifest, tmp_path / "cache")
        assert again.counts["extracted"] == 0 and again.counts["skipped"] == 1
        # HEAD requests gave sizes and ETags: no image byte read (the missing URL is asked for again, as it may appear).
        assert [p for method, p in requests[before:] if method == "GET" and "gone" not in p] == []

        write_image(local_folder / "class1" / "001.png", seed=99)
        changed = extract_tiny(manifest, tmp_path / "cache")
    assert changed.counts == {"extracted": 1, "reused": 7, "skipped": 1, "removed": 0}
    fs = read_feature_set(changed.path)
    assert sorted(fs.paths)[0] == f"{base}/class0/000.png"  # ids are the URLs without credentials or query
    state = FeatureStore(changed.path.parent).read_index_state()
    recorded = " ".join([*fs.paths, state.data_root, *(s.reason for s in changed.skipped)])
    assert "secret" not in recorded and "Signature" not in recorded


@pytest.mark.slow
def test_s3_url_manifest_equals_the_local_folder_and_reextracts_one_changed_object(local_folder, tmp_path, monkeypatch):
    with moto_s3(monkeypatch) as s3:
        s3.mkdir("bucket")
        upload(s3, local_folder, "bucket/photos")
        manifest = _manifest(tmp_path / "urls.csv", local_folder, lambda rel: f"s3://bucket/photos/{rel}")
        local = extract_tiny(local_folder, tmp_path / "local-cache")
        first = extract_tiny(manifest, tmp_path / "cache")
        assert first.counts == {"extracted": 8, "reused": 0, "skipped": 0, "removed": 0}
        assert rows_by_content(first) == rows_by_content(local)
        assert extract_tiny(manifest, tmp_path / "cache").counts["extracted"] == 0
        s3.pipe_file("bucket/photos/class0/001.png", write_image(tmp_path / "new.png", seed=99).read_bytes())
        again = extract_tiny(manifest, tmp_path / "cache")
    assert again.counts == {"extracted": 1, "reused": 7, "skipped": 0, "removed": 0}


def test_a_manifest_mixing_local_paths_and_urls_is_refused_naming_the_first_line_of_each(tmp_path):
    write_image(tmp_path / "a.png", seed=1)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,cat\nhttps://host/b.png,dog\nhttps://host/c.png,dog\n")
    with pytest.raises(DataError, match=r"mixes local paths \(first on line 2\) and URLs \(first on line 3\)"):
        open_source(manifest).list()


def test_a_url_listed_twice_under_two_query_strings_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nhttps://host/b.png?v=1,dog\nhttps://host/b.png?v=2,dog\n")
    with pytest.raises(DataError, match=r"lists 'https://host/b.png' twice \(lines 2 and 3\)"):
        open_source(manifest).list()


def test_the_ray_engine_refuses_a_manifest_of_urls_naming_the_engine(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.features.ray_engine import check_source

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nhttps://host/b.png,dog\n")
    with pytest.raises(ConfigError, match="url-manifest.*--engine local") as info:
        check_source(open_source(manifest))
    assert info.value.field == "engine"
