"""A KerasHub encoder through the other engines: `--num-shards` workers and the Ray engine store the local numbers."""

import os
from pathlib import Path

import numpy as np
import pytest

import hubgen
from imagegen import REPO, make_dataset
from needs import require
from pipeline.config import ExtractConfig
from pipeline.features.extract import extract_features
from pipeline.store import read_feature_set


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A DINOv2 preset with register tokens, 12 images, and the local engine's feature set."""
    root = tmp_path_factory.mktemp("hub_engines")
    preset = hubgen.save_preset(root / "dinov2", "dinov2")
    data = make_dataset(root / "data", classes=3, per_class=4)
    local = read_feature_set(extract_features(config=_config(data, preset, root / "local")).path)
    return data, preset, local


def _config(data, preset, cache, **overrides):
    return ExtractConfig(data=str(data), model=f"hub:{preset}", cache_dir=str(cache), batch_size=4, shard_size=4,
                         **overrides)


def _assert_same(fs, local):
    assert fs.path.parent.name == local.path.parent.name  # engine settings are not in the feature key
    assert fs.paths == local.paths and fs.labels.tolist() == local.labels.tolist()
    np.testing.assert_allclose(fs.features, local.features, rtol=1e-5, atol=1e-6)


def test_shard_workers_then_a_plain_run_store_the_local_features(setup, tmp_path):
    data, preset, local = setup
    counts = [extract_features(config=_config(data, preset, tmp_path, num_shards=2, shard_index=i)).counts["extracted"]
              for i in range(2)]
    assert sum(counts) == 12 and all(counts)
    merged = extract_features(config=_config(data, preset, tmp_path))
    assert merged.counts["extracted"] == 0 and merged.counts["reused"] == 12
    _assert_same(read_feature_set(merged.path), local)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_engine_stores_the_local_features(setup, tmp_path):
    require("ray")
    import ray

    data, preset, local = setup
    tests = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), tests])}})
    try:
        result = extract_features(config=_config(data, preset, tmp_path, engine="ray", ray_workers=2))
    finally:
        ray.shutdown()
    assert result.counts["extracted"] == 12
    _assert_same(read_feature_set(result.path), local)
