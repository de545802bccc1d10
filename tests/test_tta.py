"""Test-time views (`predict`/`evaluate --tta K`): cached views where they exist, the same views computed otherwise."""

import json

import numpy as np
import pytest

from imagegen import make_dataset
from pipeline.cli import main
from pipeline.config import DEFAULT_AUGMENT_OPS, ExtractConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.features import augment
from pipeline.features.extract import extract_features
from pipeline.runs import tta
from pipeline.runs.evaluate import evaluate_run
from pipeline.runs.predict import Predictor, predict_images
from pipeline.runs.train import train_heads
from pipeline.store import read_feature_set
from pipeline.store.lookup import view_set_dir

PHOTO = augment.format_augment_ops(augment.parse_augment_ops(DEFAULT_AUGMENT_OPS))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """18 PNGs with 2 cached views of the default ops, and a logreg run trained on them."""
    root = tmp_path_factory.mktemp("tta")
    data = make_dataset(root / "data")
    result = extract_features(config=ExtractConfig(
        data=str(data), cache_dir=str(root / "cache"), model="resnet50", size=32, weights="none", batch_size=8,
        workers=2, augment=2))
    [run] = train_heads(result.path, config=TrainConfig(runs_dir=str(root / "runs"), cache_dir=str(root / "cache"),
                                                        augmented=True))
    return root, data, result, run.run_dir


def _paths(data):
    return sorted(str(p) for p in data.rglob("*.png"))


@pytest.mark.slow
def test_tta_averages_the_image_and_its_cached_views(trained):
    _, data, result, run_dir = trained
    predictor = Predictor.load(run_dir)
    paths = _paths(data)
    plain = np.array([p.probabilities for p in predictor.predict(paths)])
    averaged = predictor.predict(paths, tta=3)
    assert predictor.tta_record == {"views": 3, "ops": PHOTO, "seed": 0, "cached": 2 * len(paths), "computed": 0}
    clean = read_feature_set(result.path)
    expected = [predictor.predict_proba(clean.features)]
    for view in (1, 2):
        fs = read_feature_set(view_set_dir(result.path.parent, ops=PHOTO, seed=0, view=view))
        assert fs.paths == clean.paths
        expected.append(predictor.predict_proba(fs.features))
    got = np.array([p.probabilities for p in averaged])
    np.testing.assert_allclose(got, np.mean(expected, axis=0), atol=1e-5)
    assert not np.allclose(got, plain) and {p.views for p in averaged} == {3}


@pytest.mark.slow
def test_views_missing_from_the_cache_are_computed_as_extraction_computes_them(trained):
    _, data, result, run_dir = trained
    predictor = Predictor.load(run_dir)
    paths = _paths(data)
    predictor.predict(paths, tta=4)  # view 3 was never extracted
    assert predictor.tta_record["cached"] == 2 * len(paths) and predictor.tta_record["computed"] == len(paths)
    clean = read_feature_set(result.path)
    sha = {path: record.sha256 for path, record in _index(result.path).files.items()}
    files = [str(data / p) for p in clean.paths]
    computed = tta.computed_views(predictor, files, [sha[p] for p in clean.paths],
                                  ops=augment.parse_augment_ops(PHOTO), seed=0, view=1)
    cached = read_feature_set(view_set_dir(result.path.parent, ops=PHOTO, seed=0, view=1)).features
    np.testing.assert_allclose(computed, cached, rtol=1e-4, atol=1e-4)


def _index(features_path):
    from pipeline.store import FeatureStore

    return FeatureStore(features_path.parent).read_index_state()


def test_evaluate_records_the_test_time_views(trained, tmp_path):
    _, data, _, run_dir = trained
    result = evaluate_run(run_dir, data, output=tmp_path, tta=2)
    assert result.tta == {"views": 2, "ops": PHOTO, "seed": 0, "cached": 18, "computed": 0}
    assert json.loads((result.out_dir / "metrics.json").read_text())["tta"] == result.tta
    plain = evaluate_run(run_dir, data, output=tmp_path)
    assert plain.tta is None and json.loads((plain.out_dir / "metrics.json").read_text())["tta"] is None


@pytest.mark.parametrize("value", [0, 33, 1.5, True])
def test_tta_out_of_range_is_refused_naming_it(trained, value):
    _, data, _, run_dir = trained
    with pytest.raises(ConfigError) as info:
        predict_images(run_dir, _paths(data)[:1], tta=value)
    assert info.value.field == "tta"


@pytest.mark.slow
def test_predict_cli_says_how_many_views_it_averaged(trained, tmp_path, capsys):
    _, data, _, run_dir = trained
    out = tmp_path / "p.csv"
    assert main(["predict", str(run_dir), str(data), "--tta", "2", "-o", str(out)]) == 0
    assert "averaged over each image and 1 view of it" in capsys.readouterr().out
    assert main(["predict", str(run_dir), str(data), "--tta", "0", "-o", str(tmp_path / "q.csv")]) == 2
    assert "--tta" in capsys.readouterr().err


@pytest.mark.slow
def test_tta_on_a_fused_run_is_refused_rather_than_averaging_one_base(trained, monkeypatch):
    _, data, _, run_dir = trained
    predictor = Predictor.load(run_dir)
    monkeypatch.setattr(Predictor, "bases", property(lambda self: self.source.bases * 2))
    with pytest.raises(ConfigError, match="fuses 2 feature sets"):
        predictor.predict(_paths(data), tta=2)
