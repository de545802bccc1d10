"""Typed configuration for both stages.

Each stage has one frozen dataclass. Values come, in increasing priority,
from the dataclass defaults, a TOML file (`--config FILE`, tables
`[features]` and `[train]`) and command-line flags. Flags left unset are
`None` and are dropped before overriding, so an unset flag never hides a
value from the file (timm's "kwargs set to None are pruned").

The resolved config is stored as JSON with every artifact it produced.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

# avg, max, none: keras.applications; the token poolings: KerasHub encoders (backbones.resolve_pooling).
POOLINGS = ("avg", "max", "none", "cls", "mean", "cls+mean", "embedding")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STORAGE_DTYPES = ("float32", "float16")
DECODE_MODES = ("auto", "threads", "processes")
ENGINES = ("local", "ray")
SWEEP_SELECTS = ("accuracy", "log_loss", "macro_f1")
SWEEP_REFITS = ("train", "train+validation")
# The classic Keras tutorial augmentation: RandomFlip("horizontal"), RandomRotation(0.2), RandomZoom(0.2)
# (its RandomHeight/RandomWidth change the image size, which a fixed-size extractor can't take).
DEFAULT_AUGMENT_OPS = "flip,rotation=0.2,zoom=0.2"


# Sanity bounds, far above any useful value, so that a typo fails here with
# its value named instead of as an out-of-memory kill or a segfault later.
_EXTRACT_LIMITS = {"size": 4096, "batch_size": 4096, "workers": 256, "shard_size": 1_000_000, "augment": 100}
_EXTRACT_LIMIT_REASONS = {
    "size": "The largest ImageNet backbone was trained at 600 px; one 4096 px image already takes 200 MB as float32.",
    "batch_size": "Larger batches do not run faster on any backbone; 32-256 is typical.",
    "workers": "More decoding threads than cores only add memory.",
    "shard_size": "A shard is written whole before it counts as done; smaller shards lose less work on a kill.",
    "augment": "Each view costs a full extraction of the training images; 2-10 is typical.",
}


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """What `bottleneck features` extracts, and how.

    Args:
        data: folder of images, one subfolder per class, optionally under
            `train/`, `validation/` and `test/`; or a manifest (`.csv` or
            `.parquet` with columns `path`, `label`, optional `split` and
            `group`, see `features.manifest`).
        model: backbone name from `bottleneck list`. Defaults to
            `"mobilenet_v2"`.
        size: square input size in pixels. `None` uses the backbone's
            default size. Defaults to `None`.
        pooling: `"avg"` or `"max"` global pooling of the last feature map,
            or `"none"` to keep the spatial map. Defaults to `"avg"`.
        layer: name of a layer of the backbone whose output is taken
            instead of the last one. `None` takes the last. Defaults to `None`.
        weights: `"imagenet"` (downloaded by Keras into its cache), `"none"`
            (random weights, for smoke runs only) or the path of a weights
            file. Defaults to `"imagenet"`.
        precision: Keras dtype policy for the forward pass, one of
            `"float32"`, `"mixed_bfloat16"`, `"mixed_float16"`.
            Defaults to `"float32"`.
        storage_dtype: dtype of the stored features, `"float32"` or
            `"float16"`. Defaults to `"float32"`.
        batch_size: images per forward pass. Defaults to `64`.
        workers: decoding threads or processes running ahead of the model.
            Defaults to `min(8, cpu_count)`.
        decode_mode: `"threads"`, `"processes"` (past the GIL; the images
            are handed over in shared memory) or `"auto"` (processes from 8
            workers up). Both give the same arrays. Defaults to `"auto"`.
        devices: how many devices run each model, one replica each, every
            batch split over them (Keras data parallelism, JAX backend):
            `"auto"` (every GPU when there are several), `"all"`, or a
            number. Never changes the numbers. Defaults to `"auto"`.
        num_shards: with more than 1, this run is one of `num_shards`
            workers (on any launcher: Slurm, Kubernetes, ssh) that extract
            one part each of the missing images, by content hash, into the
            same feature set, writing shards only; a plain run afterwards
            (`num_shards` 1) writes the index from every complete shard.
            Defaults to `1`.
        shard_index: this worker's part, `0 <= shard_index < num_shards`.
            Defaults to `0`.
        shard_size: images per shard file; a kill loses at most one shard
            of work. Defaults to `1024`.
        engine: `"local"` (this process) or `"ray"` (a Ray cluster decodes
            in CPU tasks and `ray_workers` model workers write the shards;
            needs the `ray` extra). Never changes the numbers. Defaults to
            `"local"`.
        ray_address: with `engine="ray"`, the cluster to join: `"auto"`
            (the one `ray start` runs on this node), `"ray://host:port"`,
            or `None` for `RAY_ADDRESS`, else a new local cluster.
            Defaults to `None`.
        ray_workers: with `engine="ray"`, model workers (each builds the
            base once and writes one shard per `shard_size` images).
            Defaults to `1`.
        gpus_per_worker: with `engine="ray"`, GPUs each model worker
            reserves (0: runs on CPU; fractions share a GPU). Defaults to `0`.
        cache_dir: folder holding the feature sets. Defaults to `"cache"`.
        name: dataset name used in the feature set's folder name. `None`
            uses the data folder's name. Defaults to `None`.
        verify: read every cached feature to check its checksum even when
            nothing changed. Without it, a run with nothing to do trusts
            the shards whose size and mtime match the index (shards are
            never rewritten in place) and reads none of them; use it after
            a read reported a damaged shard. Defaults to `False`.
        augment: int >= 0, augmented views extracted per image besides the
            clean row (only images under `train/` when the data has split
            folders). Raising it extracts only the new views. Defaults to `0`.
        augment_ops: the Keras augmentation ops of the views, e.g.
            `"flip,rotation=0.1,zoom=0.2,translation=0.1,contrast=0.1"`
            (see `pipeline.features.augment.parse_augment_ops`).
            Defaults to `"flip,rotation=0.2,zoom=0.2"` (the classic tutorial ops).
        augment_seed: int >= 0; with the ops, each image's content and the
            view index it fixes every view. Defaults to `0`.
    """

    data: str
    model: str = "mobilenet_v2"
    size: int | None = None
    pooling: str = "avg"
    layer: str | None = None
    weights: str = "imagenet"
    precision: str = "float32"
    storage_dtype: str = "float32"
    batch_size: int = 64
    workers: int = dataclasses.field(default_factory=_default_workers)
    decode_mode: str = "auto"
    devices: int | str = "auto"
    num_shards: int = 1
    shard_index: int = 0
    shard_size: int = 1024
    engine: str = "local"
    ray_address: str | None = None
    ray_workers: int = 1
    gpus_per_worker: float = 0
    cache_dir: str = "cache"
    name: str | None = None
    verify: bool = False
    augment: int = 0
    augment_ops: str = DEFAULT_AUGMENT_OPS
    augment_seed: int = 0

    def __post_init__(self):
        for field in ("augment", "augment_seed"):
            _check_non_negative(field, getattr(self, field))
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("storage_dtype", self.storage_dtype, STORAGE_DTYPES)
        _check_choice("decode_mode", self.decode_mode, DECODE_MODES)
        object.__setattr__(self, "devices", _parse_devices(self.devices))
        _check_choice("engine", self.engine, ENGINES)
        if isinstance(self.gpus_per_worker, bool) or not isinstance(self.gpus_per_worker, (int, float)) or not (
            0 <= self.gpus_per_worker < float("inf")
        ):
            raise ConfigError(f"`gpus_per_worker` must be a number >= 0. Received: gpus_per_worker={self.gpus_per_worker!r}",
                              field="gpus_per_worker")
        for field in ("batch_size", "workers", "shard_size", "num_shards", "ray_workers"):
            _check_positive(field, getattr(self, field))
        if not isinstance(self.shard_index, int) or isinstance(self.shard_index, bool) or not (
            0 <= self.shard_index < self.num_shards
        ):
            raise ConfigError(
                f"`shard_index` must be in 0..num_shards-1. Received: shard_index={self.shard_index}, "
                f"num_shards={self.num_shards}. Number the workers 0 to {self.num_shards - 1}.",
                field="shard_index",
            )
        if self.size is not None:
            _check_positive("size", self.size)
        for field, limit in _EXTRACT_LIMITS.items():
            value = getattr(self, field)
            if value is not None and value > limit:
                raise ConfigError(
                    f"`{field}` must be at most {limit}. Received: {field}={value}. "
                    f"{_EXTRACT_LIMIT_REASONS[field]}",
                    field=field,
                )


def load_toml(path: str | os.PathLike | None) -> dict[str, Any]:
    """Reads a TOML config file; `None` gives an empty config."""
    if path is None:
        return {}
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file '{path}' does not exist.", field="config") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Config file '{path}' is not valid TOML: {e}", field="config") from None


def resolve(cls, table: dict[str, Any] | None = None, **overrides):
    """Builds `cls` from a TOML table, then non-`None` overrides on top.

    Unknown keys in the table raise a `ConfigError` naming the valid keys.
    """
    table = dict(table or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - valid)
    if unknown:
        raise ConfigError(
            f"Unknown config keys {unknown} for {cls.__name__}. Valid keys: {sorted(valid)}.", field="config"
        )
    table.update({k: v for k, v in overrides.items() if v is not None})
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in table]
    if missing:
        raise ConfigError(
            f"{cls.__name__} needs {', '.join(f'`{m}`' for m in missing)}: set it (or in the config file).",
            field=missing[0],
        )
    return cls(**table)


# Fields holding paths; stored absolute, so a feature set or run records
# where its inputs were whatever folder a later command runs from.
_PATH_FIELDS = ("data", "cache_dir", "runs_dir", "weights")
_NOT_PATHS = ("imagenet", "none")


def to_dict(config) -> dict[str, Any]:
    """The config as stored with an artifact: plain values, path fields made absolute."""
    values = dataclasses.asdict(config)
    for field in _PATH_FIELDS:
        if isinstance(values.get(field), str) and values[field] not in _NOT_PATHS:
            values[field] = os.path.abspath(values[field])
    return values


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"`{name}` must be one of {allowed}. Received: {name}={value!r}", field=name)


def _check_non_negative(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"`{name}` must be an integer >= 0. Received: {name}={value!r}", field=name)


def _parse_devices(value) -> int | str:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # `--devices 2` arrives as text, like `--devices all`
    if value in ("auto", "all") or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"`devices` must be 'auto', 'all' or a positive number. Received: devices={value!r}",
                      field="devices")


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"`{name}` must be a positive integer. Received: {name}={value!r}", field=name)


DEFAULT_SPLITS = (0.8, 0.1, 0.1)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Which heads `bottleneck train-head` trains on a feature set, and how.

    Args:
        heads: tuple of head names, each one of `bottleneck list --heads`
            or the import path `"module:Class"` of a scikit-learn estimator.
            Every head is trained into its own run folder. A single str is
            taken as a one-head tuple. Defaults to `("logreg",)`.
        params: dict of head parameters. A plain key such as `"C"` goes to
            every head that accepts it (at least one must); a key
            `"head.key"` such as `"dense.epochs"` goes to that head only.
            Defaults to `{}`.
        fraction: float in `(0, 1]`, the share of the training split to
            train on: a stratified subset drawn with `seed` that keeps at
            least one example of each class. Validation and test are never
            touched. Defaults to `1.0`.
        splits: train, validation and test shares, three floats >= 0 that
            sum to 1 (or the string `"0.8,0.1,0.1"`). They cut the stored
            per-image split keys when the data had no split folders; with
            `train/` and `test/` folders only, validation is carved out of
            `train/` in the ratio `splits[1] : splits[0]`. Validation or
            test may be 0, not both. Defaults to `(0.8, 0.1, 0.1)`.
        seed: int >= 0. Seeds the `fraction` subset and every head that
            takes a `random_state` (unless `params` sets one). Splits do not
            depend on it, so seeds compare on the same test images.
            Defaults to `0`.
        runs_dir: folder receiving the run folders and the leaderboard.
            Defaults to `"runs"`.
        cache_dir: folder searched when the feature set is given by short
            name or left out. Defaults to `"cache"`.
        sweep: `None` (no search), `True` (search each head's default grid,
            `HeadCfg.sweep_grid`) or a dict of parameter names to lists of
            values, keyed like `params` (`{"C": [0.01, 0.1, 1]}` for every
            head that accepts `C`, `{"dense.dropout": [0, 0.5]}` for one
            head; heads that get no key train without a search). Every
            combination is fitted on the training split and scored on the
            validation split, which must not be empty; the test split is
            never seen. Defaults to `None`.
        select: the validation metric that picks the sweep's winner,
            `"accuracy"`, `"macro_f1"` (highest wins) or `"log_loss"`
            (lowest wins). Defaults to `"accuracy"`.
        refit: what the chosen parameters are trained on for the run,
            `"train"` or `"train+validation"` (the run's validation
            metrics are then the sweep's, from before the refit; needs
            `sweep` and a test split). Defaults to `"train"`.
        augmented: train on the clean training rows plus every cached
            augmented view of them (`features` with `augment`); validation
            and test stay clean. Defaults to `False`.
        time_limit: seconds each scikit-learn head (its sweep included)
            may take; one that runs past it is stopped, recorded with the
            reason and no run folder, and the next head starts. `None` for
            no limit. Defaults to `None`.
    """

    heads: tuple[str, ...] = ("logreg",)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    fraction: float = 1.0
    splits: tuple[float, float, float] = DEFAULT_SPLITS
    seed: int = 0
    runs_dir: str = "runs"
    cache_dir: str = "cache"
    sweep: bool | dict[str, tuple] | None = None
    select: str = "accuracy"
    refit: str = "train"
    augmented: bool = False
    time_limit: float | None = None

    def __post_init__(self):
        limit = self.time_limit
        if limit is not None and (not isinstance(limit, (int, float)) or isinstance(limit, bool) or not limit > 0):
            raise ConfigError(
                f"`time_limit` must be a number of seconds > 0, e.g. 60. Received: time_limit={limit!r}",
                field="time_limit",
            )
        heads = (self.heads,) if isinstance(self.heads, str) else self.heads
        if not isinstance(heads, (tuple, list)) or not heads or not all(isinstance(h, str) and h for h in heads):
            raise ConfigError(
                f"`heads` must be a non-empty list of head names, e.g. ['logreg', 'dense']. Received: heads={self.heads!r}",
                field="heads",
            )
        twice = sorted({h for h in heads if list(heads).count(h) > 1})
        if twice:
            raise ConfigError(f"`heads` names {', '.join(map(repr, twice))} more than once. Received: heads={self.heads!r}", field="heads")
        object.__setattr__(self, "heads", tuple(heads))

        if not isinstance(self.params, dict) or not all(isinstance(k, str) and k for k in self.params):
            raise ConfigError(
                f"`params` must be a dict of parameter names to values, e.g. {{'C': 0.5, 'dense.epochs': 10}}. "
                f"Received: params={self.params!r}",
                field="params",
            )
        object.__setattr__(self, "params", dict(self.params))

        fraction = self.fraction
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
            raise ConfigError(
                f"`fraction` must be a number in (0, 1], e.g. 0.1 to train on 10% of the training split. "
                f"Received: fraction={fraction!r}",
                field="fraction",
            )
        object.__setattr__(self, "fraction", float(fraction))
        object.__setattr__(self, "splits", _parse_splits(self.splits))

        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"`seed` must be an integer >= 0. Received: seed={self.seed!r}", field="seed")
        for field in ("runs_dir", "cache_dir"):
            value = getattr(self, field)
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ConfigError(f"`{field}` must be a folder path. Received: {field}={value!r}", field=field)
            object.__setattr__(self, field, os.fspath(value))
        object.__setattr__(self, "sweep", _check_sweep(self.sweep))
        _check_choice("select", self.select, SWEEP_SELECTS)
        _check_choice("refit", self.refit, SWEEP_REFITS)
        if not isinstance(self.augmented, bool):
            raise ConfigError(f"`augmented` must be True or False. Received: augmented={self.augmented!r}", field="augmented")
        if self.refit != "train" and self.sweep is None:
            raise ConfigError(
                f"`refit` chooses what a sweep's winner is trained on, and no `sweep` is set. "
                f"Received: refit={self.refit!r}. Set `sweep`, or leave `refit` at 'train'.",
                field="refit",
            )


def _check_sweep(value) -> bool | dict[str, tuple] | None:
    """`None`, `True` or `{name: tuple of values}`; `False` means no sweep."""
    if value is None or value is False:
        return None
    if value is True:
        return True
    ok = isinstance(value, dict) and value and all(
        isinstance(k, str) and k and isinstance(v, (list, tuple)) and len(v) > 0 for k, v in value.items()
    )
    if not ok:
        raise ConfigError(
            "`sweep` must be True (each head's default grid) or a dict of parameter names to non-empty "
            f"lists of values, e.g. {{'C': [0.01, 0.1, 1], 'dense.dropout': [0.0, 0.5]}}. Received: sweep={value!r}",
            field="sweep",
        )
    return {key: tuple(values) for key, values in value.items()}


def _parse_splits(value) -> tuple[float, float, float]:
    received = f"Received: splits={value!r}"
    parts = value.split(",") if isinstance(value, str) else value
    try:
        shares = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        shares = ()
    if len(shares) != 3 or any(not 0 <= s <= 1 for s in shares) or abs(sum(shares) - 1) > 1e-6:
        raise ConfigError(
            f"`splits` must be three train,validation,test shares >= 0 that sum to 1, e.g. 0.8,0.1,0.1. {received}", field="splits"
        )
    if shares[0] == 0 or shares[1] + shares[2] == 0:
        raise ConfigError(
            "`splits` must give training a share > 0 and leave something to evaluate on "
            f"(validation or test > 0), e.g. 0.8,0.1,0.1 or 0.9,0.1,0. {received}",
            field="splits",
        )
    return shares


DEFAULT_FRACTIONS = (0.01, 0.1, 0.5, 1.0)
# The TrainConfig fields a curve shares; its own `fractions` and `repeats`
# replace `fraction` (and a curve always fits on the training rows alone).
_CURVE_SHARED = ("heads", "params", "splits", "seed", "runs_dir", "cache_dir", "sweep", "select")


@dataclasses.dataclass(frozen=True)
class CurveConfig:
    """What `bottleneck curve` measures: heads trained on growing shares of the training split.

    Args:
        heads, params, splits, runs_dir, cache_dir, sweep, select: as in
            `TrainConfig` (checked by it); `heads=("all",)` trains every
            registry head with its light defaults.
        fractions: tuple of distinct floats in `(0, 1]` (or the string
            `"0.01,0.1,0.5,1"`), the shares of the training split to train
            on, each a stratified subset keeping at least one example per
            class. Stored sorted. Defaults to `(0.01, 0.1, 0.5, 1.0)`.
        repeats: int >= 1, how many subsets are drawn per fraction; repeat
            `r` draws with seed `seed + r` (and seeds the heads with it), so
            the spread shows how much a score owes to the draw. For one
            repeat the subsets are nested (the 1% inside the 10%), and
            every head trains on the same ones. Defaults to `3`.
        seed: int >= 0, the seed of repeat 0. Defaults to `0`.
    """

    heads: tuple[str, ...] = ("logreg",)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    repeats: int = 3
    splits: tuple[float, float, float] = DEFAULT_SPLITS
    seed: int = 0
    runs_dir: str = "runs"
    cache_dir: str = "cache"
    sweep: bool | dict[str, tuple] | None = None
    select: str = "accuracy"

    def __post_init__(self):
        checked = TrainConfig(**{name: getattr(self, name) for name in _CURVE_SHARED})
        for name in _CURVE_SHARED:
            object.__setattr__(self, name, getattr(checked, name))
        object.__setattr__(self, "fractions", _parse_fractions(self.fractions))
        _check_positive("repeats", self.repeats)

    def train_config(self, fraction: float, repeat: int) -> TrainConfig:
        """The `TrainConfig` of one point of the curve: `fraction`, seeded `seed + repeat`."""
        shared = {name: getattr(self, name) for name in _CURVE_SHARED}
        return TrainConfig(**{**shared, "fraction": fraction, "seed": self.seed + repeat})


def _parse_fractions(value) -> tuple[float, ...]:
    parts = value.split(",") if isinstance(value, str) else value
    try:
        fractions = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        fractions = ()
    if not fractions or any(not 0 < f <= 1 for f in fractions) or len(set(fractions)) != len(fractions):
        raise ConfigError(
            "`fractions` must be distinct shares of the training split in (0, 1], e.g. 0.01,0.1,0.5,1. "
            f"Received: fractions={value!r}",
            field="fractions",
        )
    return tuple(sorted(fractions))


DEFAULT_UNFREEZE = 10


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """How `bottleneck finetune` trains the top of a dense head run's base, end to end.

    Values come from the defaults, a TOML `[finetune]` table, then flags;
    the resolved config is stored in the fine-tuned run's `config.json`.

    Args:
        unfreeze: int >= 1, how many of the base's top layers with weights
            are trained (BatchNormalization layers are not counted and stay
            frozen), or `"all"` for every such layer. `None` unfreezes
            from `unfreeze_from` when that is set, else the top 10.
            Defaults to `None`.
        unfreeze_from: name of a layer of the base: it and every layer
            above it are trained. Excludes `unfreeze`. Defaults to `None`.
        epochs: int >= 1, at most this many passes over the training
            images. Defaults to `10`.
        learning_rate: float > 0, Adam's learning rate for base and head
            (low, so the trained weights move little). Defaults to `1e-5`.
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

    unfreeze: int | str | None = None
    unfreeze_from: str | None = None
    epochs: int = 10
    learning_rate: float = 1e-5
    batch_size: int = 32
    early_stopping_patience: int | None = 3
    workers: int = dataclasses.field(default_factory=_default_workers)
    seed: int = 0
    runs_dir: str | None = None
    resume: bool = False
    augment_ops: str | None = None
    augment_seed: int = 0

    def __post_init__(self):
        if self.unfreeze is not None and self.unfreeze_from is not None:
            raise ConfigError(
                f"`unfreeze` and `unfreeze_from` both choose the layers to train; give one. Received: "
                f"unfreeze={self.unfreeze!r}, unfreeze_from={self.unfreeze_from!r}.",
                field="unfreeze",
            )
        unfreeze = self.unfreeze
        if isinstance(unfreeze, str) and unfreeze.strip().isdigit():
            unfreeze = int(unfreeze)  # `--unfreeze 5` arrives as text, like `--unfreeze all`
        if unfreeze is None and self.unfreeze_from is None:
            unfreeze = DEFAULT_UNFREEZE
        if unfreeze is not None and unfreeze != "all" and (
            not isinstance(unfreeze, int) or isinstance(unfreeze, bool) or unfreeze < 1
        ):
            raise ConfigError(
                f"`unfreeze` must be a positive number of layers or 'all'. Received: unfreeze={self.unfreeze!r}",
                field="unfreeze",
            )
        object.__setattr__(self, "unfreeze", unfreeze)
        if self.unfreeze_from is not None and (not isinstance(self.unfreeze_from, str) or not self.unfreeze_from):
            raise ConfigError(f"`unfreeze_from` must be a layer name. Received: unfreeze_from={self.unfreeze_from!r}",
                              field="unfreeze_from")
        for field in ("epochs", "batch_size", "workers"):
            _check_positive(field, getattr(self, field))
        rate = self.learning_rate
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate < 1:
            raise ConfigError(f"`learning_rate` must be a number in (0, 1), e.g. 1e-5. Received: learning_rate={rate!r}",
                              field="learning_rate")
        object.__setattr__(self, "learning_rate", float(rate))
        patience = self.early_stopping_patience
        if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool) or patience < 0):
            raise ConfigError(
                f"`early_stopping_patience` must be None or an integer >= 0. Received: early_stopping_patience={patience!r}",
                field="early_stopping_patience",
            )
        for field in ("seed", "augment_seed"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"`{field}` must be an integer >= 0. Received: {field}={value!r}", field=field)
        if self.runs_dir is not None:
            object.__setattr__(self, "runs_dir", os.fspath(self.runs_dir))
