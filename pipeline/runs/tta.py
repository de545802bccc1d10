"""Test-time views: a head's probabilities averaged over an image and K-1 augmented views of it.

`predict --tta K` and `evaluate --tta K` average the head's probabilities
over the clean image and its views 1..K-1. The views are those `features
--augment` makes (`features.augment`), so a view is the same pure function
of (content, ops, seed, view) at training and at test time: with the ops
and seed of the view set the run trained on (`train-head --augmented`),
else the default ops with seed 0. A view already in the run's cache (the
run's feature set's view set, matched by content hash) is read from it; the
others are computed from the files with the run's extractor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import DEFAULT_AUGMENT_OPS
from ..errors import BottleneckError, ConfigError, DataError
from ..features import augment, backbones, decode
from ..store import FeatureStore, feature_key, read_feature_set
from ..store.lookup import view_set_dir

__all__ = ["averaged_proba", "check_tta", "tta_views"]

_MAX_TTA = 32
_CHUNK_BATCHES = 4  # batches decoded at once when views are computed: memory stays flat


def check_tta(tta) -> int:
    """`tta` as an int in [1, 32], or a `ConfigError` naming it."""
    if isinstance(tta, bool) or not isinstance(tta, (int, np.integer)) or not 1 <= tta <= _MAX_TTA:
        raise ConfigError(
            f"`tta` must be an integer from 1 (no test-time views) to {_MAX_TTA}. Received: tta={tta!r}. "
            "2 to 8 is typical: each view costs one more pass of the base.", field="tta")
    return int(tta)


def tta_views(lineage: dict[str, Any]) -> tuple[str, int]:
    """`(canonical ops, seed)` of the views: the run's trained view set, else the default ops with seed 0."""
    record = lineage.get("augmented")
    if isinstance(record, list) and record and isinstance(record[0], dict) and "ops" in record[0]:
        return augment.format_augment_ops(augment.parse_augment_ops(record[0]["ops"])), int(record[0].get("seed", 0))
    return augment.format_augment_ops(augment.parse_augment_ops(DEFAULT_AUGMENT_OPS)), 0


def averaged_proba(
    predictor, features: np.ndarray, files: Sequence[str | os.PathLike], digests: Sequence[str], tta: int
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The head's probabilities of images averaged over the clean rows and `tta - 1` views.

    Args:
        predictor: the run's `predict.Predictor`.
        features: the clean features of the images.
        files: each image's file, to compute views the cache lacks.
        digests: each image's sha256 (the bytes its clean features came from).
        tta: int >= 1, the views averaged, the clean image included.

    Returns:
        `(probabilities, record)`: the record is `None` for `tta == 1`, else
        `{"views", "ops", "seed", "cached", "computed"}` (view rows read
        from the cache and computed now).

    Raises:
        DataError: a file changed since its clean features were computed.
    """
    if check_tta(tta) > 1 and len(predictor.bases) > 1:
        raise ConfigError(
            f"Test-time views need one base; this run fuses {len(predictor.bases)} feature sets. "
            "Use tta=1, or train on one set to average over views.", field="tta")
    if tta > 1 and predictor.config.decoder != "pillow":
        raise ConfigError(
            f"Test-time views are made from the reference decoder's pixels; this run's features were decoded by "
            f"{predictor.config.decoder}. Use tta=1, or extract with decoder pillow.", field="tta")
    proba = predictor.predict_proba(features)
    if tta == 1 or not len(features):
        return proba, None
    ops_text, seed = tta_views(predictor.lineage)
    ops = augment.parse_augment_ops(ops_text)
    total, cached = proba.astype(np.float64), 0
    for view in range(1, tta):
        rows = _cached_rows(predictor, ops_text, seed, view, set(digests))
        todo = [i for i, d in enumerate(digests) if d not in rows]
        view_features = np.empty_like(features, dtype=np.float32)
        for i, digest in enumerate(digests):
            if digest in rows:
                view_features[i] = rows[digest]
        if todo:
            view_features[todo] = computed_views(
                predictor, [files[i] for i in todo], [digests[i] for i in todo], ops=ops, seed=seed, view=view)
        total += predictor.predict_proba(view_features)
        cached += len(digests) - len(todo)
    record = {"views": tta, "ops": ops_text, "seed": seed, "cached": cached,
              "computed": (tta - 1) * len(digests) - cached}
    return total / tta, record


def computed_views(predictor, files, digests, *, ops, seed: int, view: int) -> np.ndarray:
    """Features of view `view` of image files, as `features --augment` stores them (storage dtype, as float32)."""
    c, size = predictor.config, predictor.size
    chunk = max(1, c.batch_size * _CHUNK_BATCHES)
    out = []
    for start in range(0, len(files), chunk):
        part, part_digests = files[start:start + chunk], list(digests[start:start + chunk])
        images, decoded = _decoded(part, part_digests, ops, size)
        views = augment.apply_view(images, part_digests, ops=ops, seed=seed, view=view, decoded=decoded)
        features = backbones.predict_batches(predictor.extractor(), views, c.batch_size)
        out.append(features.astype(c.storage_dtype).astype(np.float32))
    return np.concatenate(out)


def _decoded(files, digests, ops, size: int):
    """The resized images, and with ops that crop the decoded ones (the resized are then unused placeholders)."""
    crop = augment.needs_decoded(ops)
    images, decoded = [], []
    for path, digest in zip(files, digests):
        try:
            if crop:
                image, read = decode.load_decoded(path, augment.decoded_size(ops, size))
                decoded.append(image)
                image = np.zeros((size, size, 3), np.uint8)
            else:
                image, read = decode.load_image(path, size, return_digest=True)
        except (decode.DecodeError, OSError):
            read = None
        if read != digest:
            raise DataError(f"'{path}' changed while it was being predicted; nothing was written. Run again.")
        images.append(image)
    return np.stack(images), decoded if crop else None


def _cached_rows(predictor, ops: str, seed: int, view: int, digests: set[str]) -> dict[str, np.ndarray]:
    """`{digest: features}` of the wanted images in the run's cached view set, if it is here and matches the run."""
    features_path = predictor.lineage.get("features_path")
    if not features_path:
        return {}
    folder = view_set_dir(Path(str(features_path)).parent, ops=ops, seed=seed, view=view)
    state = FeatureStore(folder).read_index_state()
    if state is None or not digests & {record.sha256 for record in state.files.values()}:
        return {}  # the index answers first: the features are read only when they hold a wanted image
    try:
        fs = read_feature_set(folder)
    except BottleneckError:
        return {}  # an unreadable cache is a miss
    spec = dict(fs.attrs.get("spec") or {})
    spec.pop("augment", None)
    if feature_key(spec) != predictor.lineage.get("feature_key"):
        return {}
    sha = {path: record.sha256 for path, record in state.files.items()}
    return {sha[p]: fs.features[i] for i, p in enumerate(fs.paths) if sha.get(p) in digests}
