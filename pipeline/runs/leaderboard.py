"""The leaderboard: one row per finished run, read from the run folders.

The run folders are the source of truth: each holds its head, params,
fraction, metrics and lineage, everything a row shows. Each row says what
the run started from: a head run (`kind` `head`, 0 layers unfrozen) its
feature set, a fine-tuned run (`kind` `finetune`) the run it fine-tuned and
how many base layers it unfroze. `leaderboard.csv`
(in run order) and `leaderboard.md` (best validation accuracy first) are
rewritten from them after every run, and by `list_runs` whenever they
disagree with the folders (a run deleted, a file edited: a byte-order mark,
CRLF line ends, a renamed header, a stray byte), so no edit can blank, drop
or block a row for long, and `list_runs` never reads a row from them.

What a row holds is one table, `COLUMNS`: each column says how it is read
from a run folder, written as text, shown by `runs ls` (if at all) and
sorted.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from .. import _atomic
from ..config.options import integer, is_real
from ..config.train import DEFAULT_TRANSFORM
from ..errors import ConfigError, RunError, WriteError
from ..store import shown_path
from . import csvcells, layout

__all__ = ["COLUMNS", "LEADERBOARD_COLUMNS", "Column", "list_runs", "rebuild_leaderboard", "scores", "short_run_id",
           "shown_table", "variant"]

log = logging.getLogger("bottleneck")


class _Run(NamedTuple):
    """What a row is read from: a run folder and its three JSON files."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the leaderboard.

    Attributes:
        name: the key in `list_runs` rows, `leaderboard.csv` and `runs ls --json`.
        read: the typed value (str, int, float or `None`) of a run.
        fmt: format spec writing a value as text (`".4f"`); `None` is `""`.
        header: the heading in `runs ls`'s table; `None` keeps the column
            out of it (it stays in the files and the JSON).
        width: the most characters `runs ls` shows of a value; longer
            values end in "~". `None`: no limit.
        show: the text `runs ls` shows for a row, when not the value's.
        better: `1` (higher is better) or `-1` (lower is better) for a
            numeric column, which `sort` accepts and `runs ls` aligns
            right; `0` for the others.
    """

    name: str
    read: Callable[[_Run], Any]
    fmt: str = ""
    header: str | None = None
    width: int | None = None
    show: Callable[[Mapping[str, Any]], str] | None = None
    better: int = 0

    def text(self, value: Any) -> str:
        return "" if value is None else format(value, self.fmt)


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


def _number(value: Any) -> Any:
    return value if _is_number(value) else None


def _score(name: str) -> Callable[[_Run], float | None]:
    return lambda run: scores(run.metrics)[name]


def _run_id(row: Mapping[str, Any]) -> str:
    # The folder is `<head>-<time>-<hex>`: the head has its own column, the order
    # of runs is the table's, and the hex tail is what a fine-tune's variant names.
    return short_run_id(row["run_dir"])


COLUMNS: tuple[Column, ...] = (
    Column("features", lambda run: str(run.lineage.get("feature_set") or run.path.parent.name)),
    Column("backbone", lambda run: str(run.lineage.get("backbone") or ""), header="backbone", width=14),
    # Images and content hash tell runs on a set before and after images were added apart.
    Column("n_images", lambda run: _number(run.lineage.get("n_images")), header="images", better=1),
    Column("features_hash", lambda run: str(run.lineage.get("content_hash") or ""), header="hash",
           show=lambda row: row["features_hash"][:8]),
    Column("head", lambda run: str(run.config.get("head") or ""), header="head", width=14),
    Column("params", lambda run: json.dumps(run.config.get("params") or {}, sort_keys=True, separators=(",", ":"))),
    Column("fraction", lambda run: _fraction(run.config), "g", better=1),
    Column("augmented", lambda run: _augmented(run.lineage.get("augmented"))),
    Column("transform", lambda run: _transform(run.lineage.get("transform"))),
    Column("sweep", lambda run: _sweep_choice(run.metrics.get("sweep"))),
    # The differences above in a few words, for `runs ls` and the report's headings.
    Column("variant", lambda run: variant(run.lineage, run.config, run.metrics), header="variant", width=20),
    Column("val_accuracy", _score("val_accuracy"), ".4f", header="val", better=1),
    Column("test_accuracy", _score("test_accuracy"), ".4f", header="test", better=1),
    Column("test_macro_f1", _score("test_macro_f1"), ".4f", header="f1", better=1),
    Column("fit_seconds", lambda run: _number(run.metrics.get("fit_seconds")), ".3f", better=-1),
    # Exact copies of one image in several splits: test scores read too high when this is above 0.
    Column("duplicates_across_splits", lambda run: _number(run.metrics.get("duplicates_across_splits"))),
    # What a run started from: a head its feature set (no base layer trained), a fine-tune its parent run.
    Column("kind", lambda run: str(run.lineage.get("kind") or "head")),
    Column("unfrozen", lambda run: _number(run.lineage.get("unfrozen_layers")) or 0),
    Column("parent", lambda run: str(run.lineage.get("parent_run")
                                     or Path(str(run.lineage.get("features_path") or run.path.parent)).parent)),
    Column("run_dir", lambda run: str(run.path), header="run", width=12, show=_run_id),
)
LEADERBOARD_COLUMNS = tuple(c.name for c in COLUMNS)
_BY_NAME = {c.name: c for c in COLUMNS}
SORTABLE = tuple(c.name for c in COLUMNS if c.better)


def list_runs(
    runs_dir: str | os.PathLike = "runs",
    *,
    features: str | None = None,
    head: str | None = None,
    sort: str = "val_accuracy",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Finished runs, best first, read from the run folders.

    Rows are read from the run folders, not from `leaderboard.csv`, so an
    edited or damaged CSV never hides a run; when the leaderboard files
    disagree with the rows (or are missing), they are rewritten, as
    `rebuild_leaderboard` does. An unwritable runs folder only warns.

    Args:
        runs_dir: the runs folder. Defaults to `"runs"`.
        features: keep runs on feature sets whose name or content hash
            starts with this. `None` keeps all. Defaults to `None`.
        head: keep runs of this head. `None` keeps all. Defaults to `None`.
        sort: a column of `SORTABLE`; scores, fractions and image counts
            sort highest first, `fit_seconds` lowest first, runs without a
            value last, equal values in run order.
            Defaults to `"val_accuracy"`.
        limit: int >= 1, the most rows returned. `None`: all.
            Defaults to `None`.

    Returns:
        Rows as dicts keyed by `LEADERBOARD_COLUMNS`, numbers as numbers
        and `None` where a run has no value. Empty when nothing was trained.
    """
    if sort not in SORTABLE:
        raise ConfigError(f"`sort` must be one of {', '.join(SORTABLE)}. Received: sort={sort!r}", field="sort")
    limit = integer(min=1, optional=True)("limit", limit)
    runs_dir = Path(runs_dir)
    rows = _read_runs(runs_dir)
    if not _files_agree(runs_dir, rows):
        try:
            rebuild_leaderboard(runs_dir)
        except WriteError as e:
            log.warning("warning: %s", e)
    kept = [
        row for row in rows
        if (features is None or row["features"].startswith(features) or row["features_hash"].startswith(features))
        and (head is None or row["head"] == head)
    ]
    return _best_first(kept, sort)[:limit]


def shown_table(rows: list[Mapping[str, Any]]) -> list[str]:
    """`runs ls`'s table: the columns with a `header`, each cut to its `width`, one line per row.

    Columns are one space apart, numbers aligned right, so that the table
    fits 100 characters for the usual backbones and heads.
    """
    shown = [c for c in COLUMNS if c.header]
    cells = [[c.header for c in shown]] + [[_cell(c, row) for c in shown] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(shown))]
    return [
        " ".join(cell.rjust(w) if c.better else cell.ljust(w) for c, cell, w in zip(shown, line, widths)).rstrip()
        for line in cells
    ]


def _cell(column: Column, row: Mapping[str, Any]) -> str:
    text = column.show(row) if column.show else column.text(row[column.name])
    if column.width and len(text) > column.width:
        return text[: column.width - 1] + "~"
    return text


def rebuild_leaderboard(runs_dir: str | os.PathLike = "runs") -> list[dict[str, Any]]:
    """Rewrites `leaderboard.csv` and `leaderboard.md` from the run folders.

    Called after every run; call it yourself after deleting run folders or
    when the files were edited. Parallel callers take turns under a file
    lock, and each file is replaced atomically.

    Args:
        runs_dir: the runs folder. Defaults to `"runs"`.

    Returns:
        The rows written to `leaderboard.csv`, in run order, typed as
        `list_runs` gives them.

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
            _atomic.write_text(runs_dir / layout.LEADERBOARD_MD, _markdown(_best_first(rows, "val_accuracy")))
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


def _read_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """A row per run folder `<runs_dir>/<feature set>/<run>/`, in the order the runs finished.

    Each run's evaluations (`eval-<id>/` inside it, `bottleneck evaluate`)
    follow it as rows of kind `evaluation`: the run's backbone, head and
    params, the evaluated images' test scores, the run as parent.
    """
    found = []
    for path in _run_folders(runs_dir):
        try:
            key, row, run = _row(path)
        except RunError as e:
            log.warning("Left out of the leaderboard: %s", e)
            continue
        found.append(((key, ""), row))
        for evaluation in sorted(path.glob(f"{layout.EVAL_PREFIX}*")):
            try:
                found.append(((key, evaluation.name), _evaluation_row(run, evaluation)))
            except RunError as e:
                log.warning("Left out of the leaderboard: %s", e)
    return [row for _, row in sorted(found, key=lambda item: item[0])]


def _evaluation_row(run: _Run, folder: Path) -> dict[str, Any]:
    metrics = layout.read_json(folder / layout.METRICS, "evaluation folder")
    size = (metrics.get("sizes") or {}).get("test")
    lineage = {**run.lineage, "kind": "evaluation", "parent_run": str(run.path), "n_images": size}
    return {c.name: c.read(_Run(folder, run.config, metrics, lineage)) for c in COLUMNS}


def _run_folders(runs_dir: Path) -> Iterator[Path]:
    if not runs_dir.is_dir():
        return
    for feature_set in sorted(runs_dir.iterdir()):
        if feature_set.name.startswith(".") or not feature_set.is_dir():
            continue
        for run in sorted(feature_set.iterdir()):
            # A `.tmp-` folder is a run still being written (or a killed one);
            # a curve folder holds many fits, listed in its own curve.csv.
            if not run.name.startswith((".", layout.CURVE_PREFIX)) and (run / layout.LINEAGE).is_file():
                yield run


def _row(path: Path) -> tuple[tuple[str, str], dict[str, Any], _Run]:
    """`(sort key, row, what it was read from)` of one run folder; a damaged folder is a `RunError`."""
    run = _Run(
        path,
        layout.read_json(path / layout.CONFIG, "run folder"),
        layout.read_json(path / layout.METRICS, "run folder"),
        layout.read_json(path / layout.LINEAGE, "run folder"),
    )
    row = {c.name: c.read(run) for c in COLUMNS}
    # `trained_at` orders runs finished within one second; runs from before
    # it was recorded sort first, by folder name.
    return (str(run.lineage.get("trained_at") or ""), path.name), row, run


def variant(lineage: Mapping[str, Any], config: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """What tells a run apart from others of its head on its set, in a few words; `""` for a plain run.

    Read from a run folder's `lineage.json`, `config.json` and `metrics.json`;
    e.g. `ft of 1a2b3c4d +20 layers`, `aug 4v flip,rotation`, `tf pca-whiten-64`
    (a transform other than the default),
    `C=0.01` (the sweep's choice), `frac 0.5`.
    """
    parts = []
    kind = str(lineage.get("kind") or "head")
    if kind in ("finetune", "evaluation"):
        parent = short_run_id(str(lineage.get("parent_run") or ""))
        unfrozen = _number(lineage.get("unfrozen_layers"))
        parts.append(f"{'ft' if kind == 'finetune' else 'eval'} of {parent}"
                     + (f" +{unfrozen} layers" if kind == "finetune" and unfrozen else ""))
    record = lineage.get("augmented")
    if isinstance(record, list) and record and all(isinstance(r, dict) for r in record):
        views = sum(len(r.get("views") or ()) for r in record)
        ops = ";".join(",".join(op.split("=")[0] for op in str(r.get("ops") or "").split(",")) for r in record)
        parts.append(f"aug {views}v {ops}")
    transform = _transform(lineage.get("transform"))
    if transform and transform != DEFAULT_TRANSFORM:  # the default is every plain run's: no word for it
        parts.append(f"tf {transform}")
    chosen = metrics["sweep"].get("chosen") if isinstance(metrics.get("sweep"), dict) else None
    if isinstance(chosen, dict):
        parts.append(",".join(f"{k}={_short(v)}" for k, v in sorted(chosen.items())) or "sweep")
    fraction = _fraction(config)
    if fraction is not None and fraction != 1:
        parts.append(f"frac {fraction:g}")
    return " ".join(parts)


def _fraction(config: Mapping[str, Any]) -> float | None:
    train_config = config.get("train_config")
    return _number(train_config.get("fraction")) if isinstance(train_config, dict) else None


def short_run_id(run_dir: str) -> str:
    """The random end of a run folder's name (`<head>-<time>-<hex>`): `runs ls`'s run id; the name otherwise."""
    name = Path(run_dir).name
    tail = name.rsplit("-", 1)[-1]
    return tail if re.fullmatch("[0-9a-f]{8}", tail) and name != tail else name


def _short(value: Any) -> str:
    return format(value, "g") if _is_number(value) else json.dumps(value, separators=(",", ":"))


def _transform(record: Any) -> str:
    """The lineage's feature transform as text: a name as is, a record as compact JSON; `""` when none."""
    if record is None or record == "" or record == {}:
        return ""
    if isinstance(record, str):
        return record
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def _sweep_choice(record: Any) -> str:
    """The params a sweep chose, as compact JSON; `""` for a run that was not swept."""
    if not isinstance(record, dict):
        return ""
    return json.dumps(record.get("chosen"), sort_keys=True, separators=(",", ":"))


def _augmented(record: Any) -> str:
    """`no`, or the views trained on: `4 views flip=horizontal,... seed 0` per ops and seed."""
    if not isinstance(record, list) or not record:
        return "no"
    try:
        return "; ".join(f"{len(r['views'])} views {r['ops']} seed {r['seed']}" for r in record)
    except (TypeError, KeyError):
        return "unreadable lineage record"


def _is_number(value: Any) -> bool:
    return is_real(value) and math.isfinite(value)


def _best_first(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    better = _BY_NAME[sort].better

    def key(row):
        value = row[sort]
        return math.inf if value is None else -better * value  # no value: last

    return sorted(rows, key=key)  # stable: equal scores keep run order


def _files_agree(runs_dir: Path, rows: list[dict[str, Any]]) -> bool:
    """Whether both leaderboard files hold exactly `rows` (or, without runs, neither exists): one read each, no lock."""
    if not rows and not any((runs_dir / name).exists() for name in (layout.LEADERBOARD_CSV, layout.LEADERBOARD_MD)):
        return True
    expected = {layout.LEADERBOARD_CSV: _csv(rows), layout.LEADERBOARD_MD: _markdown(_best_first(rows, "val_accuracy"))}
    try:
        return all((runs_dir / name).read_bytes() == text.encode("utf-8") for name, text in expected.items())
    except OSError:
        return False


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LEADERBOARD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c.name: _csv_cell(c, row[c.name]) for c in COLUMNS} for row in rows)
    return buffer.getvalue()


def _csv_cell(column: Column, value: Any) -> str:
    # Lineage is user-controlled (a data folder `-SUM1`): text cells are escaped as predictions.csv's are.
    return csvcells.escape(value) if isinstance(value, str) else column.text(value)


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(LEADERBOARD_COLUMNS) + " |",
        "|" + "|".join("---" for _ in LEADERBOARD_COLUMNS) + "|",
    ]
    for row in rows:
        cells = [shown_path(c.text(row[c.name])).replace("|", "\\|") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
