"""Evaluation: measure a trained run (or a bundle) on a new labelled folder.

Entry point: `evaluate_run(run_dir, data)`. `data` is anything `features`
reads (`sources.open_source`): a folder of class folders or a manifest, a
folder behind a URL, WebDataset tar shards, Parquet image columns; the
labels come from the source. The images are extracted through
the features stage's cache, under the run's own extraction spec, so a second
evaluation of the same folder (by this run or any run on the same backbone)
extracts nothing, and added images are extracted alone. The head is the
run's (`Predictor`), the metrics are training's own
(`heads.metrics.classification_metrics`), and the results are published as
one new `eval-<id>/` folder (`layout` names its files), in the run folder
(and then as an `evaluation` row on the leaderboard) or in a folder given
with `output`.

Images of the data with the same content as images the run's feature set
holds are counted per split of the run (`overlap` in the metrics): test
numbers measured on training images are no test at all.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic
from .. import config as config_lib
from ..errors import BottleneckError, DataError, WriteError
from ..features.extract import extract_features, feature_spec
from ..features.identity import feature_set_dir
from ..features.sources import open_source
from ..heads import metrics as metrics_lib
from ..heads.splits import training_splits
from ..store import FeatureStore, feature_key, read_feature_set
from . import layout
from .inputs import listed_file
from .leaderboard import rebuild_leaderboard
from .predict import Predictor, check_output_folder, csv_text
from .tta import averaged_proba, check_tta

__all__ = ["EvaluationResult", "evaluate_run"]

log = logging.getLogger("bottleneck")


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate_run` measured and wrote.

    Attributes:
        out_dir: the new `eval-<id>/` folder (in the run folder, or in
            `output` when one was given).
        metrics: `heads.metrics.classification_metrics` of the evaluated images.
        n_images: images that entered the metrics.
        unknown_classes: class folders of the data that the run does not
            know, each with the paths (relative to the data folder) of its
            images, which were left out of the metrics.
        missing_classes: classes of the run with no image in the data.
        skipped: `(relpath, reason)` of images that could not be decoded.
        dataset_summary: "Found N images in K classes." and notes.
        overlap: images of the data whose content the run's feature set
            holds, `{"train": n, "validation": n, "test": n}` by the run's
            split, plus `"examples"`; or `{"checked": False, "reason": ...}`
            when the run's feature set is not on this machine.
        extracted: images extracted now (0 when the cache had them all).
        tta: `None`, or the test-time views averaged (`runs.tta.averaged_proba`'s record).
    """

    out_dir: Path
    metrics: dict[str, Any]
    n_images: int
    unknown_classes: dict[str, list[str]]
    missing_classes: list[str]
    skipped: list[tuple[str, str]]
    dataset_summary: str
    overlap: dict[str, Any] = dataclasses.field(default_factory=dict)
    extracted: int = 0
    tta: dict[str, Any] | None = None

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "n_images": self.n_images,
            "accuracy": self.metrics.get("accuracy"),
            "macro_f1": self.metrics.get("macro_f1"),
            "unknown_classes": self.unknown_classes,
            "missing_classes": self.missing_classes,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "overlap": self.overlap,
            "extracted": self.extracted,
            **({"tta": self.tta} if self.tta else {}),
        }


@dataclasses.dataclass(frozen=True)
class _Measured:
    """The images that entered the metrics, and what the head said of them."""

    relpaths: list[str]
    labels: np.ndarray
    proba: np.ndarray
    metrics: dict[str, Any]


def evaluate_run(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    trust: bool = False,
    tta: int = 1,
) -> EvaluationResult:
    """Measures a trained run on a new labelled image folder.

    Classes are matched by folder name. Images of classes the run does not
    know are left out of the metrics and listed; classes of the run absent
    from the data simply have no true examples. The metrics are those of
    training (`classification_metrics`, stored under `"test"`), written
    with the confusion matrix and per-image predictions into a new
    `eval-<id>/` folder, which appears only when complete. The folder that
    receives it is checked before any image is read.

    Args:
        run_dir: a run folder or a bundle folder.
        data: labelled images, as `features` reads them (`sources.open_source`):
            a class-per-folder image folder, a CSV or Parquet manifest, a
            folder of class folders behind a URL (`s3://`, `https://`,
            `file://`, ...), WebDataset tar shards (`shards/{000..009}.tar`,
            local or remote) or Parquet files with an image and a label column.
        weights: a weights file replacing the recorded one (same sha256).
            Defaults to `None`.
        output: an existing folder to write `eval-<id>/` into, for run
            folders that are read-only or shared. Defaults to `None` (the
            run folder).
        cache_dir: the feature cache the data's features are extracted
            into and reused from. Defaults to `None`: the cache holding the
            run's own feature set when it is on this machine, else
            `"cache"`.
        trust: bool, accept a bundle whose head is a pickle (loading it
            runs code from the bundle). Defaults to `False`.
        tta: int in [1, 32], test-time views: each image's probabilities
            are averaged over it and `tta - 1` augmented views (`runs.tta`),
            read from the run's cached views where they are, computed
            otherwise; recorded as `tta` in the metrics. Defaults to `1`.

    Returns:
        An `EvaluationResult`.

    Raises:
        RunError: the run or one of its files is missing or changed.
        ConfigError: `output` does not exist.
        WriteError: the receiving folder cannot be written.
        DataError: the data folder is missing or holds no images, no image
            belongs to a class of the run, or none could be decoded.
    """
    tta = check_tta(tta)
    predictor = Predictor.load(run_dir, weights=weights, trust=trust)
    parent = check_output_folder(predictor.root if output is None else output)
    source = open_source(data)
    dataset = source.list()
    known, unknown = _match_classes(dataset, predictor.class_names)
    extractions = []
    for base in predictor.bases:  # a fused run: each member's features, through the cache
        config = dataclasses.replace(
            base.config, data=str(data), cache_dir=str(cache_dir or _run_cache(predictor)), name=None)
        _seed_from_run_set(base.lineage, config, source, dataset)
        extractions.append(extract_features(config=config))
    extraction = extractions[0]
    digests = {p: r.sha256 for p, r in _index_state(extraction.path).files.items()}
    measured, skipped, tta_record = _measure(predictor, dataset, known, extractions, digests, tta)
    overlap = _overlap(predictor, {digests[p] for p in measured.relpaths})
    _warn_overlap(overlap, dataset.root)
    present = set(measured.labels.tolist())
    missing = [n for i, n in enumerate(predictor.class_names) if i not in present]
    report = {
        "test": measured.metrics,
        "sizes": {"test": len(measured.relpaths)},
        "data": str(dataset.root),
        "run": str(predictor.root),
        "features_path": str(extraction.path),
        "dataset_summary": dataset.summary(),
        "unknown_classes": {name: {"images": len(paths), "paths": paths} for name, paths in unknown.items()},
        "missing_classes": missing,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "overlap": overlap,
        "tta": tta_record,
        "weights": predictor.lineage.get("weights"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_dir = _publish(parent, predictor.class_names, measured, report)
    if out_dir.parent == predictor.root and predictor.source.kind == "run":
        _add_to_leaderboard(predictor.root.parent.parent)
    return EvaluationResult(
        out_dir, measured.metrics, len(measured.relpaths), unknown, missing, skipped, dataset.summary(),
        overlap, extraction.counts["extracted"], tta_record,
    )


def _match_classes(dataset, class_names) -> tuple[list, dict[str, list[str]]]:
    """The entries of the run's classes, and `{class: relpaths}` of the others."""
    known, unknown = [], {}
    for entry in dataset.entries:
        name = dataset.class_names[entry.label]
        if name in class_names:
            known.append(entry)
        else:
            unknown.setdefault(name, []).append(entry.relpath)
    if not known:
        raise DataError(
            f"No image of '{dataset.root}' belongs to a class of the run. The data has classes "
            f"{list(dataset.class_names)}; the run knows {list(class_names)}. Class folders are "
            "matched by name.",
            field="data",
        )
    return known, unknown


def _measure(predictor: Predictor, dataset, known, extractions, digests: dict[str, str], tta: int):
    """`(measured, skipped, test-time views record or None)` on the images every base extracted;
    a fused run's features joined as `store.fused` joins them."""
    sets = [read_feature_set(extraction.path) for extraction in extractions]
    rows_of = [{p: i for i, p in enumerate(fs.paths)} for fs in sets]
    reasons = {s.relpath: s.reason for extraction in extractions for s in extraction.skipped}
    used = [e for e in known if all(e.relpath in row_of for row_of in rows_of)]
    skipped = [(e.relpath, reasons.get(e.relpath, "not extracted")) for e in known
               if not all(e.relpath in row_of for row_of in rows_of)]
    if not used:
        raise DataError(
            f"None of the {len(known)} images of known classes under '{dataset.root}' could be decoded. "
            "First reasons: " + "; ".join(f"{p}: {r}" for p, r in skipped[:3]),
            field="data",
        )
    label_of = {name: i for i, name in enumerate(predictor.class_names)}
    labels = np.array([label_of[dataset.class_names[e.label]] for e in used], dtype=np.int64)
    blocks = [fs.features[[row_of[e.relpath] for e in used]] for fs, row_of in zip(sets, rows_of)]
    features = blocks[0] if len(blocks) == 1 else np.concatenate([b.reshape(len(b), -1) for b in blocks], axis=1)
    proba, record = averaged_proba(
        predictor, features, [listed_file(dataset, e.relpath) for e in used], [digests[e.relpath] for e in used], tta)
    metrics = metrics_lib.classification_metrics(labels, proba, list(predictor.class_names))
    return _Measured([e.relpath for e in used], labels, proba, metrics), skipped, record


def _seed_from_run_set(lineage: dict[str, Any], config, source, dataset) -> int:
    """Copies the run's cached rows of images in `dataset` into the set `extract_features` fills next.

    Images are matched by content hash, and only when the run's set was
    extracted under the very key this evaluation extracts with, so a copied
    row is exactly what extraction would compute: the run's own test split
    (or any image it has seen) is never extracted again. Items the set to
    fill already holds unchanged (same size and change token) are not read
    again: a second evaluation of remote data reads no image. Returns how
    many rows were copied. `lineage` is the record of the run's feature set
    (of one member, for a fused run); `source` reads the items of `dataset`.
    """
    run_index = Path(str(lineage.get("features_path", "")))
    spec = feature_spec(config)
    key = feature_key(spec)
    state = _index_state(run_index) if run_index.is_file() else None
    target = FeatureStore(feature_set_dir(config, spec, key))
    if state is None or state.feature_key != key or target.root.resolve() == run_index.parent.resolve():
        return 0
    run_digests = {record.sha256: path for path, record in state.files.items()}
    held = target.read_index_state()
    fingerprints = held.fingerprints() if held is not None and held.feature_key == key else {}
    todo = [e.relpath for e in dataset.entries if fingerprints.get(e.relpath) != (e.size, e.mtime_ns)]
    source.hash_ahead(todo)  # remote items: many reads in flight
    wanted: dict[str, str] = {}  # digest -> relpath under the evaluated folder
    for relpath in todo:
        try:
            digest = source.sha256(relpath)
        except OSError:
            continue  # extraction names the reason
        if digest in run_digests:
            wanted.setdefault(digest, relpath)
    if not wanted:
        return 0
    with target.write_lock():
        located, _ = target.scan_shards(key)
        new = [digest for digest in wanted if digest not in located]
        if new:
            fs = read_feature_set(run_index)
            row_of = {path: i for i, path in enumerate(fs.paths)}
            rows = [row_of[run_digests[digest]] for digest in new]
            with target.shard_appender(key, fs.features.shape[1:], config.storage_dtype, config.shard_size) as shards:
                shards.append(fs.features[rows], new, [wanted[digest] for digest in new])
    log.info("Reused the features of %d images from the run's feature set (same content, same key).", len(new))
    return len(new)


def _run_cache(predictor: Predictor) -> Path:
    """The cache folder of the run's feature set (`<cache>/<set>/features.h5`), or `cache`."""
    features_path = Path(str(predictor.lineage.get("features_path", "")))
    return features_path.parent.parent if features_path.is_file() else Path("cache")


def _index_state(features_path: Path):
    return FeatureStore(Path(features_path).parent).read_index_state()


def _overlap(predictor: Predictor, digests: set[str]) -> dict[str, Any]:
    """How many evaluated images the run's feature set holds, by the run's split.

    The index's hashes answer first; the set's features are read (to cut the
    run's splits) only when some image is shared.
    """
    lineage = predictor.bases[0].lineage  # a fused run's first member cuts the same splits by path
    features_path = lineage.get("features_path")
    try:
        state = _index_state(Path(features_path))
        if state is None or state.content_hash != lineage.get("content_hash"):
            return {"checked": False, "reason": f"the feature set at '{features_path}' is gone or changed since the run"}
        if not digests & {record.sha256 for record in state.files.values()}:
            return {"checked": True, "examples": [], "train": 0, "validation": 0, "test": 0}
        fs = read_feature_set(features_path)
        table = layout.read_json(predictor.root / layout.CONFIG, "run folder").get("train_config", {})
        config = config_lib.resolve(config_lib.TrainConfig, {k: table[k] for k in ("splits", "fraction", "seed")})
        parts = training_splits(fs, config=config)
        run_digests = [state.files[p].sha256 for p in fs.paths]
    except (BottleneckError, OSError, KeyError, TypeError) as e:
        return {"checked": False, "reason": f"the run's feature set cannot be read here ({e})"}
    overlap: dict[str, Any] = {"checked": True, "examples": []}
    for split, rows in parts.items():
        shared = [fs.paths[i] for i in rows if run_digests[i] in digests]
        overlap[split] = len(shared)
        overlap["examples"].extend(shared[:3])
    return overlap


def _add_to_leaderboard(runs_dir: Path) -> None:
    """The evaluation as a row of the run's leaderboard; a leaderboard that cannot be written only warns."""
    try:
        rebuild_leaderboard(runs_dir)
    except WriteError as e:
        log.warning("warning: %s", e)


def _warn_overlap(overlap: dict[str, Any], root: Path) -> None:
    """Images the run fitted on make no independent test; its own test split is one."""
    if not overlap.get("checked"):
        log.warning("Overlap with the run's images not checked: %s.", overlap.get("reason"))
        return
    seen = overlap.get("train", 0) + overlap.get("validation", 0)
    if seen:
        log.warning(
            "%d images of '%s' have the same content as images the run trained or validated on "
            "(train %d, validation %d; e.g. %s): these are no independent test.",
            seen, root, overlap.get("train", 0), overlap.get("validation", 0), ", ".join(overlap["examples"][:3]),
        )
    if overlap.get("test"):
        log.info("%d images of '%s' are in the run's own test split.", overlap["test"], root)


def _publish(parent: Path, class_names, measured: _Measured, report: dict[str, Any]) -> Path:
    """Writes a new `eval-<id>/` into `parent`, staged under a hidden name until complete."""
    def fresh_name() -> str:
        return f"{layout.EVAL_PREFIX}{layout.run_id()}"

    with _atomic.writing(parent), _atomic.staged_folder(parent / fresh_name(), fresh_name=fresh_name) as staged:
        figure = metrics_lib.plot_confusion_matrix(np.asarray(measured.metrics["confusion_matrix"]), list(class_names))
        figure.savefig(staged.path / layout.CONFUSION_MATRIX, dpi=100, bbox_inches="tight")
        layout.write_json(staged.path / layout.METRICS, report)
        best = measured.proba.argmax(axis=1)
        rows = [
            [relpath, class_names[label], class_names[b], float(row[b])]
            for relpath, label, b, row in zip(measured.relpaths, measured.labels, best, measured.proba)
        ]
        header = ["path", "true_class", "predicted_class", "probability"]
        _atomic.write_text(staged.path / layout.PREDICTIONS, csv_text(header, rows))
    return staged.published
