"""Typed configs: values beyond what memory can hold are refused up front, naming the field."""

import pytest

from pipeline.cli import ExitStatus, main
from pipeline.config import ExtractConfig
from pipeline.errors import ConfigError


@pytest.mark.parametrize(
    "field, value", [("size", 20000), ("size", 10**9), ("batch_size", 100000), ("workers", 10**6), ("shard_size", 10**9)]
)
def test_extreme_values_are_refused_naming_the_value_and_the_limit(field, value):
    with pytest.raises(ConfigError, match=rf"`{field}` must be at most \d+\. Received: {field}={value}") as info:
        ExtractConfig(data="photos", model="mobilenet_v2", **{field: value})
    assert info.value.field == field


def test_an_extreme_value_from_a_config_file_exits_2_before_any_work(tiny_dataset, tmp_path, capsys):
    config = tmp_path / "big.toml"
    config.write_text('[features]\nmodel = "resnet50"\nweights = "none"\nbatch_size = 100000\n')
    cache = tmp_path / "cache"
    assert main(["features", str(tiny_dataset), "--config", str(config), "--cache-dir", str(cache)]) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert "batch_size=100000" in err and "at most 4096" in err and "--batch-size" in err
    assert not cache.exists()


def test_stored_configs_record_absolute_paths(tmp_path, monkeypatch):
    from pipeline.config import TrainConfig, to_dict

    monkeypatch.chdir(tmp_path)
    stored = to_dict(ExtractConfig(data="photos", model="m", weights="w.weights.h5", cache_dir="cache"))
    assert stored["data"] == str(tmp_path / "photos") and stored["cache_dir"] == str(tmp_path / "cache")
    assert stored["weights"] == str(tmp_path / "w.weights.h5")
    assert to_dict(ExtractConfig(data="photos", model="m"))["weights"] == "imagenet"
    assert to_dict(TrainConfig(runs_dir="runs"))["runs_dir"] == str(tmp_path / "runs")
