"""Crafted feature sets cannot make the reader return bytes from outside the set.

HDF5 can store a dataset's bytes in another file (external storage), point a
name at another file (external links) or assemble a dataset from other files
(virtual datasets). A shard or index using any of these, or a shard without
the fletcher32 checksum its rows are trusted by, is refused by readers and
set aside by the next extraction, never trained on.
"""

import dataclasses
import os
import shutil

import h5py
import numpy as np
import pytest
from imagegen import make_dataset

from pipeline.cli import ExitStatus, main
from pipeline.errors import FeatureStoreError
from pipeline.config import ExtractConfig
from pipeline.features import feature_set_dir, feature_spec
from pipeline.store import feature_key, FeatureStore, IndexRow, read_feature_set
from pipeline.store.index import _sealed

FAST = ["--model", "mobilenet_025", "--size", "32", "--weights", "none", "--batch-size", "8"]
SECRET = np.arange(64 * 2048, dtype=np.float32)  # what a crafted set would leak
KEY = "k" * 64


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny dataset and its feature set, extracted once for the module; tests copy it."""
    root = tmp_path_factory.mktemp("built")
    data = make_dataset(root / "data")
    assert main(["features", str(data), *FAST, "--cache-dir", str(root / "cache"), "-q"]) == ExitStatus.OK
    return root


@pytest.fixture
def feature_set(built, tmp_path):
    # copytree keeps mtimes, so the copied set is up to date for the copied data.
    shutil.copytree(built / "data", tmp_path / "data")
    shutil.copytree(built / "cache", tmp_path / "cache")
    # An unnamed set's folder follows its data folder's path: give the copy the copied data's name.
    (copied,) = (tmp_path / "cache").glob("*/features.h5")
    config = ExtractConfig(data=str(tmp_path / "data"), model="mobilenet_025", size=32, weights="none",
                           cache_dir=str(tmp_path / "cache"))
    spec = feature_spec(config)
    set_dir = feature_set_dir(config, spec, feature_key(spec))
    copied.parent.rename(set_dir)
    return tmp_path / "data", tmp_path / "cache", set_dir / "features.h5"


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


@pytest.mark.slow
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


# -- every dataset of a shard ------------------------------------------------------


def _store_with_one_shard(root):
    """A feature set of two rows in one shard, written by the store itself."""
    store = FeatureStore(root)
    digests = ["a" * 64, "b" * 64]
    with store.shard_appender(KEY, (4,), "float32", shard_rows=8) as shard:
        locations = shard.append(np.ones((2, 4), np.float32), digests, ["c/a.png", "c/b.png"])
    rows = [IndexRow(f"c/{d[0]}.png", 0, "", 0.5, 1, 2, d) for d in digests]
    store.write_index(rows, locations, [], ["c"], feature_shape=(4,), dtype="float32", attrs={"feature_key": KEY})
    return store


def _replace_dataset(shard, name, make):
    """Replaces dataset `name` of a shard by what `make(f, values)` puts there."""
    with h5py.File(shard, "r+") as f:
        values = f[name][:]
        del f[name]
        make(f, name, values)


def _as_external_storage(tmp_path):
    def make(f, name, values):
        outside = tmp_path / f"{name}.bin"
        outside.write_bytes(values.tobytes())
        f.create_dataset(name, shape=values.shape, dtype=values.dtype,
                         external=[(str(outside), 0, h5py.h5f.UNLIMITED)])
    return make


def _as_external_link(tmp_path):
    def make(f, name, values):
        with h5py.File(tmp_path / "other.h5", "w") as o:
            o[name] = values
        f[name] = h5py.ExternalLink(str(tmp_path / "other.h5"), name)
    return make


def _as_soft_link(tmp_path):
    def make(f, name, values):
        f[f"moved-{name}"] = values
        f[name] = h5py.SoftLink(f"/moved-{name}")
    return make


def _as_virtual(tmp_path):
    def make(f, name, values):
        with h5py.File(tmp_path / "other.h5", "w") as o:
            o[name] = values
        layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
        layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), name, shape=values.shape)
        f.create_virtual_dataset(name, layout)
    return make


def _as_filter_plugin(tmp_path):
    def make(f, name, values):
        # An optional filter HDF5 cannot find is skipped on read, after searching the plugin path.
        f.create_dataset(name, data=values, chunks=True, compression=32017, allow_unknown_filter=True)
    return make


DATASET_CRAFTS = {
    "external storage": _as_external_storage,
    "external link": _as_external_link,
    "soft link": _as_soft_link,
    "virtual dataset": _as_virtual,
    "filter plugin": _as_filter_plugin,
}


@pytest.mark.parametrize("name", ["features", "sha256", "path"])
@pytest.mark.parametrize("kind", DATASET_CRAFTS)
def test_every_dataset_of_a_shard_must_be_plain(tmp_path, name, kind):
    store = _store_with_one_shard(tmp_path / "set")
    (shard,) = store.shard_names()
    _replace_dataset(store.shard_dir / shard, name, DATASET_CRAFTS[kind](tmp_path))

    with pytest.raises(FeatureStoreError, match=f"(?s){shard}.*`{name}`.*verify=True") as refused:
        read_feature_set(store.root)
    assert refused.value.field == "verify"
    assert store.scan_shards(KEY) == ({}, [shard])  # so the features stage sets it aside
    assert store.verify_shards([shard]) == [shard]


def test_a_shard_swapped_for_another_one_is_refused_by_readers_and_found_by_verify(tmp_path):
    store = _store_with_one_shard(tmp_path / "set")
    (shard,) = store.shard_names()
    other = FeatureStore(tmp_path / "other")
    with other.shard_appender("o" * 64, (4,), "float32", shard_rows=8) as appender:  # another backbone
        appender.append(np.full((2, 4), 7, np.float32), ["a" * 64, "b" * 64], ["c/a.png", "c/b.png"])
    state = store.read_index_state()
    shutil.copy(other.shard_dir / other.shard_names()[0], store.shard_dir / shard)
    os.utime(store.shard_dir / shard, ns=(state.shards[0].mtime_ns, state.shards[0].mtime_ns))
    assert (store.shard_dir / shard).stat().st_size == state.shards[0].size  # it looks unchanged

    with pytest.raises(FeatureStoreError, match=f"{shard}' holds other images"):
        read_feature_set(store.root)
    assert store.shards_unchanged(state) and not store.shards_unchanged(state, verify=True)
    assert store.scan_shards(KEY) == ({}, [shard])  # so `verify=True` sets it aside


def _text_features(f, values):
    f.create_dataset("features", data=np.full(values.shape, b"1.0"), chunks=True, fletcher32=True)


def _narrower_features(f, values):
    f.create_dataset("features", data=values[:, :2], chunks=True, fletcher32=True)


def _fewer_features(f, values):
    f.create_dataset("features", data=values[:1], maxshape=values.shape, chunks=True, fletcher32=True)


@pytest.mark.parametrize("craft, problem", [
    (_text_features, "not float features"),
    (_narrower_features, r"shape \(2,\)"),
    (_fewer_features, "one row per image"),
])
def test_a_shard_whose_rows_do_not_fit_the_index_is_refused_not_a_crash(tmp_path, craft, problem):
    store = _store_with_one_shard(tmp_path / "set")
    (shard,) = store.shard_names()
    for digest in ("c", "d"):  # shards that do fit: the crafted one is not the most common shape
        with store.shard_appender(KEY, (4,), "float32", shard_rows=8) as appender:
            appender.append(np.ones((1, 4), np.float32), [digest * 64], [f"c/{digest}.png"])
    _replace_dataset(store.shard_dir / shard, "features", lambda f, name, values: craft(f, values))

    with pytest.raises(FeatureStoreError, match=f"(?s){shard}.*{problem}.*verify=True"):
        read_feature_set(store.root)
    assert store.scan_shards(KEY)[1] == [shard]  # so the features stage sets it aside


# -- the index -------------------------------------------------------------------


def _craft_index(index, craft):
    """Edits the index with `craft(f)` and seals it again: the seal is a checksum, not a signature."""
    with h5py.File(index, "r+") as f:
        craft(f)
    index.write_bytes(_sealed(index.read_bytes()))


def _features_from(source):
    """Replaces the index's `features` by a virtual dataset over `source(f)`'s `features`."""
    def craft(f):
        shape = f["features"].shape
        del f["features"]
        layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
        layout[:] = h5py.VirtualSource(source(f, shape), "features", shape=shape)
        f.create_virtual_dataset("features", layout)
    return craft


def _secret_h5(path, shape):
    with h5py.File(path, "w") as o:
        o["features"] = SECRET[: int(np.prod(shape))].reshape(shape)
    return path


def _index_crafts(index):
    secret = index.parent.parent / "secret.bin"
    secret.write_bytes(SECRET.tobytes())

    def labels_stored_outside(f):
        n = len(f["labels"])
        del f["labels"]
        f.create_dataset("labels", shape=(n,), dtype=np.int64, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])

    def paths_linked_outside(f):
        _secret_h5(index.parent.parent / "paths.h5", (1,))
        del f["images/path"]
        f["images/path"] = h5py.ExternalLink(str(index.parent.parent / "paths.h5"), "features")

    def labels_soft_linked(f):
        del f["labels"]
        f["labels"] = h5py.SoftLink("/images/row")

    return {
        "features from a file outside the set": _features_from(
            lambda f, shape: str(_secret_h5(index.parent.parent / "outside.h5", shape))),
        "features from a file up from shards/": _features_from(
            lambda f, shape: f"shards/../{_secret_h5(index.parent / 'beside.h5', shape).name}"),
        "features from an unlisted file in shards/": _features_from(
            lambda f, shape: f"shards/{_secret_h5(index.parent / 'shards' / '.hidden.h5', shape).name}"),
        "labels in external storage": labels_stored_outside,
        "paths through an external link": paths_linked_outside,
        "labels through a soft link": labels_soft_linked,
    }


INDEX_CRAFTS = [
    "features from a file outside the set",
    "features from a file up from shards/",
    "features from an unlisted file in shards/",
    "labels in external storage",
    "paths through an external link",
    "labels through a soft link",
]


@pytest.mark.parametrize("kind", INDEX_CRAFTS)
def test_a_crafted_index_is_refused_and_rebuilt_by_the_next_run(feature_set, kind):
    data, cache, index = feature_set
    clean = read_feature_set(index)
    _craft_index(index, _index_crafts(index)[kind])

    with pytest.raises(FeatureStoreError, match="features.h5' was refused.*again"):
        read_feature_set(index)
    store = FeatureStore(index.parent)
    assert store.read_index_state() is None  # so the next run rebuilds it

    assert main(["features", str(data), *FAST, "--cache-dir", str(cache), "-q"]) == ExitStatus.OK
    rebuilt = read_feature_set(index)
    np.testing.assert_array_equal(rebuilt.features, clean.features)
    assert rebuilt.labels.tolist() == clean.labels.tolist() and rebuilt.paths == clean.paths
    with h5py.File(index, "r") as f:
        assert {s.file_name for s in f["features"].virtual_sources()} == {f"shards/{n}" for n in store.shard_names()}


@pytest.mark.slow
def test_verify_repairs_a_shard_swapped_for_another_of_the_same_set(tmp_path):
    """Same set, same key, same size and mtime: only the rows' contents tell; `verify` re-extracts them."""
    from pipeline.features.extract import extract_features

    make_dataset(tmp_path / "data", classes=2, per_class=4)
    config = ExtractConfig(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "c"), model="resnet50", size=32,
                           weights="none", batch_size=4, workers=1, shard_size=4)
    first = extract_features(config=config)
    reference = read_feature_set(first.path)
    first_shard, second_shard = sorted((first.path.parent / "shards").glob("[!.]*.h5"))
    st = first_shard.stat()
    assert second_shard.stat().st_size == st.st_size
    shutil.copy(second_shard, first_shard)
    os.utime(first_shard, ns=(st.st_atime_ns, st.st_mtime_ns))

    repaired = extract_features(config=dataclasses.replace(config, verify=True))
    assert repaired.counts["extracted"] == 4 and repaired.counts["reused"] == 4
    again = read_feature_set(repaired.path)
    assert again.paths == reference.paths
    np.testing.assert_allclose(again.features, reference.features, rtol=1e-5, atol=1e-6)
