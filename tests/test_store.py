import h5py
import numpy as np
import pytest

from pipeline.store import (
    FeatureStore,
    FeatureStoreError,
    IndexRow,
    SkippedFile,
    StoreBusyError,
    feature_key,
    read_feature_set,
)

KEY = "k" * 64


def _write_shard(store, digests, start=0.0, shape=(4,)):
    with store.shard_writer(KEY, shape, "float32", capacity=16) as shard:
        features = np.arange(len(digests) * np.prod(shape), dtype=np.float32).reshape(len(digests), *shape) + start
        shard.append(features, digests, [f"{d}.png" for d in digests])
    return features


def _rows(digests, label=0):
    return [IndexRow(f"c/{d}.png", label, "", 0.5, 10, 20, d) for d in digests]


def test_feature_key_ignores_order_but_not_values():
    a = feature_key({"size": 224, "backbone": {"name": "vgg16", "kwargs": {"alpha": 1.0}}, "features_version": 1})
    b = feature_key({"features_version": 1, "backbone": {"kwargs": {"alpha": 1.0}, "name": "vgg16"}, "size": 224})
    bumped = feature_key({"size": 224, "backbone": {"name": "vgg16", "kwargs": {"alpha": 1.0}}, "features_version": 2})
    assert a == b
    assert a != bumped


def test_index_round_trip_through_shards_and_virtual_dataset(tmp_path):
    store = FeatureStore(tmp_path / "set")
    first = _write_shard(store, ["a", "b", "c"])
    second = _write_shard(store, ["d", "e"], start=100)
    names = store.shard_names()
    located, bad = store.scan_shards(KEY)
    assert bad == [] and len(names) == 2
    # Keep a, c (skipping b: a removed image) and e, d out of shard order.
    order = ["a", "c", "e", "d"]
    rows = [IndexRow(f"x/{d}.png", i % 2, "train", i / 10, 1, 2, d) for i, d in enumerate(order)]
    content_hash = store.write_index(
        rows, [located[d] for d in order], [SkippedFile("x/bad.jpg", "empty file (0 bytes)", 0, 5)],
        ["cat", "dog"], feature_shape=(4,), dtype="float32", attrs={"feature_key": KEY, "config": {"model": "m"}},
    )
    expected = np.stack([first[0], first[2], second[1], second[0]])
    fs = read_feature_set(tmp_path / "set" / "features.h5")
    np.testing.assert_array_equal(fs.features, expected)
    assert fs.paths == [f"x/{d}.png" for d in order]
    assert fs.labels.tolist() == [0, 1, 0, 1] and fs.class_names == ["cat", "dog"]
    assert fs.config == {"model": "m"} and fs.content_hash == content_hash
    assert list(fs.folder_splits) == ["train"] * 4
    with h5py.File(tmp_path / "set" / "features.h5", "r") as f:  # plain h5py sees the same rows
        np.testing.assert_array_equal(f["features"][:], expected)
        assert f["skipped/reason"].asstr()[0] == "empty file (0 bytes)"


def test_interrupted_shard_keeps_finished_rows_only_on_ctrl_c(tmp_path):
    store = FeatureStore(tmp_path / "set")
    with pytest.raises(KeyboardInterrupt):
        with store.shard_writer(KEY, (2,), "float32", capacity=8) as shard:
            shard.append(np.ones((3, 2), np.float32), ["a", "b", "c"], ["a", "b", "c"])
            raise KeyboardInterrupt
    with pytest.raises(RuntimeError):
        with store.shard_writer(KEY, (2,), "float32", capacity=8) as shard:
            shard.append(np.ones((2, 2), np.float32), ["d", "e"], ["d", "e"])
            raise RuntimeError("crash")
    located, _ = store.scan_shards(KEY)
    assert sorted(located) == ["a", "b", "c"]
    assert not list(store.shard_dir.glob(".tmp-*"))


def test_leftover_temporary_files_are_never_read_and_get_cleaned(tmp_path):
    store = FeatureStore(tmp_path / "set")
    _write_shard(store, ["a"])
    (store.shard_dir / ".tmp-half.h5").write_bytes(b"\x89HDF half written")
    assert store.shard_names() == [n for n in store.shard_names() if not n.startswith(".")]
    assert store.clean_temporary() == 1
    assert sorted(store.scan_shards(KEY)[0]) == ["a"]


def test_foreign_and_unreadable_shards_are_reported_not_used(tmp_path):
    store = FeatureStore(tmp_path / "set")
    _write_shard(store, ["a"])
    with store.shard_writer("other" * 4, (4,), "float32", capacity=4) as shard:
        shard.append(np.zeros((1, 4), np.float32), ["b"], ["b"])
    (store.shard_dir / "garbage.h5").write_bytes(b"not hdf5")
    located, bad = store.scan_shards(KEY)
    assert sorted(located) == ["a"]
    assert len(bad) == 2 and "garbage.h5" in bad


def test_bit_flip_in_features_is_detected_by_checksum(tmp_path):
    store = FeatureStore(tmp_path / "set")
    values = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    with store.shard_writer(KEY, (256,), "float32", capacity=64) as shard:
        shard.append(values, [str(i) for i in range(64)], [str(i) for i in range(64)])
    (name,) = store.shard_names()
    path = store.shard_dir / name
    data = bytearray(path.read_bytes())
    offset = data.find(values[10].tobytes()[:16])
    assert offset > 0
    data[offset + 3] ^= 0x10
    path.write_bytes(bytes(data))
    assert store.verify_shards([name]) == [name]


def test_read_refuses_missing_and_incomplete_sets(tmp_path):
    with pytest.raises(FeatureStoreError, match="make features"):
        read_feature_set(tmp_path / "nothing")
    store = FeatureStore(tmp_path / "set")
    _write_shard(store, ["a"])
    located, _ = store.scan_shards(KEY)
    store.write_index(_rows(["a"]), [located["a"]], [], ["c"], feature_shape=(4,), dtype="float32",
                      attrs={"feature_key": KEY})
    with h5py.File(store.index_path, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(FeatureStoreError, match="not a complete feature set"):
        read_feature_set(store.root)


def test_missing_shard_is_an_error_not_fill_values(tmp_path):
    store = FeatureStore(tmp_path / "set")
    _write_shard(store, ["a"])
    located, _ = store.scan_shards(KEY)
    store.write_index(_rows(["a"]), [located["a"]], [], ["c"], feature_shape=(4,), dtype="float32",
                      attrs={"feature_key": KEY})
    for shard in store.shard_dir.glob("*.h5"):
        shard.unlink()
    with pytest.raises(FeatureStoreError, match="missing or corrupt"):
        read_feature_set(store.root)


def test_second_writer_fails_fast_when_asked_not_to_wait(tmp_path):
    store = FeatureStore(tmp_path / "set")
    with store.write_lock():
        with pytest.raises(StoreBusyError, match="being written by pid"):
            with FeatureStore(tmp_path / "set").write_lock(wait=False):
                pass
    with store.write_lock(wait=False):  # released again
        pass
