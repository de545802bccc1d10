"""Stored features equal plain Keras on real photos with real ImageNet weights.

The reference is what a user would write by hand: Pillow decode, EXIF
orientation applied, RGB, the product's reference resize
(`decode.resize_squash`: Pillow's `resize(BILINEAR)`, which
tests/test_export.py compares with the exported graphs' resize) — then the
model's own `preprocess_input` and `model.predict` of the Keras application
with `pooling="avg"`.
"""

import keras
import numpy as np
import pytest
from PIL import Image, ImageOps

from imagegen import SIGN_DIGITS, WEIGHTS, require_shared
from pipeline.config import ExtractConfig
from pipeline.features.decode import resize_squash
from pipeline.features.extract import extract_features
from pipeline.store import read_feature_set

CASES = [
    ("mobilenet_025", "mobilenet_0.25_224_no_top.h5", lambda w: keras.applications.MobileNet(
        alpha=0.25, include_top=False, weights=w, input_shape=(224, 224, 3), pooling="avg"),
     keras.applications.mobilenet.preprocess_input),
    ("mobilenet_v2", "mobilenet_v2_1.0_224_no_top.weights.h5", lambda w: keras.applications.MobileNetV2(
        include_top=False, weights=w, input_shape=(224, 224, 3), pooling="avg"),
     keras.applications.mobilenet_v2.preprocess_input),
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 real photos, 6 of each of two classes, copied into a fresh folder."""
    require_shared(SIGN_DIGITS)
    root = tmp_path_factory.mktemp("signs")
    for digit in ("0", "1"):
        (root / digit).mkdir()
        for src in sorted((SIGN_DIGITS / digit).iterdir())[:6]:
            (root / digit / src.name).write_bytes(src.read_bytes())
    return root


def _by_hand(root, relpaths, model, preprocess_input):
    images = []
    for rel in relpaths:
        with Image.open(root / rel) as img:
            pixels = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        images.append(resize_squash(pixels, 224).astype(np.float32))
    return model.predict(preprocess_input(np.stack(images)), verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("name, weights_file, make_model, preprocess_input", CASES, ids=[c[0] for c in CASES])
def test_stored_features_equal_plain_keras(photos, tmp_path, name, weights_file, make_model, preprocess_input):
    weights = require_shared(WEIGHTS / weights_file)
    result = extract_features(config=ExtractConfig(
        data=str(photos), model=name, size=224, weights=str(weights), cache_dir=str(tmp_path), batch_size=8,
    ))
    fs = read_feature_set(result.path)
    assert result.counts["extracted"] == 12
    expected = _by_hand(photos, fs.paths, make_model(str(weights)), preprocess_input)
    assert fs.features.shape == expected.shape
    np.testing.assert_allclose(fs.features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # Real features separate the two classes: each photo is closer to its own class mean.
    means = np.stack([fs.features[fs.labels == k].mean(0) for k in (0, 1)])
    nearest = np.argmin(((fs.features[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == fs.labels).mean() >= 0.9


def test_wrong_weights_file_for_the_model_is_refused(photos, tmp_path):
    weights = require_shared(WEIGHTS / "mobilenet_0.25_224_no_top.h5")
    from pipeline.features.backbones import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="mobilenet_0.25_224_no_top.h5"):
        extract_features(config=ExtractConfig(
            data=str(photos), model="mobilenet_v2", size=224, weights=str(weights), cache_dir=str(tmp_path),
        ))
    assert not list(tmp_path.glob("*/features.h5"))


# Measured on MobileNetV2 (224 px, CPU): float16 keeps cosine >= 0.9998 per image;
# bfloat16's 8-bit mantissa drifts to 0.967-0.990 over its ~50 layers, so it
# gets its own, looser bound and the README says so.
@pytest.mark.slow
@pytest.mark.parametrize("precision, min_cosine", [("mixed_float16", 0.999), ("mixed_bfloat16", 0.95)])
def test_mixed_precision_features_agree_with_float32(photos, tmp_path, precision, min_cosine):
    weights = str(require_shared(WEIGHTS / "mobilenet_v2_1.0_224_no_top.weights.h5"))

    def run(precision):
        config = ExtractConfig(data=str(photos), model="mobilenet_v2", size=224, weights=weights,
                               cache_dir=str(tmp_path), precision=precision, batch_size=12)
        return read_feature_set(extract_features(config=config).path)

    exact, mixed = run("float32"), run(precision)
    assert exact.path != mixed.path and mixed.features.dtype == np.float32
    cosine = (exact.features * mixed.features).sum(1) / (
        np.linalg.norm(exact.features, axis=1) * np.linalg.norm(mixed.features, axis=1)
    )
    assert cosine.min() >= min_cosine, cosine
    assert not np.array_equal(exact.features, mixed.features)  # the policy really changed the arithmetic
