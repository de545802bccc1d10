"""The HDF5 structure a shard and an index may have: plain datasets, bytes inside the set.

HDF5 can keep a dataset's bytes in another file (external storage), make a
name point at another file or object (external and soft links) and assemble
a dataset from other files (virtual datasets). A crafted feature set using
any of these would make the reader return, train on and "verify" the bytes
of any file the user can read, so shards and indexes are checked before
their data is read: a shard holds only plain datasets, its `features` under
the fletcher32 checksum its rows are trusted by; an index's one virtual
dataset is `features`, assembled from the shards it lists.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import h5py
import numpy as np

SHARD_DATASETS = ("features", "sha256", "path")
# Filters built into HDF5 and h5py; any other id makes HDF5 look for a plugin
# (code from outside the set) when the dataset is read.
_BUILT_IN_FILTERS = frozenset({
    h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32, h5py.h5z.FILTER_SZIP,
    h5py.h5z.FILTER_NBIT, h5py.h5z.FILTER_SCALEOFFSET, h5py.h5z.FILTER_LZF,
})


class _NotPlain(Exception):
    """Carries why a file was refused out of the walk over its datasets."""


def shard_problem(f: h5py.File) -> str | None:
    """Why the open shard `f` cannot be trusted, or `None` when it is plain rows under a checksum."""
    try:
        datasets = dict(_datasets(f, groups=False))
        for name in SHARD_DATASETS:
            if name not in datasets:
                return f"it has no `{name}` dataset"
        for name, dset in datasets.items():
            _require_plain(dset, name)
    except _NotPlain as e:
        return str(e)
    if not datasets["features"].fletcher32:
        return "its `features` dataset has no fletcher32 checksum, so damage to it would go unnoticed"
    if datasets["features"].dtype.kind != "f" or datasets["sha256"].dtype != np.dtype("S64") \
            or h5py.check_string_dtype(datasets["path"].dtype) is None:
        kinds = {name: str(datasets[name].dtype) for name in SHARD_DATASETS}
        return f"its datasets are not float features, sha256 digests and paths (dtypes: {kinds})"
    counts = {name: datasets[name].shape[0] if datasets[name].shape else None for name in SHARD_DATASETS}
    if None in counts.values() or len(set(counts.values())) != 1:
        return f"its datasets do not hold one row per image (rows: {counts})"
    return None


def index_problem(f: h5py.File, sources: Callable[[h5py.File], Iterable[str]]) -> str | None:
    """Why the open index `f` cannot be trusted, or `None`.

    Args:
        f: the open index.
        sources: gives the only files its `features` may be assembled from,
            relative to the index (`shards/<name>` of each listed shard);
            called once every dataset is known to be plain.
    """
    try:
        datasets = dict(_datasets(f, groups=True))
        for name, dset in datasets.items():
            if name != "features":
                _require_plain(dset, name)
    except _NotPlain as e:
        return str(e)
    features = datasets.get("features")
    if features is None or not features.is_virtual or _external_files(features):
        return "its `features` dataset is not assembled from its shards"
    allowed = set(sources(f))
    for source in features.virtual_sources():
        if source.file_name not in allowed or source.dset_name.lstrip("/") != "features":
            return (f"its `features` dataset reads '{source.dset_name}' of '{source.file_name}', "
                    "which is not a shard it lists")
    return None


def _datasets(group: h5py.Group, *, groups: bool, prefix: str = "") -> Iterator[tuple[str, h5py.Dataset]]:
    """Every dataset under `group`, reached through hard links only.

    With `groups`, one level of groups is allowed (the index's `images/`,
    `skipped/`, `shards/`); deeper nesting, which hard links could make
    loop forever, is refused.
    """
    for key in group:
        name = f"{prefix}{key}"
        link = group.get(key, getlink=True)
        if not isinstance(link, h5py.HardLink):
            target = ":".join(str(part) for part in (getattr(link, "filename", ""), getattr(link, "path", "")) if part)
            raise _NotPlain(f"`{name}` is a {type(link).__name__} to '{target}', not data of its own")
        obj = group[key]
        if isinstance(obj, h5py.Dataset):
            yield name, obj
        elif isinstance(obj, h5py.Group) and groups:
            yield from _datasets(obj, groups=False, prefix=f"{name}/")
        else:
            raise _NotPlain(f"`{name}` is a {type(obj).__name__} where only datasets belong")


def _require_plain(dset: h5py.Dataset, name: str) -> None:
    if dset.is_virtual:
        sources = sorted({s.file_name for s in dset.virtual_sources()})
        raise _NotPlain(f"its `{name}` dataset is virtual, assembled from {sources}")
    files = _external_files(dset)
    if files:
        raise _NotPlain(f"its `{name}` dataset keeps its bytes in other files {files}")
    plist = dset.id.get_create_plist()
    plugins = sorted({plist.get_filter(i)[0] for i in range(plist.get_nfilters())} - _BUILT_IN_FILTERS)
    if plugins:
        raise _NotPlain(f"its `{name}` dataset needs HDF5 filter plugins {plugins}, loaded from outside the set")


def _external_files(dset: h5py.Dataset) -> list[str]:
    plist = dset.id.get_create_plist()
    return sorted({plist.get_external(i)[0].decode(errors="replace") for i in range(plist.get_external_count())})
