"""Prediction: apply a trained run (or an exported bundle) to new images.

Entry point: `predict_images(run_dir, paths)`, written out by
`write_predictions_csv`. Both it and `evaluate.evaluate_run` go through a
`Predictor`, which rebuilds exactly the extractor the run's features came
from (backbone row, weights, size, pooling or layer, precision, storage
dtype, decoder, batch size) from the run's `lineage.json`, and feeds the
head the same numbers the features stage would have stored: images are
decoded by `decode.load_image` and batched and padded by the features
stage's own helpers. The run is checked by `source.RunSource` before its
head is unpickled.

The output helpers at the end (`check_output_file`, `check_output_folder`,
`writing`, `csv_text`) are shared by prediction, evaluation and export, so
every output is refused, escaped and reported the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import _atomic, heads
from ..config.options import integer
from ..errors import BottleneckError, ConfigError, RunError
from ..features import backbones, decode
from . import csvcells, safe_head
from .inputs import SourceItem, Unreadable, decode_root, expand_inputs, input_name, item_file
from .source import RunSource
from .tta import averaged_proba, check_tta

__all__ = ["Prediction", "Predictor", "predict_images", "write_predictions_csv"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The head's answer for one image.

    Attributes:
        path: str, the image path as given (or as found in a given folder),
            or an item of a data source named as `features` records it:
            its URL, or its shard (or Parquet file) and key.
        predicted_class: str, the most probable class; `None` on error.
        probability: float, its probability; `None` on error.
        top_k: tuple of `(class_name, probability)`, most probable first.
        probabilities: tuple of floats, every class in `class_names` order;
            `()` on error.
        error: str, why the image could not be decoded; `None` when it was.
        views: int, how many views the probabilities are averaged over
            (the image itself and `tta - 1` test-time views).
    """

    path: str
    predicted_class: str | None
    probability: float | None
    top_k: tuple[tuple[str, float], ...]
    probabilities: tuple[float, ...] = ()
    error: str | None = None
    views: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "predicted_class": self.predicted_class,
            "probability": self.probability,
            "top_k": [[name, p] for name, p in self.top_k],
            "error": self.error,
            "views": self.views,
        }


_NO_SUCH_PATH = "no such file or folder: check the path"


class _Item(NamedTuple):
    relpath: str  # read by decode.decode_batches as root / relpath
    index: int


class Predictor:
    """A run's extractor and head, loaded once, for many predictions.

    Use `Predictor.load(run_dir)`; the extractor is built on first use.

    Attributes:
        source: the checked `RunSource` (folder, lineage, resolved config,
            head file and its sha256).
        head: the fitted head (a scikit-learn estimator).
        head_metadata: what `heads.save_head` stored beside it.
    """

    def __init__(self, source: RunSource, head, metadata: dict[str, Any]):
        self.source = source
        self.head = head
        self.head_metadata = metadata
        self._extractors = None
        self.tta_record: dict[str, Any] | None = None  # the test-time views of the last `predict`

    @classmethod
    def load(
        cls, run_dir: str | os.PathLike, *, weights: str | os.PathLike | None = None, trust: bool = False
    ) -> Predictor:
        """Checks a run folder or bundle and loads its head.

        Args:
            run_dir: a run folder (`runs/<feature set>/<head>-<id>`) or a
                bundle folder from `export_run`.
            weights: path of a weights file to use instead of the recorded
                one (moved or copied elsewhere); it must have the recorded
                sha256. Only for runs extracted from a weights file.
                Defaults to `None` (the recorded file).
            trust: bool, load a run or bundle whose head is a pickle (it
                runs code from the folder; see `RunSource`). Defaults to `False`.

        Returns:
            A `Predictor`.

        Raises:
            RunError: a file is missing, or differs from its recorded sha256.
            ConfigError: `weights` was given for a run without a weights file.
        """
        source = RunSource.open(run_dir, weights, trust=trust)
        try:
            if source.head_format == "skops":
                head, metadata = safe_head.load_head(source.head_path, expected_sha256=source.head_sha256)
            else:
                head, metadata = heads.load_head(source.head_path, expected_sha256=source.head_sha256)
        except ValueError as e:
            if isinstance(e, BottleneckError):
                raise
            raise RunError(str(e)) from None  # a changed, foreign or damaged head file
        metadata = metadata if isinstance(metadata, dict) else {}
        recorded = metadata.get("class_names")
        if recorded is not None and list(recorded) != list(source.class_names):
            raise RunError(
                f"Head file '{source.head_path}' was trained on classes {list(recorded)}, but the "
                f"{source.kind} records {list(source.class_names)}; the files do not belong together."
            )
        classes = getattr(head, "classes_", None)
        if classes is None or not np.all((np.asarray(classes) >= 0) & (np.asarray(classes) < len(source.class_names))):
            raise RunError(
                f"Head file '{source.head_path}' predicts labels {classes!r}, not indices into the "
                f"{len(source.class_names)} class names of the {source.kind}."
            )
        return cls(source, head, metadata)

    @property
    def root(self) -> Path:
        """The run or bundle folder."""
        return self.source.root

    @property
    def class_names(self) -> tuple[str, ...]:
        """The run's class names, in label order."""
        return self.source.class_names

    @property
    def config(self):
        """The run's `ExtractConfig`, `weights` resolved to the checked file (or "imagenet", "none")."""
        return self.source.config

    @property
    def size(self) -> int:
        """The input size in pixels."""
        return self.source.size

    @property
    def lineage(self) -> dict[str, Any]:
        """The run's lineage."""
        return self.source.lineage

    @property
    def is_dense(self) -> bool:
        return heads.is_keras_head(self.head)

    @property
    def bases(self):
        """The run's `source.Base`s: one, or one per member of a fused feature set."""
        return self.source.bases

    def extractor(self, base: int = 0):
        """The Keras extractor of the run's `base`-th base (uint8 images -> features), built once."""
        if self._extractors is None:
            self._extractors = [None] * len(self.bases)
        if self._extractors[base] is None:
            c, size = self.bases[base].config, self.bases[base].size
            self._extractors[base] = backbones.build_extractor(
                backbones.get_backbone_cfg(c.model), size=size, weights=c.weights,
                pooling=c.pooling, layer=c.layer, precision=c.precision,
            )
        return self._extractors[base]

    def extract(self, paths: Sequence) -> tuple[np.ndarray, list[int], dict[int, str]]:
        """Features of image files, computed as the features stage computes them.

        Decoding (`decode.load_image`), batching, padding of the last batch
        and the storage dtype are the features stage's own, with the run's
        batch size, so an image already in the feature set gets the stored
        numbers back. A fused run's features are each base's, flattened and
        concatenated in order, as `store.fused` joined them for training.

        Args:
            paths: image files, or the inputs of `inputs.expand_inputs`
                (items of data sources among them).

        Returns:
            `(features, ok, errors)`: float32 features of the decodable
            images, their indices into `paths`, and `{index: reason}` for
            the others.
        """
        features, ok, errors, _ = self._extract(paths)
        return features, ok, errors

    def _extract(self, paths):
        """`extract`'s answer, plus the sha256 of the bytes each decoded image came from, by index."""
        errors = {i: _reason_unread(p) for i, p in enumerate(paths) if _reason_unread(p)}
        items = [_Item(input_name(p), i) for i, p in enumerate(paths) if i not in errors]
        root = decode_root(paths)
        per_base = [self._extract_base(base, items, errors, root) for base in range(len(self.bases))]
        digests = per_base[0][2]
        if len(per_base) == 1:
            return per_base[0][0], per_base[0][1], errors, digests
        ok = [i for i in per_base[0][1] if i not in errors]  # decoded by every base
        blocks = []
        for features, indices, _ in per_base:
            row_of = {index: row for row, index in enumerate(indices)}
            blocks.append(features[[row_of[i] for i in ok]].reshape(len(ok), -1))
        return np.concatenate(blocks, axis=1), ok, errors, digests

    def _extract_base(self, base: int, items: list[_Item], errors: dict[int, str], root):
        """One base's `(features, indices, {index: sha256 of the bytes decoded})` of `items`;
        decoding failures are added to `errors`."""
        c, size = self.bases[base].config, self.bases[base].size
        workers = max(1, min(c.workers, os.cpu_count() or 1))
        chunks, ok, digests = [], [], {}
        if items:
            model = self.extractor(base)
            for entries, images, failures, read in decode.decode_batches(
                root, items, size, c.batch_size, workers, return_digests=True, decoder=c.decoder
            ):
                for item, reason in failures:
                    errors[item.index] = reason
                if entries:
                    features = backbones.predict_batches(model, images, c.batch_size)
                    chunks.append(features.astype(c.storage_dtype).astype(np.float32))
                    ok.extend(item.index for item in entries)
                    digests.update((item.index, read[item.relpath]) for item in entries)
        shape = tuple(int(d) for d in self.extractor(base).output_shape[1:]) if items else (0,)
        features = np.concatenate(chunks) if chunks else np.zeros((0, *shape), np.float32)
        return features, ok, digests

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Head probabilities, `(n, len(class_names))`, columns in class order.

        Heads without `predict_proba` give one-hot rows of `predict`.
        """
        n_classes = len(self.class_names)
        if not len(features):
            # No image decoded: there is nothing to shape (numpy cannot infer -1 from 0 rows).
            return np.zeros((0, n_classes))
        X = heads.feature_matrix(self.head, features)
        got, expected = int(np.prod(X.shape[1:])), getattr(self.head, "n_features_in_", None)
        if expected is not None and got != int(expected):
            raise RunError(
                f"The rebuilt extractor gives {got} features per image but head '{self.source.head_path}' "
                f"expects {expected}; the lineage does not describe its features."
            )
        return heads.aligned_proba(self.head, X, n_classes)

    def predict(self, paths: Sequence, *, top_k: int = 3, tta: int = 1) -> list[Prediction]:
        """One `Prediction` per path, in order; undecodable images get an error row.

        Args:
            paths: image files, or the inputs of `inputs.expand_inputs`
                (folders and data sources are not expanded here; see
                `predict_images`).
            top_k: int >= 1, how many classes each `Prediction.top_k`
                lists (at most the number of classes). Defaults to `3`.
            tta: int in [1, 32], the probabilities are averaged over the
                image and `tta - 1` augmented views of it (`runs.tta`).
                Defaults to `1` (the image alone).
        """
        top_k = _check_top_k(top_k)
        tta = check_tta(tta)
        features, ok, errors, digests = self._extract(paths)
        proba, record = averaged_proba(self, features, [item_file(paths[i]) for i in ok], [digests[i] for i in ok], tta)
        self.tta_record = record
        rows: list[Prediction | None] = [None] * len(paths)
        k = min(top_k, len(self.class_names))
        for row, index in zip(proba, ok):
            order = np.argsort(-row, kind="stable")[:k]
            best = int(order[0])
            rows[index] = Prediction(
                path=input_name(paths[index]),
                predicted_class=self.class_names[best],
                probability=float(row[best]),
                top_k=tuple((self.class_names[int(i)], float(row[i])) for i in order),
                probabilities=tuple(float(p) for p in row),
                views=tta,
            )
        for index, reason in errors.items():
            rows[index] = Prediction(input_name(paths[index]), None, None, (), (), reason)
        return [r for r in rows if r is not None]


def _reason_unread(item) -> str | None:
    """Why an input cannot be decoded at all, or `None`."""
    if isinstance(item, Unreadable):
        return item.reason
    if isinstance(item, SourceItem):
        return None
    # A path that never existed is a typo, not a file that vanished while decoding.
    return None if os.path.lexists(item) else _NO_SUCH_PATH


def _check_top_k(top_k) -> int:
    return integer(min=1)("top_k", top_k)


def predict_images(
    run_dir: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    *,
    top_k: int = 3,
    weights: str | os.PathLike | None = None,
    trust: bool = False,
    tta: int = 1,
) -> list[Prediction]:
    """Predicts the class of image files with a trained run.

    The extractor is rebuilt exactly as recorded in the run's lineage and
    the head is loaded only after its sha256 matches (see `RunSource`).

    Args:
        run_dir: a run folder or a bundle folder from `export_run`.
        paths: image files and folders; a folder stands for every image
            below it (extensions of `discovery.IMAGE_EXTENSIONS`, sorted,
            dotfiles skipped). Also what `features` reads: a URL of an
            image or of a folder of class folders (`s3://`, `https://`,
            ...), WebDataset tar shards (`shards/{000..009}.tar`), Parquet
            files with an image column, a CSV or Parquet manifest; each of
            their items is one prediction (`inputs.expand_inputs`).
        top_k: int >= 1, classes listed per image. Defaults to `3`.
        weights: a weights file replacing the recorded one; it must have
            the recorded sha256. Defaults to `None`.
        trust: bool, accept a bundle whose head is a pickle (loading it
            runs code from the bundle). Defaults to `False`.
        tta: int in [1, 32], test-time views: each image's probabilities
            are averaged over it and `tta - 1` augmented views (`runs.tta`;
            `Prediction.views` says how many). Defaults to `1`.

    Returns:
        One `Prediction` per image, in the order given (folders and
        sources expanded in place). An image that cannot be decoded, a
        path that does not exist, or a tar shard that cannot be read, gets
        a `Prediction` whose `error` says why, even when no image at all
        could be decoded.

    Raises:
        RunError: the run or one of its files is missing or changed.
        ConfigError: no path was given, or `top_k` < 1.
        DataError: a given folder holds no images, or a source cannot be
            listed (the reason `features` would give).

    Example:

    ```python
    for p in predict_images("runs/digits-mobilenet_v2-224-avg-1a2b3c4d/logreg-20250101T000000-0a1b2c3d",
                            ["photos/"], top_k=2):
        print(p.path, p.predicted_class, p.probability, p.error)
    ```
    """
    _check_top_k(top_k)
    check_tta(tta)
    predictor = Predictor.load(run_dir, weights=weights, trust=trust)  # first: a refused bundle is the first line
    return predictor.predict(expand_inputs(paths), top_k=top_k, tta=tta)


def write_predictions_csv(
    predictions: Sequence[Prediction], output: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Writes predictions as CSV, atomically.

    Columns: `path`, `predicted_class`, `probability`, `top_k_classes` and
    `top_k_probabilities` (each `;`-separated, most probable first) and
    `error` (empty when the image was decoded). A text cell that a
    spreadsheet would run as a formula gets a leading `'` (see `csv_text`).

    Args:
        predictions: from `predict_images`.
        output: the CSV file, in an existing folder.
        overwrite: bool, replace `output` if it exists. Defaults to `False`.

    Returns:
        The path written.

    Raises:
        ConfigError: the folder of `output` does not exist, or `output`
            exists and `overwrite` is false.
        WriteError: the file could not be written; nothing was replaced.
    """
    output = check_output_file(output, overwrite=overwrite)
    check_output_folder(output.parent)
    rows = [
        [
            p.path,
            p.predicted_class or "",
            p.probability,
            ";".join(name for name, _ in p.top_k),
            ";".join(f"{prob:.6f}" for _, prob in p.top_k),
            p.error or "",
        ]
        for p in predictions
    ]
    header = ["path", "predicted_class", "probability", "top_k_classes", "top_k_probabilities", "error"]
    with _atomic.writing(output):
        _atomic.write_text(output, csv_text(header, rows))
    return output


# -- outputs (shared by predict, evaluate and export) -------------------------------


def check_output_file(path: str | os.PathLike, *, overwrite: bool, field: str = "output") -> Path:
    """Refuses an output file that would replace a folder, or a file unasked.

    A previous result should not vanish without being asked for.

    Args:
        path: the file to write.
        overwrite: bool, whether an existing file may be replaced.
        field: str, the argument that named `path`. Defaults to `"output"`.

    Returns:
        `path` as a `Path`.

    Raises:
        ConfigError: `path` is a folder, or it exists and `overwrite` is
            false (`field="overwrite"`).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"`{field}` '{path}' is a folder; pass the path of a file to write.", field=field)
    if path.exists() and not overwrite:
        raise ConfigError(
            f"'{path}' already exists; nothing was written. Pass `overwrite=True` to replace it, "
            f"or another `{field}`.",
            field="overwrite",
        )
    return path


def check_output_folder(folder: str | os.PathLike, *, field: str = "output") -> Path:
    """Checks that `folder` exists and takes new entries, before any work is done.

    A typo in a folder name should not create a tree somewhere unexpected,
    and a read-only folder should fail before, not after, the work. The
    check creates and removes a hidden folder in it, which answers for
    read-only mounts, permissions and ACLs alike.

    Raises:
        ConfigError: `folder` does not exist or is not a folder.
        WriteError: `folder` cannot be written.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"Folder '{folder}' (from `{field}`) does not exist or is not a folder; nothing was written. "
            "Create it first, or pass a path in an existing folder.",
            field=field,
        )
    return _atomic.check_writable(folder, field=field)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[str | float | None]]) -> str:
    """A CSV document: floats as `0.123456`, `None` as empty, text escaped against formulas.

    Paths and class names are user-controlled, and a spreadsheet runs a cell
    starting with `=`, `+`, `-`, `@`, tab or carriage return as a formula,
    so such a text cell gets a leading `'` as OWASP advises; it shows as
    text and the rest of the cell is unchanged (`csvcells` reads it back). Lines end in CRLF as RFC
    4180 says: Python's writer then quotes a cell holding a lone carriage
    return, which would otherwise end the row early.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(value) for value in row])
    return buffer.getvalue()


def _csv_cell(value: str | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return csvcells.escape(value)
    return f"{value:.6f}"
