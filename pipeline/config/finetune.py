"""The fine-tune options: `FinetuneConfig`, declared as in `options`."""

from __future__ import annotations

import dataclasses
import os

from ..errors import ConfigError
from .features import default_workers
from .options import integer, is_int, number, option, validate

DEFAULT_UNFREEZE = 30  # measured against 10 at 224 px: docs/finetune.md


def _check_unfreeze(name: str, received) -> int | str | None:
    value = received
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # `--unfreeze 5` arrives as text, like `--unfreeze all`
    if value is not None and value != "all" and (not is_int(value) or value < 1):
        raise ConfigError(f"`unfreeze` must be a positive number of layers or 'all'. Received: unfreeze={received!r}",
                          field="unfreeze")
    return value


def _check_layer_name(name: str, value) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"`{name}` must be a layer name. Received: {name}={value!r}", field=name)
    return value


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """How `bottleneck finetune` trains the top of a dense head run's base, end to end.

    Values come from the defaults, a TOML `[finetune]` table, then flags;
    the resolved config is stored in the fine-tuned run's `config.json`.

    Args:
        unfreeze: int >= 1, how many of the base's top layers with weights
            are trained (BatchNormalization layers are not counted and stay
            frozen), or `"all"` for every such layer. `None` unfreezes
            from `unfreeze_from` when that is set, else the top 30.
            Defaults to `None`.
        unfreeze_from: name of a layer of the base: it and every layer
            above it are trained. Excludes `unfreeze`. Defaults to `None`.
        epochs: int >= 1, at most this many passes over the training
            images. Defaults to `10`.
        learning_rate: float > 0, Adam's learning rate for base and head
            (low, so the trained weights move little). Defaults to `1e-4`.
        batch_size: int >= 1, images per gradient step. Defaults to `32`.
        early_stopping_patience: int >= 0 or `None`: stop after this many
            epochs without a lower validation loss. `None` runs every
            epoch. The best epoch's weights are kept either way.
            Defaults to `3`.
        workers: int >= 1, threads decoding images ahead of the model.
            Defaults to `min(8, cpu_count)`.
        seed: int >= 0, seeds the order of the training images and Keras.
            Defaults to `0`.
        runs_dir: folder receiving the run folder and the leaderboard;
            `None` is the runs folder of the run fine-tuned, so both share
            a leaderboard. Defaults to `None`.
        resume: bool, continue the unfinished fine-tune of this run from its
            last completed epoch (with its stored config and optimizer
            state). Defaults to `False`.
        augment_ops: `None` (no augmentation), or the ops of the features
            stage's cached views (`"flip,rotation=0.2,zoom=0.2"`, see
            `ExtractConfig.augment_ops`), applied on the fly: epoch e trains
            on view e+1 of every image, a function of the image, the ops
            and `augment_seed`, so a resumed run sees what an uninterrupted
            one would. Defaults to `None`.
        augment_seed: int >= 0, the seed of the views. Defaults to `0`.
    """


    unfreeze: int | str | None = option(
        None, flag="--unfreeze", make="UNFREEZE", check=_check_unfreeze, cli={"metavar": "N|all"},
        help="train the top N layers with weights of the base (BatchNormalization stays frozen), or all (default 30)")
    unfreeze_from: str | None = option(None, flag="--unfreeze-from", make="ARGS", check=_check_layer_name,
                                       cli={"metavar": "LAYER"},
                                       help="train this layer of the base and every layer above it")
    epochs: int = option(10, flag="--epochs", make="EPOCHS", check=integer(min=1),
                         help="at most this many epochs (default 10)")
    learning_rate: float = option(1e-4, flag="--learning-rate", make="LR",
                                  check=number(low=0, high=1, open_low=True, open_high=True, e_g="1e-4"),
                                  help="Adam learning rate (default 1e-4)")
    batch_size: int = option(32, flag="--batch-size", make="BATCH", check=integer(min=1),
                             help="images per step (default 32)")
    early_stopping_patience: int | None = option(
        3, flag="--patience", make="ARGS", check=integer(min=0, optional=True),
        help="stop after this many epochs without a lower validation loss (default 3)")
    workers: int = option(default_factory=default_workers, flag="--workers", make="WORKERS", check=integer(min=1),
                          help="decoding threads (default min(8, cores))")
    seed: int = option(0, flag="--seed", make="SEED", check=integer(min=0), help="seed of the image order (default 0)")
    runs_dir: str | None = option(
        None, flag="--runs-dir", make="ARGS", help="where the run folder goes (default: the runs folder of RUN)",
        check=lambda name, value: value if value is None else os.fspath(value))
    resume: bool = option(False, flag="--resume", make="ARGS", switch=True,
                          help="continue the killed fine-tune of RUN")
    augment_ops: str | None = option(
        None, flag="--augment-ops", make="AUGMENT_OPS",
        help="augment the training images on the fly with these ops, as `features --augment-ops` "
        "(e.g. flip,rotation=0.2,zoom=0.2); epoch e trains on view e+1 (default off)")
    augment_seed: int = option(0, flag="--augment-seed", make="AUGMENT_SEED", check=integer(min=0),
                               help="seed of the augmented views (default 0)")

    def __post_init__(self):
        if self.unfreeze is not None and self.unfreeze_from is not None:
            raise ConfigError(
                f"`unfreeze` and `unfreeze_from` both choose the layers to train; give one. Received: "
                f"unfreeze={self.unfreeze!r}, unfreeze_from={self.unfreeze_from!r}.",
                field="unfreeze",
            )
        if self.unfreeze is None and self.unfreeze_from is None:
            object.__setattr__(self, "unfreeze", DEFAULT_UNFREEZE)
        validate(self)
