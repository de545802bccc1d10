"""The run-folder contract: every file name of a run, an evaluation and a bundle.

Written by `train` (runs), `predict` (evaluations) and `export` (bundles),
read by `predict`, `export` and `runs ls`; this module is the only place
that spells the names. A run lives under `<runs_dir>/<feature set>/`::

    <head>-<id>/             a finished run (published by `_atomic.staged_folder`)
      head.joblib            the fitted head (`heads.save_head`), every head: a pickle,
                             loaded only with `--trust`
      head.skops             the same head stored with skops (`safe_head`), what
                             `predict`, `evaluate` and `export` load; absent for a
                             head skops cannot hold safely
      model.keras            the network alone, dense head only
      best.keras, logs/      best checkpoint by validation loss, TensorBoard logs (dense)
      history.png            accuracy and loss per epoch, dense only
      metrics.json           validation and test metrics, fit_seconds, sizes;
                             dense heads: epochs_run, best_epoch, warnings
      confusion_matrix.png   on test (on validation when there is no test)
      test_predictions.csv   per image of that split: split, path, true and predicted
                             class, probability of the predicted and of the true class
      config.json            the resolved TrainConfig and this head's params
      sweep.csv, sweep.png   a swept head only: every candidate's validation
                             scores; the chosen metric against each parameter
      lineage.json           which features, backbone and weights; the sha256 of
                             both head files; trained_at
      eval-<id>/             one `evaluate` of a labelled folder:
        metrics.json, confusion_matrix.png, predictions.csv

A data-fraction curve (`bottleneck curve`) is a folder beside the runs::

    curve-<id>/
      curve.csv            one row per head x fraction x repeat: training size, validation and test scores
      curve.png            test accuracy against training images (log x), mean and min-max per head
      config.json          the resolved CurveConfig and each head's params
      lineage.json         which features (path, content hash, key), backbone and weights; trained_at

A fine-tuned run (`finetune`) is a dense run folder whose lineage names
its parent run, plus the fine-tuned base::

    finetune-<id>/
      base.weights.h5        the fine-tuned base's weights, named relative to
                             the run folder in lineage.json's extraction_config
      best.keras, logs/      best whole model by validation loss, TensorBoard logs
      ...                    head.joblib, model.keras, history.png, metrics.json,
                             confusion_matrix.png, config.json, lineage.json

While it trains it lives in `.tmp-finetune-of-<parent run>/` beside the
runs of its feature set, holding `checkpoint-<epoch>.keras` (model and
optimizer after that epoch), `best-<epoch>.keras` and `finetune-state.json`; `resume` continues
from them, and they are removed before the folder is published.

`<id>` is the UTC time to the second plus 8 random hex digits: run folders
sort by time and never collide. `<runs_dir>/leaderboard.csv` and
`leaderboard.md` list every finished run; they are rebuilt from the run
folders (the source of truth) after every run.

A bundle (`export --format bundle`) stands in for a run folder::

    bundle.json        format, head file, weights file, the run's lineage
    head.skops         the head, stored with skops (`safe_head`): loading
                       it runs no code from the file; a head skops cannot
                       hold safely stays `head.joblib`, a pickle, which
                       `predict` loads only with `--trust`
    preprocess.py      the reference decoder as one Pillow-only function
    weights/<file>     a copy of the weights file (when extracted from one)
    manifest.sha256    `sha256sum -c` format, every file above
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic
from ..errors import RunError

HEAD = "head.joblib"
HEAD_SKOPS = "head.skops"
PREPROCESS = "preprocess.py"
MODEL = "model.keras"
HISTORY = "history.png"
METRICS = "metrics.json"
CONFUSION_MATRIX = "confusion_matrix.png"
CONFIG = "config.json"
LINEAGE = "lineage.json"
PREDICTIONS = "predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"
TEST_PREDICTIONS_COLUMNS = ("split", "path", "true", "predicted", "probability", "true_probability")
SWEEP_CSV = "sweep.csv"
SWEEP_PLOT = "sweep.png"
EVAL_PREFIX = "eval-"
CURVE_PREFIX = "curve-"
CURVE_CSV = "curve.csv"
CURVE_PLOT = "curve.png"
BASE_WEIGHTS = "base.weights.h5"
BEST_MODEL = "best.keras"
LOGS = "logs"
FINETUNE_STATE = "finetune-state.json"
FINETUNE_PREFIX = "finetune"

LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_LOCK = ".leaderboard.lock"

BUNDLE = "bundle.json"
MANIFEST = "manifest.sha256"
BUNDLE_FORMAT = "bottleneck-bundle"
BUNDLE_FORMAT_VERSION = 2  # 2: head.skops; 1 (pickled head) is still read, with trust
BUNDLE_FORMAT_VERSIONS = (1, 2)


def run_id() -> str:
    """`<UTC time>-<8 hex>`: sorts by time, never collides."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def checkpoint_name(epoch: int) -> str:
    """The model-and-optimizer checkpoint of an unfinished fine-tune after `epoch`."""
    return f"checkpoint-{epoch:04d}.keras"


def best_name(epoch: int) -> str:
    """The best model so far of an unfinished fine-tune, found after `epoch` (0: the run it started from)."""
    return f"best-{epoch:04d}.keras"


def unfinished_finetune(parent: Path) -> str:
    """The folder a fine-tune of run `parent` trains in until it is published; hidden like any temporary."""
    return f"{_atomic.TMP_PREFIX}{FINETUNE_PREFIX}-of-{parent.name}"


def slug(name: str) -> str:
    """A head name made safe as a folder name (`module:Class` included)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object of a run folder or bundle; anything else is a `RunError` naming the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"'{path}' is missing, so this is not a complete {what}.") from None
    except (OSError, ValueError) as e:
        raise RunError(f"Cannot read '{path}' ({e}); the {what} is damaged.") from None
    if not isinstance(data, dict):
        raise RunError(f"'{path}' does not hold a JSON object; the {what} is damaged.")
    return data


def write_json(path: Path, data: Any) -> None:
    """Writes `data` as JSON, atomically, with numpy values and paths made plain."""
    _atomic.write_json(path, jsonable(data))


def jsonable(value):
    """Plain JSON types: numpy scalars and arrays unwrapped, tuples as lists, NaN as null, anything else as repr."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)
