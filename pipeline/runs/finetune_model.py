"""The Keras side of fine-tuning: images in, the unfrozen model, per-epoch checkpoints.

Imported by `finetune` only once a fine-tune really runs, as it imports
Keras at module level. Everything here works on any Keras 3 backend.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .. import _atomic
from ..errors import ConfigError, DataError, did_you_mean
from ..features import decode
from ..features.layers import Preprocess  # noqa: F401 - registers the layer that checkpoints hold
from . import layout

__all__ = ["EpochCheckpoint", "ImageBatches", "base_of", "build_model", "copy_file", "full_base", "head_of",
           "save_model",
           "unfreeze_top", "write_state"]

log = logging.getLogger("bottleneck")

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


class ImageBatches(keras.utils.PyDataset):
    """Feature-set rows as `(uint8 images, labels)` batches, decoded in parallel threads.

    Images are decoded by the reference decoder (`decode.load_image`), the
    one the features were computed with, and each file's bytes must still
    have the sha256 recorded for its row: a replaced image is an error,
    never a silently different training example. Keras fetches batches by
    index from `workers` threads and queues them ahead of the model.

    Args:
        files: image paths, one per row.
        labels: class index per row.
        digests: recorded sha256 per row.
        size: input size in pixels.
        batch_size: rows per batch.
        workers: decoding threads.
        shuffle_seed: `None` keeps the rows in order (prediction); an int
            draws a new order each epoch from `(shuffle_seed, epoch)`, so a
            resumed run sees the orders an uninterrupted one would.
            Defaults to `None`.
        epoch: the epoch the first batch belongs to (`initial_epoch` when
            resuming). Defaults to `0`.
        augment: `None`, or `augment(images, digests, epoch)` from a uint8
            batch `(n, size, size, 3)`, its rows' sha256 and the epoch to
            one of the same shape and dtype, applied to every batch: the
            one place per-batch augmentation goes. Defaults to `None`.
    """

    def __init__(
        self,
        files: Sequence[str],
        labels: np.ndarray,
        digests: Sequence[str],
        *,
        size: int,
        batch_size: int,
        workers: int,
        shuffle_seed: int | None = None,
        epoch: int = 0,
        augment: Callable[[np.ndarray, list[str], int], np.ndarray] | None = None,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(4, 2 * workers))
        self.files, self.digests = list(files), list(digests)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.size, self.batch_size = size, batch_size
        self.shuffle_seed, self.epoch, self.augment = shuffle_seed, epoch, augment
        self._order = self._order_of(epoch)
        self.error: DataError | None = None  # the first refused image, for the caller to re-raise

    def _order_of(self, epoch: int) -> np.ndarray:
        if self.shuffle_seed is None:
            return np.arange(len(self.files))
        return np.random.default_rng([self.shuffle_seed, epoch]).permutation(len(self.files))

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images = np.stack([self._load(row) for row in rows])
        if self.augment is not None:
            images = self.augment(images, [self.digests[row] for row in rows], self.epoch)
        return images, self.labels[rows]

    def _load(self, row: int) -> np.ndarray:
        try:
            image, digest = decode.load_image(self.files[row], self.size, return_digest=True)
        except decode.DecodeError as e:
            self.error = self.error or DataError(
                f"Cannot decode '{self.files[row]}' ({e}); it was extracted before. Restore it, or extract "
                "the features again and train a new head.")
            raise self.error from None
        if digest != self.digests[row]:
            self.error = self.error or DataError(
                f"'{self.files[row]}' changed since its features were extracted. Extract the features again "
                "and train a new head before fine-tuning.")
            raise self.error
        return image

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._order_of(self.epoch)


def head_of(model) -> Any:
    """The dense head on top of a fine-tune model."""
    return model.get_layer("dense_head")


def base_of(model) -> Any:
    """The backbone inside an extractor or fine-tune model: its one nested model that is not the head."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "dense_head"]
    if len(nested) != 1:
        raise RuntimeError(f"Expected one base model inside {model.name!r}, found {[m.name for m in nested]}.")
    return nested[0]


def build_model(extractor, head_model, *, storage_dtype: str):
    """The extractor with the trained head on top: uint8 images in, class probabilities out.

    With float16 storage the head was trained on features rounded to
    float16, so they are rounded here too, as `export` does.
    """
    x = extractor.output
    if storage_dtype == "float16":
        x = keras.layers.Activation("linear", dtype="float16", name="storage_float16")(x)
        x = keras.layers.Activation("linear", dtype="float32", name="features_float32")(x)
    return keras.Model(extractor.input, head_model(x), name="finetune")


def unfreeze_top(base, *, unfreeze: int | str | None, unfreeze_from: str | None, blocks: list | None = None) -> list[str]:
    """Makes the chosen top layers of `base` trainable and every other layer frozen.

    Layers are counted when they have weights, BatchNormalization left out:
    every BatchNormalization layer stays frozen, which in Keras 3 also
    keeps it in inference mode (its moving mean and variance are neither
    used from the batch nor updated), the transfer-learning guide's rule.
    Freezing is what guarantees it: a functional model's `training=True`
    reaches nested layers even where the base was called with
    `training=False`.

    A transformer base (KerasHub) passes its `blocks`, bottom to top:
    `unfreeze` then counts blocks, and the layers above the top block (the
    final LayerNorm, SigLIP's attention-pool head) train with them; the
    embeddings and lower blocks stay frozen.

    Returns:
        The names of the layers made trainable, bottom to top.
    """
    if blocks is not None and unfreeze != "all":
        return _unfreeze_blocks(base, blocks, unfreeze=unfreeze, unfreeze_from=unfreeze_from)
    layers = list(base.layers)
    weighted = [layer for layer in layers if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
    if unfreeze_from is not None:
        names = [layer.name for layer in layers]
        if unfreeze_from not in names:
            hint = did_you_mean(unfreeze_from, names)
            raise ConfigError(
                f"`unfreeze_from` must name a layer of the base {base.name!r} ({len(names)} layers).{hint} "
                f"Received: unfreeze_from={unfreeze_from!r}",
                field="unfreeze_from",
            )
        start = names.index(unfreeze_from)
        chosen = [layer for layer in weighted if layers.index(layer) >= start]
    elif unfreeze == "all":
        chosen = weighted
    else:
        if unfreeze > len(weighted):
            raise ConfigError(
                f"`unfreeze` must be at most {len(weighted)}, the layers with weights (BatchNormalization "
                f"not counted) of the base {base.name!r}. Received: unfreeze={unfreeze}. Pass 'all' for every one.",
                field="unfreeze",
            )
        chosen = weighted[len(weighted) - unfreeze :]
    if not chosen:
        raise ConfigError(f"`unfreeze_from`={unfreeze_from!r} leaves no layer with weights to train.", field="unfreeze_from")
    trained = {id(layer) for layer in chosen}
    base.trainable = True
    for layer in layers:
        layer.trainable = id(layer) in trained
    return [layer.name for layer in chosen]


def _unfreeze_blocks(base, blocks: list, *, unfreeze: int | None, unfreeze_from: str | None) -> list[str]:
    """Trains the top transformer blocks and what lies above them; nothing below."""
    names = [block.name for block in blocks]
    if unfreeze_from is not None:
        if unfreeze_from not in names:
            raise ConfigError(
                f"`unfreeze_from` must name a transformer block of the base {base.name!r}.{did_you_mean(unfreeze_from, names)} "
                f"Received: unfreeze_from={unfreeze_from!r}", field="unfreeze_from")
        unfreeze = len(names) - names.index(unfreeze_from)
    if unfreeze > len(blocks):
        raise ConfigError(
            f"`unfreeze` must be at most {len(blocks)}, the transformer blocks of the base {base.name!r}. "
            f"Received: unfreeze={unfreeze}. Pass 'all' for the whole base.", field="unfreeze")
    chosen = blocks[len(blocks) - unfreeze:]
    top = list(base.layers)
    # Top-level layers after the one holding the last block (final norm, pooling head) train too.
    holder = next(i for i, layer in enumerate(top) if layer is blocks[-1] or blocks[-1] in _descendants(layer))
    above = [layer for layer in top[holder + 1:] if layer.weights]
    base.trainable = True
    _train_only(base, {id(layer) for layer in [*chosen, *above]})
    return [layer.name for layer in [*chosen, *above]]


def _descendants(layer) -> list:
    return list(layer._flatten_layers(include_self=False))  # Keras 3 has no public walk of nested layers


def _train_only(layer, chosen: set[int]) -> None:
    """Freezes every sublayer of `layer` but the chosen ones and the containers on their way."""
    for child in layer._flatten_layers(include_self=False, recursive=False):
        if id(child) in chosen:
            continue
        if any(id(d) in chosen for d in _descendants(child)):
            _train_only(child, chosen)
        else:
            child.trainable = False


def full_base(trained_base, untouched_base):
    """The whole base with `trained_base`'s weights: a base cut at a layer lacks the layers above the cut.

    `untouched_base` is the whole base as built from the parent's weights;
    the layers the cut model has get its trained weights.
    """
    if trained_base is untouched_base:
        return trained_base
    for layer in trained_base.layers:
        if layer.weights:
            untouched_base.get_layer(layer.name).set_weights(layer.get_weights())
    return untouched_base


class EpochCheckpoint(keras.callbacks.Callback):
    """Early stopping and a best-by-loss checkpoint that survive a kill.

    After each epoch, on a copy of the state: the history grows; the model
    with its optimizer state is saved as `checkpoint-<epoch>.keras`, and
    copied to `best-<epoch>.keras` when the monitored loss is strictly lower
    than before; then `finetune-state.json` is replaced to name both, and
    only then are the files it no longer names removed, so a kill at any
    moment leaves a state whose files exist and belong to it. Training
    stops after `patience` epochs without improvement, as Keras' `EarlyStopping`
    counts. The state is a plain dict, so a resumed run carries on with
    the same best loss, patience count and history.
    """

    def __init__(self, folder: Path, state: dict[str, Any], *, monitor: str, patience: int | None, epochs: int):
        super().__init__()
        self.folder, self.state, self.monitor, self.patience, self.epochs = folder, state, monitor, patience, epochs
        self._mark = time.perf_counter()

    def on_train_begin(self, logs=None):
        self._mark = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs, new = logs or {}, copy.deepcopy(self.state)
        for key in HISTORY_KEYS:
            if key in logs:
                new["history"].setdefault(key, []).append(float(logs[key]))
        new["fit_seconds"] += time.perf_counter() - self._mark
        current, best = float(logs[self.monitor]), new["best_loss"]  # best None: nothing measured before
        improved = math.isfinite(current) and (best is None or current < best)
        if improved:
            new.update(best_loss=current, best_epoch=epoch + 1, wait=0, best=layout.best_name(epoch + 1))
        else:
            new["wait"] += 1
        new["stopped"] = self.patience is not None and new["wait"] >= self.patience
        new.update(epoch=epoch + 1, checkpoint=layout.checkpoint_name(epoch + 1))
        save_model(self.model, self.folder / new["checkpoint"])
        if improved:  # the same model: saved once, copied
            copy_file(self.folder / new["checkpoint"], self.folder / new["best"])
        write_state(self.folder, new)
        for key in ("best", "checkpoint"):
            if self.state[key] != new[key]:
                (self.folder / self.state[key]).unlink(missing_ok=True)
        self.state.clear()
        self.state.update(new)
        self.model.stop_training = new["stopped"]
        shown = ", ".join(f"{k} {logs[k]:.4f}" for k in HISTORY_KEYS if k in logs)
        log.info("epoch %d/%d: %s%s", epoch + 1, self.epochs, shown, " (best so far)" if improved else "")
        self._mark = time.perf_counter()


def save_model(model, path: Path) -> None:
    """The whole model (and its optimizer state, once compiled) as a `.keras` file, atomically."""
    with _atomic.replacing(path) as tmp:  # `tmp` keeps the `.keras` suffix Keras requires
        model.save(tmp)


def copy_file(source: Path, target: Path) -> None:
    with _atomic.replacing(target) as tmp:
        shutil.copyfile(source, tmp)


def write_state(folder: Path, state: dict[str, Any]) -> None:
    layout.write_json(folder / layout.FINETUNE_STATE, state)
