"""Parquet image columns as data: `train.parquet`, `s3://b/data/train-{00000..00003}-of-00004.parquet`.

The layout Hugging Face datasets writes: an image column holding the
encoded image, either as bytes or as a `{bytes, path}` struct; a `label`
column (an integer index into the `ClassLabel` names recorded in the file's
`huggingface` metadata, or the class name itself); an optional `split`
column (`train`, `validation`, `test` and their spellings). The image column
is the one named `image`, else the only binary or `{bytes, ...}` column. A
Parquet file with a `path` column instead is a manifest (`manifest`).

An item's id is `<file>/<row>` (`train.parquet/00000042`) and its change
token is the file's (ETag, version, mtime) with the row: rewriting a file
re-hashes its rows, and only the rows whose image changed are extracted
again. Listing reads the label and split columns only; image cells are read
one row group at a time when decoded, the last few row groups kept.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

from ..errors import DataError
from .discovery import Dataset, normalized_split
from .items import Item, build_dataset, change_token, filesystem, recorded_root, shown_url
from .tar_source import expand_braces

__all__ = ["ParquetCell", "is_parquet_images", "list_parquet_images"]

_CACHED_ROW_GROUPS = 4  # per process: decode threads walk rows in order, so a few groups serve them all


def is_parquet_images(data: str) -> bool:
    """Whether `data` names Parquet files with an image column (not a manifest of paths)."""
    if not data.lower().endswith(".parquet"):
        return False
    try:
        fs, _ = filesystem(data.split("{", 1)[0] or ".")
        schema = _schema(fs, fs._strip_protocol(expand_braces(data)[0]))
    except Exception:  # noqa: BLE001 - unreadable here: the manifest reader reports it with its reason
        return False
    return "path" not in schema.names and _image_column(schema) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class ParquetCell:
    """The reader of one image cell: row `index` of row group `group` of a file."""

    fs: Any
    path: str
    token: int
    group: int
    index: int
    column: str

    def read_bytes(self, limit: int) -> bytes:
        try:
            cell = _row_group(self.fs, self.path, self.token, self.group, self.column)[self.index].as_py()
        except Exception as e:  # noqa: BLE001 - pyarrow and the store raise their own types
            raise OSError(f"cannot read row group {self.group}: {type(e).__name__}: {e}") from None
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if data is None:
            where = cell.get("path") if isinstance(cell, dict) else None
            raise OSError(f"the image cell holds no bytes{f' (only a path: {where!r})' if where else ''}")
        return data[:limit]


@functools.lru_cache(maxsize=_CACHED_ROW_GROUPS)
def _row_group(fs, path: str, token: int, group: int, column: str):
    """One row group's image column (`token` keys the cache, so a rewritten file is read again)."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).read_row_group(group, columns=[column]).column(column)


def list_parquet_images(data: str) -> Dataset:
    """Lists the rows of the Parquet files `data` names, with labels and splits.

    Raises:
        DataError: a file has no `label` column or image column, or cannot be read.
    """
    fs, _ = filesystem(data.split("{", 1)[0] or ".")
    files = [fs._strip_protocol(name) for name in expand_braces(data)]
    folder = files[0].rpartition("/")[0]
    items, names = [], None
    for path in files:
        name = path[len(folder):].lstrip("/") if folder else path
        try:
            file_items, file_names = _list_file(fs, path, name)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - each store raises its own types
            raise DataError(f"Parquet file '{shown_url(name)}' cannot be read: {type(e).__name__}: {e}.",
                            field="data") from None
        items += file_items
        names = names or file_names
    if names is not None:  # ClassLabel: class names as the dataset declares them, in its order
        order = {n: i for i, n in enumerate(names)}
        dataset = build_dataset(recorded_root(data), items)
        return dataclasses.replace(dataset, class_names=tuple(names), entries=tuple(
            dataclasses.replace(e, label=order[dataset.class_names[e.label]]) for e in dataset.entries))
    return build_dataset(recorded_root(data), items, numeric_labels=all(i.label.isdigit() for i in items))


def _list_file(fs, path: str, name: str):
    import pyarrow.parquet as pq

    token = change_token(fs.info(path))
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        column = _image_column(schema)
        if column is None or "label" not in schema.names:
            raise DataError(
                f"Parquet file '{name}' needs an image column (bytes, or a {{bytes, path}} struct, named 'image' "
                f"when there are several) and a 'label' column. Columns: {', '.join(schema.names)}.",
                field="data",
            )
        wanted = ["label"] + (["split"] if "split" in schema.names else [])
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        table = pf.read(columns=wanted)
    names = _class_label_names(schema)
    labels = table.column("label").to_pylist()
    splits = table.column("split").to_pylist() if "split" in wanted else [""] * len(labels)
    items, row = [], 0
    for group, count in enumerate(sizes):
        for index in range(count):
            label = labels[row]
            if label is not None:
                text = names[label] if names and isinstance(label, int) and 0 <= label < len(names) else str(label)
                item_token = int.from_bytes(hashlib.sha256(f"{token}:{row}".encode()).digest()[:7], "big")
                items.append(Item(f"{name}/{row:08d}", text, _split(name, row, splits[row]), 0, item_token,
                                  ParquetCell(fs, path, token, group, index, column)))
            row += 1
    return items, names


def _split(name: str, row: int, cell) -> str:
    if not cell:
        return ""
    split = normalized_split(str(cell))
    if split is None:
        raise DataError(f"Parquet file '{name}' row {row}: split {cell!r} is not train, validation or test "
                        "(nor val, valid, dev, training, testing).", field="data")
    return split


def _schema(fs, path: str):
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow


def _image_column(schema) -> str | None:
    """The image column: `image` if it holds images, else the only column that does."""
    import pyarrow as pa

    def holds_images(field) -> bool:
        t = field.type
        return (pa.types.is_binary(t) or pa.types.is_large_binary(t)
                or (pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields))))

    candidates = [f.name for f in schema if holds_images(f)]
    if "image" in candidates:
        return "image"
    return candidates[0] if len(candidates) == 1 else None


def _class_label_names(schema) -> list[str] | None:
    """The `ClassLabel` names of the `label` column, from the `huggingface` metadata datasets writes."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(raw)["info"]["features"]["label"]
    except (TypeError, ValueError, KeyError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if isinstance(names, list) and names else None
