"""Files the source tests read: WebDataset tar shards and Parquet image columns as Hugging Face datasets writes them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path


def write_shard(path: Path, samples) -> Path:
    """A tar of `(key, {ext: bytes})` samples, members in sample order (as WebDataset writers do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def shards_of(folder: Path, out: Path, per_shard: int = 3) -> list[Path]:
    """The class folders of `folder` as shards of `per_shard` samples, labels in `.txt` members."""
    images = sorted(folder.rglob("*.png"))
    samples = [(f"s{i:04d}", {"png": p.read_bytes(), "txt": p.parent.name.encode()}) for i, p in enumerate(images)]
    return [write_shard(out / f"{n:03d}.tar", samples[i:i + per_shard])
            for n, i in enumerate(range(0, len(samples), per_shard))]


def write_hf_parquet(folder, path, *, row_group_size=3, splits=False):
    """The class folders of `folder` as Hugging Face datasets writes an image dataset: structs, ClassLabel ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = sorted(folder.rglob("*.png"))
    names = sorted({p.parent.name for p in images})
    table = {
        "image": [{"bytes": p.read_bytes(), "path": p.name} for p in images],
        "label": [names.index(p.parent.name) for p in images],
    }
    if splits:
        table["split"] = ["train" if i % 2 else "val" for i in range(len(images))]
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    schema = pa.Table.from_pydict(table).schema.with_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(pa.Table.from_pydict(table, schema=schema), path, row_group_size=row_group_size)
    return path
