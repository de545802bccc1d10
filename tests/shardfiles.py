"""What tests read straight from a feature set's shard files, below the store's API."""

from __future__ import annotations

from pathlib import Path

import h5py

from pipeline.store import FeatureStore


def shard_digests(set_dir: Path) -> list[str]:
    """The sha256 of every row of every complete shard, duplicates kept (the store's scan would merge them)."""
    digests = []
    for name in FeatureStore(set_dir).shard_names():
        with h5py.File(set_dir / "shards" / name, "r") as f:
            digests += f["sha256"].asstr()[:].tolist()
    return digests
