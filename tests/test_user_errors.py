"""Values that cannot work are user errors (status 2, a message naming them), not crashes."""

import contextlib
import io

import numpy as np
import pytest

from imagegen import make_dataset
from pipeline import cli
from pipeline.config import ExtractConfig
from pipeline.errors import ConfigError
from pipeline.features.extract import extract_features
from pipeline.heads import create_head


def _main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def test_a_dense_head_too_big_to_build_is_refused_before_any_allocation():
    X, y = np.zeros((6, 1280), np.float32), np.array([0, 1, 2] * 2)
    with pytest.raises(ConfigError, match=r"hidden_units.*\(100000000,\).*weights") as info:
        create_head("dense", hidden_units=(100000000,), epochs=1).fit(X, y)  # 512 GB of weights
    assert info.value.field == "params"
    create_head("dense", hidden_units=(64,), epochs=1).fit(X, y)  # the bound leaves ordinary heads alone


@pytest.mark.slow
def test_train_head_with_an_impossible_hidden_layer_exits_2(tmp_path):
    data = make_dataset(tmp_path / "data", classes=3, per_class=4)
    features = extract_features(config=ExtractConfig(
        data=str(data), cache_dir=str(tmp_path / "cache"), model="resnet50", size=32, weights="none", batch_size=8))
    status, _, stderr = _main("train-head", features.path, "--head", "dense", "--param", "hidden_units=(100000000,)",
                              "--runs-dir", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    assert status == cli.ExitStatus.BAD_INPUT, stderr
    assert "hidden_units" in stderr and "unexpected" not in stderr


@pytest.mark.parametrize("value", ["1e7", "10000000", "0", "-3", "2.5"])
def test_knn_with_an_absurd_neighbour_count_exits_2_naming_it(tmp_path, value):
    from helpers import make_set

    features = make_set(tmp_path / "cache" / "blobs-synthetic-8-avg-ffffffff", per_class=10)
    status, _, stderr = _main("train-head", features, "--head", "knn", "--param", f"n_neighbors={value}",
                              "--runs-dir", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    assert status == cli.ExitStatus.BAD_INPUT, stderr
    assert "n_neighbors" in stderr and "unexpected" not in stderr and "--param" in stderr
    assert not list((tmp_path / "runs").glob("*/knn-*"))  # no run folder for a head that could not fit
