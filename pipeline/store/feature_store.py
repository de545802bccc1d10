"""Feature store: the only thing the features and head stages share.

A feature set is a folder under the cache::

    cache/<dataset>-<model>-<size>-<pooling>-<key8>/
        features.h5          the index: one row per image, read by the heads
        shards/<id>.h5       immutable blocks of extracted features
        .write.lock          held by the one run that extracts into the set
        .read.lock           shared by readers, exclusive while shards are deleted

Shards are written under a temporary name and renamed into place only when
complete, so a shard that exists is whole; each row is keyed by the sha256
of the image file it came from. The index is rebuilt from the shards at the
end of every run and also replaced atomically, so it is always either the
previous complete index or the new one. Its first 512 bytes (an HDF5 user
block, which HDF5 skips) hold the sha256 of the rest, checked before HDF5
parses anything: HDF5 checksums neither the row tables nor the string heap,
and some damage makes it loop forever. Resuming after a crash therefore
means "extract what no shard holds", adding images adds a shard, and a
removed image is a row the index no longer points at. Workers on other
machines can write shards of the same set side by side, as the names never
collide.

`features.h5` presents the rows as ordinary datasets (`features` is an HDF5
virtual dataset over the shards), so `h5py.File(path)["features"][:]` works
without this package. The layout is documented in the README.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from ..errors import FeatureStoreError, StoreBusyError, WriteError

FORMAT_VERSION = 1
INDEX_NAME = "features.h5"
SHARD_DIR = "shards"
_TMP_PREFIX = ".tmp-"
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


def encode_path(relpath: str) -> bytes:
    """Relative paths are stored as the file system's bytes (any name survives)."""
    return os.fsencode(relpath)


def decode_path(raw: bytes) -> str:
    return os.fsdecode(raw)


@dataclasses.dataclass(frozen=True)
class IndexRow:
    """One image of a feature set, as the index records it."""

    relpath: str
    label: int
    folder_split: str
    split_key: float
    size: int
    mtime_ns: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    relpath: str
    reason: str
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """A complete feature set, loaded for the head stage.

    Attributes:
        path: the index file, `<set>/features.h5`.
        name: the feature set's folder name.
        features: float32 array `(n, ...)`, row i belongs to `paths[i]`.
        labels: int64 class indices into `class_names`.
        class_names: the dataset's classes, sorted.
        paths: image paths relative to the data folder.
        split_keys: float64 in [0, 1), stable per path (see discovery).
        folder_splits: `""`, or `"train"`, `"validation"`, `"test"` when the
            data came in split folders.
        config: the resolved extraction config.
        attrs: every attribute of the index (backbone, weights, versions, ...).
        content_hash: sha256 naming these exact features, for lineage.
    """

    path: Path
    name: str
    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    paths: list[str]
    split_keys: np.ndarray
    folder_splits: np.ndarray
    config: dict[str, Any]
    attrs: dict[str, Any]
    content_hash: str


class FeatureStore:
    """Reads and writes one feature set folder.

    Args:
        root: the feature set's folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.index_path = self.root / INDEX_NAME
        self.shard_dir = self.root / SHARD_DIR

    # -- locking -------------------------------------------------------------

    @contextlib.contextmanager
    def write_lock(self, *, wait: bool = True, on_wait=None) -> Iterator[None]:
        """Holds the set's write lock; a second writer waits (or fails fast).

        `on_wait` is called once, with the holder's description, before
        blocking, so the caller can tell the user why nothing happens.
        """
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".write.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                if not wait:
                    raise StoreBusyError(
                        f"Feature set '{self.root}' is being written by {holder}. "
                        "Wait for it to finish, or stop it, then run again."
                    ) from None
                if on_wait is not None:
                    on_wait(holder)
                fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _read_lock(self, exclusive: bool = False) -> Iterator[None]:
        path = self.root / ".read.lock"
        try:
            f = open(path, "a+")
        except OSError:  # a read-only cache: nobody can delete shards either
            yield
            return
        with f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- shards --------------------------------------------------------------

    def clean_temporary(self) -> int:
        """Deletes half-written shards and indexes left by killed runs (call under the write lock)."""
        removed = 0
        for folder in (self.root, self.shard_dir):
            for tmp in folder.glob(f"{_TMP_PREFIX}*"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def shard_names(self) -> list[str]:
        """Names of the complete shards, sorted."""
        if not self.shard_dir.is_dir():
            return []
        return sorted(p.name for p in self.shard_dir.glob("*.h5") if not p.name.startswith("."))

    def scan_shards(self, feature_key_: str) -> tuple[dict[str, tuple[str, int]], list[str]]:
        """Maps each image sha256 held by a complete shard to (shard, row).

        Shards that cannot be read, or that belong to another feature key,
        are reported in the second return value and ignored, so their images
        count as not yet extracted.
        """
        rows: dict[str, tuple[str, int]] = {}
        bad: list[str] = []
        for name in self.shard_names():
            try:
                with h5py.File(self.shard_dir / name, "r") as f:
                    if f.attrs.get("feature_key") != feature_key_:
                        raise FeatureStoreError("written for another feature key")
                    digests = [d.decode("ascii") for d in f["sha256"][:]]
                    if f["features"].shape[0] != len(digests):
                        raise FeatureStoreError("row counts differ")
            except (OSError, KeyError, ValueError):  # ValueError: FeatureStoreError, a damaged digest
                bad.append(name)
                continue
            for row, digest in enumerate(digests):
                rows.setdefault(digest, (name, row))
        return rows, bad

    def verify_shards(self, names: Sequence[str]) -> list[str]:
        """Reads every feature of the named shards; returns those that fail.

        HDF5's fletcher32 checksum makes a flipped bit or a truncated chunk
        fail the read instead of returning wrong numbers.
        """
        bad = []
        for name in names:
            try:
                with h5py.File(self.shard_dir / name, "r") as f:
                    features = f["features"]
                    step = max(1, features.chunks[0] if features.chunks else len(features))
                    for start in range(0, len(features), step * 64):
                        features[start : start + step * 64]
            except (OSError, KeyError):
                bad.append(name)
        return bad

    def quarantine(self, names: Sequence[str]) -> None:
        """Moves unreadable shards aside (kept for inspection, never read again)."""
        for name in names:
            src = self.shard_dir / name
            if src.exists():
                os.replace(src, self.shard_dir / f".corrupt-{name}")

    def open_shard(self, feature_key_: str, feature_shape: tuple[int, ...], dtype: str, capacity: int) -> ShardWriter:
        """A new shard, written under a temporary name until `ShardWriter.finish`."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.h5"
        return ShardWriter(self.shard_dir, name, feature_key_, feature_shape, dtype, capacity)

    @contextlib.contextmanager
    def shard_writer(self, feature_key_: str, feature_shape: tuple[int, ...], dtype: str, capacity: int):
        """Yields a `ShardWriter`; the shard appears under its final name only on success.

        On Ctrl-C the rows written so far are kept as a complete, smaller
        shard (finished work survives); on any other exception the
        temporary file is removed.
        """
        writer = self.open_shard(feature_key_, feature_shape, dtype, capacity)
        try:
            yield writer
        except BaseException as e:
            writer.finish(publish=isinstance(e, KeyboardInterrupt))
            raise
        writer.finish(publish=True)

    # -- index ---------------------------------------------------------------

    def read_index_state(self) -> dict[str, Any] | None:
        """The cheap part of the index used for the up-to-date check.

        Returns `None` when there is no readable complete index.
        """
        try:
            with _open_index(self.index_path) as f:
                if not f.attrs.get("complete", False):
                    return None
                if not all(_is_shard_name(s.decode()) for s in f["shards/name"][:]):
                    return None
                return {
                    "feature_key": f.attrs["feature_key"],
                    "class_names": [c.decode() for c in f["class_names"][:]],
                    "files": _file_table(f["images"]),
                    "skipped": _file_table(f["skipped"]),
                    "reasons": [r.decode() for r in f["skipped/reason"][:]],
                    "shards": [s.decode() for s in f["shards/name"][:]],
                    "shard_sizes": f["shards/size"][:].tolist(),
                    # Absent from indexes written before it was recorded: verify those.
                    "shard_mtimes": f["shards/mtime_ns"][:].tolist() if "mtime_ns" in f["shards"] else None,
                    "sha256": [s.decode() for s in f["images/sha256"][:]],
                }
        except (OSError, KeyError, ValueError):  # ValueError: FeatureStoreError, undecodable text
            return None

    def write_index(
        self,
        rows: Sequence[IndexRow],
        locations: Sequence[tuple[str, int]],
        skipped: Sequence[SkippedFile],
        class_names: Sequence[str],
        *,
        feature_shape: tuple[int, ...],
        dtype: str,
        attrs: dict[str, Any],
    ) -> str:
        """Writes the index atomically and returns its content hash.

        Args:
            rows: the images, in the order the heads will see them.
            locations: for each row, the (shard name, row) holding its features.
            skipped: files that could not be extracted, with reasons.
            class_names: sorted class names; `rows[i].label` indexes them.
            feature_shape: shape of one image's features.
            dtype: stored feature dtype.
            attrs: extra attributes (config, backbone, versions, timings);
                values that are not str/int/float/bool are stored as JSON.
        """
        shards = sorted({name for name, _ in locations})
        shard_ids = {name: i for i, name in enumerate(shards)}
        content_hash = _content_hash(attrs.get("feature_key", ""), rows, class_names)
        tmp = self.root / f"{_TMP_PREFIX}{uuid.uuid4().hex[:12]}-{INDEX_NAME}"
        buffer = io.BytesIO()  # built in memory, so a failed write is one clear OSError, not HDF5's
        try:
            with _interrupts_deferred(), h5py.File(buffer, "w", libver=_LIBVER, userblock_size=_USERBLOCK) as f:
                f.create_virtual_dataset(
                    "features", _virtual_layout(self.shard_dir, rows, locations, feature_shape, dtype)
                )
                f["labels"] = np.array([r.label for r in rows], dtype=np.int64)
                f["class_names"] = np.array([c.encode() for c in class_names], dtype=_STR)
                images = f.create_group("images")
                images["path"] = np.array([encode_path(r.relpath) for r in rows], dtype=_BYTES)
                images["sha256"] = np.array([r.sha256.encode() for r in rows], dtype="S64")
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
                stats = [(self.shard_dir / n).stat() for n in shards]
                group["size"] = np.array([st.st_size for st in stats], dtype=np.int64)
                group["mtime_ns"] = np.array([st.st_mtime_ns for st in stats], dtype=np.int64)
                for key, value in attrs.items():
                    f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["content_hash"] = content_hash
                f.attrs["n_images"] = len(rows)
                f.attrs["complete"] = True
            with _reporting_write_errors(tmp):
                _write_new_file(tmp, _sealed(buffer.getbuffer()))
                os.replace(tmp, self.index_path)
        finally:
            tmp.unlink(missing_ok=True)
        return content_hash

    def delete_unreferenced_shards(self, referenced: Sequence[str]) -> int:
        """Deletes shards the index no longer points at, once no reader is mid-read."""
        keep = set(referenced)
        doomed = [n for n in self.shard_names() if n not in keep]
        if doomed:
            with self._read_lock(exclusive=True):
                for name in doomed:
                    (self.shard_dir / name).unlink(missing_ok=True)
        return len(doomed)

    def read(self) -> FeatureSet:
        """Loads the complete feature set; see `read_feature_set`."""
        with self._read_lock():
            return self._read()

    def _read(self) -> FeatureSet:
        path = self.index_path
        if not path.exists():
            raise FeatureStoreError(
                f"No feature set at '{self.root}' (missing {INDEX_NAME}). Run `make features` "
                "first; an interrupted run resumes where it stopped."
            )
        try:
            with _open_index(path) as f:
                # Not `attrs.get`: it turns an attribute this HDF5 cannot decode into "absent".
                if not ("complete" in f.attrs and f.attrs["complete"]) or f.attrs["format_version"] != FORMAT_VERSION:
                    raise FeatureStoreError(
                        f"'{path}' is not a complete feature set of format {FORMAT_VERSION}. "
                        "Run `make features` again to rebuild it."
                    )
                attrs = {k: _attr(v) for k, v in f.attrs.items()}
                shards = [s.decode() for s in f["shards/name"][:]]
                shard_of_row = f["images/shard"][:]
                row_in_shard = f["images/row"][:]
                labels = f["labels"][:]
                class_names = [c.decode() for c in f["class_names"][:]]
                paths = [decode_path(p) for p in f["images/path"][:]]
                split_keys = f["images/split_key"][:]
                folder_splits = f["images/folder_split"].asstr()[:]
                feature_shape = tuple(f["features"].shape[1:])
        except FeatureStoreError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise FeatureStoreError(
                f"Cannot read '{path}' ({e}). It is damaged, or it was written by a newer HDF5 library than "
                f"this one ({h5py.version.hdf5_version}): upgrade h5py, or run `make features` again to rebuild it."
            ) from None
        _check_locations(path, shards, shard_of_row, row_in_shard, len(labels), len(paths))
        features = np.empty((len(labels), *feature_shape), dtype=np.float32)
        for shard_id, name in enumerate(shards):
            mine = np.flatnonzero(shard_of_row == shard_id)
            features[mine] = self._read_shard_rows(name, row_in_shard[mine])
        return FeatureSet(
            path=path,
            name=self.root.name,
            features=features,
            labels=labels,
            class_names=class_names,
            paths=paths,
            split_keys=split_keys,
            folder_splits=folder_splits,
            config=attrs.get("config", {}),
            attrs=attrs,
            content_hash=attrs["content_hash"],
        )

    def _read_shard_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        shard = self.shard_dir / name
        try:
            with h5py.File(shard, "r") as f:
                return f["features"][:][rows]
        except (OSError, KeyError, IndexError) as e:
            raise FeatureStoreError(
                f"Shard '{shard}' of feature set '{self.root.name}' is missing or corrupt ({e}). "
                "Run the same `make features` command again with ARGS=--verify (CLI: --verify): it "
                "finds the damaged shards and re-extracts their images."
            ) from None


class ShardWriter:
    """Appends rows to one shard file; made by `FeatureStore.open_shard`.

    Attributes:
        name: the shard's final file name.
        rows: rows appended so far.
        capacity: the most rows it takes.
    """

    def __init__(self, shard_dir: Path, name: str, feature_key_: str, feature_shape, dtype: str, capacity: int):
        self.name = name
        self.rows = 0
        self.capacity = capacity
        self._finished = False
        self._final = shard_dir / name
        self._tmp = shard_dir / f"{_TMP_PREFIX}{name}"
        with _reporting_write_errors(self._tmp):
            self._sink = _GuardedFile(self._tmp)
        with _interrupts_deferred():
            self._create_datasets(feature_key_, feature_shape, dtype, capacity)

    def _create_datasets(self, feature_key_: str, feature_shape, dtype: str, capacity: int) -> None:
        self._file = h5py.File(self._sink, "w")
        self._file.attrs["feature_key"] = feature_key_
        self._file.attrs["format_version"] = FORMAT_VERSION
        row_bytes = int(np.prod(feature_shape)) * np.dtype(dtype).itemsize
        chunk_rows = int(max(1, min(capacity, (1 << 20) // max(1, row_bytes))))
        self._features = self._file.create_dataset(
            "features",
            shape=(0, *feature_shape),
            maxshape=(capacity, *feature_shape),
            dtype=dtype,
            chunks=(chunk_rows, *feature_shape),
            fletcher32=True,
        )
        self._sha256 = self._file.create_dataset("sha256", shape=(0,), maxshape=(capacity,), dtype="S64")
        self._paths = self._file.create_dataset("path", shape=(0,), maxshape=(capacity,), dtype=_BYTES)

    def append(self, features: np.ndarray, digests: Sequence[str], relpaths: Sequence[str]) -> None:
        with _interrupts_deferred():
            self._append(features, digests, relpaths)

    def _append(self, features: np.ndarray, digests: Sequence[str], relpaths: Sequence[str]) -> None:
        n = len(features)
        end = self.rows + n
        self._features.resize(end, axis=0)
        self._features[self.rows : end] = features
        self._sha256.resize((end,))
        self._sha256[self.rows : end] = np.array([d.encode() for d in digests], dtype="S64")
        self._paths.resize((end,))
        self._paths[self.rows : end] = np.array([encode_path(p) for p in relpaths], dtype=_BYTES)
        self.rows = end

    def finish(self, publish: bool) -> None:
        """Closes the file; renames it into place if `publish` and it has rows, else deletes it.

        Only the first call acts: a Ctrl-C held back until a publish is done
        reaches the caller's cleanup, which calls it again.
        """
        if self._finished:
            return
        self._finished = True
        try:
            with _reporting_write_errors(self._tmp), _interrupts_deferred():
                if self._file.id.valid:
                    if publish and self.rows:  # whole rows only, whatever cut the last append short
                        for dataset in (self._features, self._sha256, self._paths):
                            dataset.resize(self.rows, axis=0)
                    self._file.close()
                self._sink.close()
                if publish and self.rows:
                    if self._sink.error is not None:  # a write failed; HDF5 finished in memory
                        raise self._sink.error
                    with open(self._tmp, "rb+") as f:
                        os.fsync(f.fileno())
                    os.replace(self._tmp, self._final)
                else:
                    self._tmp.unlink(missing_ok=True)
        except WriteError:
            self._tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Holds Ctrl-C back until the block ends, then raises it.

    h5py writes through Python file objects here (`_GuardedFile`, BytesIO),
    so HDF5 calls back into Python, and a KeyboardInterrupt raised inside
    such a callback is a failed write to HDF5: the process then dies with
    SIGSEGV instead of keeping its finished rows. Signal handlers can only
    be set from the main thread; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


class _GuardedFile:
    """The file h5py writes a shard through (its `fileobj` driver); HDF5 never sees a failed write.

    HDF5 does not survive a failed write: the file can then be neither flushed
    nor closed, and the process dies with SIGSEGV at exit. So when a write
    fails (disk full, quota, I/O error) the error is kept in `error`, the
    file's content so far moves to memory, HDF5 finishes there (at most one
    shard), and `ShardWriter.finish` raises the error once HDF5 has let go.
    """

    def __init__(self, path: Path):
        self.name = str(path)
        self.error: OSError | None = None
        self._disk = open(path, "w+b", buffering=0)
        self._file: Any = self._disk

    def __repr__(self) -> str:  # h5py reports it as the file's name
        return self.name

    def _to_memory(self, error: OSError) -> None:
        if self._file is not self._disk:
            raise error
        position = self._disk.tell()
        self._disk.seek(0)
        memory = io.BytesIO(self._disk.read())
        memory.seek(position)
        self._file, self.error = memory, error

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                done += self._file.write(view[done:])  # unbuffered: may write part of it
            except OSError as e:
                self._to_memory(e)
        return len(view)

    def truncate(self, size=None) -> int:
        try:
            return self._file.truncate(size)
        except OSError as e:
            self._to_memory(e)
            return self._file.truncate(size)

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._disk.close()


def read_feature_set(path: str | os.PathLike) -> FeatureSet:
    """Loads a complete feature set for training heads.

    Args:
        path: the feature set's folder or its `features.h5`.

    Returns:
        A `FeatureSet`.

    Raises:
        FeatureStoreError: the set is missing, incomplete, of another format
            or damaged; the message says how to rebuild it.
    """
    path = Path(path)
    root = path.parent if path.name == INDEX_NAME or path.suffix == ".h5" else path
    return FeatureStore(root).read()


def _file_table(group) -> dict[str, tuple[int, int]]:
    paths = [decode_path(p) for p in group["path"][:]]
    return dict(zip(paths, zip(group["size"][:].tolist(), group["mtime_ns"][:].tolist())))


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


def _is_shard_name(name: str) -> bool:
    """A plain file name inside `shards/`: no folder part, no `..`, not hidden."""
    return name == os.path.basename(name) and name.endswith(".h5") and not name.startswith(".") \
        and not any(c in name for c in "\\\0")


def _check_locations(path: Path, shards, shard_of_row, row_in_shard, n_rows: int, n_paths: int) -> None:
    """Refuses an index whose rows point outside its shards (hand-edited, or from elsewhere)."""
    unsafe = [s for s in shards if not _is_shard_name(s)]
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


def _sealed(data) -> bytes:
    """The index bytes with the sha256 of everything after the user block written into it."""
    data = bytearray(data)
    digest = hashlib.sha256(memoryview(data)[_USERBLOCK:]).hexdigest().encode()
    data[: len(_SEAL) + 65] = _SEAL + digest + b"\n"
    return bytes(data)


def _open_index(path: Path) -> h5py.File:
    """Opens the index from bytes checked against its seal.

    HDF5 checksums neither raw data nor the heap holding strings, and some
    damage makes it loop forever, so the whole file is checked first and
    HDF5 parses exactly the bytes that were checked. Raises OSError when the
    file cannot be read and FeatureStoreError when it is damaged.
    """
    data = Path(path).read_bytes()
    digest = hashlib.sha256(memoryview(data)[_USERBLOCK:]).hexdigest().encode()
    if data[: len(_SEAL) + 65] != _SEAL + digest + b"\n":
        raise FeatureStoreError(
            f"'{path}' is damaged or not a complete feature set: its checksum does not match its "
            "content. Run `make features` again to rebuild it (finished shards are reused)."
        )
    return h5py.File(io.BytesIO(data), "r")


def _write_new_file(path: Path, data: bytes) -> None:
    """Creates `path` with `data`, fsynced; a failure is an OSError naming the file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[: 1 << 20]) :]
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _reporting_write_errors(path: Path) -> Iterator[None]:
    """Turns a failed write (OSError, or h5py's long RuntimeError) into one clear WriteError."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as e:
        found = re.search(r"errno = (\d+), error message = '([^']*)'", str(e))
        if isinstance(e, OSError) and e.strerror:
            reason = f"{e.strerror} (errno {e.errno})"
        elif found:
            reason = f"{found.group(2)} (errno {found.group(1)})"
        else:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WriteError(
            f"Cannot write '{path}': {reason}. The disk is probably full or over quota. Nothing "
            "half-written is used and the previous feature set is untouched: free some space, "
            "then run the same command again (it resumes where it stopped)."
        ) from None


def _attr(value):
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
