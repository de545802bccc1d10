"""Prediction, evaluation and export of trained runs.

Two module fixtures keep the file fast: `tiny` (a random ResNet50 at 32 px
over 18 synthetic PNGs, with a logreg and a dense run) for everything that
only needs *some* features, and `signs` (the real MobileNetV2 weights at
96 px over 60 sign-language-digits photos, with a dense run) for the export
check and for the weights-file checks.
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from helpers import CodeRunningMarker, run_cli as _main
from imagegen import PYTHON, SIGN_DIGITS, WEIGHTS, make_dataset, require_shared, write_image
from pipeline import cli
from pipeline.features.backbones import BACKBONES
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.features.decode import load_image
from pipeline.errors import ConfigError, DataError, RunError, WriteError
from pipeline.runs.export import export_run, preprocess_affine
from pipeline.features.extract import extract_features
from pipeline.heads import load_head
from pipeline.runs import evaluate as evaluate_module
from pipeline.runs.evaluate import evaluate_run
from pipeline.runs.predict import Prediction, Predictor, predict_images, write_predictions_csv
from pipeline.store import read_feature_set
from pipeline.runs.train import train_heads

MOBILENET_V2 = "mobilenet_v2_1.0_224_no_top.weights.h5"


def _train(root, data, heads, params, **extract):
    result = extract_features(config=ExtractConfig(data=str(data), cache_dir=str(root / "cache"), workers=2, **extract))
    runs = train_heads(result.path, config=TrainConfig(
        heads=heads, params=params, runs_dir=str(root / "runs"), cache_dir=str(root / "cache"),
    ))
    return types.SimpleNamespace(
        root=root, data=data, features=read_feature_set(result.path), runs={r.head: r.run_dir for r in runs},
    )


def _head_on_cached_features(run_dir, fs):
    """The head's probabilities on the stored features, as training computed them."""
    est, _ = load_head(run_dir / "head.joblib")
    dense = type(est).__name__ == "DenseClassifier"
    return est.predict_proba(fs.features if dense else fs.features.reshape(len(fs.features), -1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "data")  # 3 classes x 6 PNGs
    return _train(
        root, data, ("logreg", "dense"), {"dense.epochs": 5, "dense.learning_rate": 1e-3},
        model="resnet50", size=32, weights="none", batch_size=8,
    )


@pytest.fixture(scope="module")
def signs(tmp_path_factory):
    """A dense head on real MobileNetV2 features (96 px) of 6 photos per digit."""
    weights = require_shared(WEIGHTS / MOBILENET_V2)
    root = tmp_path_factory.mktemp("signs")
    for digit in range(10):
        for src in sorted((require_shared(SIGN_DIGITS) / str(digit)).glob("*.JPG"))[:6]:
            (root / "data" / str(digit)).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / "data" / str(digit) / src.name)
    return _train(
        root, root / "data", ("dense",), {"epochs": 40, "learning_rate": 1e-3},
        model="mobilenet_v2", size=96, weights=str(weights), batch_size=16,
    )


# -- 1. predict reproduces the cached features -----------------------------


@pytest.mark.slow
@pytest.mark.parametrize("head", ["logreg", "dense"])
def test_predict_on_training_images_equals_head_on_cached_features(tiny, tmp_path, head):
    run, fs = tiny.runs[head], tiny.features
    expected = _head_on_cached_features(run, fs)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "preds.csv"

    status, stdout, _ = _main("predict", run, tiny.data, broken, "--top-k", "3", "--output", out, "--json")

    assert status == cli.ExitStatus.OK
    rows = {p["path"]: p for p in json.loads(stdout.strip().splitlines()[-1])["predictions"]}
    assert len(rows) == len(fs.paths) + 1
    for relpath, want in zip(fs.paths, expected):
        got = rows[str(tiny.data / relpath)]
        proba = dict(got["top_k"])  # top 3 of 3 classes: every probability
        assert got["predicted_class"] == fs.class_names[int(np.argmax(want))]
        np.testing.assert_allclose([proba[c] for c in fs.class_names], want, atol=1e-5, rtol=0)
    bad = rows[str(broken)]
    assert bad["predicted_class"] is None and bad["top_k"] == [] and bad["error"]
    assert "error:" in stdout and f"Wrote {len(rows)} predictions" in stdout

    with out.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["path", "predicted_class", "probability", "top_k_classes", "top_k_probabilities", "error"]
    assert len(table) == len(rows) and table[-1]["error"] and not table[0]["error"]
    assert len(table[0]["top_k_classes"].split(";")) == 3


@pytest.mark.slow
def test_bundle_of_a_sklearn_head_predicts_like_the_run_and_is_checked(tiny, tmp_path):
    run, fs = tiny.runs["logreg"], tiny.features
    status, stdout, _ = _main("export", run, tmp_path / "bundle", "--json")
    assert status == cli.ExitStatus.OK
    bundle = tmp_path / "bundle"
    assert json.loads(stdout.splitlines()[-1])["format"] == "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "head.skops", "manifest.sha256", "preprocess.py"]

    some = [tiny.data / p for p in fs.paths[::4]]
    got = np.array([p.probabilities for p in predict_images(bundle, some, top_k=1)])
    np.testing.assert_allclose(got, _head_on_cached_features(run, fs)[::4], atol=1e-5, rtol=0)

    (bundle / "head.skops").write_bytes((bundle / "head.skops").read_bytes() + b"\0")
    with pytest.raises(RunError, match=r"head\.skops.*sha256"):
        Predictor.load(bundle)
    (bundle / "manifest.sha256").unlink()
    with pytest.raises(RunError, match="no manifest.sha256"):
        Predictor.load(bundle)


# -- 2. the exported model equals predict, without this package ------------


_LOAD_ELSEWHERE = textwrap.dedent("""
    import importlib.abc, json, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "pipeline" or name.startswith("pipeline."):
                raise ImportError("this process must not import pipeline")

    sys.meta_path.insert(0, Refuse())
    import keras, numpy as np
    from PIL import Image

    model = keras.saving.load_model(sys.argv[1])
    np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
    raw = [np.asarray(Image.open(p).convert("RGB")) for p in json.loads(sys.argv[4])]
    same = len({x.shape for x in raw}) == 1
    batches = [np.stack(raw)] if same else [x[None] for x in raw]
    np.save(sys.argv[5], np.concatenate([model.predict(b, verbose=0) for b in batches]))
    assert "pipeline" not in sys.modules
    print(json.dumps({"backend": keras.backend.backend(), "pipeline": "pipeline" in sys.modules}))
""")


@pytest.mark.slow  # tens of seconds: left out of make test-fast
def test_exported_keras_model_equals_predict_in_a_fresh_process(signs, tmp_path):
    """20 photos not used in training, 2 per digit, MobileNetV2 at 96 px."""
    run = signs.runs["dense"]
    photos = [p for d in range(10) for p in sorted((SIGN_DIGITS / str(d)).glob("*.JPG"))[6:8]]
    expected = np.array([p.probabilities for p in predict_images(run, photos, top_k=1)])
    assert expected.shape == (20, 10)

    out = tmp_path / "export" / "signs.keras"
    status, stdout, _ = _main("export", run, out, "--json")
    assert status == cli.ExitStatus.OK
    report = json.loads(stdout.splitlines()[-1])
    assert report["format"] == "keras" and report["max_abs_diff"] < 1e-4
    sidecar = json.loads((out.parent / "signs.keras.json").read_text())
    assert sidecar["class_names"] == [str(d) for d in range(10)] and sidecar["input"]["size"] == 96

    images = tmp_path / "images.npy"
    np.save(images, np.stack([load_image(p, 96) for p in photos]))
    script = tmp_path / "load.py"
    script.write_text(_LOAD_ELSEWHERE)
    args = [out, images, tmp_path / "proba.npy", json.dumps([str(p) for p in photos]), tmp_path / "raw.npy"]
    # The default backend: the same model also loads on JAX (slower to build there, so not here).
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "KERAS_BACKEND", "KERAS_HOME")}
    done = subprocess.run(
        [PYTHON, script, *map(str, args)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["pipeline"] is False

    exported = np.load(tmp_path / "proba.npy")
    np.testing.assert_allclose(exported, expected, atol=1e-4, rtol=0)
    assert (exported.argmax(1) == expected.argmax(1)).all()
    # Raw photos of another size: `.keras` repeats the reference resize exactly (tests/test_export.py).
    np.testing.assert_allclose(np.load(tmp_path / "raw.npy"), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("module", sorted({row.module for row in BACKBONES.values() if row.source == "applications"}))
def test_preprocess_dense_layer_equals_preprocess_input(module):
    import importlib

    import keras

    kernel, bias = preprocess_affine(module)
    layer = keras.layers.Dense(3, dtype="float32")
    layer.build((None, 3))
    layer.set_weights([kernel, bias])
    images = np.random.default_rng(1).integers(0, 256, size=(2, 16, 16, 3)).astype(np.float32)
    reference = importlib.import_module(f"keras.applications.{module}").preprocess_input(images.copy())
    got = keras.ops.convert_to_numpy(layer(images))
    np.testing.assert_allclose(got, np.asarray(reference), rtol=1e-6, atol=1e-5)


# -- 3. tampered and foreign artifacts are refused --------------------------


@pytest.mark.slow
def test_modified_or_foreign_head_file_is_refused(tiny, tmp_path):
    image = tiny.data / tiny.features.paths[0]
    run = shutil.copytree(tiny.runs["logreg"], tmp_path / "run")
    # A run with only its pickle (trained before head.skops), loaded with --trust: still checked first.
    (run / "head.skops").unlink()
    lineage = json.loads((run / "lineage.json").read_text())
    del lineage["head_skops_sha256"]
    (run / "lineage.json").write_text(json.dumps(lineage))
    head = run / "head.joblib"
    head.write_bytes(head.read_bytes()[:-1] + bytes([head.read_bytes()[-1] ^ 1]))

    status, _, err = _main("predict", run, image, "--output", tmp_path / "p.csv", "--trust")
    assert status == cli.ExitStatus.BAD_INPUT
    assert str(head) in err and "sha256" in err and "not unpickled" in err
    assert not (tmp_path / "p.csv").exists()

    shutil.copyfile(tiny.runs["dense"] / "head.joblib", head)  # a real head, of another run
    with pytest.warns(UserWarning, match="Trusting run folder"), pytest.raises(RunError, match="Refusing to load head file"):
        Predictor.load(run, trust=True)

    del lineage["head_sha256"]
    (run / "lineage.json").write_text(json.dumps(lineage))
    with pytest.warns(UserWarning, match="Trusting run folder"), pytest.raises(RunError, match="records no head_sha256"):
        Predictor.load(run, trust=True)


@pytest.mark.slow
def test_missing_or_changed_weights_file_is_named(signs, tmp_path):
    shared = WEIGHTS / MOBILENET_V2
    run = shutil.copytree(signs.runs["dense"], tmp_path / "run")
    lineage = json.loads((run / "lineage.json").read_text())
    moved = tmp_path / "moved" / MOBILENET_V2
    lineage["extraction_config"]["weights"] = str(moved)
    (run / "lineage.json").write_text(json.dumps(lineage))

    status, _, err = _main("predict", run, SIGN_DIGITS / "0", "--output", tmp_path / "p.csv")
    assert status == cli.ExitStatus.BAD_INPUT
    assert f"Weights file '{moved}'" in err and "does not exist" in err and "--weights" in err
    with pytest.raises(RunError) as info:
        Predictor.load(run)
    assert info.value.field == "weights"  # the CLI names --weights from this

    moved.parent.mkdir()
    shutil.copyfile(WEIGHTS / "mobilenet_0.25_224_no_top.h5", moved)  # another file under that name
    with pytest.raises(RunError, match=r"is not the file the run's features were extracted with"):
        Predictor.load(run)
    with pytest.raises(RunError, match="mobilenet_0.25"):
        Predictor.load(run, weights=WEIGHTS / "mobilenet_0.25_224_no_top.h5")
    assert Predictor.load(run, weights=shared).config.weights == str(shared)  # the right file, elsewhere


# -- evaluate ----------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_matches_names_lists_unknown_classes_and_writes_a_new_folder(tiny, tmp_path):
    run, fs = tiny.runs["logreg"], tiny.features
    labelled = tmp_path / "labelled"
    for relpath in fs.paths:
        if not relpath.startswith("class2/"):  # the run's class2 is missing here
            (labelled / relpath).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tiny.data / relpath, labelled / relpath)
    write_image(labelled / "zebra" / "z1.png", seed=7)
    write_image(labelled / "zebra" / "z2.png", seed=8)
    (labelled / "class0" / "broken.png").write_bytes(b"")

    status, stdout, _ = _main("evaluate", run, labelled, "--json")

    assert status == cli.ExitStatus.OK
    report = json.loads(stdout.splitlines()[-1])
    out = Path(report["out_dir"])
    assert out.parent == run and out.name.startswith("eval-")
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "metrics.json", "predictions.csv"]
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]
    assert report["unknown_classes"] == {"zebra": ["zebra/z1.png", "zebra/z2.png"]}
    assert report["missing_classes"] == ["class2"]
    assert report["skipped"][0]["path"] == "class0/broken.png"

    rows = [i for i, p in enumerate(fs.paths) if not p.startswith("class2/")]
    expected = _head_on_cached_features(run, fs)[rows]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sizes"] == {"test": len(rows)}
    assert metrics["test"]["accuracy"] == pytest.approx(np.mean(expected.argmax(1) == fs.labels[rows]))
    assert np.asarray(metrics["test"]["confusion_matrix"]).sum() == len(rows)

    with pytest.raises(DataError, match="belongs to a class of the run") as info:
        evaluate_run(run, _only(tmp_path / "other", labelled / "zebra"))
    assert info.value.field == "data"


def _only(root, folder):
    shutil.copytree(folder, root / folder.name)
    return root


# -- errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "{run}", "{image}", "--top-k", "0"], "`top_k` must be a positive integer"),
        (["predict", "{tmp}/nope", "{image}"], "does not exist"),
        (["predict", "{tmp}", "{image}"], "neither a run folder"),
        (["predict", "{run}", "{tmp}"], "holds no images"),
        (["export", "{run}", "{tmp}/x.h5", "--format", "keras"], "must end with '.keras'"),
        (["export", "{run}", "{tmp}", "--format", "bundle"], "already exists"),
    ],
    ids=["top-k", "no-run", "not-a-run", "empty-folder", "keras-suffix", "bundle-exists"],
)
def test_user_errors_exit_2_with_the_fix(tiny, tmp_path, argv, message):
    fill = dict(run=tiny.runs["dense"], image=tiny.data / tiny.features.paths[0], tmp=tmp_path)
    status, _, err = _main(*[a.format(**fill) for a in argv])
    assert status == cli.ExitStatus.BAD_INPUT
    assert message in err


@pytest.mark.parametrize("call, error, field, named", [
    (lambda t, run: predict_images(run, [t.data / t.features.paths[0]], top_k=0), ConfigError, "top_k", "`top_k`"),
    (lambda t, run: Predictor.load(run.parent / "nope"), RunError, "run", "`run_dir`"),
    (lambda t, run: Predictor.load(run, weights=run / "head.joblib"), ConfigError, "weights", "`weights`"),
    (lambda t, run: export_run(run, run.parent / "x.tflite", format="tflite"), ConfigError, "format", "`format`"),
    (lambda t, run: export_run(run, run.parent / "x.h5", format="keras"), ConfigError, "out", "`out`"),
], ids=["top_k", "run", "weights", "format", "out"])
def test_library_errors_name_the_argument_to_fix(tiny, call, error, field, named):
    with pytest.raises(error) as info:
        call(tiny, tiny.runs["dense"])
    assert info.value.field == field and named in str(info.value)
    assert "--" not in str(info.value)  # arguments, not CLI flags: the CLI adds those


# -- no decodable input ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("head", ["logreg", "dense"])
def test_no_decodable_image_gives_error_rows_not_a_crash(tiny, tmp_path, head):
    """Issue 15 #8: scikit-learn heads crashed with `cannot reshape array of size 0`."""
    missing, broken = tmp_path / "missing.png", tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    predictions = predict_images(tiny.runs[head], [missing, broken])
    assert [p.path for p in predictions] == [str(missing), str(broken)]
    assert all(p.error and p.predicted_class is None and p.top_k == () for p in predictions)

    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    (bad / "a" / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("hello")
    status, stdout, _ = _main("predict", tiny.runs[head], bad, "--output", tmp_path / "p.csv")
    assert status == cli.ExitStatus.OK and "2 could not be read" in stdout
    with (tmp_path / "p.csv").open(newline="") as f:
        assert [row["error"] != "" for row in csv.DictReader(f)] == [True, True]


@pytest.mark.slow
def test_a_mistyped_path_says_so_and_non_images_in_a_folder_are_named(tiny, tmp_path, caplog):
    """Issue 16 #6: a typo read as 'moved after indexing'; a .txt left out silently."""
    folder = tmp_path / "photos"
    shutil.copytree(tiny.data / "class0", folder)
    (folder / "notes.txt").write_text("not a photo")
    typo = tmp_path / "phtoos" / "x.png"
    predictions = predict_images(tiny.runs["logreg"], [folder, typo])
    assert predictions[-1].path == str(typo) and predictions[-1].error == "no such file or folder: check the path"
    assert all(p.error is None for p in predictions[:-1]) and len(predictions) == 1 + len(list(folder.glob("*.png")))
    assert "notes.txt" in caplog.text and "not images" in caplog.text


# -- outputs: never misplaced, never silently replaced, never formulas -------------


_HOSTILE = [
    Prediction("=HYPERLINK(\"http://x\")", "+cmd", 0.75, (("+cmd", 0.75), ("-x", 0.25)), (0.75, 0.25)),
    Prediction("@SUM(A1)", None, None, (), (), "\tnot an image"),
    Prediction("photos/-ok.png", "cat", 1.0, (("cat", 1.0),), (1.0,)),
]


def _table(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_csv_escapes_cells_a_spreadsheet_would_run(tmp_path):
    """Issue 15 #12: paths and class names are user-controlled (OWASP CSV injection)."""
    table = _table(write_predictions_csv(_HOSTILE, tmp_path / "p.csv"))
    assert [r["path"] for r in table] == ["'=HYPERLINK(\"http://x\")", "'@SUM(A1)", "photos/-ok.png"]
    assert table[0]["predicted_class"] == "'+cmd" and table[0]["top_k_classes"] == "'+cmd;-x"
    assert table[0]["probability"] == "0.750000" and table[1]["error"] == "'\tnot an image"
    for i, formula in enumerate(("=1", "+1", "-1", "@1", "\t1", "\r1", "\r\n1")):
        row = _table(write_predictions_csv([Prediction(formula, "a", 1.0, (("a", 1.0),))], tmp_path / f"{i}.csv"))[0]
        assert row["path"] == "'" + formula, formula


def test_predictions_csv_is_not_misplaced_or_replaced(tmp_path):
    """Issue 15 #12: a missing folder was created silently, an existing CSV replaced."""
    with pytest.raises(ConfigError) as info:
        write_predictions_csv(_HOSTILE, tmp_path / "typo" / "p.csv")
    assert info.value.field == "output" and f"'{tmp_path / 'typo'}'" in str(info.value)
    assert not (tmp_path / "typo").exists()

    out = write_predictions_csv(_HOSTILE, tmp_path / "p.csv")
    with pytest.raises(ConfigError, match="already exists") as info:
        write_predictions_csv(_HOSTILE[:1], out)
    assert info.value.field == "overwrite" and len(_table(out)) == 3
    write_predictions_csv(_HOSTILE[:1], out, overwrite=True)
    assert len(_table(out)) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


@pytest.mark.slow
def test_export_refuses_to_replace_a_keras_file_unless_overwrite(tiny, tmp_path):
    """Issue 15 #12: an existing .keras was replaced silently."""
    out = tmp_path / "tiny.keras"
    out.write_bytes(b"someone's model")
    with pytest.raises(ConfigError, match="already exists") as info:
        export_run(tiny.runs["dense"], out)
    assert info.value.field == "overwrite" and out.read_bytes() == b"someone's model"

    result = export_run(tiny.runs["dense"], out, overwrite=True)
    assert result.files["tiny.keras"] == hashlib.sha256(out.read_bytes()).hexdigest()
    sidecar = json.loads((tmp_path / "tiny.keras.json").read_text())
    assert sidecar["model_sha256"] == result.files["tiny.keras"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preprocess.py", "tiny.keras", "tiny.keras.json"]
    assert oct(out.stat().st_mode & 0o777) == "0o644"


@pytest.mark.slow
def test_export_out_without_suffix_names_the_keras_model_as_the_readme_says(tiny, tmp_path):
    """`make export RUN=<dense run> OUT=model` writes model.keras."""
    status, out, err = _main("export", tiny.runs["dense"], tmp_path / "model")
    assert status == cli.ExitStatus.OK, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "model.keras.json", "preprocess.py"]
    assert str(tmp_path / "model.keras") in out


# -- evaluate elsewhere ----------------------------------------------------------


def _read_only(folder, monkeypatch):
    """Makes `folder` refuse new entries, for root too (chmod does not stop root)."""
    folder.chmod(0o555)
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


def test_evaluate_a_read_only_run_writes_elsewhere_and_checks_first(tiny, tmp_path, monkeypatch):
    """Issue 15 #10: evaluate wrote only into the run folder, and found out it could not at the end."""
    run = shutil.copytree(tiny.runs["logreg"], tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    _read_only(run, monkeypatch)
    extracted = []
    real_extract = evaluate_module.extract_features
    monkeypatch.setattr(evaluate_module, "extract_features", lambda **kw: extracted.append(kw) or real_extract(**kw))
    try:
        with pytest.raises(WriteError) as info:
            evaluate_run(run, tiny.data)
        assert info.value.field == "output" and f"'{run}'" in str(info.value) and not extracted
        with pytest.raises(ConfigError, match="does not exist") as info:
            evaluate_run(run, tiny.data, output=tmp_path / "typo")
        assert info.value.field == "output" and not extracted

        (tmp_path / "evals").mkdir()
        result = evaluate_run(run, tiny.data, output=tmp_path / "evals")
    finally:
        run.chmod(0o755)
    assert result.out_dir.parent == tmp_path / "evals" and result.out_dir.name.startswith("eval-")
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["confusion_matrix.png", "metrics.json", "predictions.csv"]
    assert sorted(p.name for p in run.iterdir()) == before and extracted
    assert result.accuracy == json.loads((result.out_dir / "metrics.json").read_text())["test"]["accuracy"]


@pytest.mark.slow
def test_evaluate_extracts_through_the_cache_and_flags_training_images(tiny, tmp_path, caplog):
    """Issue 14: a second evaluate of one folder extracts nothing; images the run trained on are counted."""
    run, copy = tiny.runs["logreg"], shutil.copytree(tiny.data, tmp_path / "copy")
    assert evaluate_run(run, tiny.data, output=_folder(tmp_path / "own")).extracted == 0  # the run's own set
    first = evaluate_run(run, copy, output=_folder(tmp_path / "a"))
    second = evaluate_run(tiny.runs["dense"], copy, output=_folder(tmp_path / "b"))  # same backbone: shared
    assert first.extracted == second.extracted == 0  # same content as the run's set: its rows are copied
    assert second.n_images == first.n_images == len(tiny.features.paths)
    assert first.overlap["checked"]
    assert sum(first.overlap[s] for s in ("train", "validation", "test")) == len(tiny.features.paths)
    assert "same content as images the run trained or validated on" in caplog.text

    fresh = tmp_path / "fresh"
    for c in range(3):
        write_image(fresh / f"class{c}" / "new.png", seed=5000 + c)
    clean = evaluate_run(run, fresh, output=_folder(tmp_path / "c"))
    assert clean.extracted == 3 and evaluate_run(run, fresh, output=_folder(tmp_path / "d")).extracted == 0
    assert clean.overlap == {"checked": True, "train": 0, "validation": 0, "test": 0, "examples": []}
    report = json.loads((clean.out_dir / "metrics.json").read_text())
    assert report["overlap"] == clean.overlap and Path(report["features_path"]).is_file()


def test_an_evaluation_in_the_run_folder_is_a_leaderboard_row_after_its_run(tiny, tmp_path):
    from pipeline.runs import leaderboard

    run = shutil.copytree(tiny.runs["logreg"], tmp_path / "runs" / tiny.runs["logreg"].parent.name / "logreg-copy",
                          ignore=shutil.ignore_patterns("eval-*"))  # other tests evaluate the shared run
    result = evaluate_run(run, tiny.data)
    rows = leaderboard.rebuild_leaderboard(tmp_path / "runs")
    assert [r["kind"] for r in rows] == ["head", "evaluation"]
    head_row, eval_row = rows
    assert eval_row["run_dir"] == str(result.out_dir) and eval_row["parent"] == str(run)
    assert eval_row["test_accuracy"] == pytest.approx(result.accuracy) and eval_row["val_accuracy"] is None
    assert eval_row["n_images"] == result.n_images and eval_row["head"] == head_row["head"] == "logreg"
    assert str(result.out_dir) in (tmp_path / "runs" / "leaderboard.csv").read_text()  # written by evaluate


def _folder(path):
    path.mkdir(parents=True)
    return path


# -- a shared bundle cannot run code ------------------------------------------


def _reseal(bundle, head_name, head_bytes):
    """Rewrites a bundle the way an attacker can: new head, recomputed hashes beside it."""
    for old in ("head.joblib", "head.skops"):
        (bundle / old).unlink(missing_ok=True)
    (bundle / head_name).write_bytes(head_bytes)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta.update(head=head_name, head_sha256=hashlib.sha256(head_bytes).hexdigest())
    (bundle / "bundle.json").write_text(json.dumps(meta))
    names = [n for n in ("bundle.json", head_name, "preprocess.py") if (bundle / n).exists()]
    lines = [f"{hashlib.sha256((bundle / n).read_bytes()).hexdigest()}  {n}\n" for n in names]
    (bundle / "manifest.sha256").write_text("".join(lines))


@pytest.mark.parametrize("trust", [False, True], ids=["plain", "trust-does-not-widen-skops"])
def test_a_crafted_bundle_never_runs_its_code_on_predict(tiny, tmp_path, trust):
    import pickle

    import skops.io

    bundle, marker = tmp_path / "bundle", tmp_path / "marker"
    assert export_run(tiny.runs["logreg"], bundle).format == "bundle"
    image = tiny.data / tiny.features.paths[0]
    flag = ["--trust"] if trust else []

    # A pickle whose __reduce__ writes the marker, with every hash recomputed.
    _reseal(bundle, "head.joblib", pickle.dumps({"estimator": CodeRunningMarker(marker)}))
    if not trust:
        status, _, stderr = _main("predict", bundle, image, "-o", tmp_path / "p.csv")
        assert status == cli.ExitStatus.BAD_INPUT
        assert "is a pickle" in stderr.splitlines()[0] and "--trust" in stderr
        assert not marker.exists()

    # A skops head holding a type outside scikit-learn is refused, trusted or not.
    evil = skops.io.dumps({"estimator": CodeRunningMarker(marker), "metadata": {}})
    _reseal(bundle, "head.skops", evil)
    status, _, stderr = _main("predict", bundle, image, "-o", tmp_path / "p.csv", *flag)
    assert status == cli.ExitStatus.BAD_INPUT
    assert "CodeRunningMarker" in stderr and "nothing was built" in stderr
    assert not marker.exists()


@pytest.mark.slow
def test_a_trusted_pickle_bundle_says_so_on_its_first_line(tiny, tmp_path):
    bundle = tmp_path / "bundle"
    export_run(tiny.runs["logreg"], bundle)
    _reseal(bundle, "head.joblib", (tiny.runs["logreg"] / "head.joblib").read_bytes())
    image = tiny.data / tiny.features.paths[0]

    status, _, stderr = _main("predict", bundle, image, "-o", tmp_path / "p.csv", "--trust")

    assert status == cli.ExitStatus.OK
    assert stderr.splitlines()[0].startswith("warning: Trusting bundle") and "sources you trust" in stderr
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert "--trust" in help_text.getvalue() and "runs code" in " ".join(help_text.getvalue().split())
