"""The arguments and options of every subcommand, declared once (`pipeline.config.options.Option`).

The stage commands' come from their configs' declarations; the commands
that use runs and feature sets have no config, so theirs are declared here.
Keys are the names library errors give (`BottleneckError.field`); `dest`
in `cli` is where argparse stores a value when the library calls it otherwise.
From these tables come the parsers (`parsing.add_command`), the hints of
errors (`terminal.option_hint`) and docs/options.md (`parsing.options_doc`).
"""

from __future__ import annotations

from ..runs.export_formats import EXPORT_FORMATS
from ..config import CurveConfig, ExtractConfig, FinetuneConfig, Option, TrainConfig, options_of

__all__ = ["COMMAND_OPTIONS", "STAGE_COMMANDS"]


def _config_file(table: str) -> Option:
    return Option(flag="--config", make="CONFIG", help=f"TOML file with a [{table}] table")


def _feature_set(help: str) -> Option:
    return Option(argument="the feature set", make="FEATURES", cli={"nargs": "?"}, help=help)


def _force(help: str, make: str | None = "ARGS") -> Option:
    return Option(flag="--force", make=make, switch=True, cli={"dest": "force", "default": False}, help=help)


_RUN = Option(argument="the run folder", make="RUN",
              help="run folder (runs/<feature set>/<head>-<id>) or a bundle folder from `bottleneck export`")
_WEIGHTS = Option(flag="--weights", make="ARGS",
                  help="the run's weights file, if it moved (must have the sha256 recorded at extraction)")
_TRUST = Option(flag="--trust", make="ARGS", switch=True, cli={"default": False},
                help="load a run folder or bundle whose head is a pickle (trained or exported by an older version): "
                "unpickling runs code from the folder, so use it only for folders from sources you trust")
_TTA = Option(flag="--tta", make="ARGS", cli={"type": int, "default": 1, "metavar": "K"},
              help="average the probabilities over each image and K-1 augmented views of it: the run's cached views "
              "where they exist, computed otherwise (default 1: the image alone)")
_PREDICT = {
    "run": _RUN,
    "images": Option(argument="the images", make="IMAGES", cli={"nargs": "+"},
                     help="image files or folders (searched recursively), image URLs, or data `features` reads: "
                     "a folder URL, tar shards, Parquet image columns, a manifest"),
    "top_k": Option(flag="--top-k", make="TOPK", cli={"type": int, "default": 3},
                    help="classes listed per image (default 3)"),
    "output": Option(flag="--output", short="-o", make="OUTPUT", cli={"default": "predictions.csv"},
                     help="CSV file to write (default predictions.csv)"),
    "overwrite": _force("replace the CSV if it exists"),
    "weights": _WEIGHTS,
    "trust": _TRUST,
    "tta": _TTA,
}
_EVALUATE = {
    "run": _RUN,
    "data": Option(argument="the labelled folder", make="DATA",
                   help="labelled data, as `features` reads it: DATA/<class>/*, a manifest, a folder URL, tar "
                   "shards or Parquet image columns; classes are matched by name"),
    "output": Option(flag="--output", make="OUTPUT",
                     help="existing folder that receives eval-<id>/ (default: the run folder)"),
    "cache_dir": Option(flag="--cache-dir", make="ARGS", help="feature cache the data is extracted into and reused "
                        "from (default: the cache of the run's feature set, else cache)"),
    "weights": _WEIGHTS,
    "trust": _TRUST,
    "tta": _TTA,
}
_EXPORT = {
    "run": _RUN,
    "out": Option(argument="the export target", make="OUT",
                  help="OUT.keras or OUT.onnx, a new folder for saved_model or a bundle"),
    "format": Option(flag="--format", make="FORMAT", cli={"choices": EXPORT_FORMATS},
                     help="default: from OUT's suffix (.keras, .onnx); else keras for dense heads, bundle otherwise"),
    "no_weights": Option(flag="--no-weights", make="ARGS", switch=True, cli={"default": False},
                         help="bundle: refer to the weights file instead of copying it"),
    "overwrite": _force("replace an existing .keras file"),
    "weights": _WEIGHTS,
    "trust": _TRUST,
}
# `cache export` has no Make target of its own: its hints name the flag only.
_CACHE = {
    "action": Option(argument="the action", cli={"choices": ("ls", "export")}, help="ls, or export one set"),
    "features": Option(argument="the feature set", cli={"nargs": "?"},
                       help="export: the feature set (name, prefix or path)"),
    "out": Option(flag="--output", short="-o", cli={"dest": "output"},
                  help="export: the file to write (default <set name>.<format>)"),
    "format": Option(flag="--format", cli={"choices": ("npz", "parquet")},
                     help="export: default from --output's suffix, else npz"),
    "overwrite": _force("export: replace the output file if it exists", make=None),
    "cache_dir": Option(flag="--cache-dir", cli={"default": "cache"}, help="where feature sets live (default cache)"),
}
_RUNS = {
    "action": Option(argument="the action", cli={"choices": ("ls",)}, help="ls: the leaderboard"),
    "runs_dir": Option(flag="--runs-dir", make="ARGS", cli={"default": "runs"}, help="the runs folder (default runs)"),
    "features": Option(flag="--features", make="ARGS",
                       help="only runs on feature sets whose name or content hash starts with this"),
    "head": Option(flag="--head", make="ARGS", help="only runs of this head"),
    "sort": Option(flag="--sort", make="ARGS", cli={"default": "val_accuracy"},
                   help="column to rank by, best first: val_accuracy (default), test_accuracy, test_macro_f1, "
                   "fraction, n_images or fit_seconds (lowest first)"),
    "limit": Option(flag="--limit", make="ARGS", cli={"type": int}, help="show at most this many runs"),
    "rebuild": Option(flag="--rebuild", make="ARGS", switch=True, cli={"default": False},
                      help="rewrite leaderboard.csv and .md from the run folders "
                      "(runs ls also does when they disagree)"),
}
_REPORT = {
    "runs_dir": Option(argument="the runs folder", make="RUNS", cli={"nargs": "?", "default": "runs"},
                       help="the runs folder (default runs)"),
    "features": Option(flag="--features", make="FEATURES",
                       help="only runs on feature sets whose name starts with this"),
    "output": Option(flag="--output", short="-o", make="OUTPUT", cli={"default": "report.html"},
                     help="HTML file to write (default report.html)"),
    "overwrite": _force("replace the HTML file if it exists"),
    "duplicate_threshold": Option(
        flag="--duplicate-threshold", make="ARGS", cli={"type": float, "default": 0.98},
        help="cosine similarity of cached features from which two images are near-duplicates (default 0.98)"),
}

STAGE_COMMANDS = ("features", "train-head", "curve", "finetune")
# Per command, in --help order.
COMMAND_OPTIONS: dict[str, dict[str, Option]] = {
    "features": {**options_of(ExtractConfig), "config": _config_file("features")},
    "train-head": {
        "features": _feature_set("feature set: a name (or unique prefix) from `bottleneck cache ls`, or a path to the "
                                 "set folder or its features.h5; may be left out when the cache holds exactly one set; "
                                 "SET_A+SET_B trains on both sets' features side by side, images matched by content"),
        **options_of(TrainConfig),
        "config": _config_file("train"),
    },
    "curve": {"features": _feature_set("feature set, as for train-head"), **options_of(CurveConfig),
              "config": _config_file("curve")},
    "finetune": {
        "run": Option(argument="the run folder", make="RUN",
                      help="run folder of a dense head (runs/<feature set>/dense-<id>)"),
        **options_of(FinetuneConfig),
        "config": _config_file("finetune"),
    },
    "predict": _PREDICT,
    "evaluate": _EVALUATE,
    "export": _EXPORT,
    "cache": _CACHE,
    "runs": _RUNS,
    "report": _REPORT,
}
