"""Fixtures shared by several test modules, and the rule for tests with needs."""

import pytest

from badfiles import make_bad_corpus
from needs import NEEDS, require

# Tests using these fixtures extract the 2,062 shared photos with real
# weights (minutes on CPU): they need ../shared and are left out of `make test-fast`.
_REAL_FEATURE_FIXTURES = {"sign_digits_features", "sign_digits_features_96"}


def pytest_collection_modifyitems(items):
    for item in items:
        if _REAL_FEATURE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.weights)
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item):
    """A marked need that is missing skips the test locally and fails it on CI (tests/needs.py)."""
    for need in NEEDS:
        if item.get_closest_marker(need) is not None:
            require(need)


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory):
    """(root, {relpath: "ok" | "skip"}) of the corpus in `badfiles.py`.

    Session-scoped because writing it takes a moment; tests must not modify
    it (copy it first).
    """
    root = tmp_path_factory.mktemp("bad_corpus")
    return root, make_bad_corpus(root)


@pytest.fixture(scope="session")
def sign_digits_features(tmp_path_factory):
    """`features.h5` of real MobileNetV2 features (224 px, avg pooling, the
    shared ImageNet weights) of all 2,062 sign-language-digits photos.

    Extracted once per session (a few minutes on a 2-core CPU) into a
    temporary cache and shared by every test that needs real features;
    tests must only read it. Needs ../shared (the rule of tests/needs.py).
    """
    return _sign_digits_features(tmp_path_factory, size=224)


@pytest.fixture(scope="session")
def sign_digits_features_96(tmp_path_factory):
    """As `sign_digits_features`, at 96 px (about 30 s to extract)."""
    return _sign_digits_features(tmp_path_factory, size=96)


def _sign_digits_features(tmp_path_factory, *, size):
    from needs import SIGN_DIGITS, WEIGHTS, require_shared
    from pipeline.config import ExtractConfig
    from pipeline.features.extract import extract_features

    weights = require_shared(WEIGHTS / "mobilenet_v2_1.0_224_no_top.weights.h5")
    config = ExtractConfig(
        data=str(require_shared(SIGN_DIGITS)), model="mobilenet_v2", size=size, pooling="avg",
        weights=str(weights), cache_dir=str(tmp_path_factory.mktemp(f"sign-digits-{size}-cache")),
        batch_size=32, workers=2,
    )
    return extract_features(config=config).path


@pytest.fixture
def tiny_dataset(tmp_path):
    """Three classes of six 40x40 PNGs each, under tmp_path/data."""
    from imagegen import make_dataset

    return make_dataset(tmp_path / "data")
