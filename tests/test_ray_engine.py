"""The Ray engine (`engine="ray"`) on one local Ray cluster: same numbers, same resume guarantees."""

import sys

import numpy as np
import pytest

from shardfiles import shard_digests
from imagegen import make_dataset
from needs import require
from pipeline.cli import ExitStatus, main
from pipeline.config import ExtractConfig
from pipeline.errors import ConfigError
from pipeline.features.extract import extract_features
from pipeline.store import read_feature_set
from pipeline.store.lookup import list_view_sets
from raycluster import local_cluster

MODEL = dict(model="resnet50", size=32, weights="none", batch_size=4, workers=2, shard_size=4)
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require("ray")
    with local_cluster(tmp_path_factory.mktemp("ray")) as flag:
        yield flag


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("ray-data") / "data", classes=3, per_class=8)
    (root / "class1" / "broken.png").write_bytes(b"not an image")  # skipped with its reason, by either engine
    return root


@pytest.fixture(scope="module")
def local(data, tmp_path_factory):
    """The local engine's clean set and its one augmented view set."""
    result = extract_features(config=_config(data, tmp_path_factory.mktemp("local"), augment=1))
    return read_feature_set(result.path), result, _view(result)


def _view(result):
    (view,) = list_view_sets(result.path)
    return read_feature_set(view)


def _config(data, cache, **overrides):
    return ExtractConfig(data=str(data), cache_dir=str(cache), **{**MODEL, **overrides})




def test_ray_engine_gives_the_local_feature_sets_and_a_rerun_extracts_nothing(cluster, data, local, tmp_path):
    clean, local_result, view = local
    cache = tmp_path / "cache"
    # A clean set and a view set: two plans, so every batch is stored as one shard of each.
    result = extract_features(config=_config(data, cache, engine="ray", ray_workers=2, augment=1))
    assert result.counts == {"extracted": 24, "reused": 0, "skipped": 1, "removed": 0, "views": 24}
    assert result.path.parent.name == clean.name  # engine settings are not in the feature key
    assert [(s.relpath, s.reason) for s in result.skipped] == [(s.relpath, s.reason) for s in local_result.skipped]
    for mine, theirs in ((read_feature_set(result.path), clean), (_view(result), view)):
        assert mine.paths == theirs.paths and mine.labels.tolist() == theirs.labels.tolist()
        np.testing.assert_allclose(mine.features, theirs.features, rtol=1e-5, atol=1e-5)
        rows = shard_digests(mine.path.parent)
        assert len(rows) == len(set(rows)) == 24  # nothing stored twice, the broken file never

    again = extract_features(config=_config(data, cache, engine="ray", ray_workers=2, augment=1))
    assert again.counts == {"extracted": 0, "reused": 24, "skipped": 1, "removed": 0, "views": 0}


def test_a_run_stopped_after_some_shards_resumes_and_nothing_is_lost_or_stored_twice(cluster, data, local, tmp_path):
    clean = local[0]
    cache = tmp_path / "cache"
    cluster.touch()
    try:
        with pytest.raises(Exception, match="model worker stopped by the test"):
            extract_features(config=_config(data, cache, engine="ray"))  # one worker: the test runs on 2 cores
    finally:
        cluster.unlink()
    set_dir = cache / clean.name
    kept = shard_digests(set_dir)
    assert 0 < len(kept) <= 4 and not (set_dir / "features.h5").exists()  # one shard kept; no index until the end

    resumed = extract_features(config=_config(data, cache, engine="ray"))
    assert resumed.counts == {"extracted": 24 - len(kept), "reused": len(kept), "skipped": 1, "removed": 0}
    rows = shard_digests(set_dir)
    assert len(rows) == len(set(rows)) == 24
    np.testing.assert_allclose(read_feature_set(resumed.path).features, clean.features, rtol=1e-5, atol=1e-5)


def test_an_error_in_a_model_worker_is_raised_as_the_local_engine_raises_it(cluster, data, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="Unknown layer 'conv9_bogus'") as info:
        extract_features(config=_config(data, cache, engine="ray", layer="conv9_bogus"))
    assert info.value.field == "layer"  # so the CLI names --layer and LAYER
    assert not list(cache.glob("*/features.h5")) and not list(cache.glob("*/shards/*.h5"))


def test_without_ray_the_engine_is_refused_with_the_install_command(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    cache = tmp_path / "cache"
    args = ["features", str(data), "--model", "resnet50", "--size", "32", "--weights", "none", "--engine", "ray",
            "--cache-dir", str(cache)]
    assert main(args) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert "`engine` 'ray' needs Ray" in err and "pip install 'ray[data]" in err and "--engine" in err
    assert not cache.exists()


@pytest.mark.parametrize("field, value", [("engine", "spark"), ("ray_workers", 0), ("gpus_per_worker", -1),
                                          ("gpus_per_worker", float("nan"))])
def test_bad_engine_settings_are_refused_naming_the_field(data, tmp_path, field, value):
    with pytest.raises(ConfigError) as info:
        _config(data, tmp_path, **{field: value})
    assert info.value.field == field and f"{field}=" in str(info.value)


def test_ray_datas_progress_bar_setting_is_restored_after_a_run(cluster, data, tmp_path):
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = True
    assert extract_features(config=_config(data, tmp_path / "c", engine="ray")).counts["extracted"] > 0
    assert context.enable_progress_bars is True
