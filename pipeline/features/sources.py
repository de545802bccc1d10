"""Data sources: where the images of a feature set come from.

A source lists its items (a `discovery.Dataset`: id, label, split, size and a
change token per item), opens an item's bytes, hashes them, and names itself
for the feature set (`name`, recorded as the set's data root). The rest of
the features stage asks the source, never the filesystem, so a new kind of
data (fsspec URLs, WebDataset tar shards) is one new row of `SOURCES`.
A manifest whose `path` column holds URLs is read as the items of a URL
folder are (`url-manifest`).

Local sources (an image folder, a CSV or Parquet manifest of local paths)
key an item by its path relative to the root (`ImageEntry.relpath`) and use
the file's mtime in ns as its change token. The other sources (`ItemSource`:
folders behind fsspec URLs, WebDataset tar shards, Parquet image columns)
list items whose bytes come from a reader (`items`): their dataset's root is
an `items.ItemRoot`, and `root / item_id` reads the item.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import BinaryIO, Callable

import concurrent.futures
import hashlib
import io

from ..store.content import file_sha256
from .decode import max_file_bytes
from .discovery import Dataset, index_directory, stat_image
from .items import is_url, recorded_root
from .manifest import is_manifest, lists_urls, read_manifest
from .parquet_source import is_parquet_images, list_parquet_images
from .remote import list_remote_folder, list_url_manifest
from .tar_source import is_tar_data, list_tar_shards

__all__ = ["SOURCES", "ItemSource", "LocalSource", "SourceKind", "open_source"]

_READS_IN_FLIGHT = 32  # objects read at once while hashing: enough to hide a store's latency


@dataclasses.dataclass(frozen=True)
class LocalSource:
    """Images on the local disk, listed by a folder scan or a manifest.

    Attributes:
        data: the `data` argument as given (a folder or a manifest file).
        kind: the `SourceKind` row that matched it.
    """

    data: str
    kind: "SourceKind"

    @property
    def root(self) -> Path:
        """The folder item ids are relative to: the data folder, or the manifest's folder."""
        path = Path(self.data).resolve()
        return path.parent if path.is_file() else path

    @property
    def name(self) -> str:
        """What the feature set records as its data root."""
        return str(self.root)

    def list(self) -> Dataset:
        """Every item with its label, split and fingerprint (size, change token)."""
        return self.kind.lister(self.data)

    def hash_ahead(self, item_ids) -> None:
        """Nothing: local files are hashed one by one, as `sha256` is called."""

    def stat(self, item_id: str) -> tuple[int, int]:
        """`(size, change token)` of an item now, or `(-1, -1)` when it cannot be read as a file."""
        return stat_image(self.path(item_id))

    def open(self, item_id: str) -> BinaryIO:
        """The item's bytes, as a binary file object (the caller closes it)."""
        return open(self.path(item_id), "rb")

    def sha256(self, item_id: str) -> str:
        """The SHA-256 of the item's content (raises `OSError` when it cannot be read)."""
        return file_sha256(self.path(item_id))

    def path(self, item_id: str) -> Path:
        """The local file of an item: engines that decode by path (the local and Ray engines) use it."""
        return self.root / item_id

    is_local = True


class ItemSource:
    """Items read through fsspec (URL folders, tar shards, Parquet cells), not local files.

    The listing is made once and kept: its readers open the items.

    Attributes:
        data: the `data` argument as given.
        kind: the `SourceKind` row that matched it.
    """

    is_local = False

    def __init__(self, data: str, kind: "SourceKind"):
        self.data, self.kind = data, kind
        self._dataset: Dataset | None = None
        self._ahead: dict[str, str | OSError] = {}  # hash_ahead's results, each taken once by sha256

    @property
    def name(self) -> str:
        """What the feature set records as its data root (`items.recorded_root`)."""
        return recorded_root(self.data)

    def list(self) -> Dataset:
        """Every item with its label, split and fingerprint (size, change token)."""
        if self._dataset is None:
            self._dataset = self.kind.lister(self.data)
        return self._dataset

    def open(self, item_id: str) -> BinaryIO:
        """The item's bytes, as a binary file object."""
        return io.BytesIO(self._read(item_id))

    def hash_ahead(self, item_ids) -> None:
        """Hashes `item_ids` with many reads in flight: one by one, a 50 ms store would hash 20 items a second."""
        def digest(item_id):
            try:
                return item_id, self._sha256_now(item_id)
            except OSError as e:
                return item_id, e

        with concurrent.futures.ThreadPoolExecutor(_READS_IN_FLIGHT) as pool:
            self._ahead.update(pool.map(digest, item_ids))

    def sha256(self, item_id: str) -> str:
        """The SHA-256 of the item's content (raises `OSError` when it cannot be read)."""
        found = self._ahead.pop(item_id, None)
        if isinstance(found, OSError):
            raise found
        return found or self._sha256_now(item_id)

    def _sha256_now(self, item_id: str) -> str:
        return hashlib.sha256(self._read(item_id)).hexdigest()

    def _read(self, item_id: str) -> bytes:
        return self.list().root.readers[item_id].read_bytes(max_file_bytes() + 1)


@dataclasses.dataclass(frozen=True)
class SourceKind:
    """A row of `SOURCES`: which `data` arguments it reads and how it lists them."""

    name: str
    matches: Callable[[str], bool]
    lister: Callable[[str], Dataset]
    local: bool = True  # local files (`LocalSource`), or items read through fsspec (`ItemSource`)


SOURCES: tuple[SourceKind, ...] = (
    SourceKind("tar-shards", is_tar_data, list_tar_shards, local=False),
    SourceKind("parquet-images", is_parquet_images, list_parquet_images, local=False),
    SourceKind("url-folder", is_url, list_remote_folder, local=False),
    SourceKind("url-manifest", lists_urls, list_url_manifest, local=False),
    SourceKind("manifest", is_manifest, read_manifest),
    SourceKind("folder", lambda data: True, index_directory),
)
"""Kinds of data, tried in order; the first whose `matches` accepts `data` reads it."""


def open_source(data: str | os.PathLike) -> LocalSource | ItemSource:
    """The source that reads `data`: the first row of `SOURCES` that matches it.

    Args:
        data: a folder of class folders, a `.csv` / `.parquet` manifest (of local paths or of URLs),
            WebDataset tar shards (`shards/{00000..00099}.tar`, local or a
            URL), Parquet files with an image column, or a URL (`s3://`, `https://`, `file://`, ...) of a folder
            of class folders.

    Returns:
        A source; nothing is listed until `list()` is called.
    """
    given = os.fsdecode(data)
    kind = next(row for row in SOURCES if row.matches(given))
    return LocalSource(given, kind) if kind.local else ItemSource(given, kind)
