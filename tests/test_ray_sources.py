"""The Ray engine on tar shards and Parquet image columns: the local engine's sets, bit for bit, and its reuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen import make_dataset
from needs import require
from pipeline.config import ExtractConfig
from pipeline.errors import ConfigError
from pipeline.features.extract import extract_features
from pipeline.store import FeatureStore, read_feature_set
from pipeline.store.lookup import list_view_sets
from raycluster import local_cluster
from servers import TINY_MODEL, moto_s3, serve_folder
from shardfiles import shard_digests
from sourcefiles import shards_of, write_hf_parquet

pytestmark = [pytest.mark.ray, pytest.mark.slow]

pytest.importorskip("fsspec")
pytest.importorskip("pyarrow")

_S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}  # what `servers.moto_s3` sets for the driver
# Two model workers; shards of 4 rows, so each worker writes several.
RAY = dict(engine="ray", ray_workers=2, shard_size=4)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster with the test S3 server's credentials, as every node of a real cluster has its own."""
    require("ray")
    with local_cluster(tmp_path_factory.mktemp("ray"), _S3_TEST_CREDENTIALS) as flag:
        yield flag


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("ray-sources") / "data", classes=3, per_class=4)
    (root / "class1" / "broken.png").write_bytes(b"not an image")  # a corrupt member / cell: skipped by either engine
    return root


def _extract(data, cache, **overrides):
    """`features` of `data` into `cache`, the set named by its key only: patterns and URLs of one data share it."""
    config = ExtractConfig(data=str(data), cache_dir=str(cache), name="set", **{**TINY_MODEL, **overrides})
    return extract_features(config=config)


def _rows_by_digest(set_dir: Path) -> dict[str, tuple[str, str, bytes]]:
    """sha256 -> (item id, class name, feature bytes) of every row of a feature set."""
    fs, files = read_feature_set(set_dir), FeatureStore(set_dir).read_index_state().files
    return {files[p].sha256: (p, fs.class_names[label], f.tobytes())
            for p, label, f in zip(fs.paths, fs.labels, fs.features)}


def _assert_same_sets(ray_result, local_result):
    """The same rows (id, label, features bit for bit) under the same content hashes, the same skips, no row twice."""
    assert ray_result.path.parent.name == local_result.path.parent.name  # the same key: engine settings are not in it
    assert [(s.relpath, s.reason) for s in ray_result.skipped] == [(s.relpath, s.reason) for s in local_result.skipped]
    pairs = [(ray_result.path.parent, local_result.path.parent)]
    pairs += zip(*(list_view_sets(r.path) for r in (ray_result, local_result)), strict=True)
    for mine, theirs in pairs:
        assert _rows_by_digest(mine) == _rows_by_digest(theirs)
        rows = shard_digests(mine)
        assert len(rows) == len(set(rows)) == 12  # nothing stored twice, the corrupt item never


def test_tar_shards_on_two_ray_workers_give_the_local_sets_then_extend_and_reuse(cluster, folder, tmp_path):
    shards_of(folder, tmp_path / "shards")  # 13 samples, 3 a shard: 000.tar .. 004.tar
    some, every = (str(tmp_path / "shards" / f"{{000..{last}}}.tar") for last in ("002", "004"))
    local = _extract(every, tmp_path / "local", augment=1)
    assert local.counts == {"extracted": 12, "reused": 0, "skipped": 1, "removed": 0, "views": 12}

    cache = tmp_path / "cache"
    first = _extract(some, cache, **RAY)  # 9 samples, the corrupt one among them
    assert first.counts == {"extracted": 8, "reused": 0, "skipped": 1, "removed": 0}
    # Two more shards: only their samples are extracted, resumed per sample; the view set is new.
    extended = _extract(every, cache, augment=1, **RAY)
    assert extended.counts == {"extracted": 4, "reused": 8, "skipped": 1, "removed": 0, "views": 12}
    _assert_same_sets(extended, local)
    assert read_feature_set(extended.path).paths[:2] == ["000.tar/s0000.png", "000.tar/s0001.png"]

    again = _extract(every, cache, augment=1, **RAY)
    assert again.counts == {"extracted": 0, "reused": 12, "skipped": 1, "removed": 0, "views": 0}


def test_a_parquet_image_column_on_two_ray_workers_gives_the_local_set_and_a_rerun_extracts_nothing(
        cluster, folder, tmp_path):
    data = write_hf_parquet(folder, tmp_path / "train.parquet")  # row groups of 3: workers read cells by group
    local = _extract(data, tmp_path / "local")
    assert local.counts == {"extracted": 12, "reused": 0, "skipped": 1, "removed": 0}

    first = _extract(data, tmp_path / "cache", **RAY)
    assert first.counts == local.counts
    _assert_same_sets(first, local)
    assert read_feature_set(first.path).paths[0] == "train.parquet/00000000"
    assert _extract(data, tmp_path / "cache", **RAY).counts["extracted"] == 0


def test_a_ray_run_on_tar_shards_stopped_after_a_shard_resumes_per_sample(cluster, folder, tmp_path):
    shards_of(folder, tmp_path / "shards")
    pattern = tmp_path / "shards" / "{000..004}.tar"
    cache = tmp_path / "cache"
    cluster.touch()
    try:
        with pytest.raises(Exception, match="model worker stopped by the test"):
            _extract(pattern, cache, engine="ray", shard_size=4)  # one worker: it stores one shard, then stops
    finally:
        cluster.unlink()
    set_dir = next(cache.iterdir())
    kept = shard_digests(set_dir)
    assert 0 < len(kept) <= 4 and not (set_dir / "features.h5").exists()

    resumed = _extract(pattern, cache, engine="ray", shard_size=4)
    assert resumed.counts == {"extracted": 12 - len(kept), "reused": len(kept), "skipped": 1, "removed": 0}
    _assert_same_sets(resumed, _extract(pattern, tmp_path / "local"))


def test_tar_shards_behind_a_url_are_read_by_the_ray_workers(cluster, folder, tmp_path):
    shards_of(folder, tmp_path / "shards")
    local = _extract(tmp_path / "shards" / "{000..004}.tar", tmp_path / "local")
    with serve_folder(tmp_path / "shards") as (url, _):
        remote = _extract(f"{url}/{{000..004}}.tar", tmp_path / "cache", **RAY)
    assert remote.counts == local.counts
    _assert_same_sets(remote, local)


def test_a_parquet_file_in_s3_is_read_by_the_ray_workers(cluster, folder, tmp_path, monkeypatch):
    data = write_hf_parquet(folder, tmp_path / "train.parquet")
    local = _extract(data, tmp_path / "local")
    with moto_s3(monkeypatch) as s3:
        s3.mkdir("bucket")
        s3.pipe_file("bucket/hf/train.parquet", data.read_bytes())
        remote = _extract("s3://bucket/hf/train.parquet", tmp_path / "cache", **RAY)
        assert _extract("s3://bucket/hf/train.parquet", tmp_path / "cache", **RAY).counts["extracted"] == 0
    assert remote.counts == local.counts
    _assert_same_sets(remote, local)


def test_a_folder_behind_a_url_is_still_refused_naming_the_engine(tmp_path, monkeypatch):
    from pipeline.features import ray_engine

    monkeypatch.setattr(ray_engine, "require_ray", lambda: None)
    with pytest.raises(ConfigError, match="--engine local") as info:
        _extract("http://127.0.0.1:9/photos", tmp_path / "c", engine="ray")
    assert info.value.field == "engine" and "url-folder" in str(info.value)
    assert not (tmp_path / "c").exists()
