"""Crafted feature sets cannot make the reader return bytes from outside the set.

HDF5 can store a dataset's bytes in another file (external storage), point a
name at another file (external links) or assemble a dataset from other files
(virtual datasets). A shard or index using any of these, or a shard without
the fletcher32 checksum its rows are trusted by, is refused by readers and
set aside by the next extraction, never trained on.
"""

import h5py
import numpy as np
import pytest

from pipeline.cli import ExitStatus, main
from pipeline.errors import FeatureStoreError
from pipeline.store import read_feature_set

FAST = ["--model", "resnet50", "--size", "32", "--weights", "none", "--batch-size", "8"]
SECRET = np.arange(64 * 2048, dtype=np.float32)  # what a crafted set would leak


@pytest.fixture
def feature_set(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    assert main(["features", str(tiny_dataset), *FAST, "--cache-dir", str(cache), "-q"]) == ExitStatus.OK
    (index,) = cache.glob("*/features.h5")
    return tiny_dataset, cache, index


def _rewrite_shard(shard, make_features):
    """Replaces a shard by one with the same rows whose `features` come from `make_features(f, shape, dtype)`."""
    with h5py.File(shard, "r") as f:
        shape, dtype = f["features"].shape, f["features"].dtype
        sha256, path, attrs = f["sha256"][:], f["path"][:], dict(f.attrs)
    shard.unlink()
    with h5py.File(shard, "w") as f:
        f.attrs.update(attrs)
        f["sha256"], f["path"] = sha256, path
        make_features(f, shape, dtype)


def _external_storage(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET.tobytes())

    def make(f, shape, dtype):
        f.create_dataset("features", shape=shape, dtype=np.float32, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])

    return make


def _external_link(tmp_path):
    other = tmp_path / "other.h5"

    def make(f, shape, dtype):
        with h5py.File(other, "w") as o:
            o["features"] = SECRET[: int(np.prod(shape))].reshape(shape)
        f["features"] = h5py.ExternalLink(str(other), "features")

    return make


def _virtual_outside(tmp_path):
    other = tmp_path / "other.h5"

    def make(f, shape, dtype):
        with h5py.File(other, "w") as o:
            o["features"] = SECRET[: int(np.prod(shape))].reshape(shape)
        layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(other), "features", shape=shape)
        f.create_virtual_dataset("features", layout)

    return make


def _no_checksum(tmp_path):
    def make(f, shape, dtype):
        f["features"] = SECRET[: int(np.prod(shape))].reshape(shape)  # contiguous, no fletcher32

    return make


CRAFTED = {
    "external storage": _external_storage,
    "external link": _external_link,
    "virtual source outside the set": _virtual_outside,
    "no checksum filter": _no_checksum,
}


@pytest.mark.parametrize("kind", CRAFTED)
def test_a_crafted_shard_is_refused_by_readers_and_replaced_by_extraction(feature_set, tmp_path, kind):
    data, cache, index = feature_set
    clean = read_feature_set(index).features
    (shard,) = (index.parent / "shards").glob("*.h5")
    _rewrite_shard(shard, CRAFTED[kind](tmp_path))

    with pytest.raises(FeatureStoreError, match=str(shard.name)):
        read_feature_set(index)

    assert main(["features", str(data), *FAST, "--cache-dir", str(cache), "--verify", "-q"]) == ExitStatus.OK
    rebuilt = read_feature_set(index).features
    assert np.allclose(rebuilt, clean, rtol=1e-5, atol=1e-6)
    assert not np.isin(SECRET[1:64], rebuilt).any()
