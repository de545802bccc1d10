"""Items that are not local files: URLs, tar members, Parquet cells, read through fsspec.

The sources of `sources.SOURCES` other than a local folder or manifest list
their items here: each item is an id (a POSIX-like path, unique in the
dataset), a label, a split, a size and a change token, plus a *reader*
whose `read_bytes(limit)` returns the item's bytes. The dataset's root is
an `ItemRoot`: `root / item_id` is the item's reader, so the decoder reads
every item, local or not, by the one expression `root / relpath`.

Change tokens stand where a local file's mtime stands: an int that changes
when the object changes, hashed from the store's version id, ETag or
modification time (whichever it offers). A store that offers none gets the
listing's time: each run then re-reads and hashes every item (rows are still
keyed by content, so nothing is re-extracted that did not change).

Credentials come the fsspec way (environment variables, profiles, config
files) and stay in the filesystem object: what is recorded or logged about a
source is `shown_url(url)`, the URL without user, password or query string.
"""

from __future__ import annotations

import array
import bisect
import concurrent.futures
import dataclasses
import functools
import hashlib
import operator
import time
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from ..config.files import is_url  # re-exported: one rule for what a URL is, config's
from ..errors import ConfigError
from .decode import max_file_bytes
from .discovery import Dataset, ImageEntry, split_key

__all__ = [
    "ItemRoot", "Reader", "ReaderTable", "build_dataset", "change_token", "fetch", "filesystem", "is_url", "shown_url",
]

# Info fields that change with an object's content, strongest first (s3fs, gcsfs, adlfs, http, local).
_TOKEN_FIELDS = ("VersionId", "version_id", "ETag", "etag", "md5Hash", "content_md5", "Last-Modified",
                 "LastModified", "last_modified", "updated", "mtime")
_ATTEMPTS = 4  # tries per read: a store that fails now and then still gives every item
_BACKOFF_S = 0.05


class Reader(Protocol):
    """What `root / item_id` gives: the item's bytes, on demand."""

    def read_bytes(self, limit: int) -> bytes:
        """At most `limit` bytes of the item; raises `OSError` when it cannot be read."""


def shown_url(url: str) -> str:
    """`url` as it may be recorded or logged: without `user:password@` and without a query string."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path.split('?', 1)[0].split('#', 1)[0]}"


def recorded_root(data: str) -> str:
    """What a feature set records as the data root of `data`: `shown_url` of a URL, else the absolute path.

    Absolute, so that predict, evaluate and the report find local tar shards
    or Parquet files from any working folder (brace patterns are kept).
    """
    return shown_url(data) if is_url(data) else str(Path(data).resolve())


def filesystem(url: str):
    """`(fsspec filesystem, path inside it)` for a URL or local path.

    Raises:
        ConfigError: fsspec (or the protocol's package) is not installed, or
            the protocol is unknown.
    """
    try:
        import fsspec.core
    except ImportError:
        raise ConfigError(
            f"Reading `data` '{shown_url(url)}' needs fsspec: pip install 'bottleneck-features[remote]'.",
            field="data",
        ) from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise ConfigError(
            f"`data` '{shown_url(url)}' cannot be opened: {e}. Install the package fsspec names for the "
            "protocol (s3fs for s3://, gcsfs for gs://, adlfs for az://, aiohttp for http(s)://).",
            field="data",
        ) from None


def change_token(info: Mapping[str, Any]) -> int:
    """A non-negative int that changes when the object of `info` (an fsspec `info()` dict) changes."""
    token = "|".join(f"{k}={info[k]}" for k in _TOKEN_FIELDS if info.get(k) not in (None, ""))
    if not token:
        return time.time_ns()  # nothing offered: never equal to last run's, so every item is re-hashed
    return int.from_bytes(hashlib.sha256(token.encode()).digest()[:7], "big")


def fetch(fs, path: str, start: int | None = None, end: int | None = None) -> bytes:
    """Bytes `start:end` of an object, retried with backoff; `OSError` after the last try.

    A missing object is not retried (`FileNotFoundError` at once).
    """
    last: Exception | None = None
    for attempt in range(_ATTEMPTS):
        try:
            return fs.cat_file(path, start=start, end=end)
        except FileNotFoundError:
            raise FileNotFoundError(f"not found: {shown_url(path)}") from None
        except Exception as e:  # noqa: BLE001 - stores raise their own types (aiohttp, botocore)
            last = e
            time.sleep(_BACKOFF_S * 2**attempt)
    # The reason is stored with the skipped item: never the URL's credentials or signed query.
    said = str(last).replace(path, shown_url(path))[:200]
    raise OSError(f"read failed {_ATTEMPTS} times, last: {type(last).__name__}: {said}")


@dataclasses.dataclass(frozen=True)
class ItemRoot:
    """The root of a dataset of non-file items: `root / item_id` is the item's reader.

    Attributes:
        name: what the feature set records as its data root (`shown_url`).
        readers: item id -> reader.
    """

    name: str
    readers: Mapping[str, Reader] = dataclasses.field(compare=False, repr=False)

    def __truediv__(self, item_id: str) -> Reader:
        """The item's reader, its read already started: the decoder asks for items a few batches
        ahead, so that many reads are in flight while a thread decodes (a slow store never starves it).
        """
        return _Prefetched(_pool().submit(self.readers[item_id].read_bytes, max_file_bytes() + 1))

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """One listed item before labels are numbered: what a source's lister yields.

    `reader` is the item's reader, or (with `build_dataset`'s `reader_at`)
    an int that `reader_at` builds the reader from when it is asked for.
    """

    item_id: str
    label: str
    split: str
    size: int
    token: int
    reader: Reader | int
    key_path: str = ""  # the path split keys hash (below a split folder); `item_id` when empty


def build_dataset(name: str, items: Iterable[Item], *, numeric_labels: bool = False,
                  skipped: Iterable[tuple[str, str]] = (), reader_at: Callable[[int], Reader] | None = None) -> Dataset:
    """A `Dataset` of `items`, sorted by id, labels indexing the sorted class names.

    Args:
        name: the source's recorded name (`ItemRoot.name`).
        items: the listed items; ids must be unique.
        numeric_labels: sort class names as numbers (`.cls` labels: `"10"` after `"9"`).
        skipped: `(id, reason)` of what could not be listed (a corrupt shard).
        reader_at: when given, each item's `reader` is an int and `reader_at(int)` builds
            its reader on demand (a tar member from its shard's arrays), so a listing holds
            no reader object per item.
    """
    items = sorted(items, key=lambda item: item.item_id)
    names = {item.label for item in items}
    class_names = tuple(sorted(names, key=(lambda n: (len(n), n)) if numeric_labels else None))
    label_of = {n: i for i, n in enumerate(class_names)}
    entries = tuple(
        ImageEntry(item.item_id, label_of[item.label], item.split, item.size, item.token,
                   split_key(item.key_path or item.item_id))
        for item in items
    )
    if reader_at is None:
        at = [item.reader for item in items].__getitem__
    else:
        places = array.array("q", (item.reader for item in items))
        at = lambda i: reader_at(places[i])  # noqa: E731
    return Dataset(
        root=ItemRoot(name, ReaderTable(entries, at)),
        class_names=class_names, entries=entries,
        has_folder_splits=any(e.folder_split for e in entries), skipped_dirs=tuple(skipped),
    )


class ReaderTable(Mapping):
    """Item id -> reader, for entries sorted by id: found by bisection, built by `reader_at(index)`.

    No dict and no object per item: a listing of millions of items is kept for the whole run.
    """

    def __init__(self, entries: Sequence[ImageEntry], reader_at: Callable[[int], Reader]):
        self._entries, self._reader_at = entries, reader_at

    def __getitem__(self, item_id: str) -> Reader:
        i = bisect.bisect_left(self._entries, item_id, key=_relpath)
        if i == len(self._entries) or self._entries[i].relpath != item_id:
            raise KeyError(item_id)
        return self._reader_at(i)

    def __iter__(self):
        return (e.relpath for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)


_relpath = operator.attrgetter("relpath")


_PREFETCH_THREADS = 64  # reads in flight while decoding; bounded by the decoder's lookahead, not by this


@functools.lru_cache(maxsize=1)
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(_PREFETCH_THREADS, thread_name_prefix="prefetch")


class _Prefetched:
    """A reader whose bytes are on their way; sent to a decoding process as the bytes themselves."""

    def __init__(self, future: concurrent.futures.Future):
        self._future = future

    def read_bytes(self, limit: int) -> bytes:
        return self._future.result()[:limit]  # fetch's OSError is raised here, where the decoder expects it

    def __reduce__(self):
        try:
            return _Fetched, (self._future.result(), None)
        except OSError as e:
            return _Fetched, (None, str(e))


@dataclasses.dataclass(frozen=True)
class _Fetched:
    data: bytes | None
    error: str | None

    def read_bytes(self, limit: int) -> bytes:
        if self.data is None:
            raise OSError(self.error)
        return self.data[:limit]
