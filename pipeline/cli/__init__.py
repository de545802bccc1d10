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
from .parsing import Parser, add_command, common_flags, flag_values
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
    add_command(sub, "features", _cmd_features, help="extract backbone features of an image folder into the cache")
    _add_list_parser(sub)
    add_command(sub, "cache", _cmd_cache, help="list feature sets, or export one for other tools", json_help=None)
    p = sub.add_parser("sample-data", help="write the embedded sample dataset (scikit-learn digits as PNG folders)")
    p.add_argument("out", nargs="?", default="data/digits")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_sample_data)
    add_command(sub, "train-head", _cmd_train_head, help="train heads on a cached feature set, one run folder each")
    add_command(sub, "curve", _cmd_curve,
                help="data-fraction curve: heads trained on growing shares of the training split")
    add_command(sub, "runs", _cmd_runs, help="inspect trained runs",
                json_help="print the rows as one JSON list, numbers as numbers")
    add_predict_parsers(sub)
    add_command(sub, "report", _cmd_report,
                help="write one self-contained HTML report of the runs, to choose a model from")
    add_finetune_parser(sub)
    return parser


def _add_list_parser(sub) -> None:
    p = sub.add_parser("list", help="list backbones (or heads with --heads)")
    p.add_argument("pattern", nargs="?", default="", help="fnmatch pattern, e.g. 'resnet*'")
    p.add_argument("--heads", action="store_true", help="list the heads instead of the backbones")
    common_flags(p, default=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_list)


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
    config = config_lib.resolve(config_lib.TrainConfig, table, **{**flag_values(args, config_lib.TrainConfig),
                                                                   **_head_flags(args, table)})
    results = train_heads(args.features, config=config)
    if not args.quiet and results and results[0].augmented:
        v = results[0].augmented[0]
        print(f"Views: {v['ops']} seed {v['seed']} ({v['chosen']}; {len(v['views'])} views, {v['rows']} rows, "
              f"{v['coverage']['images']} of {v['coverage']['train_images']} training images)")
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
    config = config_lib.resolve(config_lib.CurveConfig, table, **{**flag_values(args, config_lib.CurveConfig),
                                                                   **_head_flags(args, table)})
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
    flags = flag_values(args, config_lib.ExtractConfig)
    configs = [
        config_lib.resolve(config_lib.ExtractConfig, table, **{**flags, "model": model, "weights": weights})
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
