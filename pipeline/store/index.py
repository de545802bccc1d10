"""The sealed index of a feature set: its records, how it is written and read.

`features.h5` holds one row per image and presents them as ordinary datasets
(`features` is an HDF5 virtual dataset over the shards), so
`h5py.File(path)["features"][:]` works without this package. Its first 512
bytes (an HDF5 user block, which HDF5 skips) hold the sha256 of the rest,
checked before HDF5 parses anything: HDF5 checksums neither the row tables
nor the string heap, and some damage makes it loop forever. The layout is
documented in the README.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from .._atomic import create_new, temporary_name
from ..errors import FeatureStoreError
from .shards import FORMAT_VERSION, SHARD_DIR, decode_path, encode_path, interrupts_deferred, reporting_write_errors
from .structure import index_problem

INDEX_NAME = "features.h5"
# The index starts with `_SEAL + sha256 of everything after the user block`;
# HDF5 skips the user block, so plain h5py still reads the file.
_USERBLOCK = 512
# Virtual datasets need the HDF5 1.10 format; capping at it keeps an index
# written by a newer library (h5py 3.16 bundles HDF5 2) readable by every
# h5py since 1.10, so feature sets move between machines. "latest" wrote
# datatype messages that HDF5 1.14 refuses to read.
_LIBVER = ("earliest", "v110")
_SEAL = b"bottleneck-index sha256:"
_STR = h5py.string_dtype("utf-8")
_BYTES = h5py.string_dtype("ascii")


def feature_key(spec: dict[str, Any]) -> str:
    """sha256 of everything that changes the extracted numbers.

    Keys are sorted, so the same spec written in another order gives the same
    key; anything that does not change the output (batch size, workers, the
    data folder's path) must stay out of `spec`.
    """
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)  # one per image: no dict each
class IndexRow:
    """One image of a feature set, as the index records it."""

    relpath: str
    label: int
    folder_split: str
    split_key: float
    size: int
    mtime_ns: int
    sha256: str


@dataclasses.dataclass(frozen=True, slots=True)  # one per image: no dict each
class SkippedFile:
    """A file that could not be extracted, with the reason and its fingerprint."""

    relpath: str
    reason: str
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True, slots=True)  # one per image: no dict each
class FileRecord:
    """An image the index holds a row for: its fingerprint, content hash and how it is labelled.

    `labelling` is `(label, folder_split, split_key)`: a manifest can change
    them without touching the image, and the set must then be re-indexed.
    """

    size: int
    mtime_ns: int
    sha256: str
    labelling: tuple[int, str, float] | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class ShardRecord:
    """A shard the index points at, as it was when the index was written.

    `mtime_ns` is `None` in indexes written before it was recorded; the
    up-to-date check then reads the shard.
    """

    name: str
    size: int
    mtime_ns: int | None


@dataclasses.dataclass(frozen=True)
class IndexState:
    """The cheap part of a complete index: what the up-to-date check compares.

    Attributes:
        feature_key: the key the set was extracted for.
        class_names: the dataset's classes, sorted.
        feature_shape: shape of one image's features.
        files: the images with a row, by relative path.
        skipped: the files that could not be extracted, by relative path.
        shards: every shard the rows point at.
        data_root: the data folder the rows were extracted from, or `None`
            when the index does not record it.
        content_hash: the set's `content_hash` (see `FeatureSet`), or
            `None` when the index does not record it.
    """

    feature_key: str
    class_names: tuple[str, ...]
    feature_shape: tuple[int, ...]
    files: Mapping[str, FileRecord]
    skipped: Mapping[str, SkippedFile]
    shards: tuple[ShardRecord, ...]
    data_root: str | None = None
    content_hash: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))
        object.__setattr__(self, "skipped", MappingProxyType(dict(self.skipped)))

    def fingerprints(self) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) of every file the index knows, extracted or skipped."""
        known = {path: (r.size, r.mtime_ns) for path, r in self.files.items()}
        return {**known, **{path: (s.size, s.mtime_ns) for path, s in self.skipped.items()}}


def write_index(
    path: Path,
    rows: Sequence[IndexRow],
    locations: Sequence[tuple[str, int]],
    skipped: Sequence[SkippedFile],
    class_names: Sequence[str],
    *,
    feature_shape: tuple[int, ...],
    dtype: str,
    attrs: dict[str, Any],
) -> str:
    """Writes the sealed index `path` of a feature set atomically and returns its content hash.

    Args:
        path: the index file, `<set>/features.h5`; the shards are in `<set>/shards/`.
        rows: the images, in the order the heads will see them.
        locations: for each row, the (shard name, row) holding its features.
        skipped: files that could not be extracted, with reasons.
        class_names: sorted class names; `rows[i].label` indexes them.
        feature_shape: shape of one image's features.
        dtype: stored feature dtype.
        attrs: extra attributes (config, backbone, versions, timings);
            values that are not str/int/float/bool are stored as JSON.
    """
    shard_dir = path.parent / SHARD_DIR
    shards = sorted({name for name, _ in locations})
    shard_ids = {name: i for i, name in enumerate(shards)}
    content_hash = _content_hash(attrs.get("feature_key", ""), rows, class_names)
    tmp = temporary_name(path)
    buffer = io.BytesIO()  # built in memory, so a failed write is one clear OSError, not HDF5's
    try:
        with interrupts_deferred(), h5py.File(buffer, "w", libver=_LIBVER, userblock_size=_USERBLOCK) as f:
            f.create_virtual_dataset("features", _virtual_layout(shard_dir, rows, locations, feature_shape, dtype))
            f["labels"] = np.array([r.label for r in rows], dtype=np.int64)
            f["class_names"] = np.array([c.encode() for c in class_names], dtype=_STR)
            images = f.create_group("images")
            images["path"] = np.array([encode_path(r.relpath) for r in rows], dtype=_BYTES)
            images["sha256"] = np.fromiter((r.sha256.encode() for r in rows), dtype="S64", count=len(rows))
            images["size"] = np.array([r.size for r in rows], dtype=np.int64)
            images["mtime_ns"] = np.array([r.mtime_ns for r in rows], dtype=np.int64)
            images["split_key"] = np.array([r.split_key for r in rows], dtype=np.float64)
            images["folder_split"] = np.array([r.folder_split.encode() for r in rows], dtype=_STR)
            images["shard"] = np.array([shard_ids[n] for n, _ in locations], dtype=np.int32)
            images["row"] = np.array([row for _, row in locations], dtype=np.int64)
            group = f.create_group("skipped")
            group["path"] = np.array([encode_path(s.relpath) for s in skipped], dtype=_BYTES)
            group["reason"] = np.array([s.reason.encode() for s in skipped], dtype=_STR)
            group["size"] = np.array([s.size for s in skipped], dtype=np.int64)
            group["mtime_ns"] = np.array([s.mtime_ns for s in skipped], dtype=np.int64)
            group = f.create_group("shards")
            group["name"] = np.array([n.encode() for n in shards], dtype=_STR)
            stats = [(shard_dir / n).stat() for n in shards]
            group["size"] = np.array([st.st_size for st in stats], dtype=np.int64)
            group["mtime_ns"] = np.array([st.st_mtime_ns for st in stats], dtype=np.int64)
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["content_hash"] = content_hash
            f.attrs["n_images"] = len(rows)
            f.attrs["complete"] = True
        with reporting_write_errors(tmp):
            create_new(tmp, _sealed(buffer.getbuffer()))  # sealed in place: no copy of a large index
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return content_hash


def open_index(path: Path) -> h5py.File:
    """Opens the index from bytes checked against its seal.

    HDF5 checksums neither raw data nor the heap holding strings, and some
    damage makes it loop forever, so the whole file is checked first and
    HDF5 parses exactly the bytes that were checked. The seal is a checksum,
    not a signature, so the structure is checked too: `features` may read
    only the shards the index lists, and nothing else may read another file.
    Raises OSError when the file cannot be read and FeatureStoreError when
    it is damaged or crafted.
    """
    data = Path(path).read_bytes()
    digest = hashlib.sha256(memoryview(data)[_USERBLOCK:]).hexdigest().encode()
    if data[: len(_SEAL) + 65] != _SEAL + digest + b"\n":
        raise FeatureStoreError(
            f"'{path}' is damaged or not a complete feature set: its checksum does not match its "
            "content. Run `make features` again to rebuild it (finished shards are reused)."
        )
    f = h5py.File(io.BytesIO(data), "r")
    try:
        problem = index_problem(f, _listed_sources)
    except BaseException:
        f.close()
        raise
    if problem is not None:
        f.close()
        raise FeatureStoreError(
            f"Index '{path}' was refused: {problem}. Run the features stage again on the same data: "
            "it rebuilds the index from the shards."
        )
    return f


def read_index_state(path: Path) -> IndexState | None:
    """The `IndexState` of the sealed index at `path`, or `None` without a readable complete one."""
    try:
        with open_index(path) as f:
            if not f.attrs.get("complete", False):
                return None
            names = [s.decode() for s in f["shards/name"][:]]
            if not all(is_shard_name(n) for n in names):
                return None
            # Absent from indexes written before it was recorded: verify those.
            mtimes = f["shards/mtime_ns"][:].tolist() if "mtime_ns" in f["shards"] else [None] * len(names)
            images, skipped = f["images"], f["skipped"]
            labelling = zip(f["labels"][:].tolist(), (s.decode() for s in images["folder_split"][:]),
                            images["split_key"][:].tolist())
            files = zip(_paths(images), images["size"][:].tolist(), images["mtime_ns"][:].tolist(),
                        (s.decode() for s in images["sha256"][:]), labelling)
            skips = zip(_paths(skipped), skipped["reason"][:], skipped["size"][:].tolist(),
                        skipped["mtime_ns"][:].tolist())
            return IndexState(
                feature_key=f.attrs["feature_key"],
                class_names=tuple(c.decode() for c in f["class_names"][:]),
                feature_shape=tuple(int(d) for d in f["features"].shape[1:]),
                files={p: FileRecord(size, mtime, sha, tuple(how)) for p, size, mtime, sha, how in files},
                skipped={p: SkippedFile(p, reason.decode(), size, mtime) for p, reason, size, mtime in skips},
                shards=tuple(
                    ShardRecord(n, size, mtime) for n, size, mtime in zip(names, f["shards/size"][:].tolist(), mtimes)
                ),
                data_root=str(f.attrs["data_root"]) if "data_root" in f.attrs else None,
                content_hash=str(f.attrs["content_hash"]) if "content_hash" in f.attrs else None,
            )
    except (OSError, KeyError, ValueError):  # ValueError: FeatureStoreError, undecodable text
        return None


def is_shard_name(name: str) -> bool:
    """A plain file name inside `shards/`: no folder part, no `..`, not hidden."""
    return name == os.path.basename(name) and name.endswith(".h5") and not name.startswith(".") \
        and not any(c in name for c in "\\\0")


def check_locations(path: Path, shards, shard_of_row, row_in_shard, n_rows: int, n_paths: int) -> None:
    """Refuses an index whose rows point outside its shards (hand-edited, or from elsewhere)."""
    unsafe = [s for s in shards if not is_shard_name(s)]
    if unsafe:
        raise FeatureStoreError(
            f"'{path}' names shard {unsafe[0]!r}, which is not a file in its shards/ folder, so it was "
            "not read. Run `make features` again to rebuild the index from the shards."
        )
    if not (len(shard_of_row) == len(row_in_shard) == n_rows == n_paths) or (
        n_rows and (shard_of_row.min() < 0 or shard_of_row.max() >= len(shards) or row_in_shard.min() < 0)
    ):
        raise FeatureStoreError(
            f"'{path}' points rows at shards it does not list. Run `make features` again to rebuild it."
        )


def attr_value(value):
    """An index attribute as Python: text decoded, JSON parsed, numpy scalars unwrapped."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _listed_sources(f: h5py.File) -> list[str]:
    """The files an index's `features` may read: `shards/<name>` of each shard it lists."""
    names = [n.decode(errors="replace") for n in f["shards/name"][:]]
    return [f"{SHARD_DIR}/{n}" for n in names if is_shard_name(n)]


def _paths(group) -> list[str]:
    return [decode_path(p) for p in group["path"][:]]


def _virtual_layout(shard_dir: Path, rows, locations, feature_shape, dtype) -> h5py.VirtualLayout:
    """Maps each run of consecutive rows from one shard onto the index's rows."""
    layout = h5py.VirtualLayout(shape=(len(rows), *feature_shape), dtype=dtype)
    shapes: dict[str, tuple[int, ...]] = {}
    start = 0
    while start < len(locations):
        name, first = locations[start]
        end = start + 1
        while end < len(locations) and locations[end] == (name, first + end - start):
            end += 1
        if name not in shapes:
            with h5py.File(shard_dir / name, "r") as f:
                shapes[name] = f["features"].shape
        source = h5py.VirtualSource(f"{SHARD_DIR}/{name}", "features", shape=shapes[name])
        layout[start:end] = source[first : first + end - start]
        start = end
    return layout


def _content_hash(key: str, rows: Sequence[IndexRow], class_names: Sequence[str]) -> str:
    digest = hashlib.sha256(key.encode())
    digest.update(json.dumps(list(class_names)).encode())
    for r in rows:
        digest.update(f"{r.sha256}:{r.label}:{r.relpath}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _sealed(data) -> memoryview:
    """The index bytes with the sha256 of everything after the user block written into them.

    In place where `data` is writable (the index's buffer): a copy of a large index would double its memory.
    """
    data = memoryview(data)
    if data.readonly:
        data = memoryview(bytearray(data))
    digest = hashlib.sha256(data[_USERBLOCK:]).hexdigest().encode()
    data[: len(_SEAL) + 65] = _SEAL + digest + b"\n"
    return data
