"""`build_report(runs_dir, output)`: one self-contained HTML page to choose a model from.

Everything comes from the run folders and the feature sets they name: the
backbone x head table per dataset, each run's confusion matrices, per-class
scores, plots and misclassified test images, the dataset's class counts and
skipped files, and a near-duplicate / split-leakage check on the cached
features (`heads.leakage`). Every file read may have been edited by hand: a
damaged run folder is listed as skipped with the reason, a damaged plot or
missing image becomes a placeholder naming the file; nothing of it stops
the report. Images are inlined as `data:` URIs, so the page needs no
network and no other file. It is written atomically (`_atomic`).

Thumbnails are read from the feature set's recorded data root: a local
folder directly, any other source (a folder behind a URL, tar shards,
Parquet image columns) through `sources.open_source`, listed once per
report. A source that cannot be read then (a server gone, credentials
missing) leaves its thumbnails out, and the dataset's section says why.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic
from ..config.options import is_int, is_real, number
from ..errors import BottleneckError, ConfigError, RunError
from ..features.sources import open_source
from ..heads import split_indices
from ..heads.leakage import DEFAULT_THRESHOLD, LeakageCheck, find_leakage
from ..store import FeatureStore, read_feature_set
from . import csvcells, layout, report_html
from .leaderboard import scores, variant
from .predict import check_output_file, check_output_folder

__all__ = ["ReportResult", "build_report"]

MAX_MISCLASSIFIED = 24
"""Misclassified images shown per run, most confidently wrong first."""
THUMBNAIL_PX = 64
_MAX_PLOT_BYTES = 8 << 20  # a run's PNG larger than this is not a plot this product wrote


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """A written report.

    Attributes:
        path: the HTML file.
        n_runs: runs shown.
        skipped: `(run folder, reason)` of each run folder left out.
        n_cross_split: near-duplicate pairs crossing splits, over every
            feature set checked.
    """

    path: Path
    n_runs: int
    skipped: tuple[tuple[str, str], ...]
    n_cross_split: int

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "n_runs": self.n_runs, "skipped": [list(s) for s in self.skipped],
                "n_cross_split": self.n_cross_split}


@dataclasses.dataclass
class Run:
    """One run folder as the page shows it (filled by `_read_run`, then `_attach_images`)."""

    folder: Path
    dataset: str
    feature_set: str
    features_path: str
    backbone: str
    head: str
    variant: str  # what tells it apart from runs of its head (`leaderboard.variant`)
    params: dict[str, Any]
    metrics: dict[str, Any]
    scores: dict[str, float | None]
    fit_seconds: float | None
    content_hash: str
    n_images: int | None
    class_names: list[str]
    split_shown: str
    splits: tuple[float, ...]
    plots: dict[str, str]  # caption -> data URI, or "" with the reason in `notes`
    notes: list[str]
    predictions: list[dict[str, Any]] | None = None
    misclassified: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Dataset:
    """A feature set's data, class counts, skipped files and leakage check."""

    name: str
    feature_set: str
    backbone: str
    data_root: str | None
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    skipped: list[tuple[str, str]]
    leakage: LeakageCheck | None
    pair_rows: list[dict[str, Any]]
    conflicts: list[list[str]]
    paths: frozenset[str] = frozenset()  # the set's image paths: the only files thumbnails are made of
    error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. why no thumbnail could be read


def build_report(
    runs_dir: str | os.PathLike = "runs", output: str | os.PathLike = "report.html", *,
    features: str | None = None, duplicate_threshold: float = DEFAULT_THRESHOLD, overwrite: bool = False,
) -> ReportResult:
    """Writes one self-contained HTML report of the runs under `runs_dir`.

    Args:
        runs_dir: the runs folder (`<runs_dir>/<feature set>/<run>/`).
            Defaults to `"runs"`.
        output: the HTML file to write. Defaults to `"report.html"`.
        features: only runs on the feature sets whose name starts with
            this. Defaults to `None` (every run).
        duplicate_threshold: float in (-1, 1], the cosine similarity of
            cached features from which two images count as near-duplicates.
            Defaults to `0.98`.
        overwrite: replace an existing `output`. Defaults to `False`.

    Returns:
        A `ReportResult`.

    Raises:
        ConfigError: `output` exists (without `overwrite`) or its folder
            does not; no run matches `features`; a bad `duplicate_threshold`.
        RunError: `runs_dir` holds no run folder at all.
        WriteError: the file could not be written; nothing was replaced.

    Example:

    ```python
    result = build_report("runs", "report.html", overwrite=True)
    print(result.path, result.n_runs, result.skipped)
    ```
    """
    threshold = duplicate_threshold
    number(low=-1, high=1, open_low=True, e_g="0.98 (a cosine similarity)", as_float=False)(
        "duplicate_threshold", threshold)
    output = Path(output)
    check_output_folder(output.parent if str(output.parent) else Path("."))
    check_output_file(output, overwrite=overwrite)
    runs, skipped = _read_runs(Path(runs_dir), features)
    datasets = {}
    for path in dict.fromkeys(r.features_path for r in runs):
        mine = [r for r in runs if r.features_path == path]
        datasets[path] = _read_dataset(path, mine, float(threshold))
    thumbnails = _Thumbnails()
    for run in runs:
        _attach_misclassified(run, datasets[run.features_path], thumbnails)
    page = report_html.render(runs, list(datasets.values()), skipped, runs_dir=str(runs_dir))
    with _atomic.writing(output):
        _atomic.write_text(output, page)
    n_cross = sum(d.leakage.n_cross_split for d in datasets.values() if d.leakage is not None)
    return ReportResult(output, len(runs), tuple(skipped), n_cross)


def _read_runs(runs_dir: Path, features: str | None) -> tuple[list[Run], list[tuple[str, str]]]:
    if not runs_dir.is_dir():
        raise RunError(f"`runs_dir` '{runs_dir}' is not a folder. Train heads first (`make train-head`).",
                       field="runs_dir")
    runs, skipped = [], []
    for set_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if features is not None and not set_dir.name.startswith(features):
            continue
        for folder in sorted(p for p in set_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                runs.append(_read_run(folder))
            except (BottleneckError, OSError, ValueError, TypeError, KeyError) as e:
                skipped.append((str(folder), str(e)))
    if not runs and not skipped:
        where = f" on feature sets starting with {features!r}" if features is not None else ""
        if features is not None:
            names = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise ConfigError(f"No run under '{runs_dir}'{where}. Feature sets with runs: "
                              f"{', '.join(names) or 'none'}.", field="features")
        raise RunError(f"No run folder under '{runs_dir}'. Train heads first (`make train-head`).", field="runs_dir")
    return runs, skipped


def _read_run(folder: Path) -> Run:
    """A run folder's JSON files, checked; a `RunError` (or `ValueError`) says what is wrong."""
    lineage = layout.read_json(folder / layout.LINEAGE, "run folder")
    config = layout.read_json(folder / layout.CONFIG, "run folder")
    metrics = layout.read_json(folder / layout.METRICS, "run folder")
    class_names = lineage.get("class_names")
    if not isinstance(class_names, list) or len(class_names) < 2 or not all(isinstance(c, str) for c in class_names):
        raise RunError(f"'{folder / layout.LINEAGE}' records no list of class_names.")
    shown = "test" if isinstance(metrics.get("test"), dict) else "validation"
    _check_split_metrics(folder, metrics.get(shown), len(class_names))
    train_config = config.get("train_config") if isinstance(config.get("train_config"), dict) else {}
    extraction = lineage.get("extraction_config") if isinstance(lineage.get("extraction_config"), dict) else {}
    data = str(extraction.get("data") or "")
    fit = metrics.get("fit_seconds")
    run = Run(
        folder=folder,
        dataset=str(extraction.get("name") or Path(data).name or lineage.get("feature_set") or folder.parent.name),
        feature_set=str(lineage.get("feature_set") or folder.parent.name),
        features_path=str(lineage.get("features_path") or ""),
        backbone=str(lineage.get("backbone") or extraction.get("model") or "?"),
        head=str(config.get("head") or folder.name.rsplit("-", 2)[0]),
        variant=variant(lineage, config, metrics),
        params=config.get("params") if isinstance(config.get("params"), dict) else {},
        metrics=metrics,
        scores=scores(metrics),
        fit_seconds=float(fit) if _finite(fit) else None,
        content_hash=str(lineage.get("content_hash") or ""),
        n_images=lineage.get("n_images") if isinstance(lineage.get("n_images"), int) else None,
        class_names=class_names,
        split_shown=shown,
        splits=_splits(train_config.get("splits")),
        plots={},
        notes=[],
    )
    for caption, name in (("history", layout.HISTORY), ("sweep", layout.SWEEP_PLOT)):
        if (folder / name).exists():
            run.plots[caption] = _png_uri(folder / name, run.notes)
    run.predictions = _read_predictions(folder / layout.TEST_PREDICTIONS, class_names, run.notes)
    return run


def _check_split_metrics(folder: Path, split: Any, k: int) -> None:
    where = f"'{folder / layout.METRICS}'"
    if not isinstance(split, dict):
        raise RunError(f"{where} holds neither test nor validation metrics.")
    matrix = split.get("confusion_matrix")
    if (not isinstance(matrix, list) or len(matrix) != k
            or not all(isinstance(row, list) and len(row) == k and all(_count(v) for v in row) for row in matrix)):
        raise RunError(f"{where}: `confusion_matrix` is not a {k} x {k} table of counts (one per class).")
    if not isinstance(split.get("per_class"), dict):
        raise RunError(f"{where}: `per_class` scores are missing.")


def _splits(value: Any) -> tuple[float, ...]:
    if isinstance(value, list) and len(value) == 3 and all(_finite(v) and v >= 0 for v in value) and sum(value) > 0:
        return tuple(float(v) for v in value)
    return (0.8, 0.1, 0.1)


def _read_predictions(path: Path, class_names: list[str], notes: list[str]) -> list[dict[str, Any]] | None:
    """The rows of `test_predictions.csv`, or `None` with a note when it is missing or damaged."""
    if not path.exists():
        notes.append(f"No {layout.TEST_PREDICTIONS} (trained by an older version): misclassified images not shown.")
        return None
    names = set(class_names)
    rows = []
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
        if tuple(reader.fieldnames or ()) != layout.TEST_PREDICTIONS_COLUMNS:
            raise ValueError(f"header {reader.fieldnames!r}, expected {list(layout.TEST_PREDICTIONS_COLUMNS)!r}")
        for line, cells in enumerate(reader, 2):
            row = {k: csvcells.unescape(v) if isinstance(v, str) else v for k, v in cells.items()}
            p, q = float(row["probability"]), float(row["true_probability"])
            if row["true"] not in names or row["predicted"] not in names or not (0 <= p <= 1 and 0 <= q <= 1):
                raise ValueError(f"line {line} names an unknown class or a probability outside [0, 1]")
            rows.append({**row, "probability": p, "true_probability": q})
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as e:
        notes.append(f"'{path}' is damaged ({e}): misclassified images not shown.")
        return None
    return rows


def _read_dataset(features_path: str, runs: list[Run], threshold: float) -> Dataset:
    first = runs[0]
    empty = Dataset(first.dataset, first.feature_set, first.backbone, None, first.class_names, {}, [], None, [], [])
    try:
        fs = read_feature_set(features_path)
        state = FeatureStore(Path(fs.path).parent).read_index_state()
    except (BottleneckError, OSError, ValueError) as e:
        empty.error = f"Feature set '{features_path}' cannot be read ({e}); dataset and leakage sections left out."
        return empty
    parts = split_indices(fs, first.splits)
    split_of = np.empty(len(fs.labels), dtype=object)
    for name, rows in parts.items():
        split_of[rows] = name
    counts = {c: {s: int(np.sum(fs.labels[rows] == i)) for s, rows in parts.items()}
              for i, c in enumerate(fs.class_names)}
    sha = [state.files[p].sha256 if state and p in state.files else f"?{i}" for i, p in enumerate(fs.paths)]
    check = find_leakage(fs.features, splits=split_of, sha256=sha, labels=fs.labels, threshold=threshold)
    root = fs.attrs.get("data_root")
    for run in runs:
        if run.content_hash and run.content_hash != fs.content_hash:
            run.notes.append(f"The feature set changed since this run was trained ({fs.name} was extracted again).")
    pair_rows = [
        {"a": fs.paths[p.i], "b": fs.paths[p.j], "split_a": split_of[p.i], "split_b": split_of[p.j],
         "class_a": fs.class_names[fs.labels[p.i]], "class_b": fs.class_names[fs.labels[p.j]],
         "similarity": p.similarity}
        for p in check.cross_split
    ]
    return Dataset(
        first.dataset, fs.name, str(fs.attrs.get("backbone") or first.backbone),
        str(root) if root else None, list(fs.class_names), counts,
        sorted((s.relpath, s.reason) for s in state.skipped.values()) if state else [],
        check, pair_rows,
        [[f"{fs.paths[r]} ({fs.class_names[fs.labels[r]]})" for r in group] for group in check.conflicts],
        frozenset(fs.paths),
    )


def _attach_misclassified(run: Run, dataset: Dataset, thumbnails: _Thumbnails) -> None:
    if run.predictions is None:
        return
    wrong = [row for row in run.predictions if row["true"] != row["predicted"]]
    wrong.sort(key=lambda row: -row["probability"])
    for row in wrong[:MAX_MISCLASSIFIED]:
        run.misclassified.append({**row, "image": thumbnails.get(dataset, row["path"])})
    if len(wrong) > MAX_MISCLASSIFIED:
        run.notes.append(f"{len(wrong)} misclassified images; the {MAX_MISCLASSIFIED} most confident are shown.")
    for pair in dataset.pair_rows[:MAX_MISCLASSIFIED]:
        pair.setdefault("image_a", thumbnails.get(dataset, pair["a"]))
        pair.setdefault("image_b", thumbnails.get(dataset, pair["b"]))


class _Thumbnails:
    """Small inline JPEGs of dataset images, made once per image; `""` for a file that is gone."""

    def __init__(self):
        self._made: dict[tuple[str | None, str], str] = {}
        self._sources: dict[str, Any] = {}  # data root -> its source, or None when it cannot be read

    def get(self, dataset: Dataset, relpath: str) -> str:
        # Only a path the feature set lists is read: a predictions file edited to
        # name another file shows the placeholder. A manifest may list files
        # outside its folder (`../photos/a.jpg`): those are the set's images too.
        if dataset.data_root is None or relpath not in dataset.paths:
            return ""
        key = (dataset.data_root, relpath)
        if key not in self._made:
            self._made[key] = self._make(dataset, relpath)
        return self._made[key]

    def _make(self, dataset: Dataset, relpath: str) -> str:
        source = self._source(dataset)
        if source is None:
            return ""
        if source.is_local:
            return _thumbnail(Path(dataset.data_root) / relpath)
        try:
            data = source.open(relpath)
        except Exception:  # noqa: BLE001 - an item gone from the source becomes the placeholder that names it
            return ""
        return _thumbnail(data)

    def _source(self, dataset: Dataset):
        """The source of the dataset's images, listed once; `None`, with a note on the dataset, when unreadable."""
        root = dataset.data_root
        if root not in self._sources:
            try:
                source = open_source(root)
                if not source.is_local:
                    source.list()  # its readers open the items
            except Exception as e:  # noqa: BLE001 - each store raises its own types; the page is written anyway
                source = None
                dataset.notes.append(f"Images of '{root}' cannot be read now, so none is shown: {e}")
            self._sources[root] = source
        return self._sources[root]


def _thumbnail(file) -> str:
    """An inline JPEG of an image file (a path or a binary file object), or `""` when it cannot be decoded."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as image:
            image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))
            small = ImageOps.exif_transpose(image).convert("RGB")
            small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - any undecodable file becomes the placeholder that names it
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _png_uri(path: Path, notes: list[str]) -> str:
    from PIL import Image

    try:
        data = path.read_bytes()
        if len(data) > _MAX_PLOT_BYTES:
            raise ValueError(f"{len(data)} bytes")
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ValueError(f"a {image.format} file, not a PNG")
            image.verify()
    except Exception as e:  # noqa: BLE001 - a damaged plot is a note, never a broken page
        notes.append(f"'{path}' is not a readable PNG ({e}); not shown.")
        return ""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _finite(value: Any) -> bool:
    return is_real(value) and math.isfinite(value)


def _count(value: Any) -> bool:
    return is_int(value) and value >= 0
