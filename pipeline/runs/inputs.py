"""What `predict` reads: local image files and folders, and the data sources `features` reads.

`expand_inputs(paths)` turns what the user gave into one input per image,
in order:

- a local folder stands for every image below it (sorted, dotfiles
  skipped), class folders or not: prediction needs no labels;
- a local file is itself (a missing or undecodable one gets an error row);
- a URL of one image (`https://host/a.jpg`, `s3://b/a.png`) is read
  through fsspec;
- anything else `features` reads (`sources.open_source`: a folder behind a
  URL, WebDataset tar shards, Parquet image columns, a CSV or Parquet
  manifest) is listed by that source, and each listed item is an input
  named as the feature set records it: the object's URL, or the shard (or
  Parquet file) and the key (`shards/00001.tar/000042.jpg`). A shard that
  cannot be read becomes one error row with the listing's reason.

An input is a local path (`str`), a `SourceItem` or an `Unreadable`.
`decode_root(inputs)` is the root `decode.decode_batches` reads them from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import ConfigError, DataError
from ..features import discovery
from ..features.items import ItemRoot, filesystem, is_url, shown_url
from ..features.remote import RemoteFile
from ..features.sources import open_source
from ..features.tar_source import expand_braces

log = logging.getLogger("bottleneck")

__all__ = ["SourceItem", "Unreadable", "decode_root", "expand_inputs", "input_name", "item_file", "listed_file"]


@dataclasses.dataclass(frozen=True)
class SourceItem:
    """An image that is not a local file: an item of a data source.

    Attributes:
        name: what the prediction row names it by (its URL, or shard and key).
        root: the source's `items.ItemRoot`.
        item_id: the item's id in the source's listing.
    """

    name: str
    root: ItemRoot
    item_id: str

    @property
    def reader(self):
        """The item's reader, read only when asked (`root / item_id` starts the read at once)."""
        return self.root.readers[self.item_id]


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """Something given that holds images which cannot be read (a broken tar shard), with the reason."""

    name: str
    reason: str


def input_name(item) -> str:
    """The name a prediction row gives an input."""
    return item.name if isinstance(item, (SourceItem, Unreadable)) else os.fspath(item)


def item_file(item):
    """What `decode.load_image` reads an input from: a local path, or the item's reader."""
    return item.reader if isinstance(item, SourceItem) else item


def listed_file(dataset: discovery.Dataset, relpath: str):
    """What `decode.load_image` reads an item of a listed dataset from: its local path, or its reader."""
    root = dataset.root
    return root.readers[relpath] if isinstance(root, ItemRoot) else root / relpath


class _DecodeRoot:
    """`root / name` for `decode.decode_batches`: the item's reader (its read started), or the local path."""

    def __init__(self, inputs: Sequence):
        self._items = {item.name: item for item in inputs if isinstance(item, SourceItem)}

    def __truediv__(self, name: str):
        item = self._items.get(name)
        return item.root / item.item_id if item is not None else Path(name)


def decode_root(inputs: Sequence) -> _DecodeRoot:
    """The root that `decode.decode_batches` reads `inputs` from, each by its `input_name`."""
    return _DecodeRoot(inputs)


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list:
    """One input per image of `paths`, in the order given (folders and sources expanded in place).

    Raises:
        ConfigError: no path was given.
        DataError: a local folder holds no images, or a source cannot be
            listed (its reason, as `features` gives it).
    """
    given = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not given:
        raise ConfigError("`paths` must name at least one image file or folder. Received: paths=[].", field="paths")
    inputs: list = []
    for path in given:
        if os.path.isdir(path):
            inputs.extend(_folder_images(path))
        elif is_url(path):
            inputs.extend([_remote_image(path)] if _is_image_name(path) else _source_items(open_source(path), path))
        elif _is_image_name(path) or not (os.path.isfile(path) or "{" in path):
            inputs.append(path)  # a missing or bad file gets an error row; a brace pattern names shards
        else:
            source = open_source(path)
            inputs.extend([path] if source.kind.name == "folder" else _source_items(source, path))
    return inputs


def _is_image_name(path: str) -> bool:
    """Whether a path or URL names one image (by its extension), not a source to list."""
    return shown_url(path).lower().endswith(discovery.IMAGE_EXTENSIONS)


def _folder_images(path: str) -> list[str]:
    listed = sorted(
        Path(dirpath) / name
        for dirpath, dirnames, names in os.walk(path)
        for name in names
        if not name.startswith(".")
        and not any(part.startswith(".") for part in Path(dirpath).relative_to(path).parts)
    )
    found = [str(p) for p in listed if p.name.lower().endswith(discovery.IMAGE_EXTENSIONS)]
    others = [p.name for p in listed if not p.name.lower().endswith(discovery.IMAGE_EXTENSIONS)]
    if others:
        log.warning("Left out %d file(s) of '%s' that are not images by extension: %s%s", len(others), path,
                    ", ".join(others[:5]), ", ..." if len(others) > 5 else "")
    if not found:
        raise DataError(f"Folder '{path}' holds no images (extensions: {', '.join(discovery.IMAGE_EXTENSIONS)}).")
    return found


def _remote_image(url: str) -> SourceItem:
    fs, path = filesystem(url)
    name = shown_url(url)
    return SourceItem(name, ItemRoot(name, {path: RemoteFile(fs, path)}), path)


def _source_items(source, data: str) -> list:
    """The items of a source, named as the feature set records them, then its unreadable parts."""
    dataset = source.list()
    if source.is_local:  # a manifest: its images are local files
        return [str(dataset.root / entry.relpath) for entry in dataset.entries]
    # A URL folder's ids are relative to it; tar shards' and Parquet files' to the folder of their files.
    folder = data if source.kind.name == "url-folder" else expand_braces(data)[0].rpartition("/")[0]
    prefix = shown_url(folder).rstrip("/") + "/" if folder else ""
    items: list = [SourceItem(prefix + e.relpath, dataset.root, e.relpath) for e in dataset.entries]
    items += [Unreadable(prefix + part, reason) for part, reason in dataset.skipped_dirs]
    if dataset.outside_classes:
        log.warning("Left out %d item(s) of '%s' without a label (the layout `features` reads): %s%s",
                    len(dataset.outside_classes), dataset.root, ", ".join(dataset.outside_classes[:5]),
                    ", ..." if len(dataset.outside_classes) > 5 else "")
    return items
