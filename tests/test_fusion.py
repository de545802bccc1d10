"""Fused feature sets (`train-head SET_A+SET_B`): rows joined by content hash, every base rebuilt.

The store tests write small synthetic sets (no Keras): the same images
(content hashes) under other paths and in another row order, with rows
dropped or added. The `weights` tests fuse real MobileNetV2 and MobileNet
0.25 features of 30 sign-language photos at 96 px and check that predict
and export rebuild both bases.
"""

import importlib.util
import json
import logging
import shutil
import types

import numpy as np
import pytest

from helpers import run_cli, train_config
from imagegen import SIGN_DIGITS, WEIGHTS, require_shared
from pipeline.errors import ConfigError, FeatureStoreError
from pipeline.store import FeatureStore, IndexRow, read_feature_set
from pipeline.store.fused import fuse_feature_sets, fused_members, read_features

KEY = "e" * 64
N, CLASSES = 24, 3


def _write_set(root, rows, *, dim, classes=CLASSES, backbone="synthetic"):
    """A complete feature set of `rows` = [(relpath, label, digest, feature vector)], in that row order."""
    store = FeatureStore(root)
    with store.shard_appender(KEY, (dim,), "float32", shard_rows=len(rows)) as shard:
        shard.append(np.array([r[3] for r in rows], np.float32), [r[2] for r in rows], [r[0] for r in rows])
    located, _ = store.scan_shards(KEY)
    index = [IndexRow(path, label, "", (i * 0.37) % 1, 1, 1, digest) for i, (path, label, digest, _) in enumerate(rows)]
    store.write_index(
        index, [located[r[2]] for r in rows], [], [f"class{c}" for c in range(classes)],
        feature_shape=(dim,), dtype="float32",
        attrs={"feature_key": KEY, "backbone": backbone, "weights": "none", "config": {"model": backbone}},
    )
    return read_feature_set(store.index_path)


@pytest.fixture
def images():
    """N images: (path, label, content digest, features of set A (dim 4), features of set B (dim 3))."""
    rng = np.random.default_rng(0)
    labels = np.arange(N) % CLASSES
    return [(f"class{labels[i]}/{i:03d}.png", int(labels[i]), f"{i + 1:064x}", rng.normal(size=4), rng.normal(size=3))
            for i in range(N)]


def _a(tmp_path, images, name="a"):
    return _write_set(tmp_path / name, [(p, l, d, fa) for p, l, d, fa, _ in images], dim=4)


def _b(tmp_path, images, *, order=None, rename=False, name="b"):
    order = range(len(images)) if order is None else order
    rows = [images[i] for i in order]
    # Another copy of the data: other file names, so only the content hash can pair the rows.
    return _write_set(tmp_path / name, [((f"copy/{k:03d}.png" if rename else p), l, d, fb)
                                        for k, (p, l, d, _, fb) in enumerate(rows)], dim=3, backbone="other")


def _expected(images, paths):
    by_path = {p: np.concatenate([fa, fb]) for p, _, _, fa, fb in images}
    return np.array([by_path[p] for p in paths], np.float32)


def test_rows_are_paired_by_content_hash_whatever_the_other_sets_order_and_paths(tmp_path, images):
    a = _a(tmp_path, images)
    plain = fuse_feature_sets([a, _b(tmp_path, images)])
    shuffled = fuse_feature_sets([a, _b(tmp_path, images, order=np.random.default_rng(1).permutation(N),
                                        rename=True, name="b2")])
    for fused in (plain, shuffled):
        assert fused.paths == a.paths  # the first set's rows, in its order
        np.testing.assert_array_equal(fused.features, _expected(images, a.paths))
        np.testing.assert_array_equal(fused.labels, a.labels)
        assert fused.attrs["fusion"]["left_out"] == 0
    assert [m["feature_set"] for m in shuffled.attrs["members"]] == ["a", "b2"]
    assert shuffled.name == "a+b2" and shuffled.attrs["backbone"] == "synthetic+other"


def test_rows_missing_from_one_set_are_reported_and_left_out(tmp_path, images, caplog):
    a = _a(tmp_path, images)
    extra = ("class0/new.png", 0, "f" * 64, np.zeros(4), np.ones(3))
    b = _b(tmp_path, [images[i] for i in range(N) if i not in (2, 5, 7)] + [extra])
    with caplog.at_level(logging.WARNING, logger="bottleneck"):
        fused = fuse_feature_sets([a, b])
    kept = [p for i, (p, *_) in enumerate(images) if i not in (2, 5, 7)]
    assert fused.paths == kept
    np.testing.assert_array_equal(fused.features, _expected(images, kept))
    report = fused.attrs["fusion"]
    assert report["rows"] == N - 3 and report["left_out"] == 4
    assert report["examples"][:3] == [f"a: {images[i][0]}" for i in (2, 5, 7)] and "b: class0/new.png" in report["examples"]
    assert "left out 4 image(s)" in caplog.text and images[2][0] in caplog.text


def test_rows_in_the_same_order_but_of_other_content_are_not_paired(tmp_path, images):
    """Pairing by position would join two different pictures; the hash refuses them."""
    a = _a(tmp_path, images)
    changed = [(p, l, (f"{i + 1000:064x}" if i in (0, 9) else d), fa, fb) for i, (p, l, d, fa, fb) in enumerate(images)]
    fused = fuse_feature_sets([a, _b(tmp_path, changed)])
    assert fused.attrs["fusion"]["left_out"] == 4
    assert images[0][0] not in fused.paths and images[9][0] not in fused.paths
    np.testing.assert_array_equal(fused.features, _expected(images, fused.paths))


def test_sets_of_other_classes_or_no_common_image_are_refused(tmp_path, images):
    a = _a(tmp_path, images)
    four = _write_set(tmp_path / "four", [(p, l, d, fb) for p, l, d, _, fb in images], dim=3, classes=4)
    with pytest.raises(FeatureStoreError, match="different classes"):
        fuse_feature_sets([a, four])
    other = [(p, l, f"{i + 5000:064x}", fa, fb) for i, (p, l, d, fa, fb) in enumerate(images)]
    with pytest.raises(FeatureStoreError, match="No image is in every one"):
        fuse_feature_sets([a, _b(tmp_path, other)])
    with pytest.raises(ConfigError, match="two or more"):
        fuse_feature_sets([a])


def test_the_plus_spelling_names_members_unless_it_is_a_path(tmp_path):
    assert fused_members("a+b+c") == ["a", "b", "c"]
    assert fused_members("a") is None and fused_members(None) is None
    (tmp_path / "x+y").mkdir()
    assert fused_members(str(tmp_path / "x+y")) is None
    with pytest.raises(ConfigError, match="empty member"):
        fused_members("a++b")


def test_train_head_on_a_fused_name_records_every_member(tmp_path, images):
    cache = tmp_path / "cache"
    _a(cache, images, name="digits-alpha")
    _b(cache, images, order=list(reversed(range(N))), name="digits-beta")
    status, out, err = run_cli("train-head", "digits-al+digits-be", "--head", "logreg", "--cache-dir", cache,
                               "--runs-dir", tmp_path / "runs", "--json")
    assert status == 0, err
    run_dirs = list((tmp_path / "runs" / "digits-alpha+digits-beta").glob("logreg-*"))
    assert len(run_dirs) == 1
    import json

    lineage = json.loads((run_dirs[0] / "lineage.json").read_text())
    assert [m["feature_set"] for m in lineage["members"]] == ["digits-alpha", "digits-beta"]
    assert lineage["feature_set"] == "digits-alpha+digits-beta" and lineage["fusion"]["left_out"] == 0
    assert lineage["content_hash"] == read_features("digits-alpha+digits-beta", cache).content_hash
    assert "digits-alpha+digits-beta" in (tmp_path / "runs" / "leaderboard.md").read_text()


def test_augmented_training_on_a_fusion_is_refused(tmp_path, images):
    cache = tmp_path / "cache"
    _a(cache, images, name="alpha")
    _b(cache, images, name="beta")
    from pipeline.runs.train import train_heads

    with pytest.raises(ConfigError, match="fuses several sets"):
        train_heads("alpha+beta", config=train_config(tmp_path, heads=("logreg",), augmented=True))


def test_a_curve_on_a_fused_name_trains_on_the_fusion(tmp_path, images):
    import json

    from pipeline.config import CurveConfig
    from pipeline.runs.curve import run_curve

    cache = tmp_path / "cache"
    _a(cache, images, name="alpha")
    _b(cache, [images[i] for i in range(N) if i != 4], name="beta")
    result = run_curve("alpha+beta", config=CurveConfig(
        heads=("logreg",), fractions=(0.5, 1.0), repeats=1, runs_dir=str(tmp_path / "runs"), cache_dir=str(cache)))
    lineage = json.loads((result.run_dir / "lineage.json").read_text())
    assert result.run_dir.parent.name == "alpha+beta" and lineage["n_images"] == N - 1
    assert [m["feature_set"] for m in lineage["members"]] == ["alpha", "beta"]


# -- real bases: predict, evaluate and export rebuild every member ---------------------------------

SIZE = 128


@pytest.fixture(scope="module")
def fused_signs(tmp_path_factory):
    """30 sign photos (3 per digit) as MobileNetV2 and MobileNet 0.25 sets, a fused dense and logreg run."""
    from pipeline.config import ExtractConfig, TrainConfig
    from pipeline.features.extract import extract_features
    from pipeline.runs.train import train_heads

    root = tmp_path_factory.mktemp("fusion")
    for digit in range(10):
        (root / "data" / str(digit)).mkdir(parents=True)
        for src in sorted((require_shared(SIGN_DIGITS) / str(digit)).glob("*.JPG"))[:3]:
            shutil.copyfile(src, root / "data" / str(digit) / src.name)
    sets = [
        extract_features(config=ExtractConfig(
            data=str(root / "data"), cache_dir=str(root / "cache"), workers=2, model=model, size=SIZE,
            weights=str(require_shared(WEIGHTS / weights)), batch_size=16,
        )).path
        for model, weights in (("mobilenet_v2", "mobilenet_v2_1.0_224_no_top.weights.h5"),
                               ("mobilenet_025", "mobilenet_0.25_224_no_top.h5"))
    ]
    fused = "+".join(str(p.parent) for p in sets)
    runs = train_heads(fused, config=TrainConfig(
        heads=("logreg", "dense"), params={"dense.epochs": 20, "dense.learning_rate": 1e-3},
        runs_dir=str(root / "runs"), cache_dir=str(root / "cache"),
    ))
    return types.SimpleNamespace(root=root, fused=fused, runs={r.head: r.run_dir for r in runs})


@pytest.mark.slow


@pytest.mark.weights
def test_predict_on_a_fused_run_equals_the_train_time_concatenation(fused_signs):
    from pipeline.runs.predict import Predictor, predict_images

    fs = read_features(fused_signs.fused)
    paths = [str(fused_signs.root / "data" / p) for p in fs.paths]
    predictor = Predictor.load(fused_signs.runs["logreg"])
    assert [b.config.model for b in predictor.bases] == ["mobilenet_v2", "mobilenet_025"]
    features, ok, errors = predictor.extract(paths)
    assert ok == list(range(len(paths))) and not errors
    np.testing.assert_allclose(features, fs.features, atol=1e-6, rtol=0)
    got = np.array([p.probabilities for p in predict_images(fused_signs.runs["logreg"], paths, top_k=1)])
    np.testing.assert_allclose(got, predictor.head.predict_proba(fs.features), atol=1e-6, rtol=0)


@pytest.mark.slow


@pytest.mark.weights
def test_evaluate_on_a_fused_run_reuses_each_members_cached_rows(fused_signs):
    from pipeline.runs.evaluate import evaluate_run
    from pipeline.runs.predict import predict_images

    result = evaluate_run(fused_signs.runs["logreg"], fused_signs.root / "data")
    assert result.extracted == 0 and result.n_images == 30
    paths = sorted(str(p) for p in (fused_signs.root / "data").glob("*/*.JPG"))
    predicted = [p.predicted_class for p in predict_images(fused_signs.runs["logreg"], paths, top_k=1)]
    truth = [p.split("/")[-2] for p in paths]
    assert result.accuracy == pytest.approx(np.mean([a == b for a, b in zip(predicted, truth)]))


@pytest.mark.slow


@pytest.mark.weights
def test_export_of_a_fused_dense_run_matches_predict_on_photos_below_twice_size(fused_signs, tmp_path):
    import keras
    from PIL import Image

    from pipeline.runs.export import export_run
    from pipeline.runs.predict import predict_images

    run = fused_signs.runs["dense"]
    result = export_run(run, tmp_path / "fused.keras")
    assert result.max_abs_diff < 1e-4
    model = keras.saving.load_model(tmp_path / "fused.keras")
    assert model.get_layer("fused").__class__.__name__ == "Concatenate"
    assert {"extractor_0", "extractor_1"} <= {layer.name for layer in model.layers}
    photos = sorted((fused_signs.root / "data").glob("*/*.JPG"))[::3]
    spec = importlib.util.spec_from_file_location("shipped_preprocess", tmp_path / "preprocess.py")
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    size = json.loads((tmp_path / "fused.keras.json").read_text())["input"]["size"]
    for i, (width, height) in enumerate([(64, 48), (100, 100), (200, 150), (90, 170), (250, 250)]):
        path = tmp_path / f"{i}.png"
        with Image.open(photos[i]) as photo:
            photo.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(path)
        # Decoded as the shipped preprocess.py does, and raw: every export repeats the reference resize.
        decoded = shipped.load_image(path, size)[None]
        expected = predict_images(run, [path], top_k=1)[0].probabilities
        np.testing.assert_allclose(model.predict(decoded, verbose=0)[0], expected, atol=1e-4, rtol=0)
        raw = np.asarray(Image.open(path).convert("RGB"))[None]
        np.testing.assert_allclose(model.predict(raw, verbose=0)[0], expected, atol=1e-4, rtol=0)


@pytest.mark.slow


@pytest.mark.weights
def test_a_fused_run_is_not_bundled_and_its_weights_are_not_replaced(fused_signs, tmp_path):
    from pipeline.runs.export import export_run
    from pipeline.runs.predict import Predictor

    with pytest.raises(ConfigError, match="bundle holds one base"):
        export_run(fused_signs.runs["logreg"], tmp_path / "bundle", format="bundle")
    with pytest.raises(ConfigError, match="fuses 2 feature sets"):
        Predictor.load(fused_signs.runs["logreg"], weights=WEIGHTS / "mobilenet_v2_1.0_224_no_top.weights.h5")
