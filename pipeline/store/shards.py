"""Writing shards: immutable blocks of extracted features, published whole.

A shard is written under a temporary name and renamed into place only when
complete, so a shard that exists is whole; each row is keyed by the sha256
of the image file it came from. Shard names never collide, so workers on
other machines can write shards of the same set side by side.

h5py writes a shard through `_GuardedFile`, so a failed write (disk full)
becomes one `WriteError` instead of a crashed HDF5, and Ctrl-C is held back
while HDF5 writes (see `interrupts_deferred`).
"""

from __future__ import annotations

import contextlib
import errno
import io
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

from .._atomic import fsync_path, temporary_name
from ..errors import ConfigError, WriteError

FORMAT_VERSION = 1
SHARD_DIR = "shards"
_BYTES = h5py.string_dtype("ascii")
# Failed writes that more free space would not fix.
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def encode_path(relpath: str) -> bytes:
    """Relative paths are stored as the file system's bytes (any name survives)."""
    return os.fsencode(relpath)


def shown_path(relpath: str) -> str:
    """A path as text for people and UTF-8 files: bytes that are not UTF-8 shown as `\\xNN` escapes."""
    return encode_path(relpath).decode("utf-8", "backslashreplace")


def decode_path(raw: bytes) -> str:
    return os.fsdecode(raw)


class ShardAppender:
    """Appends rows to a feature set's shards, starting a new shard when one is full.

    Made by `FeatureStore.shard_appender`, which publishes the open shard
    when its block ends.

    Args:
        shard_dir: the set's `shards/` folder.
        feature_key: the key every row is extracted for.
        feature_shape: shape of one image's features.
        dtype: stored feature dtype.
        shard_rows: the most rows in one shard.
    """

    def __init__(self, shard_dir: Path, feature_key: str, feature_shape: tuple[int, ...], dtype: str, shard_rows: int):
        if shard_rows < 1:
            raise ValueError(f"`shard_rows` must be at least 1. Received: shard_rows={shard_rows}.")
        self._shard_dir = shard_dir
        self._spec = (feature_key, tuple(feature_shape), dtype, shard_rows)
        self._writer: ShardWriter | None = None

    def append(self, features: np.ndarray, digests: Sequence[str], relpaths: Sequence[str]) -> list[tuple[str, int]]:
        """Writes one row per image; returns the (shard name, row) holding each.

        Pass the features as computed (float32): they are converted to the
        stored dtype here, after `storable` has checked that it holds them.
        """
        if not len(features) == len(digests) == len(relpaths):
            raise ValueError(
                f"`features`, `digests` and `relpaths` must have one entry per image. Received lengths "
                f"{len(features)}, {len(digests)} and {len(relpaths)}."
            )
        features = storable(features, self._spec[2], self._shard_dir.parent.name)
        locations: list[tuple[str, int]] = []
        while len(locations) < len(features):
            writer = self._open_writer()
            start, end = len(locations), len(locations) + min(writer.capacity - writer.rows, len(features) - len(locations))
            first = writer.rows
            writer.append(features[start:end], digests[start:end], relpaths[start:end])
            locations += [(writer.name, first + i) for i in range(end - start)]
        return locations

    def close(self, publish: bool) -> None:
        """Publishes the open shard (if `publish` and it has rows) or deletes it."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.finish(publish)

    def _open_writer(self) -> ShardWriter:
        if self._writer is not None and self._writer.rows == self._writer.capacity:
            self.close(publish=True)
        if self._writer is None:
            self._shard_dir.mkdir(parents=True, exist_ok=True)
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.h5"
            self._writer = ShardWriter(self._shard_dir / name, *self._spec)
        return self._writer


def storable(features: np.ndarray, dtype: str, feature_set: str) -> np.ndarray:
    """`features` converted to the stored `dtype`, refused if the conversion would lose them.

    float16 stores nonzero magnitudes from about 6e-8 to 65504 only: below,
    values become 0 (random-weight backbones give features near 1e-12, and
    their set came out all zeros); above, inf. Either is a wrong result that
    every later run trains on. A value flushed to 0 is tolerated only when it
    is below float16's precision at the largest value of its row, where
    rounding already loses it.

    Raises:
        ConfigError: (field `storage_dtype`) some value would be stored as 0
            or inf; nothing of this batch was written.
    """
    target = np.dtype(dtype)
    if features.dtype == target or target.kind != "f" or features.dtype.kind != "f" or not features.size:
        return features.astype(target, copy=False)
    with np.errstate(over="ignore", under="ignore"):
        stored = features.astype(target)
    rows = np.abs(features.reshape(len(features), -1))
    finite = np.isfinite(rows)
    row_max = np.where(finite, rows, 0).max(axis=1, initial=0, keepdims=True)
    flat = stored.reshape(len(stored), -1)
    zeroed = (flat == 0) & (rows > 0) & (rows >= row_max * np.finfo(target).eps)
    overflowed = np.isinf(flat) & finite
    if zeroed.any() or overflowed.any():
        nonzero = rows[finite & (rows > 0)]
        counts = ((int(zeroed.sum()), "0"), (int(overflowed.sum()), "inf"))
        lost = " and ".join(f"{n} would become {what}" for n, what in counts if n)
        raise ConfigError(
            f"Features of feature set '{feature_set}' do not fit storage_dtype={dtype!r}: their magnitudes "
            f"range from {nonzero.min():.3g} to {nonzero.max():.3g}, and {dtype} holds nonzero values from "
            f"{_smallest(target):.3g} to {np.finfo(target).max:.5g} only: of this batch's {features.size} "
            f"values, {lost}. "
            "Nothing of this batch was written (finished shards are kept). Extract the set with "
            "`storage_dtype='float32'`.",
            field="storage_dtype",
        )
    return stored


def _smallest(dtype: np.dtype) -> float:
    """The smallest positive value `dtype` holds (a subnormal)."""
    return float(np.nextafter(dtype.type(0), dtype.type(1)))


class ShardWriter:
    """Appends rows to one shard file, under a temporary name until `finish`.

    Attributes:
        name: the shard's final file name.
        rows: rows appended so far.
        capacity: the most rows it takes.
    """

    def __init__(self, final: Path, feature_key: str, feature_shape: tuple[int, ...], dtype: str, capacity: int):
        self.name = final.name
        self.rows = 0
        self.capacity = capacity
        self._finished = False
        self._final = final
        self._tmp = temporary_name(final)
        with reporting_write_errors(self._tmp):
            self._sink = _GuardedFile(self._tmp)
        with interrupts_deferred():
            self._create_datasets(feature_key, feature_shape, dtype, capacity)

    def _create_datasets(self, feature_key: str, feature_shape, dtype: str, capacity: int) -> None:
        self._file = h5py.File(self._sink, "w")
        self._file.attrs["feature_key"] = feature_key
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
        with interrupts_deferred():
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
            with reporting_write_errors(self._tmp), interrupts_deferred():
                if self._file.id.valid:
                    if publish and self.rows:  # whole rows only, whatever cut the last append short
                        for dataset in (self._features, self._sha256, self._paths):
                            dataset.resize(self.rows, axis=0)
                    self._file.close()
                self._sink.close()
                if publish and self.rows:
                    if self._sink.error is not None:  # a write failed; HDF5 finished in memory
                        raise self._sink.error
                    fsync_path(self._tmp)
                    os.replace(self._tmp, self._final)
                else:
                    self._tmp.unlink(missing_ok=True)
        except WriteError:
            self._tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
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


@contextlib.contextmanager
def reporting_write_errors(path: Path) -> Iterator[None]:
    """Turns a failed write (OSError, or h5py's long RuntimeError) into one clear WriteError."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as e:
        found = re.search(r"errno = (\d+), error message = '([^']*)'", str(e))
        code = e.errno if isinstance(e, OSError) else int(found.group(1)) if found else None
        if isinstance(e, OSError) and e.strerror:
            reason = f"{e.strerror} (errno {e.errno})"
        elif found:
            reason = f"{found.group(2)} (errno {found.group(1)})"
        else:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        kept = "Nothing half-written is used and the previous feature set is untouched"
        if code in _NOT_WRITABLE:
            raise WriteError(
                f"Cannot write '{path}': {reason}. Its folder is read-only or not yours to write. {kept}: "
                "make it writable, or pass a writable folder elsewhere as `cache_dir`.",
                field="cache_dir",
            ) from None
        raise WriteError(
            f"Cannot write '{path}': {reason}. The disk is probably full or over quota. {kept}: free some "
            "space, then run the same command again (it resumes where it stopped)."
        ) from None


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
