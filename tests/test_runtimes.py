"""`--runtime onnx`: the base run by ONNX Runtime gives Keras' features, or none."""

import dataclasses
import hashlib
import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from imagegen import PYTHON, REPO
from pipeline import config as config_lib
from pipeline.config import ExtractConfig
from pipeline.errors import ConfigError
from pipeline.features import runtimes
from pipeline.features.extract import extract_features
from pipeline.store import read_feature_set

# ResNet50: random-weight features of a healthy magnitude (random MobileNets give ~1e-12).
MODEL = dict(model="resnet50", size=32, weights="none", batch_size=4, workers=2)
_RUN_ONNX = runtimes.OnnxExtractor.predict_on_batch


def _config(data, cache, **overrides):
    return ExtractConfig(data=str(data), cache_dir=str(cache), **{**MODEL, **overrides})


def _seeded_weights(path):
    import keras

    keras.utils.set_random_seed(1)
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    return str(path)


@pytest.mark.onnx
@pytest.mark.slow
def test_onnx_runtime_gives_the_keras_features_under_the_same_key(tiny_dataset, tmp_path, monkeypatch):
    weights = _seeded_weights(tmp_path / "random.weights.h5")
    by_keras = extract_features(config=_config(tiny_dataset, tmp_path / "keras", weights=weights))

    batches = []
    run_onnx = runtimes.OnnxExtractor.predict_on_batch
    monkeypatch.setattr(runtimes.OnnxExtractor, "predict_on_batch",
                        lambda self, images: batches.append(len(images)) or run_onnx(self, images))
    by_onnx = extract_features(config=_config(tiny_dataset, tmp_path / "onnx", weights=weights, runtime="onnx"))

    assert sum(batches) >= 18  # every image went through ONNX Runtime (plus the probe batch)
    keras_set, onnx_set = read_feature_set(by_keras.path), read_feature_set(by_onnx.path)
    assert onnx_set.paths == keras_set.paths
    np.testing.assert_allclose(onnx_set.features, keras_set.features, rtol=1e-4, atol=1e-5)
    assert by_onnx.path.name == by_keras.path.name  # same feature key: the runtime is not part of it
    with h5py.File(by_onnx.path, "r") as f:
        assert '"runtime": "onnx"' in f.attrs["config"]

    batches.clear()
    topped_up = extract_features(config=_config(tiny_dataset, tmp_path / "keras", weights=weights, runtime="onnx"))
    assert topped_up.counts["extracted"] == 0 and topped_up.counts["reused"] == 18
    assert batches == []  # nothing to extract, so nothing was converted or run

    # Another folder of the same images: a new set, run by the kept conversion without Keras or TensorFlow.
    again = shutil.copytree(tiny_dataset, tmp_path / "again")
    config = dict(data=str(again), cache_dir=str(tmp_path / "onnx"), runtime="onnx", **{**MODEL, "weights": weights})
    code = (
        "import sys, json\n"
        "from pipeline.config import ExtractConfig\n"
        "from pipeline.features.extract import extract_features\n"
        f"r = extract_features(config=ExtractConfig(**{json.dumps(config)}))\n"
        "print(json.dumps([str(r.path), r.counts, sorted(m for m in sys.modules if m.split('.')[0] in "
        "('keras', 'tensorflow', 'tf2onnx'))]))\n"
    )
    out = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    path, counts, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["extracted"] == 18 and heavy == []
    np.testing.assert_allclose(read_feature_set(path).features, keras_set.features, rtol=1e-4, atol=1e-5)


@pytest.mark.onnx
@pytest.mark.slow
def test_a_kept_conversion_that_is_not_the_checked_file_is_converted_again(tiny_dataset, tmp_path, caplog):
    config = _config(tiny_dataset, tmp_path / "cache", model="mobilenet_v2", runtime="onnx")
    extract_features(config=config)
    (kept,) = (tmp_path / "cache" / "runtimes").glob("*.onnx")
    damaged = kept.read_bytes()[:-1] + b"x"
    kept.write_bytes(damaged)

    again = shutil.copytree(tiny_dataset, tmp_path / "again")
    result = extract_features(config=dataclasses.replace(config, data=str(again)))
    assert result.counts["extracted"] == 18
    assert "is not the conversion that was checked against Keras; converting again" in caplog.text
    assert 0 <= json.loads(kept.with_suffix(".json").read_text())["largest_difference_from_keras"] < 1e-4
    rewritten = kept.read_bytes()
    assert rewritten != damaged
    assert json.loads(kept.with_suffix(".json").read_text())["sha256"] == hashlib.sha256(rewritten).hexdigest()


def _required_inputs_missing(self, images):
    raise ValueError("Required inputs (['normalization/Sub/y:0']) are missing from input feed (['image']).")


@pytest.mark.onnx
@pytest.mark.slow
@pytest.mark.parametrize("run, refusal", [
    (lambda self, images: _RUN_ONNX(self, images) * 1.01, "the converted base disagrees with Keras"),
    (_required_inputs_missing, "could not be converted to ONNX .ValueError: Required inputs"),  # EfficientNet's
])
def test_a_conversion_that_fails_or_disagrees_stores_nothing(tiny_dataset, tmp_path, monkeypatch, run, refusal):
    monkeypatch.setattr(runtimes.OnnxExtractor, "predict_on_batch", run)
    with pytest.raises(ConfigError, match=f"{refusal}.*--runtime keras"):
        extract_features(config=_config(tiny_dataset, tmp_path / "cache", model="mobilenet_v2", runtime="onnx"))
    assert not list((tmp_path / "cache").rglob("*.h5")) and not list((tmp_path / "cache").rglob("*.onnx"))


@pytest.mark.parametrize("got, agrees", [
    (lambda e: e.copy(), True),
    (lambda e: e + 5e-5 * np.abs(e).max(), True),
    (lambda e: e + 2e-4 * np.abs(e).max(), False),
    (lambda e: np.where(e == e.max(), np.nan, e), False),
    (lambda e: e[:, :-1], False),
])
def test_agreement_is_relative_to_the_largest_feature(got, agrees):
    expected = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32) * 3
    if agrees:
        runtimes.check_agreement(expected, got(expected), "onnx")
    else:
        with pytest.raises(ConfigError, match="runtime onnx: the converted base disagrees"):
            runtimes.check_agreement(expected, got(expected), "onnx")


def test_a_missing_runtime_package_names_the_install(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else find_spec(name))
    with pytest.raises(ConfigError, match=r"onnxruntime: pip install 'bottleneck-features\[onnx\]'"):
        runtimes.prepare("onnx", build=lambda: pytest.fail("built a model for a runtime that is missing"),
                         cache_dir=".", key="k")


def test_every_runtime_name_has_a_row():
    assert tuple(runtimes.ROWS) == config_lib.RUNTIMES
    assert ExtractConfig(data=".").runtime == "keras"


def test_devices_and_another_runtime_are_refused_together():
    with pytest.raises(ConfigError, match="runtime onnx runs on the CPU.*devices=2"):
        ExtractConfig(data=".", runtime="onnx", devices=2)
    assert ExtractConfig(data=".", runtime="onnx", devices="auto").devices == "auto"


@pytest.mark.onnx
@pytest.mark.slow
def test_a_transformer_with_the_exact_gelu_runs_in_onnx_runtime(tmp_path):
    """DINOv2's GELU is traced as `Erfc`, which tf2onnx converts only with `teach_tf2onnx`'s row."""
    import hubgen
    from imagegen import make_dataset

    preset = hubgen.save_preset(tmp_path / "dinov2", "dinov2")
    data = make_dataset(tmp_path / "data")
    config = dict(model=f"hub:{preset}", size=hubgen.SIZE, weights="imagenet", batch_size=4, workers=2)
    by_keras = extract_features(config=ExtractConfig(data=str(data), cache_dir=str(tmp_path / "k"), **config))
    by_onnx = extract_features(config=ExtractConfig(data=str(data), cache_dir=str(tmp_path / "o"), runtime="onnx",
                                                    **config))
    (kept,) = (tmp_path / "o" / "runtimes").glob("*.onnx")
    import onnx

    op_types = {node.op_type for node in onnx.load_from_string(kept.read_bytes()).graph.node}
    assert "Erf" in op_types and "Erfc" not in op_types
    np.testing.assert_allclose(read_feature_set(by_onnx.path).features, read_feature_set(by_keras.path).features,
                               rtol=1e-4, atol=1e-5)
