"""Write a feature set's arrays in formats other tools read: NumPy `.npz` or Parquet.

Both hold the same columns, row i being image i of the set: `features`
(`.npz`: the stored shape; Parquet: one fixed-size list per row, flattened,
with the shape in the schema metadata), `labels` (class indices), `paths`
(relative to the data folder; Parquet adds `path_bytes`, each name's exact
bytes, as a name that is not valid UTF-8 is shown with `\\xNN` escapes in its
text column), `split_keys` and `folder_splits`, plus the
class names and the set's content hash (`.npz`: arrays of their own;
Parquet: schema metadata). The file is written to a temporary name and
renamed, so an interrupted export never leaves a partial file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._atomic import replacing, writing
from ..errors import ConfigError
from .feature_set import read_feature_set

__all__ = ["EXPORT_FORMATS", "export_feature_set"]

EXPORT_FORMATS = ("npz", "parquet")


def export_feature_set(
    path: str | os.PathLike, out: str | os.PathLike, *, format: str | None = None, overwrite: bool = False
) -> Path:
    """Writes the feature set at `path` to the file `out`.

    Args:
        path: the set folder or its `features.h5`.
        out: the file to write.
        format: `"npz"` or `"parquet"`; `None` takes it from `out`'s suffix.
        overwrite: replace `out` if it exists.

    Returns:
        The written file.

    Raises:
        ConfigError: unknown `format`, `out` exists without `overwrite`, or
            Parquet without pyarrow installed.
        FeatureStoreError: the set is incomplete or damaged.
    """
    out = Path(out)
    format = _checked_format(format, out)
    if out.exists() and not overwrite:
        raise ConfigError(f"`out` '{out}' already exists. Pass overwrite=True to replace it, or another file.",
                          field="overwrite")
    if format == "parquet":
        _require_pyarrow()
    fs = read_feature_set(path)
    with writing(out), replacing(out) as tmp:
        if format == "npz":
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to the temporary name
                np.savez(
                    f, features=fs.features, labels=fs.labels, paths=np.array(fs.paths, dtype=str),
                    split_keys=fs.split_keys, folder_splits=np.array(fs.folder_splits, dtype=str),
                    class_names=np.array(fs.class_names, dtype=str), content_hash=np.array(fs.content_hash),
                )
        else:
            _write_parquet(fs, tmp)
    return out


def _checked_format(format: str | None, out: Path) -> str:
    chosen = format or out.suffix.lower().lstrip(".")
    if chosen not in EXPORT_FORMATS:
        raise ConfigError(
            f"`format` must be one of {', '.join(EXPORT_FORMATS)}. Received: format={format!r} "
            f"for out='{out}'. Pass format='npz' or 'parquet', or end `out` in .npz or .parquet.",
            field="format",
        )
    return chosen


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError(
            "Parquet export needs pyarrow: pip install 'bottleneck-features[parquet]', or export as npz.",
            field="format",
        ) from None


def _write_parquet(fs, tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = fs.features.reshape(len(fs.features), -1)
    features = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), rows.shape[1])
    table = pa.table({
        # Parquet text is UTF-8: a file name that is not gets its bytes escaped (`\\xff`) here, and
        # `path_bytes` holds every name's exact bytes.
        "path": [os.fsencode(p).decode("utf-8", "backslashreplace") for p in fs.paths],
        "path_bytes": pa.array([os.fsencode(p) for p in fs.paths], pa.binary()),
        "label": fs.labels,
        "split_key": fs.split_keys,
        "folder_split": list(fs.folder_splits),
        "features": features,
    })
    metadata = {
        "class_names": json.dumps(list(fs.class_names)),
        "feature_shape": json.dumps(list(fs.features.shape[1:])),
        "content_hash": fs.content_hash,
    }
    pq.write_table(table.replace_schema_metadata(metadata), tmp)
