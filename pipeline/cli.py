"""The `bottleneck` command line: a thin shell over the library.

Each subcommand builds one config, calls one library function and prints
what it returned. Exceptions become exit statuses here and only here;
`--traceback` shows the full trace instead.
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import sys
from pathlib import Path


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    BAD_INPUT = 2
    INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI and returns its exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING if args.quiet else logging.INFO, force=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's C++ banner off the terminal
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print(
            "Interrupted. Finished work is kept; run the same command again to resume.",
            file=sys.stderr,
        )
        return ExitStatus.INTERRUPTED
    except Exception as e:
        if args.traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT if _is_user_error(e) else _unexpected(e)


def _is_user_error(e: Exception) -> bool:
    from .backbones import WeightsUnavailableError
    from .store import StoreBusyError

    return isinstance(e, (ValueError, TypeError, WeightsUnavailableError, StoreBusyError, FileNotFoundError))


def _unexpected(e: Exception) -> int:
    print(f"({type(e).__name__}; run again with --traceback for details)", file=sys.stderr)
    return ExitStatus.ERROR


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="print only results and errors")
    parser.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bottleneck",
        description="Cached-feature transfer learning: extract frozen-backbone features once, train heads on them.",
    )
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("features", help="extract backbone features of an image folder into the cache")
    p.add_argument("data", help="image folder: DATA/<class>/* or DATA/{train,validation,test}/<class>/*")
    p.add_argument("--model", help="backbone name (see `bottleneck list`)")
    p.add_argument("--size", type=int, help="input size in pixels (default: the backbone's)")
    p.add_argument("--pooling", choices=("avg", "max", "none"), help="global pooling, or none for spatial maps (default avg)")
    p.add_argument("--layer", help="take this layer's output instead of the last")
    p.add_argument("--weights", help="imagenet (default), none, or a weights file path")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"), help="default float32")
    p.add_argument("--storage-dtype", choices=("float32", "float16"), help="stored feature dtype (default float32)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, help="decoding threads (default min(8, cores))")
    p.add_argument("--shard-size", type=int, help="images per shard file (default 1024)")
    p.add_argument("--cache-dir", help="where feature sets live (default cache)")
    p.add_argument("--name", help="dataset name in the feature set's folder name (default: the data folder's name)")
    p.add_argument("--config", help="TOML file with a [features] table")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    _common(p)
    p.set_defaults(handler=_cmd_features)

    p = sub.add_parser("list", help="list backbones (or heads with --heads)")
    p.add_argument("pattern", nargs="?", default="", help="fnmatch pattern, e.g. 'resnet*'")
    _common(p)
    p.set_defaults(handler=_cmd_list)

    p = sub.add_parser("cache", help="inspect the feature cache")
    p.add_argument("action", choices=("ls",))
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(handler=_cmd_cache)

    p = sub.add_parser("sample-data", help="write the embedded sample dataset (scikit-learn digits as PNG folders)")
    p.add_argument("out", nargs="?", default="data/digits")
    _common(p)
    p.set_defaults(handler=_cmd_sample_data)
    return parser


def _cmd_features(args) -> int:
    from . import config as config_lib
    from .extract import extract_features

    table = config_lib.load_toml(args.config).get("features", {})
    config = config_lib.resolve(
        config_lib.ExtractConfig,
        table,
        data=args.data,
        model=args.model,
        size=args.size,
        pooling=args.pooling,
        layer=args.layer,
        weights=args.weights,
        precision=args.precision,
        storage_dtype=args.storage_dtype,
        batch_size=args.batch_size,
        workers=args.workers,
        shard_size=args.shard_size,
        cache_dir=args.cache_dir,
        name=args.name,
    )
    with _progress_bar(disable=args.quiet or args.json) as progress:
        result = extract_features(config=config, progress=progress)
    if not args.quiet:
        _print_features_summary(result)
    if args.json:
        print(json.dumps(result.to_json()))
    return ExitStatus.OK


def _print_features_summary(result) -> None:
    c = result.counts
    print(result.dataset_summary)
    if c["extracted"] == 0 and c["removed"] == 0 and not result.quarantined:
        print(f"Up to date: {c['reused']} images, {c['skipped']} skipped ({result.seconds:.2f} s).")
    else:
        speed = f", {result.images_per_second:.1f} img/s" if result.images_per_second else ""
        print(
            f"Extracted {c['extracted']}, reused {c['reused']}, skipped {c['skipped']}, "
            f"removed {c['removed']} in {result.seconds:.1f} s{speed}."
        )
    for skip in result.skipped[:20]:
        print(f"  skipped {skip.relpath}: {skip.reason}")
    if len(result.skipped) > 20:
        print(f"  ... and {len(result.skipped) - 20} more (listed under skipped/ in the file)")
    shape = "x".join(str(d) for d in result.feature_shape)
    print(f"Features ({shape} per image): {result.path}")


class _progress_bar:
    """tqdm on a terminal, nothing otherwise; usable as `progress(done, total)`."""

    def __init__(self, disable: bool):
        self.disable = disable or not sys.stderr.isatty()
        self.bar = None

    def __enter__(self):
        return None if self.disable else self

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="extracting", file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _cmd_list(args) -> int:
    from .backbones import get_backbone_cfg, list_backbones

    for name in list_backbones(args.pattern):
        cfg = get_backbone_cfg(name)
        print(f"{name:24} {cfg.default_size:4d} px (min {cfg.min_size}), preprocess: {cfg.module}")
    return ExitStatus.OK


def _cmd_cache(args) -> int:
    from .store import INDEX_NAME, FeatureStore

    sets = []
    for folder in sorted(Path(args.cache_dir).glob("*/")):
        state = FeatureStore(folder).read_index_state()
        if state is not None:
            sets.append({"name": folder.name, "path": str(folder / INDEX_NAME), "images": len(state["files"])})
    if args.json:
        print(json.dumps(sets))
    else:
        for s in sets:
            print(f"{s['name']:60} {s['images']:8d} images")
        if not sets:
            print(f"No feature sets under {args.cache_dir}/. Run `make features` first.")
    return ExitStatus.OK


def _cmd_sample_data(args) -> int:
    from .sample_data import write_digits

    print(f"Sample dataset: {write_digits(args.out)}")
    return ExitStatus.OK
