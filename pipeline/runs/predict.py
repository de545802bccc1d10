"""Prediction stage: apply a trained run (or an exported bundle) to new images.

Entry points: `predict_images(run_dir, paths)` for unlabelled images and
`evaluate_run(run_dir, data)` for a labelled class-per-folder set. Both go
through a `Predictor`, which rebuilds exactly the extractor the run's
features came from (backbone row, weights, size, pooling or layer,
precision, storage dtype, decoder, batch size) from the run's
`lineage.json`, and feeds the head the same numbers the features stage
would have stored: images are decoded by `decode.load_image` and batched
and padded by the features stage's own helpers.

Nothing is unpickled before it is checked. A run's `head.joblib` is loaded
only when its sha256 equals `lineage.json`'s `head_sha256`; a bundle's files
only when they match its `manifest.sha256`; a weights file only when its
sha256 equals the weights identity recorded at extraction. Anything else is
refused with a `RunError` (a `ValueError`) naming the file.

A *bundle* (written by `export.export_run(..., format="bundle")`) is a
self-contained folder that stands in for a run folder::

    bundle.json        format, head file, weights file, the run's lineage
    head.joblib        the head, as in the run
    weights/<file>     a copy of the weights file (when extracted from one)
    manifest.sha256    `sha256sum -c` format, every file above
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import secrets
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from .._atomic import write_text as replace_text
from .. import config as config_lib
from ..errors import RunError
from ..features import backbones, decode, discovery

__all__ = [
    "BUNDLE_FORMAT",
    "EvaluationResult",
    "Prediction",
    "Predictor",
    "RunError",
    "RunSpecWarning",
    "evaluate_run",
    "predict_images",
    "write_predictions_csv",
]

LINEAGE_NAME = "lineage.json"
HEAD_NAME = "head.joblib"
BUNDLE_NAME = "bundle.json"
MANIFEST_NAME = "manifest.sha256"
BUNDLE_FORMAT = "bottleneck-bundle"
BUNDLE_FORMAT_VERSION = 1
_TMP_PREFIX = ".tmp-"


class RunSpecWarning(UserWarning):
    """Features are recomputed under a spec that differs from the recorded one."""


# -- results ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The head's answer for one image.

    Attributes:
        path: str, the image path as given (or as found in a given folder).
        predicted_class: str, the most probable class; `None` on error.
        probability: float, its probability; `None` on error.
        top_k: tuple of `(class_name, probability)`, most probable first.
        probabilities: tuple of floats, every class in `class_names` order;
            `()` on error.
        error: str, why the image could not be decoded; `None` when it was.
    """

    path: str
    predicted_class: str | None
    probability: float | None
    top_k: tuple[tuple[str, float], ...]
    probabilities: tuple[float, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "predicted_class": self.predicted_class,
            "probability": self.probability,
            "top_k": [[name, p] for name, p in self.top_k],
            "error": self.error,
        }


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate_run` measured and wrote.

    Attributes:
        out_dir: the new `eval-<id>/` folder inside the run folder.
        metrics: `evaluate.classification_metrics` of the evaluated images.
        n_images: images that entered the metrics.
        unknown_classes: class folders of the data that the run does not
            know, each with the paths (relative to the data folder) of its
            images, which were left out of the metrics.
        missing_classes: classes of the run with no image in the data.
        skipped: `(relpath, reason)` of images that could not be decoded.
        dataset_summary: "Found N images in K classes." and notes.
    """

    out_dir: Path
    metrics: dict[str, Any]
    n_images: int
    unknown_classes: dict[str, list[str]]
    missing_classes: list[str]
    skipped: list[tuple[str, str]]
    dataset_summary: str

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
        }


# -- the recorded spec -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Source:
    """A run folder or bundle, checked and resolved, nothing unpickled yet."""

    root: Path
    kind: str  # "run" or "bundle"
    lineage: dict[str, Any]
    config: config_lib.ExtractConfig  # the extraction config, weights resolved to a usable path
    size: int
    head_path: Path
    head_sha256: str
    class_names: tuple[str, ...]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"'{path}' is missing, so this is not a complete {what}.") from None
    except (OSError, ValueError) as e:
        raise RunError(f"Cannot read '{path}' ({e}); the {what} is damaged.") from None
    if not isinstance(data, dict):
        raise RunError(f"'{path}' does not hold a JSON object; the {what} is damaged.")
    return data


def _open_source(path: str | os.PathLike, weights: str | os.PathLike | None) -> _Source:
    root = Path(path)
    if not root.exists():
        raise RunError(
            f"Run folder '{root}' does not exist. Pass a run folder as `bottleneck runs ls` lists it "
            "(runs/<feature set>/<head>-<id>) or a bundle folder written by `bottleneck export`."
        )
    if not root.is_dir():
        raise RunError(f"'{root}' is a file, not a run folder or bundle folder.")
    if (root / BUNDLE_NAME).exists():
        return _open_bundle(root, weights)
    if not (root / LINEAGE_NAME).exists():
        raise RunError(
            f"'{root}' is neither a run folder (no {LINEAGE_NAME}) nor a bundle (no {BUNDLE_NAME}). "
            "Pass a folder written by `bottleneck train-head` or `bottleneck export`."
        )
    lineage = _read_json(root / LINEAGE_NAME, "run folder")
    head_path = root / HEAD_NAME
    return _resolve(root, "run", lineage, head_path, lineage.get("head_sha256"), None, weights)


def _open_bundle(root: Path, weights) -> _Source:
    listed = _verify_manifest(root)
    bundle = _read_json(root / BUNDLE_NAME, "bundle")
    if bundle.get("format") != BUNDLE_FORMAT or bundle.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise RunError(
            f"'{root / BUNDLE_NAME}' is not a {BUNDLE_FORMAT} of version {BUNDLE_FORMAT_VERSION} "
            f"(format={bundle.get('format')!r}, version={bundle.get('format_version')!r})."
        )
    names = [BUNDLE_NAME, bundle.get("head", "")] + ([bundle["weights_file"]] if bundle.get("weights_file") else [])
    unlisted = [n for n in names if n not in listed]
    if unlisted:
        raise RunError(
            f"Bundle '{root}' lists {', '.join(map(repr, unlisted))} in {BUNDLE_NAME} but not in "
            f"{MANIFEST_NAME}; refusing to use files it cannot check. Export the bundle again."
        )
    lineage = bundle.get("lineage")
    if not isinstance(lineage, dict):
        raise RunError(f"'{root / BUNDLE_NAME}' holds no lineage; export the bundle again.")
    bundled = root / bundle["weights_file"] if bundle.get("weights_file") else None
    return _resolve(root, "bundle", lineage, root / bundle["head"], bundle.get("head_sha256"), bundled, weights)


def _verify_manifest(root: Path) -> set[str]:
    """Checks every file of a bundle's manifest; returns the names it lists."""
    manifest = root / MANIFEST_NAME
    try:
        lines = manifest.read_text().splitlines()
    except FileNotFoundError:
        raise RunError(f"Bundle '{root}' has no {MANIFEST_NAME}; refusing to load files it cannot check.") from None
    listed: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line.strip())
        name = match.group(2) if match else ""
        if not match or Path(name).is_absolute() or ".." in Path(name).parts:
            raise RunError(f"'{manifest}' line {number} is not '<sha256>  <relative path>': {line!r}.")
        file = root / name
        if not file.is_file():
            raise RunError(f"Bundle file '{file}' listed in {MANIFEST_NAME} is missing. Export the bundle again.")
        actual = discovery.file_sha256(file)
        if actual != match.group(1):
            raise RunError(
                f"Refusing to use bundle file '{file}': its sha256 is {actual}, the manifest records "
                f"{match.group(1)}. It changed after export (or comes from another bundle); nothing was loaded."
            )
        listed.add(name)
    return listed


def _resolve(root, kind, lineage, head_path, head_sha256, bundled_weights, weights_override) -> _Source:
    what = f"'{root / (LINEAGE_NAME if kind == 'run' else BUNDLE_NAME)}'"
    extraction = lineage.get("extraction_config")
    class_names = lineage.get("class_names")
    identity = lineage.get("weights")
    if not isinstance(extraction, dict) or not extraction.get("model"):
        raise RunError(f"{what} records no extraction_config; the run cannot be reproduced. Train it again.")
    if not isinstance(class_names, list) or len(class_names) < 2:
        raise RunError(f"{what} records no class_names; the run cannot be used. Train it again.")
    if not isinstance(identity, str) or not identity:
        raise RunError(f"{what} records no weights identity; the run cannot be reproduced. Train it again.")
    if not head_sha256:
        raise RunError(
            f"{what} records no head_sha256, so '{head_path}' cannot be checked before it is unpickled "
            "(joblib runs code when loading). Refusing to load it; train the head again."
        )
    if not head_path.is_file():
        raise RunError(f"Head file '{head_path}' is missing; the {kind} is incomplete.")
    fields = {f.name for f in dataclasses.fields(config_lib.ExtractConfig)}
    try:
        config = config_lib.ExtractConfig(**{k: v for k, v in extraction.items() if k in fields})
    except (TypeError, ValueError) as e:
        raise RunError(f"{what} records an extraction_config this version cannot use: {e}") from None
    cfg = backbones.get_backbone_cfg(config.model)
    size = backbones.resolve_size(cfg, config.size)
    resolved = _resolve_weights(identity, config.weights, bundled_weights, weights_override, what)
    config = dataclasses.replace(config, weights=resolved)
    _check_feature_key(config, identity, lineage.get("feature_key"), what)
    return _Source(Path(root), kind, lineage, config, size, Path(head_path), str(head_sha256), tuple(class_names))


def _resolve_weights(identity: str, recorded: str, bundled: Path | None, override, what: str) -> str:
    """The weights to build with: the recorded ones, checked against their identity."""
    if identity == "none":
        if override is not None:
            raise ValueError(
                f"`weights` can only replace a weights file, but this run used random weights (weights='none'). "
                f"Received: weights={str(override)!r}. Leave it out."
            )
        return "none"
    if identity.startswith("imagenet@"):
        if override is not None:
            raise ValueError(
                f"`weights` can only replace a weights file, but this run used weights='imagenet' "
                f"({identity}). Received: weights={str(override)!r}. Leave it out."
            )
        now = backbones.weights_identity("imagenet")
        if now != identity:
            warnings.warn(
                f"The run's ImageNet weights came with {identity.partition('@')[2]}; this is {now.partition('@')[2]}. "
                "Keras fetches the same published files, but check the predictions if in doubt.",
                RunSpecWarning,
                stacklevel=4,
            )
        return "imagenet"
    if not identity.startswith("sha256:"):
        raise RunError(f"{what} records an unknown weights identity {identity!r}.")
    if override is not None:
        candidate, origin = Path(override), "given with `weights`"
    elif bundled is not None:
        candidate, origin = bundled, "in the bundle"
    else:
        candidate, origin = Path(recorded), "recorded in the run's extraction_config"
    if not candidate.is_file():
        raise RunError(
            f"Weights file '{candidate}' ({origin}) does not exist. The run's features were extracted "
            f"with it ({identity}). Pass --weights PATH (`weights=`) pointing at a copy of that exact file."
        )
    actual = f"sha256:{discovery.file_sha256(candidate)}"
    if actual != identity:
        raise RunError(
            f"Weights file '{candidate}' ({origin}) is not the file the run's features were extracted with: "
            f"its identity is {actual}, the run recorded {identity}. Predictions with it would not match "
            "the head. Pass --weights PATH pointing at the original file."
        )
    return str(candidate)


def _check_feature_key(config, identity: str, recorded_key: str | None, what: str) -> None:
    """Warns when the features would be computed under another spec than recorded.

    The key covers the backbone row, decoder (Pillow major), Keras major,
    size, pooling, layer, precision and storage dtype, so a change of any
    of them since training shows up here.
    """
    from ..features import extract
    from ..store import feature_key

    if not recorded_key:
        return
    spec = extract.feature_spec(dataclasses.replace(config, weights="none"))
    spec["weights"] = identity
    now = feature_key(spec)
    if now != recorded_key:
        warnings.warn(
            f"{what}: features are now computed under a different spec than the head was trained on "
            f"(feature key {now[:12]}, recorded {recorded_key[:12]}): the backbone registry row, the "
            f"decoder ({spec['decoder']}) or the Keras major version ({spec['keras_major']}) changed. "
            "Predictions may differ; run `make features` and `make train-head` again to be sure.",
            RunSpecWarning,
            stacklevel=4,
        )


# -- the predictor ---------------------------------------------------------


class _Item(NamedTuple):
    relpath: str  # read by decode.decode_batches as root / relpath
    index: int


class Predictor:
    """A run's extractor and head, loaded once, for many predictions.

    Use `Predictor.load(run_dir)`; the extractor is built on first use.

    Attributes:
        root: the run or bundle folder.
        kind: `"run"` or `"bundle"`.
        class_names: tuple of the run's class names, in label order.
        config: the run's `ExtractConfig`, with `weights` resolved to the
            checked file (or `"imagenet"`, `"none"`).
        size: the input size in pixels.
        lineage: the run's lineage dict.
        head: the fitted head (a scikit-learn estimator).
    """

    def __init__(self, source: _Source, head, metadata: dict[str, Any]):
        self._source = source
        self.root = source.root
        self.kind = source.kind
        self.class_names = source.class_names
        self.config = source.config
        self.size = source.size
        self.lineage = source.lineage
        self.head = head
        self.head_metadata = metadata
        self._extractor = None

    @classmethod
    def load(cls, run_dir: str | os.PathLike, *, weights: str | os.PathLike | None = None) -> "Predictor":
        """Checks a run folder or bundle and loads its head.

        Args:
            run_dir: a run folder (`runs/<feature set>/<head>-<id>`) or a
                bundle folder from `bottleneck export`.
            weights: path of a weights file to use instead of the recorded
                one (moved or copied elsewhere); it must have the recorded
                sha256. Only for runs extracted from a weights file.
                Defaults to `None` (the recorded file).

        Returns:
            A `Predictor`.

        Raises:
            RunError: a file is missing, or differs from its recorded sha256.
            ValueError: the run names an unknown backbone, or `weights` was
                given for a run without a weights file.
        """
        from .. import heads as heads_lib

        source = _open_source(run_dir, weights)
        head, metadata = heads_lib.load_head(source.head_path, expected_sha256=source.head_sha256)
        recorded = metadata.get("class_names") if isinstance(metadata, dict) else None
        if recorded is not None and list(recorded) != list(source.class_names):
            raise RunError(
                f"Head file '{source.head_path}' was trained on classes {list(recorded)}, but the "
                f"{source.kind} records {list(source.class_names)}; the files do not belong together."
            )
        classes = getattr(head, "classes_", None)
        if classes is None or not np.all(
            (np.asarray(classes) >= 0) & (np.asarray(classes) < len(source.class_names))
        ):
            raise RunError(
                f"Head file '{source.head_path}' predicts labels {classes!r}, not indices into the "
                f"{len(source.class_names)} class names of the {source.kind}."
            )
        return cls(source, head, metadata if isinstance(metadata, dict) else {})

    @property
    def is_dense(self) -> bool:
        from ..heads import DenseClassifier

        return isinstance(self.head, DenseClassifier)

    def extractor(self):
        """The Keras extractor of the run (uint8 images -> features), built once."""
        if self._extractor is None:
            c = self.config
            self._extractor = backbones.build_extractor(
                backbones.get_backbone_cfg(c.model), size=self.size, weights=c.weights,
                pooling=c.pooling, layer=c.layer, precision=c.precision,
            )
        return self._extractor

    def extract(self, paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[int], dict[int, str]]:
        """Features of image files, computed as the features stage computes them.

        Decoding (`decode.load_image`), batching, padding of the last batch
        and the storage dtype are the features stage's own, with the run's
        batch size, so an image already in the feature set gets the stored
        numbers back.

        Args:
            paths: image files.

        Returns:
            `(features, ok, errors)`: float32 features of the decodable
            images, their indices into `paths`, and `{index: reason}` for
            the others.
        """
        items = [_Item(os.fspath(p), i) for i, p in enumerate(paths)]
        c = self.config
        workers = max(1, min(c.workers, os.cpu_count() or 1))
        chunks, ok, errors = [], [], {}
        if items:
            model = self.extractor()
            for entries, images, failures in decode.decode_batches(Path(), items, self.size, c.batch_size, workers):
                for item, reason in failures:
                    errors[item.index] = reason
                if entries:
                    features = backbones.predict_batches(model, images, c.batch_size)
                    chunks.append(features.astype(c.storage_dtype).astype(np.float32))
                    ok.extend(item.index for item in entries)
        shape = tuple(int(d) for d in self.extractor().output_shape[1:]) if items else (0,)
        features = np.concatenate(chunks) if chunks else np.zeros((0, *shape), np.float32)
        return features, ok, errors

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Head probabilities, `(n, len(class_names))`, columns in class order.

        Heads without `predict_proba` give one-hot rows of `predict`.
        """
        X = features if self.is_dense else features.reshape(len(features), -1)
        n_classes = len(self.class_names)
        if not len(X):
            return np.zeros((0, n_classes))
        expected = getattr(self.head, "n_features_in_", None)
        if expected is not None and int(np.prod(X.shape[1:])) != int(expected):
            raise RunError(
                f"The rebuilt extractor gives {int(np.prod(X.shape[1:]))} features per image but head "
                f"'{self._source.head_path}' expects {expected}; the lineage does not describe its features."
            )
        classes = np.asarray(self.head.classes_).astype(np.int64)
        if hasattr(self.head, "predict_proba"):
            raw = np.asarray(self.head.predict_proba(X), dtype=np.float64)
        else:
            raw = (np.asarray(self.head.predict(X))[:, None] == classes[None, :]).astype(np.float64)
        proba = np.zeros((len(X), n_classes))
        proba[:, classes] = raw
        return proba

    def predict(self, paths: Sequence[str | os.PathLike], *, top_k: int = 3) -> list[Prediction]:
        """One `Prediction` per path, in order; undecodable images get an error row.

        Args:
            paths: image files (folders are not expanded here; see
                `predict_images`).
            top_k: int >= 1, how many classes each `Prediction.top_k`
                lists (at most the number of classes). Defaults to `3`.
        """
        top_k = _check_top_k(top_k)
        features, ok, errors = self.extract(paths)
        proba = self.predict_proba(features)
        rows: list[Prediction | None] = [None] * len(paths)
        k = min(top_k, len(self.class_names))
        for row, index in zip(proba, ok):
            order = np.argsort(-row, kind="stable")[:k]
            best = int(order[0])
            rows[index] = Prediction(
                path=os.fspath(paths[index]),
                predicted_class=self.class_names[best],
                probability=float(row[best]),
                top_k=tuple((self.class_names[int(i)], float(row[i])) for i in order),
                probabilities=tuple(float(p) for p in row),
            )
        for index, reason in errors.items():
            rows[index] = Prediction(os.fspath(paths[index]), None, None, (), (), reason)
        return [r for r in rows if r is not None]


def _check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"`top_k` must be an integer >= 1. Received: top_k={top_k!r}")
    return int(top_k)


# -- entry points ----------------------------------------------------------


def predict_images(
    run_dir: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    *,
    top_k: int = 3,
    weights: str | os.PathLike | None = None,
) -> list[Prediction]:
    """Predicts the class of image files with a trained run.

    The extractor is rebuilt exactly as recorded in the run's lineage and
    the head is loaded only after its sha256 matches (see the module doc).

    Args:
        run_dir: a run folder or a bundle folder from `bottleneck export`.
        paths: image files and folders; a folder stands for every image
            below it (extensions of `discovery.IMAGE_EXTENSIONS`, sorted,
            dotfiles skipped).
        top_k: int >= 1, classes listed per image. Defaults to `3`.
        weights: a weights file replacing the recorded one; it must have
            the recorded sha256. Defaults to `None`.

    Returns:
        One `Prediction` per image, in the order given (folders expanded
        in place). An image that cannot be decoded gets a `Prediction`
        whose `error` says why.

    Raises:
        RunError: the run or one of its files is missing or changed.
        ValueError: no image was given, or `top_k` < 1.

    Example:

    ```python
    for p in predict_images("runs/digits-mobilenet_v2-224-avg-1a2b3c4d/logreg-20250101T000000-0a1b2c3d",
                            ["photos/"], top_k=2):
        print(p.path, p.predicted_class, p.probability, p.error)
    ```
    """
    _check_top_k(top_k)
    files = _expand(paths)
    return Predictor.load(run_dir, weights=weights).predict(files, top_k=top_k)


def _expand(paths: Iterable[str | os.PathLike]) -> list[str]:
    given = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not given:
        raise ValueError("`paths` must name at least one image file or folder. Received: paths=[].")
    files: list[str] = []
    for path in given:
        if os.path.isdir(path):
            found = sorted(
                str(Path(dirpath) / name)
                for dirpath, dirnames, names in os.walk(path)
                for name in names
                if not name.startswith(".") and name.lower().endswith(discovery.IMAGE_EXTENSIONS)
                and not any(part.startswith(".") for part in Path(dirpath).relative_to(path).parts)
            )
            if not found:
                raise ValueError(
                    f"Folder '{path}' holds no images (extensions: {', '.join(discovery.IMAGE_EXTENSIONS)})."
                )
            files.extend(found)
        else:
            files.append(path)  # a missing or bad file gets an error row
    return files


def write_predictions_csv(predictions: Sequence[Prediction], path: str | os.PathLike) -> Path:
    """Writes predictions as CSV, atomically.

    Columns: `path`, `predicted_class`, `probability`, `top_k_classes` and
    `top_k_probabilities` (each `;`-separated, most probable first) and
    `error` (empty when the image was decoded).

    Args:
        predictions: from `predict_images`.
        path: the CSV file; its folder is created.

    Returns:
        The path written.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "predicted_class", "probability", "top_k_classes", "top_k_probabilities", "error"])
    for p in predictions:
        writer.writerow([
            p.path,
            p.predicted_class or "",
            "" if p.probability is None else f"{p.probability:.6f}",
            ";".join(name for name, _ in p.top_k),
            ";".join(f"{prob:.6f}" for _, prob in p.top_k),
            p.error or "",
        ])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, buffer.getvalue())
    return path


def evaluate_run(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
) -> EvaluationResult:
    """Measures a trained run on a new labelled image folder.

    Classes are matched by folder name. Images of classes the run does not
    know are left out of the metrics and listed; classes of the run absent
    from the data simply have no true examples. The metrics are those of
    training (`evaluate.classification_metrics`, stored under `"test"`),
    written with the confusion matrix and per-image predictions into a new
    `eval-<id>/` folder inside `run_dir`, which appears only when complete.

    Args:
        run_dir: a run folder or a bundle folder.
        data: a class-per-folder image folder (`discovery.index_directory`).
        weights: a weights file replacing the recorded one (same sha256).
            Defaults to `None`.

    Returns:
        An `EvaluationResult`.

    Raises:
        RunError: the run or one of its files is missing or changed.
        discovery.DataError: the data folder is missing or holds no images.
        ValueError: no image of the data belongs to a class of the run, or
            none could be decoded.
    """
    from ..heads import metrics as evaluate

    predictor = Predictor.load(run_dir, weights=weights)
    dataset = discovery.index_directory(data)
    label_of = {name: i for i, name in enumerate(predictor.class_names)}
    known, unknown = [], {}
    for entry in dataset.entries:
        name = dataset.class_names[entry.label]
        if name in label_of:
            known.append(entry)
        else:
            unknown.setdefault(name, []).append(entry.relpath)
    if not known:
        raise ValueError(
            f"No image of '{dataset.root}' belongs to a class of the run. The data has classes "
            f"{list(dataset.class_names)}; the run knows {list(predictor.class_names)}. Class folders "
            "are matched by name."
        )
    features, ok, errors = predictor.extract([dataset.root / e.relpath for e in known])
    skipped = [(known[i].relpath, reason) for i, reason in sorted(errors.items())]
    if not ok:
        raise ValueError(
            f"None of the {len(known)} images of known classes under '{dataset.root}' could be decoded. "
            "First reasons: " + "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        )
    used = [known[i] for i in ok]
    y = np.array([label_of[dataset.class_names[e.label]] for e in used], dtype=np.int64)
    proba = predictor.predict_proba(features)
    metrics = evaluate.classification_metrics(y, proba, list(predictor.class_names))
    present = set(y.tolist())
    missing = [n for i, n in enumerate(predictor.class_names) if i not in present]

    out_dir = _publish_eval(predictor.root, lambda tmp: _write_eval(
        tmp, evaluate, metrics, predictor, dataset, used, y, proba, unknown, missing, skipped,
    ))
    return EvaluationResult(out_dir, metrics, len(used), unknown, missing, skipped, dataset.summary())


def _write_eval(tmp, evaluate, metrics, predictor, dataset, used, y, proba, unknown, missing, skipped) -> None:
    figure = evaluate.plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), list(predictor.class_names))
    figure.savefig(tmp / "confusion_matrix.png", dpi=100, bbox_inches="tight")
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(figure)
    report = {
        "test": metrics,
        "sizes": {"test": int(len(used))},
        "data": str(dataset.root),
        "run": str(predictor.root),
        "dataset_summary": dataset.summary(),
        "unknown_classes": {name: {"images": len(paths), "paths": paths} for name, paths in unknown.items()},
        "missing_classes": missing,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "weights": predictor.lineage.get("weights"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (tmp / "metrics.json").write_text(json.dumps(_jsonable(report), indent=2, sort_keys=True) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "true_class", "predicted_class", "probability"])
    for entry, label, row in zip(used, y, proba):
        best = int(np.argmax(row))
        writer.writerow([entry.relpath, predictor.class_names[label], predictor.class_names[best], f"{row[best]:.6f}"])
    (tmp / "predictions.csv").write_text(buffer.getvalue())


def _publish_eval(root: Path, write) -> Path:
    """Writes into `.tmp-eval-<id>/` and renames it to `eval-<id>/` when complete."""
    while True:
        name = f"eval-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
        tmp = root / f"{_TMP_PREFIX}{name}"
        try:
            tmp.mkdir()
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        final = root / name
        if final.exists():
            raise FileExistsError(final)
        os.rename(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _jsonable(value):
    """Plain JSON types: numpy arrays and scalars unwrapped, tuples as lists, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
