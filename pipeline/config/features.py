"""The features stage's options: `ExtractConfig`, declared as in `options`."""

from __future__ import annotations

import dataclasses
import os
import re

from ..errors import ConfigError
from .options import integer, is_int, number, one_of, option, validate

# avg, max, none: keras.applications; the token poolings: KerasHub encoders (backbones.resolve_pooling).
POOLINGS = ("avg", "max", "none", "cls", "mean", "cls+mean", "embedding")
# KerasHub encoders also take the class tokens of the last N blocks, concatenated: cls_last4, cls_last4+mean.
LAST_BLOCKS_POOLING = re.compile(r"cls_last([1-9][0-9]?)(\+mean)?")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STORAGE_DTYPES = ("float32", "float16")
DECODE_MODES = ("auto", "threads", "processes")
ENGINES = ("local", "ray")
RUNTIMES = ("keras", "onnx")  # rows of pipeline/features/runtimes.py
DECODERS = ("pillow", "nvjpeg")  # rows of pipeline/features/decode.py's DECODERS
# RandomFlip("horizontal"), RandomRotation(0.2), RandomZoom(0.2); ops that change the
# image size are left out, since a fixed-size extractor can't take them.
DEFAULT_AUGMENT_OPS = "crop=0.6-1.0,flip=horizontal,rotate=10deg,jitter=0.1"

# The sanity bounds (`max=`) are far above any useful value, so that a typo
# fails here with its value named instead of as an out-of-memory kill later.


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def _pooling(name: str, value) -> str:
    if value in POOLINGS or (isinstance(value, str) and LAST_BLOCKS_POOLING.fullmatch(value)):
        return value
    raise ConfigError(f"`{name}` must be one of {', '.join(map(repr, POOLINGS))}, or cls_lastN / cls_lastN+mean "
                      f"(N from 1 to 99). Received: {name}={value!r}", field=name)


def _parse_devices(name: str, value) -> int | str:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # `--devices 2` arrives as text, like `--devices all`
    if value in ("auto", "all") or (is_int(value) and value >= 1):
        return value
    raise ConfigError(f"`devices` must be 'auto', 'all' or a positive number. Received: devices={value!r}",
                      field="devices")


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """What `bottleneck features` extracts, and how.

    Args:
        data: folder of images, one subfolder per class, optionally under
            `train/`, `validation/` and `test/`; or a manifest (`.csv` or
            `.parquet` with columns `path`, `label`, optional `split` and
            `group`, see `features.manifest`); or, local or behind a URL
            (`s3://`, `https://`, ...), such a folder, WebDataset tar shards
            (`shards/{00000..00099}.tar`) or Parquet files with an image
            column (docs/data.md). A URL is kept as given.
        model: backbone name from `bottleneck list`. Defaults to
            `"mobilenet_v2"`.
        size: square input size in pixels. `None` uses the backbone's
            default size. Defaults to `None`.
        pooling: `"avg"` or `"max"` global pooling of the last feature map,
            or `"none"` to keep the spatial map; for KerasHub encoders
            `"cls"`, `"mean"`, `"cls+mean"`, `"embedding"` and, for DINOv2
            and DINOv3, `"cls_lastN"` / `"cls_lastN+mean"` (the class tokens
            of the last N blocks; `features.hub.resolve_pooling`).
            Defaults to `"avg"`.
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
        decoder: `"pillow"`, the reference decoder, or `"nvjpeg"`: JPEGs
            decoded and resized on the GPU by torchvision (the `nvjpeg`
            extra; on the CPU where there is no GPU), other files by the
            reference. Part of the feature key. Defaults to `"pillow"`.
        devices: how many devices run each model, one replica each, every
            batch split over them (Keras data parallelism, JAX backend):
            `"auto"` (every GPU when there are several), `"all"`, or a
            number. Never changes the numbers. Defaults to `"auto"`.
        runtime: what runs the base: `"keras"`, or `"onnx"` (converted
            by Keras' ONNX export and run in ONNX Runtime on the CPU,
            checked against Keras on a probe batch every run). Like the
            device, it changes float rounding only, so it is not part of
            the feature key. Defaults to `"keras"`.
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
        augment_ops: the augmentation ops of the views, e.g.
            `"crop=0.6-1.0,flip=horizontal,rotate=10deg,jitter=0.1"` (a crop
            of 60-100% of the area taken before the resize, a horizontal
            flip, at most 10 degrees of rotation, a mild colour jitter);
            the older Keras-factor ops (`rotation`, `zoom`, `translation`,
            `contrast`, `brightness`) stay available (see
            `pipeline.features.augment.parse_augment_ops`). Defaults to
            `"crop=0.6-1.0,flip=horizontal,rotate=10deg,jitter=0.1"`.
        augment_seed: int >= 0; with the ops, each image's content and the
            view index it fixes every view. Defaults to `0`.
    """

    data: str = option(
        argument="the data folder", make="DATA",
        help="image folder, DATA/<class>/* or DATA/{train,validation,test}/<class>/*, "
        "or a manifest .csv/.parquet with columns path,label[,split][,group]; "
        "or, local or a URL (s3://, https://, ...), such a folder, tar shards 'shards/{00000..00099}.tar' "
        "or Parquet files with an image column (docs/data.md)")
    model: str = option(
        "mobilenet_v2", flag="--model", make="MODEL", key=True, cli={"nargs": "+", "action": "extend"},
        help="backbone name (see `bottleneck list`); several names extract several feature sets in one pass, "
        "decoding each image once per input size")
    size: int | None = option(
        None, flag="--size", make="SIZE", key=True, help="input size in pixels (default: the backbone's)",
        check=integer(min=1, optional=True, max=4096, why="The largest ImageNet backbone was trained at 600 px; "
                      "one 4096 px image already takes 200 MB as float32."))
    pooling: str = option("avg", flag="--pooling", make="POOLING", key=True, check=_pooling,
                          help="global pooling, or none for spatial maps (default avg); KerasHub encoders: cls, mean, "
                          "cls+mean, embedding (avg: the family's default), and for DINOv2/v3 cls_lastN[+mean]: "
                          "the class tokens of the last N blocks")
    layer: str | None = option(None, flag="--layer", make="LAYER", key=True,
                               help="take this layer's output instead of the last")
    weights: str = option(
        "imagenet", flag="--weights", make="WEIGHTS", key=True, cli={"nargs": "+"},
        help="imagenet (default), none, or a weights file path; with several --model names, "
        "one value for all or one per model, in order")
    precision: str = option("float32", flag="--precision", make="PRECISION", key=True, check=one_of(PRECISIONS),
                            help="Keras dtype policy of the forward pass (default float32)")
    storage_dtype: str = option("float32", flag="--storage-dtype", make="ARGS", key=True,
                                check=one_of(STORAGE_DTYPES), help="stored feature dtype (default float32)")
    batch_size: int = option(64, flag="--batch-size", make="BATCH", help="images per forward pass (default 64)",
                             check=integer(min=1, max=4096, why="Larger batches do not run faster on any backbone; "
                                           "32-256 is typical."))
    workers: int = option(default_factory=default_workers, flag="--workers", make="WORKERS",
                          help="decoding threads or processes (default min(8, cores))",
                          check=integer(min=1, max=256, why="More decoding threads than cores only add memory."))
    decode_mode: str = option(
        "auto", flag="--decode-mode", make="DECODE_MODE", check=one_of(DECODE_MODES),
        help="decode in threads or in processes past the GIL; auto: processes from 8 workers (default)")
    decoder: str = option(
        "pillow", flag="--decoder", make="DECODER", check=one_of(DECODERS),
        help="pillow (default, the reference), or nvjpeg: decode and resize JPEGs on the GPU with torchvision "
        "(the nvjpeg extra; a key of its own)")
    devices: int | str = option(
        "auto", flag="--devices", make="DEVICES", check=_parse_devices,
        cli={"metavar": "auto|all|N"},
        help="devices running each model, one replica each (JAX backend; default auto: every GPU)")
    num_shards: int = option(
        1, flag="--num-shards", make="NUM_SHARDS", check=integer(min=1),
        help="run as one of N workers, each extracting a part of the missing images into shards; "
        "a plain run afterwards writes the index (default 1: no workers)")
    # Checked against num_shards in __post_init__.
    shard_index: int = option(0, flag="--shard-index", make="SHARD_INDEX", cli={"type": int},
                              help="this worker's part, 0..N-1 (with --num-shards)")
    shard_size: int = option(
        1024, flag="--shard-size", make="ARGS", help="images per shard file (default 1024)",
        check=integer(min=1, max=1_000_000, why="A shard is written whole before it counts as done; "
                      "smaller shards lose less work on a kill."))
    runtime: str = option(
        "keras", flag="--runtime", make="RUNTIME", check=one_of(RUNTIMES),
        help="keras (default), or onnx: run the base in ONNX Runtime on the CPU, checked against Keras each run "
        "(the onnx extra)")
    engine: str = option("local", flag="--engine", make="ENGINE", check=one_of(ENGINES),
                         help="local (default), or ray: decode and run the base on a Ray cluster (the ray extra)")
    ray_address: str | None = option(
        None, flag="--address", make="RAY_ADDRESS",
        help="with --engine ray: auto (the cluster `ray start` runs here) or ray://host:port "
        "(default: RAY_ADDRESS, else a new local cluster)")
    ray_workers: int = option(1, flag="--ray-workers", make="RAY_WORKERS", check=integer(min=1),
                              help="with --engine ray: model workers, one shard per batch (default 1)")
    gpus_per_worker: float = option(0, flag="--gpus-per-worker", make="GPUS_PER_WORKER", check=number(as_float=False),
                                    help="with --engine ray: GPUs per model worker (default 0: CPU)")
    cache_dir: str = option("cache", flag="--cache-dir", make="CACHE", help="where feature sets live (default cache)")
    name: str | None = option(None, flag="--name", make="ARGS",
                              help="dataset name in the feature set's folder name (default: the data folder's name)")
    verify: bool = option(False, flag="--verify", make="ARGS", switch=True,
                          help="check every cached feature's checksum, even when nothing changed")
    augment: int = option(
        0, flag="--augment", make="AUGMENT", cli={"metavar": "K"},
        help="also extract K augmented views of each training image (default 0)",
        check=integer(min=0, max=100, why="Each view costs a full extraction of the training images; 2-10 is typical."))
    augment_ops: str = option(
        DEFAULT_AUGMENT_OPS, flag="--augment-ops", make="AUGMENT_OPS",
        help="ops of the views: crop=LOW-HIGH (fractions of the area), flip, rotate=Ndeg, jitter=F, or the older "
        "rotation, zoom, translation, contrast, brightness (default crop=0.6-1.0,flip=horizontal,rotate=10deg,jitter=0.1)")
    augment_seed: int = option(0, flag="--augment-seed", make="AUGMENT_SEED", check=integer(min=0),
                               help="seed of the views (default 0)")

    def __post_init__(self):
        validate(self)
        if not is_int(self.shard_index) or not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(
                f"`shard_index` must be in 0..num_shards-1. Received: shard_index={self.shard_index}, "
                f"num_shards={self.num_shards}. Number the workers 0 to {self.num_shards - 1}.",
                field="shard_index",
            )
        self._check_decoder()
        if self.runtime != "keras" and self.devices not in ("auto", 1):
            raise ConfigError(
                f"`devices` runs Keras replicas; runtime {self.runtime} runs on the CPU. Received: "
                f"devices={self.devices!r}, runtime={self.runtime!r}. Drop one of them.",
                field="devices",
            )


    def _check_decoder(self):
        """The nvjpeg decoder hands batches over in the process that runs the model; what it cannot serve is refused."""
        if self.decoder == "pillow":
            return
        clashes = {
            "decode_mode": (self.decode_mode == "processes", "it reads files in threads and decodes on the GPU"),
            "augment": (self.augment > 0, "augmented views crop the reference decoder's pixels"),
            "engine": (self.engine != "local", "Ray workers decode with the reference decoder"),
        }
        for field, (clash, why) in clashes.items():
            if clash:
                raise ConfigError(
                    f"`decoder` {self.decoder} cannot run with {field}={getattr(self, field)!r}: {why}. "
                    f"Use decoder pillow, or drop {field}.",
                    field="decoder",
                )
