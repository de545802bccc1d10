"""The feature store: one feature set folder, its locks, and reading it whole.

A feature set is a folder under the cache::

    cache/<dataset>-<model>-<size>-<pooling>-<key8>[-<data8>]/
        features.h5          the index: one row per image, read by the heads
        shards/<id>.h5       immutable blocks of extracted features
        .write.lock          held by the one run that extracts into the set
        .read.lock           shared by readers, exclusive while shards are deleted

The index is rebuilt from the shards at the end of every run and replaced
atomically, so it is always either the previous complete index or the new
one. Resuming after a crash therefore means "extract what no shard holds",
adding images adds a shard, and a removed image is a row the index no
longer points at.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from .._atomic import TMP_PREFIX, temporary_name
from ..config import DEFAULT_SPLITS
from ..errors import FeatureStoreError, StoreBusyError, WriteError
from .index import (
    FORMAT_VERSION,
    INDEX_NAME,
    SHARD_DIR,
    IndexRow,
    IndexState,
    SkippedFile,
    attr_value,
    check_locations,
    decode_path,
    open_index,
    read_index_state,
    write_index,
)
from .shards import ShardAppender
from .splits import SPLITS, split_indices, subsample
from .structure import shard_problem


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

    def split(
        self, splits: Sequence[float] = DEFAULT_SPLITS, seed: int = 0, fraction: float = 1.0
    ) -> tuple[np.ndarray, ...]:
        """Features and labels of the train, validation and test splits, as the head stage cuts them.

        The rows are those `train-head` trains and measures on with the
        same `splits`, `seed` and `fraction` (see `store.splits`): the set's
        split folders, or its stored split keys cut at `splits`, then a
        stratified `fraction` of the training rows drawn with `seed`.

        Args:
            splits: train, validation and test shares summing to 1 (used
                when the data had no split folders). Defaults to
                `(0.8, 0.1, 0.1)`.
            seed: int >= 0 seeding the `fraction` subset. Defaults to `0`.
            fraction: float in (0, 1], the share of the training split kept.
                Defaults to `1.0`.

        Returns:
            `(X_train, y_train, X_val, y_val, X_test, y_test)`; validation or
            test may have 0 rows.

        Example:

        ```python
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV
        from pipeline import read_feature_set

        fs = read_feature_set("cache/digits-mobilenet_v2-224-avg-1a2b3c4d-5e6f7a8b")
        X_train, y_train, X_val, y_val, X_test, y_test = fs.split(splits=(0.8, 0.1, 0.1), seed=0)
        search = GridSearchCV(LogisticRegression(max_iter=1000), {"C": [0.01, 0.1, 1.0]}, cv=3)
        search.fit(X_train, y_train)
        print(search.best_params_, search.score(X_test, y_test))
        ```
        """
        parts = split_indices(self, splits)
        parts["train"] = subsample(parts["train"], self.labels, fraction, seed)
        return tuple(array for name in SPLITS for array in (self.features[parts[name]], self.labels[parts[name]]))


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
    def write_lock(self, *, wait: bool = True, on_wait=None, shared: bool = False) -> Iterator[None]:
        """Holds the set's write lock; a second writer waits (or fails fast).

        `on_wait` is called once, with the holder's description, before
        blocking, so the caller can tell the user why nothing happens.

        With `shared`, several holders write at once: the workers of a
        sharded extraction, each adding only new shards of its own images
        and touching nothing else (no temporary files cleaned, no index
        written). A plain (exclusive) holder waits until they are all done,
        and they wait for it.

        A set folder this call created is removed again when the body
        raises having written nothing into it (a wrong weights file, an
        unknown layer, ...), so a failed first run leaves no empty set
        behind; not under a shared lock, where another worker may be about
        to write. A folder that existed before is never removed.

        Raises:
            WriteError: (field `cache_dir`) the set's folders cannot be
                created or written; raised before any work is done.
            StoreBusyError: another process holds the lock and `wait` is false.
        """
        f, created = self._acquire_write_lock(wait, on_wait, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        created = created and not shared
        with f:
            try:
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
                f.flush()
            except OSError as e:
                raise self._unwritable(e) from None
            try:
                yield
            except BaseException:
                if created:
                    self._remove_if_unwritten()  # still under the lock: no one else can be writing
                raise
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _acquire_write_lock(self, wait: bool, on_wait, mode: int):
        """The locked, open lock file, and whether this call created the set folder.

        A writer that waited may get the lock of a folder its holder has
        just removed (see `write_lock`): it then starts again on a new one.
        """
        created = False
        while True:
            f, made = self._open_write_lock()
            created = created or made
            try:
                if self._lock(f, wait, on_wait, mode):
                    return f, created
            except BaseException:
                f.close()
                raise
            f.close()
            on_wait = None  # the user was told once

    def _lock(self, f, wait: bool, on_wait, mode: int) -> bool:
        """Locks `f` (`mode`: LOCK_EX or LOCK_SH); whether it is still the set's lock file once locked."""
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
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
            fcntl.flock(f, mode)
        return _same_file(f, self._write_lock_path)

    @property
    def _write_lock_path(self) -> Path:
        return self.root / ".write.lock"

    def _open_write_lock(self):
        """Creates the set's folders and opens its lock file, once both folders take a new file.

        Returns the open file and whether the set folder was created here.
        Tested by writing, not by permission bits: those say nothing for
        root, a read-only mount or a full quota. A run thus fails here,
        before decoding or building a model, instead of at its first shard.
        """
        try:
            created = not self.root.exists()
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.root, self.shard_dir):
                probe = temporary_name(folder / "write-probe")
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                os.unlink(probe)
            return open(self._write_lock_path, "a+"), created
        except OSError as e:
            raise self._unwritable(e) from None

    def _remove_if_unwritten(self) -> None:
        """Removes the set folder if it holds only its lock files and an empty `shards/`.

        The write lock file goes last but one, while still locked, so that a
        writer waiting on it sees it is gone (see `_acquire_write_lock`).
        Anything else in the folder keeps it: `rmdir` never removes a file.
        """
        try:
            if {p.name for p in self.root.iterdir()} - {".write.lock", ".read.lock", SHARD_DIR}:
                return
            self.shard_dir.rmdir()
            (self.root / ".read.lock").unlink(missing_ok=True)
            self._write_lock_path.unlink()
            self.root.rmdir()
        except OSError:
            pass  # a folder left behind is untidy, not wrong: the next run uses it

    def _unwritable(self, error: OSError) -> WriteError:
        """The error for a set folder that cannot be written, naming what is in the way."""
        blocking = next((p for p in (self.root, *self.root.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{error.strerror or error} (errno {error.errno})"
        if blocking is not None:
            reason = f"'{blocking}' is a file, not a folder"
        return WriteError(
            f"Cannot write feature set folder '{self.root}': {reason}. Features are cached there, so it must "
            "be a folder you can write: pass a writable folder elsewhere as `cache_dir`.",
            field="cache_dir",
        )

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
            for tmp in folder.glob(f"{TMP_PREFIX}*"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def shard_names(self) -> list[str]:
        """Names of the complete shards, sorted."""
        if not self.shard_dir.is_dir():
            return []
        return sorted(p.name for p in self.shard_dir.glob("*.h5") if not p.name.startswith("."))

    def scan_shards(self, feature_key: str) -> tuple[dict[str, tuple[str, int]], list[str]]:
        """Maps each image sha256 held by a complete shard to (shard, row).

        Shards that cannot be read, that belong to another feature key,
        whose structure is refused (see `structure`), or whose feature shape
        is not the one most shards have, are reported in the second return
        value and ignored, so their images count as not yet extracted.
        """
        found: dict[str, tuple[tuple[int, ...], list[str]]] = {}
        bad: list[str] = []
        for name in self.shard_names():
            try:
                with self._open_shard(name) as f:
                    if f.attrs.get("feature_key") != feature_key:
                        raise FeatureStoreError("written for another feature key")
                    found[name] = (f["features"].shape[1:], [d.decode("ascii") for d in f["sha256"][:]])
            except (OSError, KeyError, ValueError):  # ValueError: FeatureStoreError, a damaged digest
                bad.append(name)
        # One key gives one shape; a shard of another one was crafted, and would be refused by readers.
        shapes = collections.Counter(shape for shape, _ in found.values())
        bad += [name for name, (shape, _) in found.items() if shape != shapes.most_common(1)[0][0]]
        rows: dict[str, tuple[str, int]] = {}
        for name, (_, digests) in found.items():
            if name not in bad:
                for row, digest in enumerate(digests):
                    rows.setdefault(digest, (name, row))
        return rows, sorted(bad)

    def shard_feature_shape(self, name: str) -> tuple[int, ...]:
        """Shape of one image's features in the named complete shard."""
        with self._open_shard(name) as f:
            return tuple(int(d) for d in f["features"].shape[1:])

    @contextlib.contextmanager
    def _open_shard(self, name: str) -> Iterator[h5py.File]:
        """Opens a shard for reading once its structure is known to be plain (see `structure`)."""
        path = self.shard_dir / name
        with h5py.File(path, "r") as f:
            problem = shard_problem(f)
            if problem is not None:
                raise FeatureStoreError(f"Shard '{path}' was refused: {problem}.")
            yield f

    def verify_shards(self, names: Sequence[str]) -> list[str]:
        """Reads every feature of the named shards; returns those that fail.

        HDF5's fletcher32 checksum makes a flipped bit or a truncated chunk
        fail the read instead of returning wrong numbers; a shard that reads
        another file, or lacks that checksum, fails before any read.
        """
        bad = []
        for name in names:
            try:
                with self._open_shard(name) as f:
                    features = f["features"]
                    step = max(1, features.chunks[0] if features.chunks else len(features))
                    for start in range(0, len(features), step * 64):
                        features[start : start + step * 64]
            except (OSError, KeyError, FeatureStoreError):
                bad.append(name)
        return bad

    def shards_unchanged(self, state: IndexState, *, verify: bool = False) -> bool:
        """Whether every shard `state` lists is still the one the index was written with.

        Cheap first: a shard must have its recorded size; only shards whose
        mtime moved (all of them with `verify`) are read to check their
        checksums, their feature key (a shard swapped for another
        backbone's passes its checksums) and that each row's content is the
        one the index expects there, so the answer costs the same at any
        cache size.
        """
        stats = {s.name: _file_stat(self.shard_dir / s.name) for s in state.shards}
        if any(stats[s.name][0] != s.size for s in state.shards):
            return False
        changed = [s.name for s in state.shards if verify or stats[s.name][1] != s.mtime_ns]
        return (not self.verify_shards(changed) and all(self._key_of(name) == state.feature_key for name in changed)
                and self._rows_hold_their_content(changed))

    def _rows_hold_their_content(self, names: Sequence[str]) -> bool:
        """Whether each index row in the named shards points at its own image's sha256 there.

        A shard swapped for another of the same set (same key, size and
        mtime) passes every other check; the rows it would serve do not.
        """
        if not names:
            return True
        try:
            with open_index(self.index_path) as f:
                images, shard_names = f["images"], [n.decode() for n in f["shards/name"][:]]
                wanted = collections.defaultdict(list)
                for digest, shard, row in zip(images["sha256"][:], images["shard"][:], images["row"][:]):
                    if shard_names[shard] in names:
                        wanted[shard_names[shard]].append((int(row), digest))
            for name, rows in wanted.items():
                with self._open_shard(name) as shard:
                    held = shard["sha256"][:]
                    if any(row >= len(held) or held[row] != digest for row, digest in rows):
                        return False
        except (OSError, KeyError, ValueError, IndexError):
            return False
        return True

    def _key_of(self, name: str) -> str | None:
        """The feature key a shard was written for; `None` when it cannot be read."""
        try:
            with h5py.File(self.shard_dir / name, "r") as f:
                return f.attrs.get("feature_key")
        except OSError:
            return None

    def quarantine(self, names: Sequence[str]) -> None:
        """Moves unreadable shards aside (kept for inspection, never read again)."""
        for name in names:
            src = self.shard_dir / name
            if src.exists():
                os.replace(src, self.shard_dir / f".corrupt-{name}")

    @contextlib.contextmanager
    def shard_appender(
        self, feature_key: str, feature_shape: tuple[int, ...], dtype: str, shard_rows: int
    ) -> Iterator[ShardAppender]:
        """Yields a `ShardAppender` that writes new shards of at most `shard_rows` rows.

        Each shard appears under its final name only when complete: when it
        is full, when the block ends, and on Ctrl-C (the rows written so far
        are kept as a smaller shard, so finished work survives). On any other
        exception the open shard is deleted.

        Example:

        >>> with store.shard_appender(key, (512,), "float32", shard_rows=1024) as shards:  # doctest: +SKIP
        ...     locations = shards.append(features, digests, relpaths)
        """
        appender = ShardAppender(self.shard_dir, feature_key, feature_shape, dtype, shard_rows)
        try:
            yield appender
        except BaseException as e:
            appender.close(publish=isinstance(e, KeyboardInterrupt))
            raise
        appender.close(publish=True)

    def delete_unreferenced_shards(self, referenced: Sequence[str]) -> int:
        """Deletes shards the index no longer points at, once no reader is mid-read."""
        keep = set(referenced)
        doomed = [n for n in self.shard_names() if n not in keep]
        if doomed:
            with self._read_lock(exclusive=True):
                for name in doomed:
                    (self.shard_dir / name).unlink(missing_ok=True)
        return len(doomed)

    # -- index ---------------------------------------------------------------

    def read_index_state(self) -> IndexState | None:
        """The cheap part of the index used for the up-to-date check.

        Returns `None` when there is no readable, sealed, complete index.
        """
        return read_index_state(self.index_path)

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
        """Writes the set's index atomically and returns its content hash.

        The arguments are those of `index.write_index`, less its `path`.
        """
        return write_index(
            self.index_path, rows, locations, skipped, class_names,
            feature_shape=feature_shape, dtype=dtype, attrs=attrs,
        )

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
            with open_index(path) as f:
                # Not `attrs.get`: it turns an attribute this HDF5 cannot decode into "absent".
                if not ("complete" in f.attrs and f.attrs["complete"]) or f.attrs["format_version"] != FORMAT_VERSION:
                    raise FeatureStoreError(
                        f"'{path}' is not a complete feature set of format {FORMAT_VERSION}. "
                        "Run `make features` again to rebuild it."
                    )
                attrs = {k: attr_value(v) for k, v in f.attrs.items()}
                shards = [s.decode() for s in f["shards/name"][:]]
                shard_of_row = f["images/shard"][:]
                row_in_shard = f["images/row"][:]
                labels = f["labels"][:]
                class_names = [c.decode() for c in f["class_names"][:]]
                paths = [decode_path(p) for p in f["images/path"][:]]
                digests = f["images/sha256"][:]
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
        check_locations(path, shards, shard_of_row, row_in_shard, len(labels), len(paths))
        features = np.empty((len(labels), *feature_shape), dtype=np.float32)
        for shard_id, name in enumerate(shards):
            mine = np.flatnonzero(shard_of_row == shard_id)
            expected = (attrs.get("feature_key"), digests[mine], feature_shape)
            features[mine] = self._read_shard_rows(name, row_in_shard[mine], *expected)
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

    def _read_shard_rows(self, name: str, rows: np.ndarray, feature_key, digests, feature_shape) -> np.ndarray:
        """The features of `rows` of a shard, which must hold what the index says: key, images, shape."""
        shard = self.shard_dir / name
        try:
            with self._open_shard(name) as f:
                # A shard swapped for another one (of this set or another backbone) reads fine: refuse it.
                if f.attrs.get("feature_key") != feature_key or not np.array_equal(f["sha256"][:][rows], digests):
                    raise FeatureStoreError(f"Shard '{shard}' holds other images than the index says.")
                if f["features"].shape[1:] != feature_shape:
                    raise FeatureStoreError(
                        f"Shard '{shard}' holds features of shape {f['features'].shape[1:]}, where the index "
                        f"says {feature_shape}."
                    )
                return f["features"][:][rows]
        except (OSError, KeyError, IndexError, FeatureStoreError) as e:
            problem = str(e) if isinstance(e, FeatureStoreError) else f"Shard '{shard}' is missing or corrupt ({e})."
            raise FeatureStoreError(
                f"{problem} Feature set '{self.root.name}' cannot be read: extract it again with `verify=True`; "
                "that run sets damaged or foreign shards aside and re-extracts their images.",
                field="verify",
            ) from None


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


def _same_file(f, path: Path) -> bool:
    """Whether the open file `f` is still the file at `path`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(f.fileno()).st_dev, os.fstat(f.fileno()).st_ino)


def _file_stat(path: Path) -> tuple[int, int]:
    """(size, mtime_ns); (-1, -1) for a file that cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns
