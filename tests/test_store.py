import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.store import (
    FeatureStore,
    FeatureStoreError,
    FileRecord,
    IndexRow,
    ShardRecord,
    SkippedFile,
    StoreBusyError,
    WriteError,
    feature_key,
    list_feature_sets,
    read_feature_set,
)

KEY = "k" * 64


def _write_shard(store, digests, start=0.0, shape=(4,)):
    with store.shard_appender(KEY, shape, "float32", shard_rows=16) as shard:
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
        with store.shard_appender(KEY, (2,), "float32", shard_rows=8) as shard:
            shard.append(np.ones((3, 2), np.float32), ["a", "b", "c"], ["a", "b", "c"])
            raise KeyboardInterrupt
    with pytest.raises(RuntimeError):
        with store.shard_appender(KEY, (2,), "float32", shard_rows=8) as shard:
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
    with store.shard_appender("other" * 4, (4,), "float32", shard_rows=4) as shard:
        shard.append(np.zeros((1, 4), np.float32), ["b"], ["b"])
    (store.shard_dir / "garbage.h5").write_bytes(b"not hdf5")
    located, bad = store.scan_shards(KEY)
    assert sorted(located) == ["a"]
    assert len(bad) == 2 and "garbage.h5" in bad


def test_bit_flip_in_features_is_detected_by_checksum(tmp_path):
    store = FeatureStore(tmp_path / "set")
    values = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    with store.shard_appender(KEY, (256,), "float32", shard_rows=64) as shard:
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
    with pytest.raises(FeatureStoreError, match="missing or corrupt.*`verify=True`") as refused:
        read_feature_set(store.root)
    assert refused.value.field == "verify"


def test_second_writer_fails_fast_when_asked_not_to_wait(tmp_path):
    store = FeatureStore(tmp_path / "set")
    with store.write_lock():
        with pytest.raises(StoreBusyError, match="being written by pid"):
            with FeatureStore(tmp_path / "set").write_lock(wait=False):
                pass
    with store.write_lock(wait=False):  # released again
        pass


def test_a_set_folder_created_by_a_failed_run_that_wrote_nothing_is_removed(tmp_path):
    store = FeatureStore(tmp_path / "cache" / "set")
    with pytest.raises(ValueError, match="no model"):
        with store.write_lock():
            (store.root / ".read.lock").touch()  # a reader came and went
            raise ValueError("no model")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_failed_run_keeps_a_folder_that_existed_or_received_a_shard(tmp_path):
    existing = FeatureStore(tmp_path / "existing")
    existing.root.mkdir()  # an earlier run's, say: not this run's to remove
    fresh = FeatureStore(tmp_path / "fresh")
    for store, write_shard in ((existing, False), (fresh, True)):
        with pytest.raises(KeyboardInterrupt):
            with store.write_lock():
                if write_shard:
                    _write_shard(store, ["a" * 64])
                raise KeyboardInterrupt
    assert existing.shard_dir.is_dir() and len(fresh.shard_names()) == 1


def test_a_writer_waiting_on_a_removed_set_folder_locks_a_new_one(tmp_path):
    import threading

    store = FeatureStore(tmp_path / "set")
    waiting, entered = threading.Event(), []

    def second_writer():
        with FeatureStore(store.root).write_lock(on_wait=lambda holder: waiting.set()):
            entered.append(store.root.is_dir() and (store.root / ".write.lock").exists())
            with pytest.raises(StoreBusyError):  # the lock it holds is the folder's lock
                with FeatureStore(store.root).write_lock(wait=False):
                    pass

    with pytest.raises(ValueError):
        with store.write_lock():
            thread = threading.Thread(target=second_writer)
            thread.start()
            assert waiting.wait(10)
            raise ValueError("the first run fails before writing anything")
    thread.join(10)
    assert entered == [True]


def test_appender_fills_shards_to_shard_rows_and_says_where_each_row_went(tmp_path):
    store = FeatureStore(tmp_path / "set")
    features = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    digests = [f"{i:064x}" for i in range(8)]
    with store.shard_appender(KEY, (2,), "float32", shard_rows=3) as shards:
        first = shards.append(features[:4], digests[:4], [f"{i}.png" for i in range(4)])
        second = shards.append(features[4:], digests[4:], [f"{i}.png" for i in range(4, 8)])
    located, bad = store.scan_shards(KEY)
    assert bad == [] and dict(zip(digests, first + second)) == located
    sizes = []
    for name in store.shard_names():
        with h5py.File(store.shard_dir / name, "r") as f:
            sizes.append(len(f["features"]))
            for row, digest in enumerate(f["sha256"][:]):
                np.testing.assert_array_equal(f["features"][row], features[digests.index(digest.decode())])
    assert sorted(sizes) == [2, 3, 3]  # a batch that does not fit is split, never a shard over 3 rows
    with pytest.raises(ValueError, match="one entry per image"):
        with store.shard_appender(KEY, (2,), "float32", shard_rows=3) as shards:
            shards.append(features[:2], digests[:1], ["a.png"])


def test_index_state_is_typed_records_and_needs_an_intact_seal(tmp_path):
    store = FeatureStore(tmp_path / "set")
    assert store.read_index_state() is None
    _write_shard(store, ["a", "b"], shape=(2, 3))
    located, _ = store.scan_shards(KEY)
    store.write_index(_rows(["a", "b"]), [located["a"], located["b"]], [SkippedFile("c/x.jpg", "empty file", 0, 7)],
                      ["c"], feature_shape=(2, 3), dtype="float32", attrs={"feature_key": KEY})
    state = store.read_index_state()
    (shard,) = store.shard_names()
    st = (store.shard_dir / shard).stat()
    assert state.feature_key == KEY and state.class_names == ("c",) and state.feature_shape == (2, 3)
    assert state.files == {"c/a.png": FileRecord(10, 20, "a"), "c/b.png": FileRecord(10, 20, "b")}
    assert state.skipped == {"c/x.jpg": SkippedFile("c/x.jpg", "empty file", 0, 7)}
    assert state.shards == (ShardRecord(shard, st.st_size, st.st_mtime_ns),)
    assert state.fingerprints() == {"c/a.png": (10, 20), "c/b.png": (10, 20), "c/x.jpg": (0, 7)}
    with pytest.raises(TypeError):
        state.files["c/z.png"] = FileRecord(1, 1, "z")  # frozen: a caller cannot edit what the index says

    data = bytearray(store.index_path.read_bytes())
    data[30] ^= 0x01  # in the seal only: HDF5 would still read the file
    store.index_path.write_bytes(bytes(data))
    with h5py.File(store.index_path, "r") as f:
        assert len(f["labels"]) == 2
    assert store.read_index_state() is None


def test_list_feature_sets_names_complete_sets_only(tmp_path):
    cache = tmp_path / "cache"
    assert list_feature_sets(cache) == []
    store = FeatureStore(cache / "digits-vgg16")
    _write_shard(store, ["a", "b"])
    located, _ = store.scan_shards(KEY)
    store.write_index(_rows(["a", "b"]), [located["a"], located["b"]], [], ["c"], feature_shape=(4,),
                      dtype="float32", attrs={"feature_key": KEY})
    _write_shard(FeatureStore(cache / "half-written"), ["c"])  # shards, no index yet
    assert list_feature_sets(cache) == [("digits-vgg16", store.index_path, 2)]


@pytest.mark.parametrize("value, lost", [(1e-9, "would become 0"), (1e5, "would become inf"), (-1e5, "inf")])
def test_float16_storage_refuses_features_it_would_store_as_zero_or_inf(tmp_path, value, lost):
    store = FeatureStore(tmp_path / "digits-vgg16")
    good = np.linspace(0.5, 2, 3 * 4, dtype=np.float32).reshape(3, 4)
    magnitude = re.escape(f"{abs(value):.0e}")
    with pytest.raises(ConfigError, match=rf"(?s)'digits-vgg16'.*{magnitude}.*{lost}.*storage_dtype='float32'") as e:
        with store.shard_appender(KEY, (4,), "float16", shard_rows=2) as shards:
            shards.append(good, ["a", "b", "c"], ["a", "b", "c"])  # fills one shard, starts another
            bad = good.copy()
            bad[1] = value  # one row the float16 range cannot hold, among good ones
            shards.append(bad, ["d", "e", "f"], ["d", "e", "f"])
    assert e.value.field == "storage_dtype"
    located, damaged = store.scan_shards(KEY)
    assert damaged == [] and sorted(located) == ["a", "b"]  # the finished shard only, none of the refused batch
    assert not list(store.shard_dir.glob(".tmp-*"))


def test_float16_storage_keeps_values_below_its_precision_at_the_rows_scale(tmp_path):
    store = FeatureStore(tmp_path / "set")
    features = np.array([[1.0, 1e-10, 3.0, 0.0], [2e-4, 1e-4, 0.0, 5e-5]], dtype=np.float32)
    with store.shard_appender(KEY, (4,), "float16", shard_rows=4) as shards:
        shards.append(features, ["a", "b"], ["a", "b"])
    (name,) = store.shard_names()
    with h5py.File(store.shard_dir / name, "r") as f:
        assert f["features"].dtype == np.float16
        np.testing.assert_array_equal(f["features"][:], features.astype(np.float16))  # 1e-10 next to 3.0: rounding


def _refuse_work(monkeypatch):
    """Makes decoding or building a model fail the test: an unwritable cache must be found first."""
    from pipeline.features import backbones, decode

    def fail(*args, **kwargs):
        raise AssertionError("decoded or built a model before finding the cache unwritable")

    monkeypatch.setattr(backbones, "build_extractor", fail)
    monkeypatch.setattr(decode, "decode_batches", fail)


def _features_exit(data, cache, capsys):
    from pipeline.cli import main

    status = main(["features", str(data), "--model", "resnet50", "--size", "32", "--weights", "none",
                   "--cache-dir", str(cache), "-q"])
    return status, capsys.readouterr().err.strip().splitlines()


def test_a_cache_under_a_regular_file_is_a_write_error_before_any_work(tiny_dataset, tmp_path, capsys, monkeypatch):
    _refuse_work(monkeypatch)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should go")
    status, err = _features_exit(tiny_dataset, blocker / "cache", capsys)
    assert status == 3, err
    (line,) = err
    assert line.startswith(f"error: Cannot write feature set folder '{blocker}/cache/")
    assert f"'{blocker}' is a file, not a folder" in line and "`cache_dir`" in line and "--cache-dir" in line
    assert "Errno" not in line


def test_a_read_only_cache_is_a_write_error_before_any_work(tiny_dataset, tmp_path, capsys, monkeypatch):
    import errno
    import os

    cache = tmp_path / "cache"
    cache.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def read_only(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(cache)):  # a read-only mount: root's permission bits would not stop it
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)
        return call

    _refuse_work(monkeypatch)
    monkeypatch.setattr(os, "open", read_only(real_open))
    monkeypatch.setattr(os, "mkdir", read_only(real_mkdir))
    status, err = _features_exit(tiny_dataset, cache, capsys)
    assert status == 3, err
    (line,) = err
    assert f"Cannot write feature set folder '{cache}/" in line and "Read-only file system (errno 30)" in line
    assert "`cache_dir`" in line and "[set with --cache-dir" in line


def test_a_shard_write_refused_by_permissions_is_not_called_a_full_disk(tmp_path):
    import errno

    from pipeline.store.shards import reporting_write_errors

    with pytest.raises(WriteError, match="read-only or not yours to write.*`cache_dir`") as refused:
        with reporting_write_errors(tmp_path / "x.h5"):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert refused.value.field == "cache_dir" and "full" not in str(refused.value)


@pytest.mark.slow
def test_a_read_only_bind_mount_is_a_write_error_and_its_complete_sets_still_read(tiny_dataset, tmp_path, capsys):
    import subprocess

    writable, read_only = tmp_path / "cache", tmp_path / "read-only"
    writable.mkdir()
    read_only.mkdir()
    status, err = _features_exit(tiny_dataset, writable / "built", capsys)
    assert status == 0, err
    try:
        for args in (["--bind", writable, read_only], ["-o", "remount,ro,bind", read_only]):
            if subprocess.run(["mount", *map(str, args)], capture_output=True).returncode:
                pytest.skip("mounting needs root with CAP_SYS_ADMIN")
        status, err = _features_exit(tiny_dataset, read_only / "new", capsys)
        assert status == 3 and len(err) == 1 and "Read-only file system" in err[0], err
        status, err = _features_exit(tiny_dataset, read_only / "built", capsys)  # up to date: nothing to write
        assert status == 0, err
        assert len(read_feature_set(next((read_only / "built").glob("*/features.h5"))).paths) == 18
    finally:
        subprocess.run(["umount", str(read_only)], capture_output=True)


def _cache_with_set(tmp_path, name):
    """A cache holding one (hand-made, sealed) index named `name`; only its presence matters to look-ups."""
    from pipeline.store import INDEX_NAME

    folder = tmp_path / "cache" / name
    folder.mkdir(parents=True)
    (folder / INDEX_NAME).write_bytes(b"")
    return tmp_path / "cache"


@pytest.mark.parametrize("given", ["data", "da"])
def test_a_word_that_is_both_a_path_and_a_set_is_refused_with_both_readings(tmp_path, monkeypatch, given):
    from pipeline.errors import ConfigError
    from pipeline.store import INDEX_NAME, resolve_features

    cache = _cache_with_set(tmp_path, "data")
    monkeypatch.chdir(tmp_path)
    (tmp_path / given).mkdir()
    with pytest.raises(ConfigError, match=f"'./{given}' for the path, or 'set:{given}' for the set"):
        resolve_features(given, cache)
    assert resolve_features(f"set:{given}", cache) == cache / "data" / INDEX_NAME
    assert resolve_features(f"./{given}", cache) == Path(f"./{given}") / INDEX_NAME


def test_a_path_that_names_no_set_is_still_a_path(tmp_path, monkeypatch):
    from pipeline.store import INDEX_NAME, resolve_features

    cache = _cache_with_set(tmp_path, "digits")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other").mkdir()
    assert resolve_features("other", cache) == Path("other") / INDEX_NAME
