"""Read a manifest (CSV or Parquet) as a dataset, instead of a class-per-folder tree.

A manifest lists one image per row::

    path,label,split,group
    photos/a.jpg,cat,,mia
    /mnt/other/b.png,dog,,

- `path` (required): the image file, relative to the manifest's folder or
  absolute. An absolute path below the manifest's folder (its folder
  resolved, symlinks included) is keyed as the relative one, so `x.jpg`,
  `./x.jpg`, `/abs/x.jpg` and `/link-to-abs/x.jpg` are one file listed twice.
- `label` (required): the class name.
- `split` (optional): `train`, `validation` or `test` (the spellings split
  folders accept: `val`, `valid`, `dev`, `training`, `testing`). Either
  every row names one or none does; then the head stage cuts the splits from
  the split keys, as for a folder without split folders.
- `group` (optional): the same object, patient or photo session. The split
  key of an image is hashed from its group when it has one, so every image
  of a group falls in the same split; with a `split` column, a group whose
  rows name two splits is refused, since that is the leakage groups exist to
  prevent.

Other columns are ignored. The result is a `discovery.Dataset` rooted at the
manifest's folder, so the cache, resume, skipped files and the feature key
work as for folders. A row that cannot be trusted (a missing column or
value, a path listed twice) is refused with the manifest's line number.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import DataError
from ..config.files import is_url
from .discovery import IMAGE_EXTENSIONS, Dataset, ImageEntry, index_directory, normalized_split, split_key, stat_image
from .items import shown_url

__all__ = ["MANIFEST_SUFFIXES", "is_manifest", "lists_urls", "load_dataset", "read_manifest", "url_manifest_items"]

MANIFEST_SUFFIXES = (".csv", ".parquet")
_REQUIRED = ("path", "label")
_KNOWN = ("path", "label", "split", "group")
_GROUP_PREFIX = "group:"  # keeps a group key apart from any path key


def is_manifest(data: str | os.PathLike) -> bool:
    """Whether `data` names a manifest file rather than an image folder."""
    return Path(data).suffix.lower() in MANIFEST_SUFFIXES and not Path(data).is_dir()


def load_dataset(data: str | os.PathLike) -> Dataset:
    """The images of `data`: a manifest file (`read_manifest`) or an image folder (`index_directory`)."""
    return read_manifest(data) if is_manifest(data) else index_directory(data)


def read_manifest(path: str | os.PathLike) -> Dataset:
    """Lists the images of a manifest with their labels, splits and split keys.

    Args:
        path: a `.csv` (UTF-8, header row) or `.parquet` file.

    Returns:
        A `Dataset` rooted at the manifest's folder; an absolute `path` cell
        keeps its absolute path as the entry's relpath.

    Raises:
        DataError: the file is missing or unreadable, lacks a `path` or
            `label` column, has an empty cell in one, lists a path twice,
            names an unknown split, names a split on some rows only, puts
            one group in two splits, or mixes local paths and URLs. Its
            `field` is `"data"`.
    """
    given = Path(path)
    rows = _checked_rows(given)
    root = given.resolve().parent
    listed, ignored, has_splits = _listed(given, rows, lambda line, cell: _relpath(given, root, line, cell))
    entries = [(relpath, label, split, split_key(key_path), *stat_image(root / relpath))
               for _, relpath, label, split, key_path in listed]
    class_names = tuple(sorted({label for _, label, *_ in entries}))
    label_of = {name: i for i, name in enumerate(class_names)}
    return Dataset(
        root=root,
        class_names=class_names,
        entries=tuple(
            ImageEntry(relpath, label_of[label], split, size, mtime, key)
            for relpath, label, split, key, size, mtime in sorted(entries)
        ),
        has_folder_splits=has_splits,
        ignored=tuple(sorted(ignored)),
    )


def lists_urls(data: str | os.PathLike) -> bool:
    """Whether `data` is a manifest whose `path` column holds URLs (`s3://`, `https://`, `file://`, ...)."""
    if not is_manifest(data):
        return False
    try:
        rows = _read_rows(Path(data))
    except DataError:  # refused by `read_manifest`, with its reason
        return False
    return any(is_url(row["path"]) for _, row in rows)


def url_manifest_items(path: str | os.PathLike):
    """`(name, listed, ignored)` of a manifest of URLs: `(line, URL as given, id, label, split, key path)` rows.

    An item's id is its URL as `items.shown_url` records it (no credentials,
    no query string); the key path is what its split key hashes (its group,
    else its id). Raises `DataError` as `read_manifest` does.
    """
    given = Path(path)
    rows = _checked_rows(given)
    listed, ignored, _ = _listed(given, rows, lambda line, cell: shown_url(cell))
    cells = dict(rows)
    return str(given.resolve()), [(line, cells[line]["path"], *rest) for line, *rest in listed], ignored


def _checked_rows(given: Path) -> list[tuple[int, dict[str, str]]]:
    if not given.is_file():
        raise DataError(f"Manifest '{given}' does not exist or is not a file.", field="data")
    rows = _read_rows(given)
    first_url = next((line for line, row in rows if is_url(row["path"])), None)
    first_path = next((line for line, row in rows if not is_url(row["path"])), None)
    if first_url is not None and first_path is not None:
        raise DataError(
            f"Manifest '{given}' mixes local paths (first on line {first_path}) and URLs (first on line "
            f"{first_url}). List only URLs (file:///abs/x.jpg names a local file as a URL) or only paths.",
            field="data",
        )
    return rows


def _listed(given: Path, rows, key_of):
    """`([(line, key, label, split, split key's path)], ignored keys, has_splits)`: what every manifest is checked for.

    `key_of(line, cell)` is how a `path` cell is keyed (a relative path, or a URL without credentials).
    """
    listed, ignored, seen, groups = [], [], {}, {}
    has_splits = bool(rows) and bool(rows[0][1].get("split"))
    for line, row in rows:
        relpath = key_of(line, row["path"])
        if relpath in seen:
            raise DataError(
                f"Manifest '{given}' lists '{shown_url(row['path'])}' twice (lines {seen[relpath]} and {line}); "
                "keep one row per image.",
                field="data",
            )
        seen[relpath] = line
        if os.path.splitext(relpath)[1].lower() not in IMAGE_EXTENSIONS:
            ignored.append(relpath)
            continue
        split = _split(given, line, row.get("split", ""), has_splits)
        group = row.get("group", "")
        if group and has_splits and groups.setdefault(group, (split, line))[0] != split:
            first_split, first_line = groups[group]
            raise DataError(
                f"Manifest '{given}' puts group '{group}' in two splits ({first_split} on line "
                f"{first_line}, {split} on line {line}); a group must stay in one split.",
                field="data",
            )
        listed.append((line, relpath, row["label"], split, _GROUP_PREFIX + group if group else relpath))
    if not listed:
        raise DataError(f"Manifest '{given}' lists no images (extensions: {', '.join(IMAGE_EXTENSIONS)}).",
                        field="data")
    return listed, ignored, has_splits


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs with every cell a stripped string."""
    try:
        table = _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"Manifest '{path}' cannot be read: {e}.", field="data") from None
    columns, records = table
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise DataError(
            f"Manifest '{path}' names column {', '.join(repr(c) for c in twice)} more than once in its "
            "header, so which one holds the value is unclear. Keep one.",
            field="data",
        )
    missing = [c for c in _REQUIRED if c not in columns]
    if missing:
        raise DataError(
            f"Manifest '{path}' has no {' or '.join(repr(c) for c in missing)} column (columns: "
            f"{', '.join(repr(c) for c in columns) or 'none'}). The header must name at least "
            "'path' and 'label'; 'split' and 'group' are optional.",
            field="data",
        )
    rows = []
    for line, record in records:
        for column in _KNOWN:
            _check_cell_type(path, line, column, record.get(column))
        row = {k: ("" if v is None else str(v)).strip() for k, v in record.items() if k in columns}
        for column in _REQUIRED:
            if not row[column]:
                raise DataError(f"Manifest '{path}' line {line}: the '{column}' cell is empty.", field="data")
        rows.append((line, row))
    return rows


def _check_cell_type(path: Path, line: int, column: str, value) -> None:
    """Refuses a Parquet cell that is no text (or, for a label, no integer): it would become a wrong name.

    A float label reads "0.0" or "nan", a list "[1, 2]", bytes "b'..'": none
    is the class or file meant. CSV cells are always text.
    """
    if value is None or isinstance(value, str):
        return
    if column == "label" and isinstance(value, int) and not isinstance(value, bool):
        return
    allowed = "text or an integer" if column == "label" else "text"
    raise DataError(
        f"Manifest '{path}' row {line - 1} (column '{column}'): the value {value!r:.60} is "
        f"{type(value).__name__}, not {allowed}. Write the '{column}' column as strings"
        + (" (class names) or integers." if column == "label" else "."),
        field="data",
    )


def _read_csv(path: Path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or ()]
        reader.fieldnames = columns
        # Line numbers as an editor shows them: the header is line 1.
        records = [(reader.line_num, record) for record in reader]
    return columns, records


def _read_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"Manifest '{path}' is Parquet, which needs pyarrow: pip install 'bottleneck-features[parquet]', "
            "or write the manifest as CSV.",
            field="data",
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for damaged files
        raise DataError(f"Manifest '{path}' is not a readable Parquet file: {e}.", field="data") from None
    # Row i is "line" i + 2, so messages count rows as the CSV form would.
    return table.column_names, [(i + 2, record) for i, record in enumerate(table.to_pylist())]


def _relpath(manifest: Path, root: Path, line: int, cell: str) -> str:
    """The path of a cell as rows are keyed: relative to `root` when it lies below it, so one file has one key."""
    path = Path(cell)
    if path.is_absolute():
        # The folder resolved (symlinks, `..`) as `root` is, so one file spelled through
        # a linked folder has the same key; the file itself may stay a link of its own.
        path = Path(os.path.realpath(os.path.dirname(cell))) / os.path.basename(cell)
        try:
            return path.relative_to(root).as_posix()
        except ValueError:  # outside the manifest's folder: kept absolute
            return path.as_posix()
    normal = os.path.normpath(cell).replace(os.sep, "/")
    if normal in (".", "") or normal.endswith("/"):
        raise DataError(f"Manifest '{manifest}' line {line}: '{cell}' names a folder, not an image.",
                        field="data")
    return normal


def _split(manifest: Path, line: int, cell: str, has_splits: bool) -> str:
    if not has_splits:
        if cell:
            raise DataError(
                f"Manifest '{manifest}' line {line} names split '{cell}' but the first row names none; "
                "give every row a split, or none.",
                field="data",
            )
        return ""
    split = normalized_split(cell)
    if split is None:
        raise DataError(
            f"Manifest '{manifest}' line {line}: split '{cell}' is not train, validation or test"
            + (" (every row must name one when the first does)." if not cell else "."),
            field="data",
        )
    return split
