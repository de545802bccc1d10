"""Sharded extraction (issue 13): N workers on any launcher, then one plain run writes the index."""

import json
import subprocess

import numpy as np
import pytest

from shardfiles import shard_digests
from imagegen import PYTHON, REPO, make_dataset
from pipeline.config import ExtractConfig
from pipeline.errors import ConfigError
from pipeline.features import backbones
from pipeline.features.extract import extract_features, worker_of
from pipeline._atomic import TMP_PREFIX
from pipeline.store import FeatureStore, read_feature_set

MODEL = dict(model="resnet50", size=32, weights="none", batch_size=4, workers=2, shard_size=4)


def _config(data, cache, **overrides):
    return ExtractConfig(data=str(data), cache_dir=str(cache), **{**MODEL, **overrides})




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("workers") / "data", classes=3, per_class=8)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    return read_feature_set(extract_features(config=_config(data, tmp_path_factory.mktemp("single"))).path)


@pytest.mark.slow
def test_two_worker_processes_then_a_plain_run_equal_one_run(data, single, tmp_path):
    cache = tmp_path / "cache"
    argv = [PYTHON, "-m", "pipeline", "features", str(data), "--model", "resnet50", "--size", "32", "--weights",
            "none", "--batch-size", "4", "--shard-size", "4", "--cache-dir", str(cache), "--json", "--num-shards", "2"]
    workers = [subprocess.Popen([*argv, "--shard-index", str(i)], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]  # at the same time
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    reports = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    assert [r["worker"]["shard_index"] for r in reports] == [0, 1]
    assert sum(r["counts"]["extracted"] for r in reports) == 24 and all(r["counts"]["extracted"] for r in reports)
    index = cache / single.name / "features.h5"
    assert not index.exists()  # workers write shards only

    merged = extract_features(config=_config(data, cache))
    assert merged.counts == {"extracted": 0, "reused": 24, "skipped": 0, "removed": 0}
    fs = read_feature_set(merged.path)
    assert fs.paths == single.paths and fs.labels.tolist() == single.labels.tolist()
    np.testing.assert_array_equal(fs.features, single.features)
    assert sorted(shard_digests(merged.path.parent)) == sorted(set(shard_digests(merged.path.parent)))  # no duplicates


@pytest.mark.slow
def test_a_worker_stopped_mid_run_resumes_and_nothing_is_lost_or_stored_twice(data, single, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real, calls = backbones.predict_batches, []

    def stop_at_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(backbones, "predict_batches", stop_at_second_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_features(config=_config(data, cache, num_shards=2, shard_index=1))
    monkeypatch.setattr(backbones, "predict_batches", real)
    set_dir = cache / single.name
    in_progress = set_dir / "shards" / f"{TMP_PREFIX}other-worker.h5"
    in_progress.write_bytes(b"another worker's shard being written")
    kept = len(shard_digests(set_dir))
    assert kept == 4  # the first batch survived the stop

    again = extract_features(config=_config(data, cache, num_shards=2, shard_index=1))
    mine = {d for d in _digests(single) if worker_of(d, 2) == 1}
    assert again.counts["extracted"] == len(mine) - kept
    assert in_progress.exists()  # a worker never touches what other workers are writing

    extract_features(config=_config(data, cache, num_shards=2, shard_index=0))
    merged = extract_features(config=_config(data, cache))
    assert merged.counts["extracted"] == 0 and not in_progress.exists()  # the plain run cleans up
    rows = shard_digests(set_dir)
    assert len(rows) == len(set(rows)) == len(set(_digests(single)))
    np.testing.assert_array_equal(read_feature_set(merged.path).features, single.features)


@pytest.mark.slow
def test_a_lost_worker_is_made_up_by_the_plain_run(data, single, tmp_path):
    cache = tmp_path / "cache"
    extract_features(config=_config(data, cache, num_shards=3, shard_index=2))  # workers 0 and 1 never ran
    merged = extract_features(config=_config(data, cache))
    assert merged.counts["reused"] == sum(worker_of(d, 3) == 2 for d in set(_digests(single)))
    assert merged.counts["extracted"] == 24 - merged.counts["reused"]
    np.testing.assert_array_equal(read_feature_set(merged.path).features, single.features)


@pytest.mark.parametrize("num_shards, shard_index", [(2, 2), (2, -1), (0, 0)])
def test_shard_index_out_of_range_is_refused(data, tmp_path, num_shards, shard_index):
    with pytest.raises(ConfigError) as info:
        _config(data, tmp_path, num_shards=num_shards, shard_index=shard_index)
    assert info.value.field in ("shard_index", "num_shards")


def _digests(fs):
    files = FeatureStore(fs.path.parent).read_index_state().files
    return [files[p].sha256 for p in fs.paths]
