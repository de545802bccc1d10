"""The leaderboard: one row per finished run, read from the run folders.

The run folders are the source of truth: each holds its head, params,
fraction, metrics and lineage, everything a row shows. Each row says what
the run started from: a head run (`kind` `head`, 0 layers unfrozen) its
feature set, a fine-tuned run (`kind` `finetune`) the run it fine-tuned and
how many base layers it unfroze. `leaderboard.csv`
(in run order) and `leaderboard.md` (best validation accuracy first) are
rewritten from them after every run, so a person or a spreadsheet editing
the CSV (a byte-order mark, CRLF line ends, a renamed header, a stray byte)
can never blank, drop or block a row: the next run writes them afresh, and
`list_runs` never reads them.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from .. import _atomic
from ..errors import RunError, WriteError
from . import layout

__all__ = ["LEADERBOARD_COLUMNS", "list_runs", "rebuild_leaderboard", "scores"]

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
    "kind",
    "unfrozen",
    "parent",
    "run_dir",
)

log = logging.getLogger("bottleneck")


def scores(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """`val_accuracy`, `test_accuracy` and `test_macro_f1` of a run's metrics; `None` where a split is empty."""

    def pick(split: str, key: str) -> float | None:
        value = (metrics.get(split) or {}).get(key)
        return float(value) if _is_number(value) else None

    return {
        "val_accuracy": pick("validation", "accuracy"),
        "test_accuracy": pick("test", "accuracy"),
        "test_macro_f1": pick("test", "macro_f1"),
    }


def list_runs(runs_dir: str | os.PathLike = "runs") -> list[dict[str, str]]:
    """Every finished run, best validation accuracy first.

    Rows are read from the run folders, not from `leaderboard.csv`, so an
    edited or damaged CSV never hides a run.

    Args:
        runs_dir: the runs folder. Defaults to `"runs"`.

    Returns:
        Rows as dicts keyed by `LEADERBOARD_COLUMNS`, values as
        `leaderboard.csv` writes them; runs without validation come last.
        Empty when nothing was trained yet.
    """
    return _by_val_accuracy(_read_runs(Path(runs_dir)))


def rebuild_leaderboard(runs_dir: str | os.PathLike = "runs") -> list[dict[str, str]]:
    """Rewrites `leaderboard.csv` and `leaderboard.md` from the run folders.

    Called after every run; call it yourself after deleting run folders or
    when the files were edited. Parallel callers take turns under a file
    lock, and each file is replaced atomically.

    Args:
        runs_dir: the runs folder. Defaults to `"runs"`.

    Returns:
        The rows written to `leaderboard.csv`, in run order.

    Raises:
        WriteError: a file could not be written; the run folders are
            untouched.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    try:
        with _locked(runs_dir):
            rows = _read_runs(runs_dir)
            _atomic.write_text(runs_dir / layout.LEADERBOARD_CSV, _csv(rows))
            _atomic.write_text(runs_dir / layout.LEADERBOARD_MD, _markdown(_by_val_accuracy(rows)))
    except OSError as e:
        raise WriteError(
            f"Cannot write the leaderboard in '{runs_dir}' ({e}). The run folders are complete; "
            "`rebuild_leaderboard` writes it again from them."
        ) from e
    return rows


@contextlib.contextmanager
def _locked(runs_dir: Path) -> Iterator[None]:
    # Each writer lists the folders after taking the lock, and every run is
    # published before its writer asks for it, so the last file written
    # always holds every run.
    with open(runs_dir / layout.LEADERBOARD_LOCK, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_runs(runs_dir: Path) -> list[dict[str, str]]:
    """A row per run folder `<runs_dir>/<feature set>/<run>/`, in the order the runs finished."""
    found = []
    for run in _run_folders(runs_dir):
        try:
            found.append(_row(run))
        except RunError as e:
            log.warning("Left out of the leaderboard: %s", e)
    return [row for _, row in sorted(found, key=lambda item: item[0])]


def _run_folders(runs_dir: Path) -> Iterator[Path]:
    if not runs_dir.is_dir():
        return
    for feature_set in sorted(runs_dir.iterdir()):
        if feature_set.name.startswith(".") or not feature_set.is_dir():
            continue
        for run in sorted(feature_set.iterdir()):
            # A `.tmp-` folder is a run still being written (or a killed one).
            if not run.name.startswith(".") and (run / layout.LINEAGE).is_file():
                yield run


def _row(run: Path) -> tuple[tuple[str, str], dict[str, str]]:
    """`(sort key, row)` of one run folder; a damaged folder is a `RunError`."""
    config = layout.read_json(run / layout.CONFIG, "run folder")
    metrics = layout.read_json(run / layout.METRICS, "run folder")
    lineage = layout.read_json(run / layout.LINEAGE, "run folder")
    fraction = (config.get("train_config") or {}).get("fraction")
    fit_seconds = metrics.get("fit_seconds")
    row = {
        "features": str(lineage.get("feature_set") or run.parent.name),
        "backbone": str(lineage.get("backbone") or ""),
        "head": str(config.get("head") or ""),
        "params": json.dumps(config.get("params") or {}, sort_keys=True, separators=(",", ":")),
        "fraction": f"{fraction:g}" if _is_number(fraction) else "",
        **{name: "" if value is None else f"{value:.4f}" for name, value in scores(metrics).items()},
        "fit_seconds": f"{fit_seconds:.3f}" if _is_number(fit_seconds) else "",
        "run_dir": str(run),
        # What a run started from: a head its feature set (no base layer trained), a fine-tune its run.
        "kind": str(lineage.get("kind") or "head"),
        "unfrozen": str(lineage.get("unfrozen_layers") or 0),
        "parent": str(lineage.get("parent_run") or Path(str(lineage.get("features_path") or run.parent)).parent),
    }
    # `trained_at` orders runs finished within one second; runs from before
    # it was recorded sort first, by folder name.
    return (str(lineage.get("trained_at") or ""), run.name), row


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _by_val_accuracy(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    def key(row):
        try:
            return -float(row["val_accuracy"])
        except ValueError:
            return math.inf  # no validation split: last

    return sorted(rows, key=key)  # stable: equal scores keep run order


def _csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LEADERBOARD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown(rows: list[dict[str, str]]) -> str:
    lines = [
        "| " + " | ".join(LEADERBOARD_COLUMNS) + " |",
        "|" + "|".join("---" for _ in LEADERBOARD_COLUMNS) + "|",
    ]
    for row in rows:
        cells = [row[c].replace("|", "\\|") for c in LEADERBOARD_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
