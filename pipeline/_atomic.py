"""Crash-safe files and folders: the one home of temporary names, fsync and rename.

Every artifact the product publishes (shards, indexes, heads, run folders,
bundles, exports, leaderboards, the sample dataset) goes through here, so a
crash, Ctrl-C or SIGTERM leaves either the previous file or the new one,
never a partial file under a final name. Temporary files and folders start
with `TMP_PREFIX` and sit next to their final name (same file system, so the
rename is atomic); readers and cleaners skip that prefix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import WriteError

TMP_PREFIX = ".tmp-"
FILE_MODE = 0o644


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside `path`: `.tmp-<random>-<name>`."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{path.name}")


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a written file's bytes to the disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `path` atomically.

    The body writes the temporary file by any means (a library's `save`,
    say); it is then made world-readable like any other output, synced and
    renamed onto `path`. On any exception, Ctrl-C included, the temporary
    file is removed and `path` is untouched.
    """
    tmp = temporary_name(path)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replaces `path` with `data` atomically (see `replacing`)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replaces `path` with UTF-8 `text` atomically, newlines as given."""
    with replacing(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Replaces `path` with `data` as indented, key-sorted JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def create_new(path: str | os.PathLike, data: bytes) -> None:
    """Creates `path` (which must not exist) with `data`, synced; for names never reused."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[: 1 << 20]) :]
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclasses.dataclass
class StagedFolder:
    """A folder being written (`path`) and, once published, where it went (`published`)."""

    path: Path
    published: Path | None = None


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike, *, fresh_name: Callable[[], str] | None = None) -> Iterator[StagedFolder]:
    """Yields a `StagedFolder` whose empty `path` becomes `final` when the body succeeds.

    The folder is `.tmp-<random>-<final name>` beside `final`. On success its
    files are synced and it is renamed by `publish_folder`, never onto an
    existing folder. On any exception, Ctrl-C included, it is deleted.
    """
    staged = StagedFolder(temporary_name(final))
    staged.path.parent.mkdir(parents=True, exist_ok=True)
    staged.path.mkdir()
    try:
        yield staged
        staged.published = publish_folder(staged.path, Path(final), fresh_name=fresh_name)
    except BaseException:
        shutil.rmtree(staged.path, ignore_errors=True)
        raise


def publish_folder(tmp: Path, final: Path, *, fresh_name: Callable[[], str] | None = None) -> Path:
    """Syncs the files of `tmp` and renames it to `final`; returns where it went.

    If `final` exists, `fresh_name()` gives another name in the same parent
    (a run id drawn again); without it `FileExistsError` is raised.
    """
    for folder, _, files in os.walk(tmp):
        for name in files:
            fsync_path(os.path.join(folder, name))
    while True:
        # rename(2) replaces an *empty* folder silently; a published folder never is.
        if not final.exists():
            try:
                os.rename(tmp, final)
                return final
            except OSError:
                if not final.exists():
                    raise
        if fresh_name is None:
            raise FileExistsError(f"'{final}' already exists; nothing was replaced.")
        final = final.with_name(fresh_name())


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turns a failed write of `path` (disk full, I/O error, ...) into a `WriteError` naming it."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"Cannot write '{path}' ({e.strerror or e}); nothing was replaced.") from e


def check_writable(folder: str | os.PathLike, *, field: str) -> Path:
    """Checks, before any work, that `folder` can take new entries; a `WriteError` naming it otherwise.

    A `folder` that does not exist yet is judged by its nearest existing
    parent, which must be a folder the new one can be made in; nothing is
    created. Creating and removing a hidden folder answers for read-only
    mounts, permissions and ACLs alike.
    """
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    probe = temporary_name(existing / "write-check")
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"'{existing}' is a file", str(existing))
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise WriteError(
            f"Cannot write into '{folder}' ({e.strerror or e}); nothing was written. Pass `{field}=` a "
            "folder you can write to.",
            field=field,
        ) from None
    return folder
