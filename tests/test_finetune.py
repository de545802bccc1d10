"""Fine-tuning the top of a dense run's base (runs/finetune.py).

One module fixture trains a dense head on a random-weights MobileNetV2
(alpha 0.35, 32 px: MobileNet v1's random-weight activations, near 1e-12,
give gradients Adam cannot turn into float32 updates) over 45 small PNGs
whose colour gives the class, and fine-tunes it once, killed after epoch 1
and resumed; the tests read what it left at each step.
"""

import contextlib
import io
import json
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.config import ExtractConfig, FinetuneConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.features.decode import load_image
from pipeline.features.extract import extract_features
from pipeline.runs import finetune, finetune_model, layout, leaderboard
from pipeline.runs.export import export_run
from pipeline.runs.predict import Predictor, predict_images
from pipeline.runs.train import train_heads

SIZE = 32
UNFREEZE = 3


def _colour_dataset(root, classes=3, per_class=15):
    """Class c is mostly channel c, with noise: learnable, unlike random images."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(40, 40, 3))
            pixels[..., c] += 120
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def _config(**overrides):
    return FinetuneConfig(**{"unfreeze": UNFREEZE, "epochs": 2, "learning_rate": 1e-3, "batch_size": 8,
                             "early_stopping_patience": None, "workers": 2, **overrides})


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    data = _colour_dataset(root / "data")
    features = extract_features(config=ExtractConfig(
        data=str(data), model="mobilenet_v2_035", size=SIZE, weights="none", batch_size=8, workers=2,
        cache_dir=str(root / "cache"),
    ))
    runs = train_heads(features.path, config=TrainConfig(
        heads=("dense", "logreg"), params={"dense.epochs": 20}, splits=(0.6, 0.2, 0.2),
        runs_dir=str(root / "runs"), cache_dir=str(root / "cache"),
    ))
    parent = {r.head: r.run_dir for r in runs}
    killed = _killed_after_epoch_1(parent["dense"])
    result = finetune.finetune_run(parent["dense"], config=_config(resume=True))
    return types.SimpleNamespace(root=root, data=data, parent=parent["dense"], logreg=parent["logreg"],
                                 killed=killed, result=result)


def _killed_after_epoch_1(run):
    """What a fine-tune killed right after its first epoch leaves, and how it answers a second start."""
    written = finetune_model.write_state

    def kill_after_epoch_1(folder, state):
        written(folder, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune_model, "write_state", kill_after_epoch_1)
        with pytest.raises(KeyboardInterrupt):
            finetune.finetune_run(run, config=_config())
    (unfinished,) = list(run.parent.glob(".tmp-finetune-of-*"))
    refused = {}
    for overrides in ({}, {"resume": True, "learning_rate": 0.5}):
        with pytest.raises(ConfigError) as e:
            finetune.finetune_run(run, config=_config(**overrides))
        refused[e.value.field] = str(e.value)
    return types.SimpleNamespace(
        folder=unfinished, state=json.loads((unfinished / layout.FINETUNE_STATE).read_text()),
        runs=leaderboard.list_runs(run.parent.parent), refused=refused,
    )


def _base_layers(run_dir):
    """{layer name: (layer, [weights])} of the base a run's lineage rebuilds."""
    base = finetune_model.base_of(Predictor.load(run_dir).extractor())
    return {layer.name: (layer, [np.asarray(w) for w in layer.get_weights()]) for layer in base.layers if layer.weights}


def _head_weights(run_dir):
    return [np.asarray(w) for w in Predictor.load(run_dir).head.model_.get_weights()]


@pytest.mark.slow
def test_before_the_first_update_it_is_the_head_it_starts_from(tuned):
    head_metrics = json.loads((tuned.parent / layout.METRICS).read_text())
    initial = tuned.result.metrics["initial"]["validation"]
    assert initial["n_samples"] == head_metrics["validation"]["n_samples"] > 0
    assert initial["log_loss"] == pytest.approx(head_metrics["validation"]["log_loss"], abs=1e-4)
    assert initial["accuracy"] == head_metrics["validation"]["accuracy"]


@pytest.mark.slow
def test_only_the_top_layers_and_the_head_change_and_batchnorm_stays(tuned):
    assert tuned.result.best_epoch >= 1, "the fine-tune should lower the validation loss of colour classes"
    before, after = _base_layers(tuned.parent), _base_layers(tuned.result.run_dir)
    unfrozen = set(tuned.result.unfrozen)
    assert len(unfrozen) == UNFREEZE
    batchnorm = 0
    for name, (layer, weights) in before.items():
        same = [np.array_equal(a, b) for a, b in zip(weights, after[name][1])]
        if name in unfrozen:
            assert not all(same), f"unfrozen layer {name} did not train"
        else:
            assert all(same), f"frozen layer {name} changed"
        batchnorm += type(layer).__name__ == "BatchNormalization"
    assert batchnorm > 10  # moving statistics included: BatchNormalization layers are never unfrozen
    weighted = [n for n, (layer, w) in before.items() if w and type(layer).__name__ != "BatchNormalization"]
    assert sorted(unfrozen) == sorted(weighted[-UNFREEZE:])
    assert not all(np.array_equal(a, b) for a, b in zip(_head_weights(tuned.parent), _head_weights(tuned.result.run_dir)))


def test_the_run_folder_and_leaderboard_row(tuned):
    run = tuned.result.run_dir
    assert run.parent == tuned.parent.parent and run.name.startswith("finetune-")
    for name in (layout.BASE_WEIGHTS, layout.HEAD, layout.MODEL, layout.BEST_MODEL, layout.HISTORY,
                 layout.CONFUSION_MATRIX, layout.METRICS, layout.CONFIG, layout.LINEAGE):
        assert (run / name).is_file(), name
    assert not [p.name for p in run.iterdir() if p.name.startswith(("checkpoint-", "best-", ".tmp-"))]
    assert not list(run.parent.glob(".tmp-*"))
    metrics = json.loads((run / layout.METRICS).read_text())
    head_metrics = json.loads((tuned.parent / layout.METRICS).read_text())
    assert set(head_metrics) <= set(metrics)
    assert metrics["validation"]["n_samples"] == head_metrics["validation"]["n_samples"]
    assert metrics["test"]["n_samples"] == head_metrics["test"]["n_samples"]
    lineage = json.loads((run / layout.LINEAGE).read_text())
    assert lineage["parent_run"] == str(tuned.parent.resolve()) and lineage["kind"] == "finetune"
    assert lineage["extraction_config"]["weights"] == layout.BASE_WEIGHTS
    rows = {r["run_dir"]: r for r in leaderboard.list_runs(run.parent.parent)}
    row = rows[str(run)]
    assert (row["kind"], row["unfrozen"], row["parent"]) == ("finetune", UNFREEZE, str(tuned.parent.resolve()))
    head_row = rows[str(tuned.parent)]
    assert (head_row["kind"], head_row["unfrozen"]) == ("head", 0)
    assert head_row["parent"] == str(Path(lineage["features_path"]).parent)


@pytest.mark.slow
def test_predict_and_export_agree_with_the_finetuned_model(tuned, tmp_path):
    import keras

    paths = sorted(str(p) for p in tuned.data.rglob("*.png"))[::5]
    images = np.stack([load_image(p, SIZE) for p in paths])
    model = keras.saving.load_model(tuned.result.run_dir / layout.BEST_MODEL)
    own = np.asarray(model.predict_on_batch(images), dtype=np.float64)
    predicted = np.array([p.probabilities for p in predict_images(tuned.result.run_dir, paths)])
    np.testing.assert_allclose(predicted, own, atol=1e-5)
    export_run(tuned.result.run_dir, tmp_path / "tuned.keras")
    exported = keras.saving.load_model(tmp_path / "tuned.keras")
    np.testing.assert_allclose(np.asarray(exported.predict_on_batch(images)), own, atol=1e-4)
    bundle = export_run(tuned.result.run_dir, tmp_path / "bundle", format="bundle")
    assert Predictor.load(bundle.path).config.weights == str(bundle.path / "weights" / layout.BASE_WEIGHTS)


def test_a_killed_finetune_resumes_from_its_last_epoch_and_finishes(tuned):
    killed = tuned.killed
    assert killed.state["epoch"] == 1 and killed.state["checkpoint"] == layout.checkpoint_name(1)
    assert (tuned.parent.parent / killed.folder.name) == killed.folder  # nothing published, nothing on the board
    assert [r["kind"] for r in killed.runs] == ["head", "head"]
    assert set(killed.refused) == {"resume", "learning_rate"}  # no silent restart, no changed config
    metrics = json.loads((tuned.result.run_dir / layout.METRICS).read_text())
    assert metrics["resumed_after"] == [1] and metrics["epochs_run"] == 2 == tuned.result.epochs_run
    assert len(killed.state["history"]["val_loss"]) == 1
    assert not killed.folder.exists()


def test_the_input_pipeline_decodes_in_order_and_augments_in_one_place(tuned):
    paths = sorted(str(p) for p in tuned.data.rglob("*.png"))[:5]
    from pipeline.features.discovery import file_sha256

    batches = finetune_model.ImageBatches(paths, np.arange(5), [file_sha256(p) for p in paths], size=SIZE,
                                          batch_size=2, workers=2, augment=lambda x, digests, epoch: 255 - x)
    images, labels = batches[1]
    assert len(batches) == 3 and labels.tolist() == [2, 3]
    np.testing.assert_array_equal(images, 255 - np.stack([load_image(p, SIZE) for p in paths[2:4]]))
    wrong = finetune_model.ImageBatches(paths, np.arange(5), ["0" * 64] * 5, size=SIZE, batch_size=2, workers=1)
    with pytest.raises(Exception, match="changed since its features were extracted"):
        wrong[0]


@pytest.mark.parametrize("overrides, field", [
    ({"unfreeze": 10_000}, "unfreeze"),
    ({"unfreeze": None, "unfreeze_from": "no_such_layer"}, "unfreeze_from"),
])
def test_unfreeze_that_does_not_fit_the_base_names_the_field(tuned, tmp_path, overrides, field):
    with pytest.raises(ConfigError) as e:
        finetune.finetune_run(tuned.parent, config=_config(runs_dir=str(tmp_path / "runs"), **overrides))
    assert e.value.field == field


def test_config_refuses_two_ways_of_choosing_layers_and_reads_numbers():
    with pytest.raises(ConfigError) as e:
        FinetuneConfig(unfreeze=3, unfreeze_from="block_16_project")
    assert e.value.field == "unfreeze"
    assert FinetuneConfig(unfreeze="4").unfreeze == 4 and FinetuneConfig().unfreeze == 30
    assert FinetuneConfig(unfreeze_from="x").unfreeze is None
    with pytest.raises(ConfigError, match="'all'"):
        FinetuneConfig(unfreeze="most")


def test_a_logreg_run_is_refused_on_the_command_line_with_the_fix(tuned):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["finetune", str(tuned.logreg), "--epochs", "1"])
    assert status == 2
    assert "dense" in err.getvalue() and "make finetune: RUN=" in err.getvalue()


def test_a_fine_tune_killed_before_its_first_state_starts_again(tmp_path):
    folder = tmp_path / ".tmp-finetune-of-dense-x"
    (folder / "sub").mkdir(parents=True)  # what a kill while saving epoch 0 leaves
    config = FinetuneConfig()
    assert finetune._config_for(folder, config) is config and not folder.exists()
    folder.mkdir()
    with pytest.raises(ConfigError) as e:
        finetune._config_for(folder, FinetuneConfig(resume=True))
    assert e.value.field == "resume" and "no unfinished fine-tune" in str(e.value)


def test_training_batches_are_augmented_with_view_epoch_plus_one_of_the_cached_ops(tuned):
    from pipeline.features import augment
    from pipeline.features.discovery import file_sha256

    paths = sorted(str(p) for p in tuned.data.rglob("*.png"))[:4]
    digests = [file_sha256(p) for p in paths]
    config = _config(augment_ops="flip,rotation=0.2", augment_seed=3)
    batches = finetune_model.ImageBatches(paths, np.arange(4), digests, size=SIZE, batch_size=4, workers=1,
                                          augment=finetune._augmentation(config))
    clean = np.stack([load_image(p, SIZE) for p in paths])
    ops = augment.parse_augment_ops("flip,rotation=0.2")
    first, _ = batches[0]
    np.testing.assert_array_equal(first, augment.apply_view(clean, digests, ops=ops, seed=3, view=1))
    batches.on_epoch_end()
    second, _ = batches[0]
    np.testing.assert_array_equal(second, augment.apply_view(clean, digests, ops=ops, seed=3, view=2))
    assert not np.array_equal(first, second) and not np.array_equal(first, clean)
    assert finetune._augmentation(_config()) is None


def test_bad_augment_ops_are_refused_before_anything_is_loaded(tmp_path):
    with pytest.raises(ConfigError) as info:
        finetune.finetune_run(tmp_path / "no-such-run", config=_config(augment_ops="flip,spin=2"))
    assert info.value.field == "augment_ops"


@pytest.mark.slow
def test_progress_is_logged_before_epoch_1_and_within_epochs(tuned, tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(finetune, "PROGRESS_INTERVAL", 0.0)  # every batch
    with caplog.at_level(logging.INFO, logger="bottleneck"):
        finetune.finetune_run(tuned.parent, config=_config(epochs=1, runs_dir=str(tmp_path / "runs")))
    lines = [r.getMessage() for r in caplog.records]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1:") and "batch" not in line)
    before = lines[:first_epoch]
    assert any(line.startswith("Building the fine-tune model") for line in before)
    assert any(line.startswith("Training on") for line in before)
    assert any(line.startswith("epoch 1/1: batch 1/") and "loss" in line for line in before)
