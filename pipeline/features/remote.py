"""Images behind fsspec URLs: folders (`s3://bucket/flowers`, `https://host/flowers/`) and manifests of URLs.

The layout is a local folder's (`discovery`): one folder per class,
optionally under split folders `train/`, `validation/`, `test/`; names
starting with "." are skipped and extensions are filtered case-insensitively.
The listing is one `fs.find` for object stores (a recursive listing); an
HTTP server's index pages, one per folder, are read many at a time. An
object's change token comes from the same listing (`items.change_token`), or
from a HEAD request where the listing has no size (HTTP), so a re-run with
nothing changed reads no object's bytes.

A manifest (`manifest`) whose `path` column holds URLs lists its items as
such a folder does: labels, splits and groups from the manifest, size and
change token from one `fs.info` per URL (many at a time). A URL the store
does not hold stays listed, and is skipped at decode with its reason.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any

from ..errors import DataError
from .discovery import IMAGE_EXTENSIONS, Dataset, normalized_split
from .items import Item, build_dataset, change_token, fetch, filesystem, shown_url
from .manifest import url_manifest_items

__all__ = ["RemoteFile", "list_remote_folder", "list_url_manifest"]

_INFOS_IN_FLIGHT = 64  # HEAD requests and index pages at once: 400 objects behind 50 ms take 0.3 s, not 20
_PAGED = {"http", "https"}  # protocols listed one index page per folder, which `fs.find` reads one by one


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteFile:
    """The reader of one object (picklable: fsspec filesystems pickle with their options)."""

    fs: Any
    path: str

    def read_bytes(self, limit: int) -> bytes:
        return fetch(self.fs, self.path, 0, limit)


@dataclasses.dataclass(frozen=True)
class _Missing:
    """The reader of a listed URL the store does not hold: no request is sent for it again this run."""

    reason: str

    def read_bytes(self, limit: int) -> bytes:
        raise FileNotFoundError(self.reason)


def list_url_manifest(manifest: str) -> Dataset:
    """Lists the URLs of a manifest with their labels and splits, and each object's size and change token.

    Raises:
        DataError: as `manifest.read_manifest`, or a URL's protocol cannot be opened.
    """
    name, listed, ignored = url_manifest_items(manifest)

    def item(row):
        line, url, item_id, label, split, key_path = row
        fs, path = filesystem(url)
        try:
            info = fs.info(path)
            size, token, reader = int(info.get("size") or 0), change_token(info), RemoteFile(fs, path)
        except FileNotFoundError:
            size, token, reader = -1, -1, _Missing(f"not found: no object at this URL (manifest line {line})")
        except Exception:  # noqa: BLE001 - no token: hashed every run; a read error shows at decode, with its reason
            size, token, reader = -1, -1, RemoteFile(fs, path)
        return Item(item_id, label, split, size, token, reader, key_path)

    with concurrent.futures.ThreadPoolExecutor(_INFOS_IN_FLIGHT) as pool:
        items = list(pool.map(item, listed))
    return dataclasses.replace(build_dataset(name, items), ignored=tuple(sorted(ignored)))


def list_remote_folder(url: str) -> Dataset:
    """Lists the images under a folder URL with their labels (the local folder layout).

    Raises:
        DataError: the URL cannot be listed or holds no image in a class folder.
    """
    fs, root = filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache(root)  # a listing cached earlier in this process would hide changed objects
    try:
        found = _find(fs, root)
    except Exception as e:  # noqa: BLE001 - each store raises its own types
        raise DataError(f"Data URL '{shown_url(url)}' cannot be listed: {type(e).__name__}: {e}.", field="data") from None
    _complete_infos(fs, found)
    files = {}
    for path, info in found.items():
        rel = path[len(root):].strip("/") if path.startswith(root) else path.rpartition("/")[2]
        parts = rel.split("/")
        if (len(parts) > 1 and not any(p.startswith(".") for p in parts)
                and "." + rel.rpartition(".")[2].lower() in IMAGE_EXTENSIONS):
            files[rel] = (path, info)
    tops = {rel.split("/", 1)[0] for rel in files}
    split_layout = bool(tops) and all(normalized_split(t) for t in tops) and "train" in map(normalized_split, tops)
    items = []
    for rel, (path, info) in files.items():
        parts = rel.split("/")
        split = normalized_split(parts[0]) if split_layout else ""
        below = parts[1:] if split_layout else parts
        if len(below) < 2:
            continue  # an image outside a class folder has no label
        items.append(Item(rel, below[0], split, int(info.get("size") or 0), change_token(info),
                          RemoteFile(fs, path), "/".join(below)))
    if not items:
        raise DataError(
            f"Found no images in class folders under '{shown_url(url)}' ({len(found)} objects listed). "
            f"Expected '<url>/<class>/<image>' with an extension among {', '.join(IMAGE_EXTENSIONS)}, "
            "or a manifest listing the URLs.",
            field="data",
        )
    return build_dataset(shown_url(url), items)


def _find(fs, root: str) -> dict:
    """`{path: info}` of every file under `root`: `fs.find`, or the folders' index pages read many at a time."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & _PAGED:
        return fs.find(root, detail=True, withdirs=False)
    found, seen, level = {}, {root}, [root]
    with concurrent.futures.ThreadPoolExecutor(_INFOS_IN_FLIGHT) as pool:
        while level:
            below = []
            for listing in pool.map(lambda folder: fs.ls(folder, detail=True), level):
                for info in listing:
                    name = info["name"].rstrip("/")
                    if info["type"] == "directory":
                        if name not in seen:  # a page that links back up never loops
                            seen.add(name)
                            below.append(info["name"])
                    else:
                        found[name] = info
            level = below
    return found


def _complete_infos(fs, found: dict) -> None:
    """Asks each object without a size or change token for them (an HTTP index page lists names only).

    Many at a time: one HEAD request per object, so a re-run reads no image byte.
    """
    bare = [path for path, info in found.items() if info.get("size") is None]

    def info_of(path):
        try:
            return path, fs.info(path)
        except Exception:  # noqa: BLE001 - left bare: the item is hashed every run, and read errors show at decode
            return path, found[path]

    with concurrent.futures.ThreadPoolExecutor(_INFOS_IN_FLIGHT) as pool:
        found.update(pool.map(info_of, bare))
