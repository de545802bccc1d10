"""Fine-tuning the top of a dense head run's base: `finetune_run(run, *, config)`.

Transfer-learning tutorials end by unfreezing the top of the base and training on with a low
learning rate. This starts from a trained `dense` run: the base is rebuilt
exactly as the run's lineage says (the checks of `source.RunSource`: the
weights file by sha256, size, pooling or layer, precision), the trained
head goes on top with its trained weights, the top layers are unfrozen
(BatchNormalization stays frozen, in inference mode) and the whole model
trains on the feature set's images, decoded by the reference decoder, on
the very rows the run was trained and measured on, so its metrics compare
with the head's on the leaderboard.

The result is a run folder like the head stage's (see `layout`): the
fine-tuned base as `base.weights.h5` inside it, recorded in its lineage
like any weights file, and the fine-tuned head as its dense head, so
`predict`, `evaluate` and `export` take it unchanged. It trains in
`.tmp-finetune-of-<parent>/`, checkpointing model and optimizer after every
epoch; `resume=True` continues a killed fine-tune from there, and the folder
is published by rename only when complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic, config as config_lib
from ..errors import ConfigError, DataError, RunError
from ..features import augment
from ..features.discovery import file_sha256
from ..heads import save_head, training_splits
from ..heads.dense import tensorboard_callbacks
from ..heads.metrics import classification_metrics, plot_confusion_matrix, plot_history
from ..store import FeatureStore, feature_key, read_feature_set
from . import layout, safe_head
from .leaderboard import rebuild_leaderboard, scores
from .predict import Predictor
from .train import save_figure

log = logging.getLogger("bottleneck")

# Within an epoch, one line at most this often: a CPU epoch can take minutes.
PROGRESS_INTERVAL = 10.0

__all__ = ["FinetuneResult", "finetune_run"]



@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """A finished fine-tune, as written to its run folder.

    Attributes:
        run_dir: the published run folder.
        parent: the dense run it started from.
        metrics: `{"validation": dict | None, "test": dict | None}`, as a
            head run's, plus `initial` (validation before the first update).
        unfrozen: names of the base layers that were trained, bottom to top.
        epochs_run: epochs trained, over every resume.
        best_epoch: the epoch whose weights the run holds; `0` when no
            epoch beat the head it started from (the run then keeps its
            weights).
        fit_seconds: wall time spent in training, over every resume.
        sizes: images per split: `train`, `validation`, `test`.
    """

    run_dir: Path
    parent: Path
    metrics: dict[str, Any]
    unfrozen: tuple[str, ...]
    epochs_run: int
    best_epoch: int
    fit_seconds: float
    sizes: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir), "parent": str(self.parent), **scores(self.metrics),
            "unfrozen_layers": len(self.unfrozen), "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
            "fit_seconds": round(self.fit_seconds, 3), "sizes": self.sizes,
        }


@dataclasses.dataclass
class _Job:
    """What a fine-tune works from: the parent run, its rows and images, and where it writes."""

    predictor: Predictor
    parent_config: dict[str, Any]
    fs: Any
    parts: dict[str, np.ndarray]
    files: list[str]
    digests: list[str]
    folder: Path
    runs_dir: Path


def finetune_run(run: str | os.PathLike, *, config: config_lib.FinetuneConfig) -> FinetuneResult:
    """Fine-tunes the top of the base of a dense head run, end to end, into a new run folder.

    Args:
        run: a run folder of a `dense` head (`runs/<feature set>/dense-<id>`),
            or of an earlier fine-tune.
        config: the resolved `FinetuneConfig`. With `resume=True` the
            unfinished fine-tune's stored config is used; a field given
            here that differs from both it and the default is refused.

    Returns:
        A `FinetuneResult`.

    Raises:
        ConfigError: the run's head is not dense, the run refit on its
            validation rows, `unfreeze`/`unfreeze_from` do not fit the base,
            or an unfinished fine-tune exists (without `resume`) or not
            (with it).
        RunError: the run folder or its feature set is missing, damaged or
            changed since training.
        DataError: an image of the feature set is missing or changed.
        WriteError: the run folder could not be written.

    Example:

    ```python
    result = finetune_run("runs/signs-mobilenet_v2-96-avg-1a2b3c4d/dense-20260101T000000-0a1b2c3d",
                          config=FinetuneConfig(unfreeze=20, epochs=5))
    print(result.metrics["validation"]["accuracy"], result.run_dir)
    ```
    """
    if not isinstance(config, config_lib.FinetuneConfig):
        raise TypeError(f"`config` must be a FinetuneConfig. Received: {type(config).__name__}.")
    if config.augment_ops is not None:  # refused before anything is loaded
        if augment.needs_decoded(augment.parse_augment_ops(config.augment_ops)):
            raise ConfigError(
                "`augment_ops` of finetune cannot crop: its batches are decoded at the model's size. Received: "
                f"augment_ops={config.augment_ops!r}. Leave crop out, e.g. 'flip=horizontal,rotate=10deg,jitter=0.1'.",
                field="augment_ops")
    job = _open(run, config)
    config = _config_for(job.folder, config)
    from . import finetune_model as fm

    if config.resume:
        state = layout.read_json(job.folder / layout.FINETUNE_STATE, "unfinished fine-tune")
        model = _resumed_model(job, state)
    else:
        state, model = _start(job, config, fm)
    job.predictor.head.model_ = fm.head_of(model)  # trained in place: saved as the run's head
    _train(job, config, state, model, fm)
    if state["best_epoch"] != state["epoch"]:
        model.set_weights(_saved_weights(job.folder / state["best"]))
    with _atomic.writing(job.folder):  # a full disk is a WriteError; the folder stays for `resume`
        return _publish(job, config, state, model, fm)


def _open(run, config) -> _Job:
    predictor = Predictor.load(run)
    source = predictor.source
    if source.kind != "run":
        raise ConfigError(f"`run` must be a run folder; '{source.root}' is a bundle. Fine-tune the run it was exported from.",
                          field="run")
    if len(source.bases) > 1:
        raise ConfigError(
            f"`run` '{source.root}' trained on fused feature sets ({source.lineage.get('feature_set')}); fine-tuning "
            "continues one base. Train a dense head on one of its feature sets and fine-tune that run.",
            field="run",
        )
    if predictor.config.decoder != "pillow":
        raise ConfigError(
            f"`run` '{source.root}' trained on features decoded by {predictor.config.decoder}; fine-tuning decodes "
            "with the reference decoder. Extract with decoder pillow, train a dense head and fine-tune that run.",
            field="run",
        )
    if not predictor.is_dense:
        raise ConfigError(
            f"`run` must be a run of a `dense` head, whose network continues into the base; the head of "
            f"'{source.root}' is {type(predictor.head).__name__}. Train a dense head on its feature set "
            "(heads=('dense',)) and fine-tune that run.",
            field="run",
        )
    parent_config = layout.read_json(source.root / layout.CONFIG, "run folder")
    try:
        train_config = config_lib.TrainConfig(**parent_config["train_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"'{source.root / layout.CONFIG}' holds no usable train_config ({e}); train the head again.") from None
    if train_config.refit != "train":
        raise ConfigError(
            f"`run` '{source.root}' was refit on its validation rows (refit={train_config.refit!r}), so validation "
            "cannot choose the fine-tune's best epoch. Fine-tune a run trained with refit='train'.",
            field="run",
        )
    fs = read_feature_set(source.lineage.get("features_path") or "")
    if fs.content_hash != source.lineage.get("content_hash"):
        raise RunError(
            f"Feature set '{fs.path}' changed since run '{source.root}' was trained (content hash "
            f"{fs.content_hash[:12]}, the run recorded {str(source.lineage.get('content_hash'))[:12]}), so its "
            "rows would not be the run's. Train the head again and fine-tune the new run."
        )
    parts = training_splits(fs, config=train_config)
    files, digests = _images(fs)
    runs_dir = Path(config.runs_dir) if config.runs_dir is not None else source.root.parent.parent
    _atomic.check_writable(runs_dir, field="runs_dir")
    folder = runs_dir / fs.name / layout.unfinished_finetune(source.root)
    return _Job(predictor, parent_config, fs, parts, files, digests, folder, runs_dir)


def _images(fs) -> tuple[list[str], list[str]]:
    """Each row's image file under the data folder the set records, and its recorded sha256."""
    root = fs.attrs.get("data_root")
    state = FeatureStore(fs.path.parent).read_index_state()
    if not root or state is None:
        raise RunError(f"Feature set '{fs.path}' records no data folder; extract its features again to fine-tune.")
    files = [os.path.join(root, p) for p in fs.paths]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(files)} images of feature set '{fs.name}' are missing under its data "
            f"folder '{root}', e.g. '{missing[0]}'. Fine-tuning trains on the images: restore them (or the "
            "folder), or extract the features of the folder where they are now and train a new head."
        )
    return files, [state.files[p].sha256 for p in fs.paths]


def _config_for(folder: Path, config) -> config_lib.FinetuneConfig:
    """The config to train with: `config`, or the unfinished fine-tune's stored one when resuming."""
    state_file = folder / layout.FINETUNE_STATE
    if folder.exists() and not state_file.exists():
        shutil.rmtree(folder)  # killed before its first state was written: nothing to resume
    if not config.resume:
        if folder.exists():
            raise ConfigError(
                f"An unfinished fine-tune of this run is in '{folder}'. Pass `resume=True` to continue it, "
                "or delete that folder to start again.",
                field="resume",
            )
        return config
    if not state_file.is_file():
        raise ConfigError(f"`resume` found no unfinished fine-tune of this run (no '{state_file}'); leave it out.",
                          field="resume")
    stored = layout.read_json(state_file, "unfinished fine-tune").get("config")
    try:
        resumed = config_lib.FinetuneConfig(**{**stored, "resume": True})
    except (TypeError, ValueError) as e:
        raise RunError(f"'{state_file}' holds no usable config ({e}); delete '{folder}' and start again.") from None
    default = config_lib.FinetuneConfig(workers=config.workers)
    for field in dataclasses.fields(config):
        given = getattr(config, field.name)
        if field.name not in ("workers", "runs_dir") and given not in (getattr(resumed, field.name), getattr(default, field.name)):
            raise ConfigError(
                f"`{field.name}` differs from the unfinished fine-tune's ({getattr(resumed, field.name)!r}); a "
                f"resumed run keeps its config. Received: {field.name}={given!r}. Leave it out.",
                field=field.name,
            )
    return dataclasses.replace(resumed, workers=config.workers)


def _batches(job: _Job, config, split: str, fm, *, shuffle: bool = False, epoch: int = 0):
    """Batches of a split; the training batches (`shuffle`) are shuffled and, with `augment_ops`, augmented."""
    rows = job.parts[split]
    return fm.ImageBatches(
        [job.files[r] for r in rows], job.fs.labels[rows], [job.digests[r] for r in rows],
        size=job.predictor.size, batch_size=config.batch_size, workers=config.workers,
        shuffle_seed=config.seed if shuffle else None, epoch=epoch,
        augment=_augmentation(config) if shuffle else None,
    )


def _augmentation(config):
    """Epoch e trains on view e+1 of each image: the cached views' ops, drawn per image and epoch."""
    if config.augment_ops is None:
        return None
    ops = augment.parse_augment_ops(config.augment_ops)
    return lambda images, digests, epoch: augment.apply_view(
        images, digests, ops=ops, seed=config.augment_seed, view=epoch + 1)


def _start(job: _Job, config, fm) -> tuple[dict[str, Any], Any]:
    """Builds the fine-tune model, measures it before any update and saves it as epoch 0."""
    import keras

    c = job.predictor.config
    log.info("Building the fine-tune model: %s at %d px, the dense head on top, top %s layers trainable ...",
             c.model, job.predictor.size, config.unfreeze if config.unfreeze_from is None else f"from {config.unfreeze_from}")
    model = fm.build_model(job.predictor.extractor(), job.predictor.head.model_, storage_dtype=c.storage_dtype)
    from ..features import backbones

    base = fm.base_of(model)
    blocks = backbones.trainable_blocks(backbones.get_backbone_cfg(c.model), base)
    unfrozen = fm.unfreeze_top(base, unfreeze=config.unfreeze, unfreeze_from=config.unfreeze_from, blocks=blocks)
    keras.utils.set_random_seed(config.seed)  # after the build: a random-weights base seeds itself
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
    if c.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # float16 gradients underflow unscaled
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    initial = {}
    if len(job.parts["validation"]):
        log.info("Measuring it before any update on %d validation images ...", len(job.parts["validation"]))
        y, proba = _predict(job, config, model, "validation", fm)
        initial = classification_metrics(y, proba, job.fs.class_names)
        # The loss early stopping compares epochs by, as Keras computes it during `fit`.
        initial["keras_loss"] = float(keras.losses.SparseCategoricalCrossentropy()(y, proba))
    state = {
        "config": config_lib.to_dict(dataclasses.replace(config, resume=False)), "unfrozen": unfrozen,
        "initial_validation": initial, "history": {}, "epoch": 0, "checkpoint": layout.checkpoint_name(0),
        "best": layout.best_name(0), "best_loss": initial.get("keras_loss"), "best_epoch": 0, "wait": 0,
        "stopped": False, "fit_seconds": 0.0, "resumed_after": [],
    }
    job.folder.mkdir(parents=True)
    fm.save_model(model, job.folder / state["checkpoint"])
    fm.copy_file(job.folder / state["checkpoint"], job.folder / state["best"])
    fm.write_state(job.folder, state)
    return state, model


def _resumed_model(job: _Job, state: dict[str, Any]):
    """The model and optimizer as the last completed epoch left them."""
    import keras

    for key in ("checkpoint", "best"):
        if not (job.folder / str(state.get(key))).is_file():
            raise RunError(f"'{job.folder / str(state.get(key))}', named by '{job.folder / layout.FINETUNE_STATE}', "
                           f"is missing; delete '{job.folder}' and start again.")
    state["resumed_after"].append(state["epoch"])
    return keras.saving.load_model(job.folder / state["checkpoint"])


def _saved_weights(path: Path) -> list:
    import keras

    return keras.saving.load_model(path, compile=False).get_weights()


def _train(job: _Job, config, state: dict[str, Any], model, fm) -> None:
    if state["stopped"] or state["epoch"] >= config.epochs:
        return
    monitor = "val_loss" if len(job.parts["validation"]) else "loss"
    train = _batches(job, config, "train", fm, shuffle=True, epoch=state["epoch"])
    validation = _batches(job, config, "validation", fm) if monitor == "val_loss" else None
    callbacks = [fm.EpochCheckpoint(job.folder, state, monitor=monitor, patience=config.early_stopping_patience,
                                    epochs=config.epochs)]
    callbacks += tensorboard_callbacks(job.folder / layout.LOGS) + [_batch_progress(config.epochs)]
    log.info("Training on %d images for up to %d epochs, from epoch %d (the first batch traces the model) ...",
             len(job.parts["train"]), config.epochs, state["epoch"] + 1)
    try:
        model.fit(train, validation_data=validation, epochs=config.epochs, initial_epoch=state["epoch"],
                  callbacks=callbacks, verbose=0)
    except Exception:
        # On TensorFlow a worker's DataError reaches here wrapped in a tf.data error: raise the original.
        error = train.error or (validation.error if validation is not None else None)
        if error is not None:
            raise error from None
        raise


def _batch_progress(epochs: int):
    """A Keras callback logging `epoch e/N: batch b/B` at most every `PROGRESS_INTERVAL` seconds."""
    import keras

    class BatchProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.last = epoch, time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() - self.last >= PROGRESS_INTERVAL:
                steps = self.params.get("steps") or "?"
                loss = (logs or {}).get("loss")
                shown = "" if loss is None else f", loss {float(loss):.4f}"
                log.info("epoch %d/%d: batch %d/%s%s", self.epoch + 1, epochs, batch + 1, steps, shown)
                self.last = time.monotonic()

    return BatchProgress()


def _predict(job: _Job, config, model, split: str, fm) -> tuple[np.ndarray, np.ndarray]:
    rows = job.parts[split]
    proba = np.asarray(model.predict(_batches(job, config, split, fm), verbose=0), dtype=np.float64)
    return job.fs.labels[rows], proba / proba.sum(axis=1, keepdims=True)


def _carried_from_parent(parent: Path) -> dict[str, Any]:
    """What the parent run's metrics say of its head and data that fine-tuning keeps: the transform, copies."""
    recorded = layout.read_json(parent / layout.METRICS, "run folder")
    return {k: recorded[k] for k in ("transform", "duplicates_across_splits") if k in recorded}


def _publish(job: _Job, config, state: dict[str, Any], model, fm) -> FinetuneResult:
    """Measures the chosen weights, writes the run's files and renames the folder into place."""
    metrics = {
        split: classification_metrics(*_predict(job, config, model, split, fm), job.fs.class_names)
        if len(job.parts[split]) else None
        for split in ("validation", "test")
    }
    folder, source = job.folder, job.predictor.source
    base = untouched = fm.base_of(model)
    if source.config.layer is not None:  # the weights file holds the whole base, layers above the cut too
        untouched = fm.base_of(_whole_extractor(job))
    with _atomic.replacing(folder / layout.BASE_WEIGHTS) as tmp:  # `tmp` keeps the `.weights.h5` suffix
        fm.full_base(base, untouched).save_weights(tmp)
    identity = f"sha256:{file_sha256(folder / layout.BASE_WEIGHTS)}"
    head = job.predictor.head  # its `model_` is the fine-tune model's head, trained in place
    lineage = _lineage(job, identity, state)
    metadata = {
        **{k: lineage[k] for k in ("feature_set", "content_hash", "feature_key", "backbone", "weights", "class_names")},
        "head": "dense", "params": job.parent_config.get("params", {}), "parent_run": lineage["parent_run"],
    }
    lineage["head_sha256"] = save_head(folder / layout.HEAD, head, metadata=metadata)
    lineage["head_skops_sha256"] = safe_head.write_run_head(folder / layout.HEAD_SKOPS, head, metadata)
    head.save_keras(folder / layout.MODEL)
    save_figure(plot_history(state["history"]), folder / layout.HISTORY)
    shown = "test" if metrics["test"] is not None else "validation"
    save_figure(plot_confusion_matrix(metrics[shown]["confusion_matrix"], job.fs.class_names),
                 folder / layout.CONFUSION_MATRIX)
    sizes = {split: int(len(rows)) for split, rows in job.parts.items()}
    metrics["initial"] = {"validation": state["initial_validation"] or None}
    epochs_run = len(next(iter(state["history"].values()), []))
    layout.write_json(folder / layout.METRICS, {
        **metrics, "fit_seconds": state["fit_seconds"], "sizes": sizes, "epochs_run": epochs_run,
        "best_epoch": state["best_epoch"], "warnings": _warnings(state, epochs_run, config),
        "unfrozen_layers": len(state["unfrozen"]), "resumed_after": state["resumed_after"],
        **_carried_from_parent(job.predictor.root),
    })
    layout.write_json(folder / layout.CONFIG, {
        "finetune_config": state["config"], "train_config": job.parent_config["train_config"], "head": "dense",
        "params": job.parent_config.get("params", {}), "unfrozen": state["unfrozen"],
    })
    layout.write_json(folder / layout.LINEAGE, lineage)
    published = _atomic.publish_folder(folder, folder.parent / _run_name(), fresh_name=_run_name)
    # Only now: until the rename, a kill leaves a folder `resume` can finish from its own files.
    os.replace(published / state["best"], published / layout.BEST_MODEL)
    for name in os.listdir(published):
        if name == layout.FINETUNE_STATE or name.startswith(("checkpoint-", "best-")):
            os.unlink(published / name)
    rebuild_leaderboard(job.runs_dir)
    return FinetuneResult(published, source.root, metrics, tuple(state["unfrozen"]), epochs_run,
                          state["best_epoch"], state["fit_seconds"], sizes)


def _whole_extractor(job: _Job):
    from ..features import backbones

    c = job.predictor.config
    cfg = backbones.get_backbone_cfg(c.model)
    return backbones.build_extractor(cfg, size=job.predictor.size, weights=c.weights, precision=c.precision)


def _lineage(job: _Job, identity: str, state: dict[str, Any]) -> dict[str, Any]:
    from ..features import extract

    parent = job.predictor.source
    extraction = {**parent.lineage["extraction_config"], "weights": layout.BASE_WEIGHTS}
    spec = extract.feature_spec(dataclasses.replace(parent.config, weights="none"))
    spec["weights"] = identity
    return {
        **parent.lineage,
        "kind": "finetune",
        "parent_run": str(parent.root.resolve()),
        "parent_head_sha256": parent.head_sha256,
        "unfrozen_layers": len(state["unfrozen"]),
        "weights": identity,
        "extraction_config": extraction,
        "feature_key": feature_key(spec),
        # Orders the leaderboard, as for head runs.
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
    }


def _warnings(state: dict[str, Any], epochs_run: int, config) -> list[str]:
    if state["best_epoch"] == 0:
        return ["finetune: no epoch lowered the validation loss of the head it started from; the run keeps the "
                "parent's weights. Try another `learning_rate` or `unfreeze`."]
    if state["best_epoch"] == epochs_run == config.epochs:
        return [f"finetune: best epoch = last epoch {epochs_run} (loss still falling when `epochs` stopped "
                "training); raise `epochs` and fine-tune again."]
    return []


def _run_name() -> str:
    return f"{layout.FINETUNE_PREFIX}-{layout.run_id()}"

