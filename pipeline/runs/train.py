"""Head stage: train cheap heads on a cached feature set, one run folder each.

Entry point: `train_heads(features, *, config)`. The feature set is read once
per call and shared by every head named; no backbone is ever built here.
Nothing in this module (or what it imports at module level) imports Keras or
TensorFlow: the dense head imports Keras itself, on `fit`, so scikit-learn
heads train on machines without either.

A run is written under `<runs_dir>/<feature set>/.tmp-<head>-<id>/` and
renamed to `<head>-<id>/` only when every file is in it, so a folder without
the `.tmp-` prefix is always a finished run. `<id>` is the UTC time to the
second plus 8 random hex digits: run folders sort by time and never collide
(a rename onto an existing run fails and draws a new id).

Layout of one run folder::

    head.joblib            the fitted head (`heads.save_head`), every head
    model.keras            the network alone, dense head only
    best.keras             best checkpoint by validation loss, dense only
    logs/                  TensorBoard logs, dense only
    metrics.json           validation and test metrics, fit_seconds, sizes
    confusion_matrix.png   on test (on validation when there is no test)
    history.png            accuracy and loss per epoch, dense only
    config.json            the resolved TrainConfig and this head's params
    lineage.json           which features, backbone and weights, head sha256

Every finished run adds one row to `<runs_dir>/leaderboard.csv` (in run
order) and `leaderboard.md` (by validation accuracy), rewritten under a file
lock and replaced atomically.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import fcntl
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._atomic import write_text as replace_text
from .. import config as config_lib, heads as heads_lib
from ..store import FeatureSet, read_feature_set, resolve_features

__all__ = [
    "LEADERBOARD_COLUMNS",
    "RunResult",
    "list_runs",
    "parse_params",
    "split_indices",
    "subsample",
    "train_heads",
]

SPLITS = ("train", "validation", "test")
LEADERBOARD_COLUMNS = (
    "features",
    "backbone",
    "head",
    "params",
    "fraction",
    "val_accuracy",
    "test_accuracy",
    "test_macro_f1",
    "fit_seconds",
    "run_dir",
)
_TMP_PREFIX = ".tmp-"
_LOCK_NAME = ".leaderboard.lock"

log = logging.getLogger("bottleneck")


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One trained head, as written to its run folder.

    Attributes:
        head: the head's name, as given.
        params: the parameters passed to `create_head` (seed included).
        run_dir: the finished run folder.
        metrics: `{"validation": dict | None, "test": dict | None}`, each
            from `evaluate.classification_metrics`.
        fit_seconds: wall time of `fit` alone (no reading, predicting or
            saving), for benchmarks.
        sizes: examples per split actually used: `train` (after
            `fraction`), `validation`, `test`.
        head_sha256: sha256 of `head.joblib`, for `load_head(expected_sha256=)`.
    """

    head: str
    params: dict[str, Any]
    run_dir: Path
    metrics: dict[str, dict[str, Any] | None]
    fit_seconds: float
    sizes: dict[str, int]
    head_sha256: str

    @property
    def val_accuracy(self) -> float | None:
        return _pick(self.metrics["validation"], "accuracy")

    @property
    def test_accuracy(self) -> float | None:
        return _pick(self.metrics["test"], "accuracy")

    @property
    def test_macro_f1(self) -> float | None:
        return _pick(self.metrics["test"], "macro_f1")

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "params": _jsonable(self.params),
            "run_dir": str(self.run_dir),
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "test_macro_f1": self.test_macro_f1,
            "fit_seconds": round(self.fit_seconds, 4),
            "sizes": self.sizes,
            "head_sha256": self.head_sha256,
        }


# -- inputs ----------------------------------------------------------------


def parse_params(texts: Sequence[str]) -> dict[str, Any]:
    """Parses CLI `--param` strings into `TrainConfig.params`.

    Each text is `key=value` (for every head that accepts `key`) or
    `head.key=value` (for that head only; an import-path head is written in
    full, `sklearn.neighbors:NearestCentroid.shrink_threshold=0.1`). Values
    are read by `heads.parse_param`: Python literals, else strings.

    Args:
        texts: the `--param` strings, in order; a later key wins.

    Returns:
        A dict of keys (`"C"` or `"dense.epochs"`) to values.

    Example:

    ```python
    parse_params(["C=0.5", "dense.hidden_units=(512,256)"])
    # {"C": 0.5, "dense.hidden_units": (512, 256)}
    ```
    """
    params: dict[str, Any] = {}
    for text in texts:
        key, sep, value = str(text).partition("=")
        head, dot, name = key.rpartition(".")
        if not sep or (dot and not head):
            raise ValueError(
                "`--param` must look like key=value or head.key=value, e.g. C=0.5 or dense.epochs=10. "
                f"Received: {text!r}."
            )
        name, parsed = heads_lib.parse_param(f"{name}={value}")
        params[f"{head}.{name}" if dot else name] = parsed
    return params


# -- splits ----------------------------------------------------------------


def split_indices(
    feature_set: FeatureSet, splits: Sequence[float] = config_lib.DEFAULT_SPLITS
) -> dict[str, np.ndarray]:
    """Row indices of the train, validation and test splits.

    Folder splits win when the data had them: `train/`, `validation/` and
    `test/` rows as they are; with no `validation/` folder, validation is
    carved out of `train/` by split key, in the ratio `splits[1] : splits[0]`.
    Otherwise the stored split keys (stable per image path, uniform in
    [0, 1)) are cut at the cumulative `splits`, so adding images never moves
    an existing image to another split. No seed is involved.

    Args:
        feature_set: a `FeatureSet` (only `split_keys` and `folder_splits`
            are read).
        splits: train, validation, test shares summing to 1.
            Defaults to `(0.8, 0.1, 0.1)`.

    Returns:
        `{"train": idx, "validation": idx, "test": idx}`, sorted int64 row
        indices; validation or test may be empty.
    """
    train_share, val_share, _ = config_lib._parse_splits(splits)
    keys = np.asarray(feature_set.split_keys, dtype=np.float64)
    folders = np.asarray(feature_set.folder_splits).astype(str)
    rows = np.arange(len(keys))
    if np.any(folders != ""):
        out = {name: rows[folders == name] for name in SPLITS}
        if not len(out["validation"]):
            train = out["train"]
            carved = keys[train] < val_share / (train_share + val_share)
            out["validation"], out["train"] = train[carved], train[~carved]
        return out
    return {
        "train": rows[keys < train_share],
        "validation": rows[(keys >= train_share) & (keys < train_share + val_share)],
        "test": rows[keys >= train_share + val_share],
    }


def subsample(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A stratified, seeded subset of `indices` (the 1% / 10% experiments).

    Each class keeps `round(fraction * its count)` rows, at least one. The
    rows of a class are shuffled once by `seed` and the first ones kept, so
    for one seed the 1% subset lies inside the 10% subset.

    Args:
        indices: row indices to draw from (the training split).
        labels: the labels of *all* rows (indexed by `indices`).
        fraction: float in (0, 1]; `1` returns `indices` unchanged.
        seed: int seeding the draw. Defaults to `0`.

    Returns:
        Sorted int64 row indices.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be a number in (0, 1]. Received: fraction={fraction!r}")
    if fraction == 1:
        return np.sort(indices)
    rng = np.random.default_rng(seed)
    of_rows = np.asarray(labels)[indices]
    kept = []
    for label in np.unique(of_rows):
        members = indices[of_rows == label]
        members = members[rng.permutation(len(members))]
        kept.append(members[: max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(kept)) if kept else indices


# -- training --------------------------------------------------------------


def train_heads(features: str | os.PathLike | None, *, config: config_lib.TrainConfig) -> list[RunResult]:
    """Trains every head of `config` on one cached feature set.

    Head names and parameters are checked before the features are read;
    the features are read once and shared by all heads. Each head gets its
    own run folder (see the module doc) and leaderboard row.

    Args:
        features: the feature set: a path, a short name or `None`; see
            `resolve_features`.
        config: the resolved `TrainConfig`.

    Returns:
        One `RunResult` per head, in `config.heads` order.

    Raises:
        FeatureStoreError: the feature set is missing, incomplete or
            corrupt (a `ValueError`; the message says how to rebuild it).
        ValueError: an unknown head or parameter; a single class; a split
            or fraction leaving a class without training examples; a head
            that fails to fit.

    Example:

    ```python
    results = train_heads("cache/digits-mobilenet_v2-224-avg-1a2b3c4d",
                          config=TrainConfig(heads=("logreg", "dense")))
    for r in results:
        print(r.head, r.test_accuracy, r.fit_seconds, r.run_dir)
    ```
    """
    if not isinstance(config, config_lib.TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig. Received: {type(config).__name__}.")
    plans = _plan_heads(config)
    path = resolve_features(features, config.cache_dir)
    fs = read_feature_set(path)
    parts = _check_and_split(fs, config)
    results = []
    for head, params in plans:
        results.append(_run_one(fs, parts, head, params, config))
    return results


def _plan_heads(config: config_lib.TrainConfig) -> list[tuple[str, dict[str, Any]]]:
    """Each head with the parameters it gets; unknown heads and keys fail here."""
    fresh = {head: heads_lib.create_head(head) for head in config.heads}  # unknown heads raise
    targeted: dict[str, dict[str, Any]] = {head: {} for head in config.heads}
    shared: dict[str, Any] = {}
    for key, value in config.params.items():
        head, dot, name = key.rpartition(".")
        if not dot:
            shared[key] = value
        elif head in targeted:
            targeted[head][name] = value
        else:
            raise ValueError(
                f"Parameter {key!r} is for head {head!r}, which is not being trained. "
                f"Heads: {', '.join(config.heads)}. Add --head {head}, or fix the prefix."
            )
    for key in shared:
        if not any(_accepts(est, key) for est in fresh.values()):
            raise ValueError(_unknown_param_message(key, fresh))
    plans = []
    for head, est in fresh.items():
        params = {k: v for k, v in shared.items() if _accepts(est, k)}
        params.update(targeted[head])
        if "random_state" not in params and _accepts(est, "random_state"):
            params["random_state"] = config.seed
        heads_lib.create_head(head, **params)  # a bad targeted key raises, listing the valid ones
        plans.append((head, params))
    return plans


def _accepts(estimator, key: str) -> bool:
    get_params = getattr(estimator, "get_params", None)
    if get_params is None:
        return False
    valid = get_params(deep=True)
    return key in valid or any(k.endswith("__" + key) for k in valid)


def _plain_params(estimator) -> list[str]:
    get_params = getattr(estimator, "get_params", None)
    return sorted({k.rsplit("__", 1)[-1] for k in get_params(deep=True)}) if get_params else []


def _unknown_param_message(key: str, fresh: dict[str, Any]) -> str:
    every = sorted({p for est in fresh.values() for p in _plain_params(est)})
    close = difflib.get_close_matches(key, every, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    valid = "; ".join(f"{head}: {', '.join(_plain_params(est)) or '(none)'}" for head, est in fresh.items())
    return f"Unknown parameter {key!r}: no head being trained accepts it.{hint} Valid parameters: {valid}."


def _check_and_split(fs: FeatureSet, config: config_lib.TrainConfig) -> dict[str, np.ndarray]:
    n_classes = len(fs.class_names)
    if n_classes < 2 or len(np.unique(fs.labels)) < 2:
        raise ValueError(
            f"Feature set '{fs.name}' has a single class ({', '.join(fs.class_names) or 'none'}); "
            "a classifier needs at least 2. Add a folder per class to the data and run `make features` again."
        )
    parts = split_indices(fs, config.splits)
    _require_every_class(fs, parts["train"], "the training split", "Use a larger train share in --splits, or add images of it.")
    parts["train"] = subsample(parts["train"], fs.labels, config.fraction, config.seed)
    _require_every_class(fs, parts["train"], f"the {config.fraction:g} training fraction", "Use a larger --fraction.")
    if not len(parts["validation"]) and not len(parts["test"]):
        raise ValueError(
            f"Feature set '{fs.name}' leaves no validation or test example to evaluate on with "
            f"splits={','.join(f'{s:g}' for s in config.splits)}. Give validation or test a larger share, or add images."
        )
    return parts


def _require_every_class(fs: FeatureSet, rows: np.ndarray, what: str, fix: str) -> None:
    missing = sorted(set(range(len(fs.class_names))) - set(fs.labels[rows].tolist()))
    if missing:
        names = ", ".join(repr(fs.class_names[i]) for i in missing)
        raise ValueError(f"Class {names} of feature set '{fs.name}' has no example in {what}. {fix}")


def _run_one(fs: FeatureSet, parts, head: str, params: dict[str, Any], config) -> RunResult:
    from ..heads import metrics as evaluate

    est = heads_lib.create_head(head, **params)
    is_dense = isinstance(est, heads_lib.DenseClassifier)
    X = fs.features if is_dense else fs.features.reshape(len(fs.features), -1)
    y = fs.labels
    train, val, test = (parts[s] for s in SPLITS)
    out_root = Path(config.runs_dir) / fs.name
    out_root.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", head)
    tmp = _make_tmp_dir(out_root, slug)
    try:
        fit_kwargs = {}
        if is_dense:
            fit_kwargs = {"validation_data": (X[val], y[val]) if len(val) else None, "callbacks_dir": tmp}
        log.info("Training %s on %d examples ...", head, len(train))
        started = time.perf_counter()
        try:
            est.fit(X[train], y[train], **fit_kwargs)
        except ValueError as e:
            raise ValueError(f"Head {head!r} failed to fit on {len(train)} training examples: {e}") from e
        fit_seconds = time.perf_counter() - started

        metrics = {
            name: evaluate.classification_metrics(y[rows], _proba(est, X[rows], len(fs.class_names)), fs.class_names)
            if len(rows)
            else None
            for name, rows in (("validation", val), ("test", test))
        }
        shown = "test" if metrics["test"] is not None else "validation"
        _save_figure(evaluate.plot_confusion_matrix(np.asarray(metrics[shown]["confusion_matrix"]), fs.class_names),
                     tmp / "confusion_matrix.png")
        if is_dense:
            _save_figure(evaluate.plot_history(est.history_), tmp / "history.png")
            est.save_keras(tmp / "model.keras")

        lineage = {
            "features_path": str(Path(fs.path).resolve()),
            "feature_set": fs.name,
            "content_hash": fs.content_hash,
            "feature_key": fs.attrs.get("feature_key"),
            "backbone": fs.attrs.get("backbone"),
            "weights": fs.attrs.get("weights"),
            "extraction_config": fs.config,
            "n_images": len(fs.labels),
            "class_names": list(fs.class_names),
        }
        head_sha256 = heads_lib.save_head(
            tmp / "head.joblib",
            est,
            metadata={**{k: lineage[k] for k in ("feature_set", "content_hash", "feature_key", "backbone", "weights", "class_names")},
                      "head": head, "params": _jsonable(params)},
        )
        lineage["head_sha256"] = head_sha256
        sizes = {"train": int(len(train)), "validation": int(len(val)), "test": int(len(test))}
        _write_json(tmp / "metrics.json", {**metrics, "fit_seconds": fit_seconds, "sizes": sizes})
        _write_json(tmp / "config.json", {
            "train_config": config_lib.to_dict(config),
            "head": head,
            "params": params,
            "estimator_params": _estimator_params(est),
        })
        _write_json(tmp / "lineage.json", lineage)
        run_dir = _publish(tmp, out_root, slug)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = RunResult(head, params, run_dir, metrics, fit_seconds, sizes, head_sha256)
    _append_leaderboard(Path(config.runs_dir), {
        "features": fs.name,
        "backbone": fs.attrs.get("backbone", ""),
        "head": head,
        "params": json.dumps(_jsonable(params), sort_keys=True, separators=(",", ":")),
        "fraction": f"{config.fraction:g}",
        "val_accuracy": _fmt(result.val_accuracy),
        "test_accuracy": _fmt(result.test_accuracy),
        "test_macro_f1": _fmt(result.test_macro_f1),
        "fit_seconds": f"{fit_seconds:.3f}",
        "run_dir": str(run_dir),
    })
    return result


def _proba(est, X: np.ndarray, n_classes: int) -> np.ndarray:
    """`(n, n_classes)` probabilities, columns in label order; one-hot for heads without predict_proba."""
    classes = np.asarray(est.classes_).astype(np.int64)
    if hasattr(est, "predict_proba"):
        raw = np.asarray(est.predict_proba(X), dtype=np.float64)
    else:
        predicted = np.asarray(est.predict(X))
        raw = (predicted[:, None] == classes[None, :]).astype(np.float64)
    proba = np.zeros((len(X), n_classes))
    proba[:, classes] = raw
    return proba


# -- run folders -----------------------------------------------------------


def _run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def _make_tmp_dir(out_root: Path, slug: str) -> Path:
    while True:
        tmp = out_root / f"{_TMP_PREFIX}{slug}-{_run_id()}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _publish(tmp: Path, out_root: Path, slug: str) -> Path:
    """Renames the finished run into place under a fresh id; never onto another run."""
    final = out_root / tmp.name[len(_TMP_PREFIX) :]
    while True:
        try:
            # rename(2) replaces only an *empty* folder; run folders never are.
            if final.exists():
                raise FileExistsError(final)
            os.rename(tmp, final)
            return final
        except OSError as e:
            if not final.exists():
                raise e
            final = out_root / f"{slug}-{_run_id()}"


def _save_figure(fig, path: Path) -> None:
    fig.savefig(path, dpi=100)  # evaluate builds Figures without pyplot: nothing to close


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")


def _jsonable(value):
    """Plain JSON types: numpy scalars and arrays unwrapped, tuples as lists, anything else as repr."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _estimator_params(est) -> dict[str, Any]:
    get_params = getattr(est, "get_params", None)
    if get_params is None:
        return {}
    return {k: v for k, v in get_params(deep=True).items() if not hasattr(v, "get_params")}


def _pick(metrics: dict[str, Any] | None, key: str) -> float | None:
    if metrics is None or metrics.get(key) is None:
        return None
    return float(metrics[key])


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


# -- leaderboard -----------------------------------------------------------


@contextlib.contextmanager
def _locked(runs_dir: Path):
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / _LOCK_NAME, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _append_leaderboard(runs_dir: Path, row: dict[str, str]) -> None:
    """Adds one row to leaderboard.csv and .md: lock, read, rewrite to a temp file, replace."""
    with _locked(runs_dir):
        rows = _read_leaderboard(runs_dir) + [row]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=LEADERBOARD_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in LEADERBOARD_COLUMNS} for r in rows)
        replace_text(runs_dir / "leaderboard.csv", buffer.getvalue())
        replace_text(runs_dir / "leaderboard.md", _markdown(_by_val_accuracy(rows)))


def _read_leaderboard(runs_dir: Path) -> list[dict[str, str]]:
    path = runs_dir / "leaderboard.csv"
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _by_val_accuracy(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    def key(row):
        try:
            return -float(row["val_accuracy"])
        except (KeyError, TypeError, ValueError):
            return math.inf  # no validation split: last

    return sorted(rows, key=key)  # stable: equal scores keep run order


def _markdown(rows: list[dict[str, str]]) -> str:
    lines = [
        "| " + " | ".join(LEADERBOARD_COLUMNS) + " |",
        "|" + "|".join("---" for _ in LEADERBOARD_COLUMNS) + "|",
    ]
    for row in rows:
        cells = [str(row.get(c, "")).replace("|", "\\|") for c in LEADERBOARD_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def list_runs(runs_dir: str | os.PathLike = "runs") -> list[dict[str, str]]:
    """The leaderboard rows, best validation accuracy first.

    Args:
        runs_dir: the runs folder. Defaults to `"runs"`.

    Returns:
        Rows as dicts keyed by `LEADERBOARD_COLUMNS` (values as written in
        `leaderboard.csv`); runs without validation come last. Empty when
        nothing was trained yet.
    """
    return _by_val_accuracy(_read_leaderboard(Path(runs_dir)))
