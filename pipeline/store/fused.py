"""Fused feature sets: several feature sets of the same images, side by side.

`read_features("A+B", cache_dir)` reads feature sets `A` and `B` (each a
path or a short name, see `resolve_features`) and joins their rows into one
`FeatureSet` whose features are `A`'s then `B`'s, each flattened to one
vector per image. Rows are matched by the content hash of the image file
(the sha256 the index records for every row) and its class, never by row
order: two sets extracted at different times, or from copies of the data in
another order, pair the same pictures. An image only some of the sets hold
is left out, and `fusion_report` says how many and which.

The fused set's `attrs["members"]` records each member (path, name, content
hash, feature key, backbone, weights, extraction config, rows), the one
record that lets a run rebuild every base; its `content_hash` names the
members and the matched rows, so it changes when any of them does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, FeatureStoreError
from .feature_set import FeatureSet, FeatureStore, read_feature_set
from .lookup import resolve_features

__all__ = ["FUSE_SEPARATOR", "fuse_feature_sets", "fused_members", "fusion_report", "member_record", "read_features",
           "read_fused"]

log = logging.getLogger("bottleneck")

FUSE_SEPARATOR = "+"
_EXAMPLES = 5  # left-out images named in the report and the log


def fused_members(features: str | os.PathLike | None) -> list[str] | None:
    """The member names of a fused spelling `A+B[+...]`, or `None` for one feature set.

    A path that exists is one feature set even when its name holds `+`.

    Raises:
        ConfigError: an empty member (`A+`, `A++B`) or a set named twice.
    """
    if features is None:
        return None
    text = os.fsdecode(features)
    if FUSE_SEPARATOR not in text or Path(text).exists():
        return None
    members = text.split(FUSE_SEPARATOR)
    if any(not m.strip() for m in members):
        raise ConfigError(
            f"`features` {text!r} has an empty member: fuse feature sets as NAME_A+NAME_B (names or paths, "
            "as `bottleneck cache ls` prints them).",
            field="features",
        )
    return members


def read_features(features: str | os.PathLike | None, cache_dir: str | os.PathLike = "cache") -> FeatureSet:
    """One feature set, or the fusion of `A+B[+...]`; what the head stage trains on.

    Args:
        features: a feature set (path, short name or `None`, see
            `resolve_features`), or several joined by `+`.
        cache_dir: the cache folder short names are looked up in.
            Defaults to `"cache"`.

    Returns:
        A `FeatureSet`; for a fusion see `fuse_feature_sets`.

    Raises:
        ConfigError, FeatureStoreError: as `resolve_features` and
            `fuse_feature_sets`.
    """
    members = fused_members(features)
    if members is None:
        return read_feature_set(resolve_features(features, cache_dir))
    return read_fused([resolve_features(m, cache_dir) for m in members])


def read_fused(paths: list[str | os.PathLike]) -> FeatureSet:
    """The fusion of the feature sets at `paths` (folders or `features.h5` files), in that order."""
    resolved = [Path(p).parent if Path(p).name.endswith(".h5") else Path(p) for p in paths]
    seen = [p.resolve() for p in resolved]
    twice = sorted({str(p) for p in seen if seen.count(p) > 1})
    if twice:
        raise ConfigError(f"Fused feature sets must differ; {', '.join(twice)} is named twice.", field="features")
    return fuse_feature_sets([read_feature_set(p) for p in resolved])


def fuse_feature_sets(sets: list[FeatureSet]) -> FeatureSet:
    """Joins feature sets of the same images into one, rows matched by content hash.

    Each image's features are the members' rows, flattened and
    concatenated in the members' order. The fused set keeps the first
    member's row order, paths, split keys and split folders, so it cuts the
    same train, validation and test images as that member would.

    Args:
        sets: two or more `FeatureSet`s with the same class names.

    Returns:
        The fused `FeatureSet`: `name` is the members' names joined by `+`,
        `attrs["members"]` records each member, and `attrs["fusion"]` the
        rows left out (see `fusion_report`).

    Raises:
        ConfigError: fewer than two sets.
        FeatureStoreError: the class names differ, a set changed while it
            was read, or no image is in every set.
    """
    if len(sets) < 2:
        raise ConfigError(f"Fusing needs two or more feature sets. Received: {len(sets)}.", field="features")
    first = sets[0]
    for other in sets[1:]:
        if other.class_names != first.class_names:
            raise FeatureStoreError(
                f"Feature sets '{first.name}' and '{other.name}' have different classes ({first.class_names} "
                f"and {other.class_names}), so they are not features of the same images. Fuse sets extracted "
                "from the same data.",
                field="features",
            )
    keyed = [_rows_by_content(fs) for fs in sets]
    rows, left_out = _match(sets, keyed)
    if not len(rows[0]):
        raise FeatureStoreError(
            f"No image is in every one of {', '.join(fs.name for fs in sets)} (matched by content hash); "
            "fuse feature sets extracted from the same data.",
            field="features",
        )
    report = {"rows": len(rows[0]), "left_out": len(left_out), "examples": left_out[:_EXAMPLES]}
    if left_out:
        log.warning(
            "Fusing %s: left out %d image(s) not in every set (matched by content hash), e.g. %s.",
            " + ".join(fs.name for fs in sets), len(left_out), ", ".join(left_out[:_EXAMPLES]),
        )
    features = np.concatenate([fs.features[r].reshape(len(r), -1) for fs, r in zip(sets, rows)], axis=1)
    members = [member_record(fs) for fs in sets]
    attrs = {
        **first.attrs,
        "feature_key": _digest([m["feature_key"] for m in members]),
        "backbone": FUSE_SEPARATOR.join(str(m["backbone"]) for m in members),
        "weights": FUSE_SEPARATOR.join(str(m["weights"]) for m in members),
        "members": members,
        "fusion": report,
    }
    keep = rows[0]
    return dataclasses.replace(
        first,
        name=FUSE_SEPARATOR.join(fs.name for fs in sets),
        features=features,
        labels=first.labels[keep],
        paths=[first.paths[i] for i in keep],
        split_keys=first.split_keys[keep],
        folder_splits=first.folder_splits[keep],
        attrs=attrs,
        content_hash=_digest([[m["content_hash"] for m in members], [r.tolist() for r in rows]]),
    )


def fusion_report(fs: FeatureSet) -> dict[str, Any] | None:
    """`{"rows", "left_out", "examples"}` of a fused set (images kept, left out, a few left-out paths); `None` otherwise."""
    return fs.attrs.get("fusion")


def _rows_by_content(fs: FeatureSet) -> dict[tuple[str, int], list[int]]:
    """`{(sha256 of the image file, label): rows}`, each list in the set's row order."""
    state = FeatureStore(Path(fs.path).parent).read_index_state()
    if state is None or state.content_hash != fs.content_hash:
        raise FeatureStoreError(f"Feature set '{fs.name}' changed while it was read; train again.", field="features")
    keyed: dict[tuple[str, int], list[int]] = {}
    for i, (path, label) in enumerate(zip(fs.paths, fs.labels)):
        keyed.setdefault((state.files[path].sha256, int(label)), []).append(i)
    return keyed


def _match(sets: list[FeatureSet], keyed: list[dict]) -> tuple[list[np.ndarray], list[str]]:
    """Row indices per set, one row of each per kept image; and the paths left out.

    Copies of one picture under one class (the same file twice) have the
    same features in a set, so the k-th copy in one set pairs with the
    k-th in the others; surplus copies and images some set lacks are left
    out, named `set: path`.
    """
    rows: list[list[int]] = [[] for _ in keyed]
    for key in keyed[0]:
        n = min(len(k.get(key, ())) for k in keyed)
        for j, k in enumerate(keyed):
            rows[j].extend(k.get(key, [])[:n])
    order = np.argsort(rows[0], kind="stable")  # the first set's row order
    left_out = [
        f"{fs.name}: {fs.paths[i]}"
        for fs, kept in zip(sets, rows)
        for i in sorted(set(range(len(fs.paths))) - set(kept))
    ]
    return [np.asarray(r, dtype=np.int64)[order] for r in rows], left_out


def member_record(fs: FeatureSet) -> dict[str, Any]:
    """What rebuilds one feature set's features: path, name, content hash, key, backbone, weights, config, rows.

    A run's lineage holds this record for its feature set, and one per
    member for a fused set.
    """
    return {
        "features_path": str(Path(fs.path).resolve()),
        "feature_set": fs.name,
        "content_hash": fs.content_hash,
        "feature_key": fs.attrs.get("feature_key"),
        "backbone": fs.attrs.get("backbone"),
        "weights": fs.attrs.get("weights"),
        "extraction_config": fs.config,
        "n_images": len(fs.labels),
    }


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
