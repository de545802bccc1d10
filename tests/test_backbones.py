import importlib
import re

import keras
import numpy as np
import pytest

from pipeline.errors import ConfigError, WeightsUnavailableError
from pipeline.features.backbones import (
    BACKBONES,
    build_extractor,
    get_backbone_cfg,
    list_backbones,
    resolve_size,
    weights_identity,
)
from pipeline.features.layers import Preprocess

# The smallest member of each architecture family: building every row of the
# registry would take many minutes on 2 cores, while the per-row table checks
# below already catch a wrong constructor or preprocess module.
FAMILY_REPRESENTATIVES = [
    "vgg16", "resnet50_v2", "inception_v3", "xception", "mobilenet_025", "mobilenet_v2_035",
    "mobilenet_v3_small", "densenet121", "nasnet_mobile", "efficientnet_b0", "efficientnet_v2_b0", "convnext_tiny",
]
# The keras.applications rows; the KerasHub rows are checked in test_keras_hub.py.
APPLICATIONS = {name: cfg for name, cfg in BACKBONES.items() if cfg.source == "applications"}


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_every_row_names_a_real_constructor_and_preprocess(name):
    cfg = get_backbone_cfg(name)
    assert set(BACKBONES) >= set(APPLICATIONS) and len(APPLICATIONS) >= 45
    assert re.fullmatch(r"[a-z0-9_]+", name)
    assert callable(getattr(keras.applications, cfg.constructor))
    module = importlib.import_module(f"keras.applications.{cfg.module}")
    assert callable(module.preprocess_input)
    assert cfg.min_size <= cfg.default_size
    assert resolve_size(cfg, None) == cfg.default_size


def test_registry_covers_every_keras_application():
    constructors = {cfg.constructor for cfg in APPLICATIONS.values()}
    offered = {n for n in dir(keras.applications) if n[0].isupper()}
    assert offered <= constructors, sorted(offered - constructors)


@pytest.mark.parametrize("module", sorted({cfg.module for cfg in APPLICATIONS.values()}))
def test_preprocess_layer_equals_the_modules_preprocess_input(module):
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    expected = importlib.import_module(f"keras.applications.{module}").preprocess_input(images.astype(np.float32))
    got = keras.ops.convert_to_numpy(Preprocess(module)(images))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


def test_preprocessing_differs_between_families():
    images = np.full((1, 2, 2, 3), 200, np.uint8)
    outputs = {m: keras.ops.convert_to_numpy(Preprocess(m)(images)).ravel()[0] for m in ("vgg16", "mobilenet_v2", "densenet")}
    assert len({round(float(v), 3) for v in outputs.values()}) == 3  # caffe, tf and torch modes


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_family_builds_and_maps_uint8_images_to_features(name):
    cfg = get_backbone_cfg(name)
    size = max(cfg.min_size, 32)
    model = build_extractor(cfg, size=size, weights="none")
    # An eager call: compiling a graph of each family would triple the test's time.
    features = keras.ops.convert_to_numpy(model(np.zeros((2, size, size, 3), np.uint8), training=False))
    assert model.input.dtype == "uint8"
    assert features.ndim == 2 and features.shape[0] == 2 and np.isfinite(features).all()
    keras.backend.clear_session()


@pytest.mark.slow
def test_pooling_none_keeps_the_spatial_map_and_layer_cuts_the_model():
    cfg = get_backbone_cfg("vgg16")
    spatial = build_extractor(cfg, size=64, weights="none", pooling="none")
    assert spatial.output_shape == (None, 2, 2, 512)
    cut = build_extractor(cfg, size=64, weights="none", pooling="max", layer="block3_pool")
    assert cut.output_shape == (None, 256)


@pytest.mark.slow
def test_unknown_names_suggest_close_matches():
    with pytest.raises(ConfigError, match="Did you mean 'mobilenet_v2'") as unknown:
        get_backbone_cfg("mobilenetv2")
    assert unknown.value.field == "model"
    with pytest.raises(ConfigError, match=r"`size` must be at least 32 for vgg16. Received: size=16") as small:
        resolve_size(get_backbone_cfg("vgg16"), 16)
    assert small.value.field == "size" and "SIZE=" not in str(small.value)
    with pytest.raises(ConfigError, match="Unknown layer 'block3_pol'. Did you mean 'block3_pool'") as layer:
        build_extractor(get_backbone_cfg("vgg16"), size=32, weights="none", layer="block3_pol")
    assert layer.value.field == "layer"
    assert list_backbones("efficientnet_b*") == [f"efficientnet_b{i}" for i in range(8)]


def test_weights_identity_hashes_file_content(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"abc")
    first = weights_identity(str(path))
    path.write_bytes(b"abd")
    assert first != weights_identity(str(path)) and first.startswith("sha256:")
    assert weights_identity("imagenet").startswith("imagenet@keras-3")
    with pytest.raises(WeightsUnavailableError, match=r"Weights file '.*nope.h5' does not exist") as missing:
        weights_identity(str(tmp_path / "nope.h5"))
    assert missing.value.field == "weights" and "`weights='none'`" in str(missing.value)
    assert "WEIGHTS=" not in str(missing.value) and "--weights" not in str(missing.value)



def _legacy_save(model, path):
    """Writes `model`'s weights in the legacy Keras 2 HDF5 format (Keras 3 no longer offers it)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.slow
def test_weights_file_loads_by_its_content_under_any_name(tmp_path):
    cfg = get_backbone_cfg("mobilenet_v3_small")
    keras.utils.set_random_seed(7)
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    keras3 = tmp_path / "keras3.weights.h5"
    source.save_weights(keras3)
    legacy = tmp_path / "legacy.h5"
    _legacy_save(source, legacy)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)

    def features(weights):
        model = build_extractor(cfg, size=32, weights=str(weights))
        return keras.ops.convert_to_numpy(model(images, training=False))

    expected = features(keras3)
    renamed = {
        "keras3.h5": keras3,  # Keras would take it for the legacy format
        "keras3.bin": keras3,
        "keras3": keras3,
        "legacy.weights.h5": legacy,  # and this one for the Keras 3 format
        "legacy.hdf5.copy": legacy,
    }
    for name, original in renamed.items():
        (tmp_path / name).write_bytes(original.read_bytes())
        np.testing.assert_allclose(features(tmp_path / name), expected, rtol=1e-6, atol=1e-6, err_msg=name)
    assert weights_identity(str(tmp_path / "keras3.bin")) == weights_identity(str(keras3))


@pytest.mark.slow
def test_weights_file_of_another_model_is_refused_in_one_line(tmp_path):
    keras.utils.set_random_seed(7)
    other = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    keras3, legacy = tmp_path / "small.weights.h5", tmp_path / "small-legacy.h5"
    other.save_weights(keras3)
    _legacy_save(other, legacy)
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not weights at all")
    for weights in (keras3, legacy, junk):
        renamed = tmp_path / f"renamed-{weights.name}.bin"
        renamed.write_bytes(weights.read_bytes())
        for path in (weights, renamed):
            with pytest.raises(WeightsUnavailableError, match=r"Could not load weights file") as refused:
                build_extractor(get_backbone_cfg("mobilenet_v3_large"), size=32, weights=str(path))
            message = str(refused.value)
            assert "\n" not in message and len(message) < 700, message
            assert f"'{path}'" in message and "mobilenet_v3_large" in message
            assert refused.value.field == "weights" and "--weights" not in message
    keras.backend.clear_session()


def test_model_names_of_long_preset_paths_start_as_tensorflow_scopes_must():
    from pipeline.features.backbones import model_name

    name = model_name("hub:/tmp/pytest-of-root/" + "_" * 10 + "a" * 55)
    assert name == "a" * 55 and model_name("///") == "model"
