"""Finding feature sets in the cache: listing them, one by path, name or unique prefix, and their views.

Augmented views of a set are feature sets of their own, one per view, in
folders inside the clean set's folder (`view_set_dir`): out of the cache's
top level, so listings and name look-ups see the clean set alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ConfigError, FeatureStoreError, did_you_mean
from .feature_set import FeatureStore
from .index import INDEX_NAME

__all__ = ["SET_PREFIX", "list_feature_sets", "list_view_sets", "resolve_features", "view_set_dir"]

SET_PREFIX = "set:"
"""Spells a feature set's name explicitly (`set:data`), never read as a path."""

_VIEW_GLOB = "view*-*"


def list_feature_sets(cache_dir: str | os.PathLike) -> list[tuple[str, Path, int]]:
    """The complete feature sets in a cache, as `bottleneck cache ls` lists them.

    Args:
        cache_dir: the cache folder; a missing folder holds no sets.

    Returns:
        `(name, index_path, n_images)` of each set whose index is sealed and
        complete, sorted by name. Sets still being written, or damaged, are
        left out.
    """
    found = []
    for folder in sorted(Path(cache_dir).glob("*/")):
        state = FeatureStore(folder).read_index_state()
        if state is not None:
            found.append((folder.name, folder / INDEX_NAME, len(state.files)))
    return found


def resolve_features(features: str | os.PathLike | None, cache_dir: str | os.PathLike = "cache") -> Path:
    """Finds the feature set to train on.

    Args:
        features: the path of a feature set folder or its `features.h5`;
            or a short name as `bottleneck cache ls` prints it (the folder
            name, or a prefix of exactly one folder name) looked up in
            `cache_dir`, optionally spelled `set:NAME`; or `None` when
            `cache_dir` holds exactly one set. A bare word that is both an
            existing path and a set's name (or prefix) is refused: spell it
            `./NAME` or `set:NAME`.
        cache_dir: the cache folder. Defaults to `"cache"`.

    Returns:
        The `features.h5` path (which may still be incomplete; reading it
        says so).

    Raises:
        ConfigError: `features` is `None` and `cache_dir` holds no set or
            several, `features` starts the names of several sets, or it is
            both an existing path and a set's name.
        FeatureStoreError: `features` is neither a path nor a set's name.
    """
    cache = Path(cache_dir)
    available = sorted(p.parent.name for p in cache.glob(f"*/{INDEX_NAME}")) if cache.is_dir() else []
    listing = ", ".join(available) if available else "none"
    if features is None:
        if len(available) == 1:
            return cache / available[0] / INDEX_NAME
        if not available:
            raise ConfigError(
                f"No feature set under '{cache}/'. Run `make features` first, or pass `features`, "
                "the path of a feature set.",
                field="features",
            )
        raise ConfigError(
            f"'{cache}/' holds {len(available)} feature sets, so say which one: pass `features`, its name "
            f"or a unique prefix. Feature sets: {listing}.",
            field="features",
        )
    text = os.fsdecode(features)
    named = text.startswith(SET_PREFIX)
    name = (text[len(SET_PREFIX):] if named else text).rstrip("/")
    path = Path(features)
    if not named and path.exists():
        also_sets = [] if _spelled_as_path(text) else [a for a in available if a.startswith(name)]
        if also_sets:
            raise ConfigError(
                f"{text!r} is both a path here and the name of feature set {also_sets[0]!r} in '{cache}/'"
                + (f" (and {len(also_sets) - 1} more)" if len(also_sets) > 1 else "")
                + f". Say which: './{text}' for the path, or '{SET_PREFIX}{text}' for the set.",
                field="features",
            )
        return path / INDEX_NAME if path.is_dir() else path
    if name in available:
        return cache / name / INDEX_NAME
    matches = [a for a in available if a.startswith(name)]
    if len(matches) == 1:
        return cache / matches[0] / INDEX_NAME
    if matches:
        raise ConfigError(
            f"Feature set name {name!r} is ambiguous: it starts {len(matches)} sets in '{cache}/' "
            f"({', '.join(matches)}). Give more of the name.",
            field="features",
        )
    hint = did_you_mean(name, available)
    raise FeatureStoreError(
        f"No feature set {name!r}: it is neither a path nor a name in '{cache}/'.{hint} "
        f"Feature sets there: {listing}. Run `make features` to make one.",
        field="features",
    )


def _spelled_as_path(text: str) -> bool:
    """Whether an argument can only mean a path: it has a `/` or starts with `.` or `~`."""
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def view_set_dir(root: str | os.PathLike, *, ops: str, seed: int, view: int) -> Path:
    """The folder of augmented view `view` of a feature set.

    Args:
        root: the clean feature set's folder.
        ops: the canonical augmentation ops text.
        seed: the augmentation seed.
        view: the view's index, from 1.

    Returns:
        `<root>/view<view>-<tag8>`, where `<tag8>` hashes `ops` and `seed`,
        so views of other ops or seeds never share a set.
    """
    tag = hashlib.sha256(json.dumps({"ops": ops, "seed": seed}, sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / f"view{view}-{tag}"


def list_view_sets(root: str | os.PathLike) -> list[Path]:
    """The folders of the complete augmented view sets of a feature set, sorted.

    Args:
        root: the clean feature set's folder or its `features.h5`.
    """
    root = Path(root)
    root = root.parent if root.name == INDEX_NAME else root
    return [folder for folder in sorted(root.glob(_VIEW_GLOB)) if FeatureStore(folder).read_index_state() is not None]
