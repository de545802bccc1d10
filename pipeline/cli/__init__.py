"""The `bottleneck` command line: a thin shell over the library.

Each subcommand builds one config, calls one library function and prints
what it returned. Exceptions become exit statuses here and only here;
`--traceback` shows the full trace instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import BottleneckError, ConfigError, ExitStatus
from . import terminal
from .parsing import Parser, common_flags
from .run_commands import add_finetune_parser, add_predict_parsers


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI and returns its exit status."""
    args = _build_parser().parse_args(argv)
    try:
        with terminal.stop_signals_as_interrupt(), terminal.output_shown(quiet=args.quiet, verbose=args.verbose):
            status = args.handler(args)
            sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
            return status
    except BrokenPipeError:
        # The reader stopped reading (`bottleneck runs ls | head -1`): it had
        # what it wanted. As Python's docs on SIGPIPE advise, stdout becomes
        # devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.OK
    except KeyboardInterrupt:
        if args.traceback:
            raise
        kept = terminal.INTERRUPTED.get(args.command, "Nothing half-written was kept.")
        print(f"Interrupted. {kept}", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BottleneckError as e:
        if args.traceback:
            raise
        print(f"error: {e}{terminal.option_hint(args.command, e.field)}", file=sys.stderr)
        return e.exit_status
    except Exception as e:
        if args.traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        print(f"(unexpected {type(e).__name__}: run again with --traceback for details and report it)", file=sys.stderr)
        return ExitStatus.UNEXPECTED


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bottleneck",
        description="Cached-feature transfer learning: extract frozen-backbone features once, train heads on them.",
    )
    common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("features", help="extract backbone features of an image folder into the cache")
    p.add_argument("data", help="image folder, DATA/<class>/* or DATA/{train,validation,test}/<class>/*, "
                   "or a manifest .csv/.parquet with columns path,label[,split][,group]")
    p.add_argument(
        "--model", nargs="+", action="extend",
        help="backbone name (see `bottleneck list`); several names extract several feature sets in one pass, "
        "decoding each image once per input size",
    )
    p.add_argument("--size", type=int, help="input size in pixels (default: the backbone's)")
    p.add_argument("--pooling", choices=("avg", "max", "none", "cls", "mean", "cls+mean", "embedding"),
                   help="global pooling, or none for spatial maps (default avg); KerasHub encoders: cls, mean, "
                        "cls+mean, embedding (avg: the family's default)")
    p.add_argument("--layer", help="take this layer's output instead of the last")
    p.add_argument("--weights", nargs="+",
                   help="imagenet (default), none, or a weights file path; with several --model names, "
                   "one value for all or one per model, in order")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"), help="default float32")
    p.add_argument("--storage-dtype", choices=("float32", "float16"), help="stored feature dtype (default float32)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, help="decoding threads or processes (default min(8, cores))")
    p.add_argument("--decode-mode", choices=("auto", "threads", "processes"),
                   help="decode in threads or in processes past the GIL; auto: processes from 8 workers (default)")
    p.add_argument("--devices", metavar="auto|all|N",
                   help="devices running each model, one replica each (JAX backend; default auto: every GPU)")
    p.add_argument("--num-shards", type=int,
                   help="run as one of N workers, each extracting a part of the missing images into shards; "
                   "a plain run afterwards writes the index (default 1: no workers)")
    p.add_argument("--shard-index", type=int, help="this worker's part, 0..N-1 (with --num-shards)")
    p.add_argument("--shard-size", type=int, help="images per shard file (default 1024)")
    p.add_argument("--engine", choices=("local", "ray"),
                   help="local (default), or ray: decode and run the base on a Ray cluster (the ray extra)")
    p.add_argument("--address", dest="ray_address",
                   help="with --engine ray: auto (the cluster `ray start` runs here) or ray://host:port "
                   "(default: RAY_ADDRESS, else a new local cluster)")
    p.add_argument("--ray-workers", type=int, help="with --engine ray: model workers, one shard per batch (default 1)")
    p.add_argument("--gpus-per-worker", type=float, help="with --engine ray: GPUs per model worker (default 0: CPU)")
    p.add_argument("--cache-dir", help="where feature sets live (default cache)")
    p.add_argument("--name", help="dataset name in the feature set's folder name (default: the data folder's name)")
    p.add_argument("--verify", action="store_true", default=None,
                   help="check every cached feature's checksum, even when nothing changed")
    p.add_argument("--augment", type=int, metavar="K",
                   help="also extract K augmented views of each training image (default 0)")
    p.add_argument("--augment-ops",
                   help="ops of the views, e.g. flip,rotation=0.1,zoom=0.2,translation=0.1,contrast=0.1,brightness=0.1 "
                   "(default flip,rotation=0.2,zoom=0.2)")
    p.add_argument("--augment-seed", type=int, help="seed of the views (default 0)")
    p.add_argument("--config", help="TOML file with a [features] table")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_features)

    p = sub.add_parser("list", help="list backbones (or heads with --heads)")
    p.add_argument("pattern", nargs="?", default="", help="fnmatch pattern, e.g. 'resnet*'")
    p.add_argument("--heads", action="store_true", help="list the heads instead of the backbones")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_list)

    p = sub.add_parser("cache", help="list feature sets, or export one for other tools")
    p.add_argument("action", choices=("ls", "export"))
    p.add_argument("features", nargs="?", help="export: the feature set (name, prefix or path)")
    p.add_argument("--output", "-o", help="export: the file to write (default <set name>.<format>)")
    p.add_argument("--format", choices=("npz", "parquet"), help="export: default from --output's suffix, else npz")
    p.add_argument("--force", action="store_true", help="export: replace the output file if it exists")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--json", action="store_true")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_cache)

    p = sub.add_parser("sample-data", help="write the embedded sample dataset (scikit-learn digits as PNG folders)")
    p.add_argument("out", nargs="?", default="data/digits")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_sample_data)

    p = sub.add_parser("train-head", help="train heads on a cached feature set, one run folder each")
    p.add_argument(
        "features", nargs="?",
        help="feature set: a name (or unique prefix) from `bottleneck cache ls`, or a path to the set folder "
        "or its features.h5; may be left out when the cache holds exactly one set",
    )
    p.add_argument(
        "--head", action="append", dest="heads", metavar="NAME",
        help="head from `bottleneck list --heads`, or module:Class of a scikit-learn estimator; "
        "repeat to compare several on the same features; 'all' trains every registry head with light "
        "defaults (default logreg)",
    )
    p.add_argument(
        "--param", action="append", dest="params", metavar="KEY=VALUE",
        help="head parameter, e.g. C=0.5 or hidden_units=(512,256); repeatable. With several heads it goes "
        "to every head that accepts it; HEAD.KEY=VALUE (dense.epochs=10) targets one head",
    )
    p.add_argument("--fraction", type=float, help="train on this stratified, seeded share of the training split (default 1)")
    p.add_argument(
        "--sweep", nargs="?", const=True, action="append", metavar="[HEAD.]KEY=V1,V2",
        help="choose head parameters on the validation split: alone, each head's default grid; KEY=V1,V2,... "
        "searches these values (repeatable, combinations are crossed; HEAD.KEY targets one head). "
        "Put FEATURES before a bare --sweep",
    )
    p.add_argument("--select", help="validation metric a sweep picks by: accuracy (default), macro_f1 or log_loss")
    p.add_argument("--refit", help="what a sweep's winner is trained on: train (default) or train+validation")
    p.add_argument("--splits", help="train,validation,test shares when the data has no split folders (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, help="seed of the fraction subset and of the heads (default 0)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop a scikit-learn head (and its sweep) after this many seconds and go on to the next")
    p.add_argument("--augmented", action="store_true", default=None,
                   help="also train on the cached augmented views of the training images (features --augment K)")
    p.add_argument("--runs-dir", help="where run folders and the leaderboard go (default runs)")
    p.add_argument("--cache-dir", help="where feature sets are looked up by name (default cache)")
    p.add_argument("--config", help="TOML file with a [train] table")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_train_head)

    p = sub.add_parser("curve", help="data-fraction curve: heads trained on growing shares of the training split")
    p.add_argument("features", nargs="?", help="feature set, as for train-head")
    p.add_argument("--head", action="append", dest="heads", metavar="NAME",
                   help="head to measure, repeatable; 'all' for every registry head (default logreg)")
    p.add_argument("--param", action="append", dest="params", metavar="KEY=VALUE", help="head parameter, as for train-head")
    p.add_argument("--fractions", help="shares of the training split, e.g. 0.01,0.1,0.5,1 (the default)")
    p.add_argument("--repeats", type=int, help="subsets drawn per fraction, seeds SEED, SEED+1, ... (default 3)")
    p.add_argument("--sweep", nargs="?", const=True, action="append", metavar="[HEAD.]KEY=V1,V2",
                   help="choose each point's parameters on the validation split, as for train-head")
    p.add_argument("--select", help="validation metric a sweep picks by: accuracy (default), macro_f1 or log_loss")
    p.add_argument("--splits", help="train,validation,test shares when the data has no split folders (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, help="seed of the first repeat's subsets and heads (default 0)")
    p.add_argument("--runs-dir", help="where the curve folder goes (default runs)")
    p.add_argument("--cache-dir", help="where feature sets are looked up by name (default cache)")
    p.add_argument("--config", help="TOML file with a [curve] table")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_curve)

    p = sub.add_parser("runs", help="inspect trained runs")
    p.add_argument("action", choices=("ls",))
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--features", help="only runs on feature sets whose name or content hash starts with this")
    p.add_argument("--head", help="only runs of this head")
    p.add_argument("--sort", default="val_accuracy",
                   help="column to rank by, best first: val_accuracy (default), test_accuracy, test_macro_f1, "
                   "fraction, n_images or fit_seconds (lowest first)")
    p.add_argument("--limit", type=int, help="show at most this many runs")
    p.add_argument("--rebuild", action="store_true",
                   help="rewrite leaderboard.csv and .md from the run folders (runs ls also does when they disagree)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list, numbers as numbers")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_runs)
    add_predict_parsers(sub)

    p = sub.add_parser("report", help="write one self-contained HTML report of the runs, to choose a model from")
    p.add_argument("runs_dir", nargs="?", default="runs", help="the runs folder (default runs)")
    p.add_argument("--features", help="only runs on feature sets whose name starts with this")
    p.add_argument("--output", "-o", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--force", action="store_true", help="replace the HTML file if it exists")
    p.add_argument("--duplicate-threshold", type=float, default=0.98,
                   help="cosine similarity of cached features from which two images are near-duplicates (default 0.98)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_report)

    add_finetune_parser(sub)
    return parser


def _cmd_report(args) -> int:
    from ..runs.report import build_report

    result = build_report(args.runs_dir, args.output, features=args.features,
                          duplicate_threshold=args.duplicate_threshold, overwrite=args.force)
    if not args.quiet:
        for folder, reason in result.skipped:
            print(f"skipped {folder}: {reason}")
        pairs = f"{result.n_cross_split:,} near-duplicate pair{'' if result.n_cross_split == 1 else 's'}"
        print(f"Report of {result.n_runs} run{'' if result.n_runs == 1 else 's'} ({len(result.skipped)} skipped, "
              f"{pairs} across splits): {result.path}")
    elif not args.json:
        print(result.path)
    if args.json:
        print(json.dumps(result.to_json()))
    return ExitStatus.OK


def _head_flags(args, table: dict) -> dict:
    """`heads`, `params` and `sweep` from the flags that train-head and curve share, over the TOML table."""
    from ..heads import parse_params
    from ..heads.sweep import parse_sweep

    params = None
    if args.params:  # flags override the file's params key by key
        params = {**table.get("params", {}), **parse_params(args.params)}
    return {
        "heads": tuple(args.heads) if args.heads else None,
        "params": params,
        "sweep": parse_sweep(args.sweep) if args.sweep else None,  # a bare --sweep appends True
    }


def _cmd_train_head(args) -> int:
    from .. import config as config_lib
    from ..runs.train import train_heads

    table = config_lib.load_toml(args.config).get("train", {})
    config = config_lib.resolve(
        config_lib.TrainConfig,
        table,
        **_head_flags(args, table),
        fraction=args.fraction,
        select=args.select,
        refit=args.refit,
        splits=args.splits,
        seed=args.seed,
        augmented=args.augmented,
        time_limit=args.time_limit,
        runs_dir=args.runs_dir,
        cache_dir=args.cache_dir,
    )
    results = train_heads(args.features, config=config)
    if not args.quiet:
        print(f"{'head':16} {'val acc':>8} {'test acc':>8} {'test F1':>8} {'fit s':>8}  run")
        for r in results:
            if r.stopped:
                print(f"{r.head:16} {'-':>8} {'-':>8} {'-':>8} {r.fit_seconds:8.2f}  (none: {r.stopped})")
                continue
            cells = (r.val_accuracy, r.test_accuracy, r.test_macro_f1)
            scores = " ".join(f"{'-' if v is None else f'{v:.4f}':>8}" for v in cells)
            print(f"{r.head:16} {scores} {r.fit_seconds:8.2f}  {r.run_dir}")
    elif not args.json:
        print("\n".join(str(r.run_dir) for r in results))
    if args.json:
        print(json.dumps({"runs": [r.to_json() for r in results]}))
    return ExitStatus.OK


def _cmd_curve(args) -> int:
    from .. import config as config_lib
    from ..runs.curve import run_curve

    table = config_lib.load_toml(args.config).get("curve", {})
    config = config_lib.resolve(
        config_lib.CurveConfig,
        table,
        **_head_flags(args, table),
        fractions=args.fractions,
        repeats=args.repeats,
        select=args.select,
        splits=args.splits,
        seed=args.seed,
        runs_dir=args.runs_dir,
        cache_dir=args.cache_dir,
    )
    result = run_curve(args.features, config=config)
    if not args.quiet:
        terminal.print_curve_summary(result.rows)
        print(f"Curve: {result.run_dir}")
    elif not args.json:
        print(result.run_dir)
    if args.json:
        print(json.dumps(result.to_json()))
    return ExitStatus.OK


def _cmd_runs(args) -> int:
    from ..runs.leaderboard import list_runs, rebuild_leaderboard, shown_table

    if args.rebuild:
        rebuild_leaderboard(args.runs_dir)
    rows = list_runs(args.runs_dir, features=args.features, head=args.head, sort=args.sort, limit=args.limit)
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"No runs under {args.runs_dir}/{' matching the filters' if args.features or args.head else ''}. "
              "Run `make train-head` first.")
    else:
        print("\n".join(shown_table(rows)))
    return ExitStatus.OK


def _cmd_features(args) -> int:
    from .. import config as config_lib
    from ..features.extract import extract_many

    table = config_lib.load_toml(args.config).get("features", {})
    configs = [
        config_lib.resolve(
            config_lib.ExtractConfig,
            table,
            data=args.data,
            model=model,
            size=args.size,
            pooling=args.pooling,
            layer=args.layer,
            weights=weights,
            precision=args.precision,
            storage_dtype=args.storage_dtype,
            batch_size=args.batch_size,
            workers=args.workers,
            decode_mode=args.decode_mode,
            devices=args.devices,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            shard_size=args.shard_size,
            engine=args.engine,
            ray_address=args.ray_address,
            ray_workers=args.ray_workers,
            gpus_per_worker=args.gpus_per_worker,
            cache_dir=args.cache_dir,
            name=args.name,
            verify=args.verify,
            augment=args.augment,
            augment_ops=args.augment_ops,
            augment_seed=args.augment_seed,
        )
        for model, weights in _weights_per_model(args.model or [None], args.weights)
    ]
    with terminal.ProgressBar(disable=args.quiet or args.json) as progress:
        results = extract_many(configs, progress=progress)
    if not args.quiet:
        for result in results:
            terminal.print_features_summary(result)
    elif not args.json:
        print("\n".join(str(r.path) for r in results))
    if args.json:
        reports = [r.to_json() for r in results]
        print(json.dumps(reports[0] if len(reports) == 1 else {"feature_sets": reports}))
    return ExitStatus.OK


def _weights_per_model(models: list, weights: list | None) -> list[tuple]:
    """Pairs each `--model` with its `--weights`: one value serves all, else one per model."""
    if weights is None or len(weights) == 1:
        return [(model, weights and weights[0]) for model in models]
    if len(weights) != len(models):
        raise ConfigError(
            f"`weights` needs one value for all models or one per model: {len(models)} models "
            f"({', '.join(map(str, models))}) but {len(weights)} weights were given.",
            field="weights",
        )
    return list(zip(models, weights))


def _cmd_list(args) -> int:
    from ..features.backbones import describe_backbone, get_backbone_cfg, list_backbones

    if args.heads:
        from ..heads import get_head_cfg, list_heads

        for name in list_heads(args.pattern):
            cfg = get_head_cfg(name)
            light = f" (with --head all: {dict(cfg.light_params)})" if cfg.light_params else ""
            print(f"{name:16} {cfg.description} {dict(cfg.default_params) or ''}{light}")
        return ExitStatus.OK
    for name in list_backbones(args.pattern):
        print(describe_backbone(get_backbone_cfg(name)))
    return ExitStatus.OK


def _cmd_cache(args) -> int:
    from ..store import list_feature_sets
    from ..store.lookup import list_view_sets

    if args.action == "export":
        return _export_cache(args)
    if args.features is not None:
        raise ConfigError(f"`cache ls` takes no feature set (received {args.features!r}); "
                          "did you mean `cache export`?")
    sets = [
        {"name": name, "path": str(path), "images": n, "views": len(list_view_sets(path))}
        for name, path, n in list_feature_sets(args.cache_dir)
    ]
    if args.json:
        print(json.dumps(sets))
    else:
        for s in sets:
            views = f", {s['views']} augmented views" if s["views"] else ""
            print(f"{s['name']:60} {s['images']:8d} images{views}")
        if not sets:
            print(f"No feature sets under {args.cache_dir}/. Run `make features` first.")
    return ExitStatus.OK


def _export_cache(args) -> int:
    from ..store import resolve_features
    from ..store.export import export_feature_set

    path = resolve_features(args.features, args.cache_dir)
    fmt = args.format or (args.output and Path(args.output).suffix.lstrip(".")) or "npz"
    out = export_feature_set(path, args.output or f"{path.parent.name}.{fmt}", format=fmt, overwrite=args.force)
    if args.json:
        print(json.dumps({"path": str(out), "format": fmt, "features": str(path)}))
    else:
        print(f"Wrote {out} ({fmt}) from {path.parent.name}.")
    return ExitStatus.OK


def _cmd_sample_data(args) -> int:
    from ..features.sample_data import write_digits

    print(f"Sample dataset: {write_digits(args.out)}")
    return ExitStatus.OK
