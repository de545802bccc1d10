"""Feature transforms belong to the head: fitted on its training rows, stored in it, applied by predict.

And sweeps that look past their grid: a winner on the edge of a log-spaced
grid makes the sweep step further, until a step no longer wins or the cap.
"""

import csv
import dataclasses

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from helpers import make_set, sign_digit_features, train_config
from pipeline.errors import ConfigError
from pipeline.heads import fit_head, load_head, training_splits
from pipeline.heads.apply import aligned_proba, feature_matrix
from pipeline.heads.sweep import MAX_EXTENSIONS, TRANSFORM, plot_sweep, sweep_head
from pipeline.heads.transforms import check_transforms, make_transform, signed_sqrt
from pipeline.runs import layout
from pipeline.runs.train import train_heads
from pipeline.store import read_feature_set

def _manual(name, X):
    """The transforms written out in NumPy, as the docs define them."""
    if name == "sqrt-l2":
        X = np.sign(X) * np.sqrt(np.abs(X))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    # Shifted and scaled, with signs: the signed square root and the norms matter.
    return read_feature_set(make_set(tmp_path_factory.mktemp("blobs") / "set", classes=3, per_class=40, dim=10,
                                     offset=-1.0, scale=2.0))


@pytest.mark.parametrize("head, transform", [("logreg", "sqrt-l2"), ("logreg", "pca-whiten-4"), ("knn", "l2")])
def test_a_transform_is_fitted_on_the_training_rows_only(blobs, head, transform):
    parts = training_splits(blobs, config=train_config(blobs.path))
    held_out = np.concatenate([parts["validation"], parts["test"]])
    assert len(parts["validation"]) and len(parts["test"])
    rng = np.random.default_rng(1)
    changed = blobs.features.copy()
    changed[held_out] = rng.permutation(changed[held_out]) * 5 + rng.normal(size=changed[held_out].shape)
    probe = rng.normal(size=(25, blobs.features.shape[1])) * 2 - 1

    def fitted(features):
        fs = dataclasses.replace(blobs, features=features)
        return fit_head(head, {}, fs, parts, transform=transform).estimator

    first, second = fitted(blobs.features), fitted(changed)
    step = first.named_steps["transform"]
    assert type(step) is type(make_transform(transform))
    np.testing.assert_array_equal(first.predict_proba(probe), second.predict_proba(probe))
    np.testing.assert_array_equal(step.transform(probe), second.named_steps["transform"].transform(probe))
    # The check can fail: changing a training row does change the head.
    moved = blobs.features.copy()
    moved[parts["train"][:10]] += 3
    assert not np.array_equal(fitted(moved).named_steps["scale"].mean_, first.named_steps["scale"].mean_)


@pytest.mark.parametrize("transform", ["sqrt-l2", "pca-whiten-4"])
def test_the_saved_head_applies_the_train_time_transform(blobs, tmp_path, transform):
    (run,) = train_heads(blobs.path, config=train_config(tmp_path, transform=transform))
    head, metadata = load_head(run.run_dir / layout.HEAD, expected_sha256=run.head_sha256)
    assert metadata["transform"] == transform
    assert layout.read_json(run.run_dir / layout.METRICS, "run")["transform"] == transform
    assert layout.read_json(run.run_dir / layout.CONFIG, "run")["transform"] == transform
    with (run.run_dir / layout.TEST_PREDICTIONS).open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    index = {p: i for i, p in enumerate(blobs.paths)}
    X = feature_matrix(head, blobs.features[[index[r["path"]] for r in rows]])
    proba = aligned_proba(head, X, len(blobs.class_names))
    np.testing.assert_allclose(proba.max(1), [float(r["probability"]) for r in rows], atol=1e-6, rtol=0)
    step = head.named_steps["transform"]
    if transform == "sqrt-l2":
        np.testing.assert_allclose(step.transform(X), _manual(transform, X), atol=1e-6, rtol=0)
    else:  # whitened: the training rows have unit variance along each of the 4 components (float32 features)
        train = blobs.features[training_splits(blobs, config=train_config(tmp_path))["train"]]
        np.testing.assert_allclose(step.transform(train).var(axis=0, ddof=1), 1.0, atol=1e-5)


def test_the_dense_head_builds_its_transform_into_the_network(blobs):
    pytest.importorskip("keras")
    parts = training_splits(blobs, config=train_config(blobs.path))
    fitted = fit_head("dense", {"epochs": 3, "hidden_units": (8,)}, blobs, parts, transform="sqrt-l2")
    model = fitted.estimator.model_
    assert "l2_normalize" in [layer.name for layer in model.layers]
    # The network up to the first hidden layer is the transform itself.
    import keras

    upto = keras.Model(model.input, model.get_layer("l2_normalize").output)
    X = blobs.features[:20]
    np.testing.assert_allclose(np.asarray(upto(X)), _manual("sqrt-l2", X), atol=1e-6, rtol=0)


def test_several_transforms_are_swept_on_validation_and_recorded(blobs, tmp_path):
    (run,) = train_heads(blobs.path, config=train_config(tmp_path, transform=("standard", "sqrt-l2")))
    metrics = layout.read_json(run.run_dir / layout.METRICS, "run")
    tried = [c["params"][TRANSFORM] for c in metrics["sweep"]["candidates"]]
    assert tried == ["standard", "sqrt-l2"]
    assert metrics["transform"] == metrics["sweep"]["chosen"][TRANSFORM]
    assert TRANSFORM not in run.params


def test_an_unknown_transform_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"sqrt-l2.*pca-whiten-N.*Did you mean 'sqrt-l2'"):
        check_transforms(["sqrt_l2"])
    with pytest.raises(ConfigError, match="pca-whiten-N"):
        check_transforms(["pca-whiten-0"])
    assert signed_sqrt(np.array([-4.0, 0.0, 9.0])).tolist() == [-2.0, 0.0, 3.0]


class PeakedC(ClassifierMixin, BaseEstimator):
    """A classifier whose validation accuracy peaks at `C == best`, falling 5 points per decade away.

    Column 0 holds the label, column 1 a uniform draw: a row is answered
    wrongly when its draw is below the error rate of this `C`.
    """

    def __init__(self, C=1.0, best=1.0):
        self.C = C
        self.best = best

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        error = min(0.9, 0.05 * abs(np.log10(self.C / self.best)))
        label = X[:, 0].astype(int)
        return np.where(X[:, 1] < error, (label + 1) % len(self.classes_), label)


def _peaked(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return np.column_stack([y, rng.random(n)]), y


def _sweep(best, grid=(0.01, 0.1, 1.0, 10.0)):
    return sweep_head(f"{__name__}:PeakedC", {"best": best}, {"C": grid}, train=_peaked(60, 0),
                      validation=_peaked(400, 1), class_names=["a", "b", "c"], n_jobs=1)


@pytest.mark.slow
def test_a_sweep_won_on_its_grids_edge_steps_past_it():
    result = _sweep(best=1000.0)  # 100x the grid's top
    assert result.params["C"] == 1000.0
    assert result.extended == ({"param": "C", "edge": "upper", "added": [100.0, 1000.0, 10000.0], "capped": False},)
    assert result.grid["C"] == (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    assert result.record()["extended"] == [dict(e) for e in result.extended]
    below = _sweep(best=1e-4)
    assert below.params["C"] == 1e-4 and below.extended[0]["edge"] == "lower"
    assert plot_sweep(result).axes  # the added values are drawn with the others


@pytest.mark.slow
def test_a_sweep_won_inside_its_grid_does_not_extend():
    result = _sweep(best=0.1)
    assert result.params["C"] == 0.1 and result.extended == ()
    assert len(result.candidates) == 4


@pytest.mark.slow
def test_a_sweep_stops_at_the_cap_and_says_so():
    result = _sweep(best=1e9)
    (record,) = result.extended
    assert record["capped"] and len(record["added"]) == MAX_EXTENSIONS
    assert result.params["C"] == 10.0 * 10**MAX_EXTENSIONS


@pytest.mark.slow
def test_a_grid_that_is_not_log_spaced_does_not_extend():
    assert _sweep(best=1000.0, grid=(1.0, 2.0, 3.0, 4.0)).extended == ()


# -- export: the exported graph holds the transform --------------------------------------------

SIZE = 128
# Below twice SIZE, where the reference decoder's JPEG draft mode starts (docs/predict.md).
PHOTO_SIZES = [(64, 48), (100, 100), (200, 150), (90, 170)]


@pytest.fixture(scope="module")
def transformed_runs(tmp_path_factory):
    """Real MobileNetV2 features at 128 px of 40 photos; heads with transforms; 8 other photos to predict."""
    from PIL import Image

    from pipeline.config import TrainConfig

    root = tmp_path_factory.mktemp("transform-export")
    features, photos = sign_digit_features(root, SIZE)
    runs = {}
    for head, transform in (("logreg", "sqrt-l2"), ("logreg", "pca-whiten-16"), ("dense", "sqrt-l2")):
        (run,) = train_heads(features, config=TrainConfig(
            heads=(head,), transform=(transform,), params={"dense.epochs": 20} if head == "dense" else {},
            runs_dir=str(root / "runs"), cache_dir=str(root / "cache"),
        ))
        runs[f"{head}-{transform}"] = run.run_dir
    images = []
    for i, (width, height) in enumerate(PHOTO_SIZES * 2):
        with Image.open(photos[i][10]) as photo:
            path = root / "new" / f"{i}-{width}x{height}.jpg"
            path.parent.mkdir(exist_ok=True)
            photo.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(path, "JPEG")
            images.append(path)
    return runs, images


def _predicted(run, images):
    from pipeline.runs.predict import predict_images

    return np.array([p.probabilities for p in predict_images(run, images, top_k=1)])


@pytest.mark.slow


@pytest.mark.weights
@pytest.mark.parametrize("name", ["logreg-sqrt-l2", "logreg-pca-whiten-16", "dense-sqrt-l2"])
def test_the_exported_model_holds_the_transform(transformed_runs, tmp_path, name):
    import keras

    from pipeline.features.decode import load_image
    from pipeline.runs.export import export_run

    runs, images = transformed_runs
    result = export_run(runs[name], tmp_path / "model.keras")
    assert result.max_abs_diff < 1e-4
    model = keras.saving.load_model(tmp_path / "model.keras")
    names = [layer.name for layer in model.get_layer("head").layers] if "logreg" in name else []
    if "logreg" in name:
        assert ("pca_whiten" if "pca" in name else "l2_normalize") in names
    got = model.predict(np.stack([load_image(p, SIZE) for p in images]), verbose=0)
    expected = _predicted(runs[name], images)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.slow


@pytest.mark.weights
def test_predict_applies_the_train_time_transform_and_a_bundle_keeps_it(transformed_runs, tmp_path):
    from pipeline.runs.export import export_run
    from pipeline.runs.predict import Predictor

    runs, images = transformed_runs
    run = runs["logreg-sqrt-l2"]
    predictor = Predictor.load(run)
    features, ok, errors = predictor.extract(images)
    assert not errors
    steps = predictor.head.named_steps
    by_hand = steps["clf"].predict_proba(steps["scale"].transform(_manual("sqrt-l2", features)))
    np.testing.assert_allclose(_predicted(run, images), by_hand, atol=1e-6, rtol=0)
    export_run(run, tmp_path / "bundle", format="bundle")  # skops: the signed square root is trusted
    np.testing.assert_allclose(_predicted(tmp_path / "bundle", images), by_hand, atol=1e-6, rtol=0)
