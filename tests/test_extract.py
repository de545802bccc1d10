"""End-to-end tests of the features stage on generated images (random weights)."""

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from imagegen import PYTHON, REPO, make_dataset, write_image
from pipeline.config import ExtractConfig
from pipeline.features.extract import extract_features, feature_set_dir, feature_spec
from pipeline.store import FeatureStoreError, feature_key, read_feature_set

# ResNet50: random-weight features of a healthy magnitude (random MobileNets give ~1e-12).
MODEL = dict(model="resnet50", size=32, weights="none", batch_size=4, workers=2)


def _config(data, cache, **overrides):
    return ExtractConfig(data=str(data), cache_dir=str(cache), **{**MODEL, **overrides})


def _cli(*args, env=None, **kwargs):
    return subprocess.run(
        [PYTHON, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, **kwargs,
    )


def _as_dict(fs):
    return dict(zip(fs.paths, fs.features))


@pytest.mark.slow
def test_first_run_extracts_and_second_run_reuses(tiny_dataset, tmp_path):
    first = extract_features(config=_config(tiny_dataset, tmp_path / "cache"))
    assert first.counts == {"extracted": 18, "reused": 0, "skipped": 0, "removed": 0}
    assert first.images_per_second > 0
    fs = read_feature_set(first.path)
    assert fs.features.shape == (18, 2048) and fs.features.dtype == np.float32
    assert fs.class_names == ["class0", "class1", "class2"]
    assert fs.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert fs.paths[0] == "class0/000.png"
    assert np.all((fs.split_keys >= 0) & (fs.split_keys < 1))
    assert not np.allclose(fs.features[0], fs.features[6])  # different images, different features

    again = extract_features(config=_config(tiny_dataset, tmp_path / "cache"))
    assert again.counts == {"extracted": 0, "reused": 18, "skipped": 0, "removed": 0}
    assert again.path == first.path
    np.testing.assert_array_equal(read_feature_set(again.path).features, fs.features)


@pytest.mark.slow
def test_no_op_trusts_unchanged_shards_and_verify_finds_silent_damage(tiny_dataset, tmp_path, monkeypatch):
    from pipeline.store import FeatureStore

    config = _config(tiny_dataset, tmp_path / "cache", shard_size=8)
    first = extract_features(config=config)
    reference = read_feature_set(first.path)
    with h5py.File(first.path, "r") as f:  # the shard holding row 9: the second of 8 + 8 + 2 rows
        shard = first.path.parent / "shards" / f["shards/name"][f["images/shard"][9]].decode()
    # Silent damage, as from a failing disk: bytes change, size and mtime do not.
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    offset = data.find(reference.features[9].tobytes()[:16])
    assert offset > 0
    data[offset + 2] ^= 0x40
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))

    verified = []
    real_verify = FeatureStore.verify_shards
    monkeypatch.setattr(FeatureStore, "verify_shards",
                        lambda self, names: verified.extend(names) or real_verify(self, names))
    again = extract_features(config=config)
    assert again.counts["extracted"] == 0 and verified == []  # answered without reading a shard
    with pytest.raises(FeatureStoreError, match="verify=True"):
        read_feature_set(first.path)  # the reader's checksum catches it and names the fix

    repaired = extract_features(config=dataclasses.replace(config, verify=True))
    assert repaired.quarantined == [shard.name]
    assert repaired.counts["extracted"] == 8 and repaired.counts["reused"] == 10
    np.testing.assert_allclose(read_feature_set(repaired.path).features, reference.features, rtol=1e-5, atol=1e-6)

    touched = sorted((first.path.parent / "shards").glob("[!.]*.h5"))[0]  # not the quarantined one
    os.utime(touched)  # a moved mtime alone makes a no-op check that shard, and only that one
    verified.clear()
    assert extract_features(config=config).counts["extracted"] == 0
    assert verified == [touched.name]


@pytest.mark.slow
def test_no_op_is_not_answered_from_an_index_whose_seal_does_not_match(tiny_dataset, tmp_path):
    config = _config(tiny_dataset, tmp_path / "cache")
    first = extract_features(config=config)
    data = bytearray(first.path.read_bytes())
    data[40] ^= 0x01  # one hex digit of the seal: HDF5 still reads the file, the seal check does not
    first.path.write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match="checksum does not match"):
        read_feature_set(first.path)

    again = extract_features(config=config)
    assert again.counts == {"extracted": 0, "reused": 18, "skipped": 0, "removed": 0}
    assert again.feature_shape == (2048,)
    assert first.path.read_bytes() != bytes(data)  # rebuilt from the shards, not trusted
    assert read_feature_set(again.path).features.shape == (18, 2048)


@pytest.mark.slow
def test_added_removed_and_changed_images_are_handled_row_by_row(tiny_dataset, tmp_path):
    config = _config(tiny_dataset, tmp_path / "cache")
    before = _as_dict(read_feature_set(extract_features(config=config).path))

    for i in range(5):
        write_image(tiny_dataset / "class1" / f"new{i}.png", seed=5000 + i)
    added = extract_features(config=config)
    assert added.counts == {"extracted": 5, "reused": 18, "skipped": 0, "removed": 0}

    removed_paths = sorted(before)[:5]
    for rel in removed_paths:
        (tiny_dataset / rel).unlink()
    removed = extract_features(config=config)
    assert removed.counts == {"extracted": 0, "reused": 18, "skipped": 0, "removed": 5}

    changed = "class2/005.png"
    write_image(tiny_dataset / changed, seed=777)
    after_change = extract_features(config=config)
    assert after_change.counts["extracted"] == 1 and after_change.counts["removed"] == 0

    fs = read_feature_set(after_change.path)
    got = _as_dict(fs)
    assert set(got) == (set(before) - set(removed_paths)) | {f"class1/new{i}.png" for i in range(5)}
    for rel in set(before) - set(removed_paths) - {changed}:
        np.testing.assert_array_equal(got[rel], before[rel])
    assert not np.allclose(got[changed], before[changed])

    # The incremental result equals a from-scratch extraction of the same folder.
    fresh = read_feature_set(extract_features(config=_config(tiny_dataset, tmp_path / "fresh")).path)
    assert fresh.paths == fs.paths and fresh.labels.tolist() == fs.labels.tolist()
    np.testing.assert_allclose(fresh.features, fs.features, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bad_files_are_skipped_with_reasons_and_the_rest_extracted(tiny_dataset, tmp_path):
    (tiny_dataset / "class0" / "empty.jpg").write_bytes(b"")
    (tiny_dataset / "class1" / "page.jpg").write_text("<html><body>not a photo</body></html>")
    good = (tiny_dataset / "class2" / "000.png").read_bytes()
    (tiny_dataset / "class2" / "truncated.png").write_bytes(good[: len(good) // 2])
    result = extract_features(config=_config(tiny_dataset, tmp_path / "cache"))
    assert result.counts["extracted"] == 18 and result.counts["skipped"] == 3
    reasons = {s.relpath: s.reason for s in result.skipped}
    assert set(reasons) == {"class0/empty.jpg", "class1/page.jpg", "class2/truncated.png"}
    assert "empty" in reasons["class0/empty.jpg"]
    with h5py.File(result.path, "r") as f:
        assert sorted(f["skipped/path"].asstr()[:]) == sorted(reasons)
    # Unchanged bad files are remembered, not retried, and the set stays up to date.
    again = extract_features(config=_config(tiny_dataset, tmp_path / "cache"))
    assert again.counts == {"extracted": 0, "reused": 18, "skipped": 3, "removed": 0}


def test_cache_key_changes_with_output_and_not_with_harmless_options(tiny_dataset, tmp_path):
    base = _config(tiny_dataset, tmp_path / "cache")

    def key(config):
        return feature_key(feature_spec(config))

    def folder(config):
        return feature_set_dir(config, feature_spec(config), key(config))

    flips = [
        dict(model="resnet101"), dict(size=48), dict(pooling="max"), dict(layer="conv4_block1_out"),
        dict(precision="mixed_bfloat16"), dict(storage_dtype="float16"), dict(weights="imagenet"),
    ]
    keys = {key(base)} | {key(_config(tiny_dataset, tmp_path / "cache", **f)) for f in flips}
    assert len(keys) == len(flips) + 1
    harmless = _config(tiny_dataset, tmp_path / "cache", batch_size=7, workers=1, shard_size=3)
    assert folder(harmless) == folder(base)
    # The folder name is `<dataset>-<model>-<size>-<pooling>-<key8>-<data8>`; <data8> hashes
    # the data folder's path, so a namesake folder elsewhere gets its own set (same key).
    namesake = _config(tmp_path / "elsewhere" / tiny_dataset.name, tmp_path / "cache")
    assert key(namesake) == key(base) and folder(namesake) != folder(base)
    assert folder(base).name.startswith(f"{tiny_dataset.name}-resnet50-32-avg-{key(base)[:8]}-")
    assert folder(dataclasses.replace(base, cache_dir=str(tmp_path / "moved"))).name == folder(base).name
    assert folder(dataclasses.replace(base, name="digits")).name == f"digits-resnet50-32-avg-{key(base)[:8]}"

    weights_a, weights_b = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    weights_a.write_bytes(b"one")
    weights_b.write_bytes(b"two")
    assert key(_config(tiny_dataset, tmp_path, weights=str(weights_a))) != key(
        _config(tiny_dataset, tmp_path, weights=str(weights_b))
    )


@pytest.mark.slow
def test_up_to_date_run_imports_neither_keras_nor_tensorflow(tiny_dataset, tmp_path):
    extract_features(config=_config(tiny_dataset, tmp_path / "cache"))
    code = (
        "import sys, json\n"
        "from pipeline.config import ExtractConfig\n"
        "from pipeline.features.extract import extract_features\n"
        f"r = extract_features(config=ExtractConfig(**{json.dumps(dict(data=str(tiny_dataset), cache_dir=str(tmp_path / 'cache'), **MODEL))}))\n"
        "print(json.dumps([r.counts, sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax'))]))\n"
    )
    out = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    counts, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["extracted"] == 0 and counts["reused"] == 18
    assert heavy == []


@pytest.mark.slow  # tens of seconds: left out of make test-fast
def test_jax_backend_gives_the_same_features_as_tensorflow(tiny_dataset, tmp_path):
    pytest.importorskip("jax")
    weights = tmp_path / "random.weights.h5"
    import keras

    from pipeline.features.backbones import get_backbone_cfg

    keras.utils.set_random_seed(1)
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    tf_run = extract_features(config=_config(tiny_dataset, tmp_path / "tf", weights=str(weights)))
    jax_run = _cli("features", str(tiny_dataset), "--model", MODEL["model"], "--size", "32", "--weights",
                   str(weights), "--cache-dir", str(tmp_path / "jax"), "--json", env={"KERAS_BACKEND": "jax"})
    assert jax_run.returncode == 0, jax_run.stderr
    jax_path = json.loads(jax_run.stdout.strip().splitlines()[-1])["path"]
    with h5py.File(jax_path, "r") as f:
        assert f.attrs["backend"] == "jax"
    assert get_backbone_cfg(MODEL["model"]).module == "resnet"
    np.testing.assert_allclose(
        read_feature_set(jax_path).features, read_feature_set(tf_run.path).features, rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_several_backbones_share_one_decoding_pass(tiny_dataset, tmp_path, monkeypatch):
    from pipeline.features import decode
    from pipeline.features.extract import extract_many

    calls = []
    real_read = decode._read_file
    monkeypatch.setattr(decode, "_read_file", lambda path: calls.append(path) or real_read(path))
    configs = [_config(tiny_dataset, tmp_path / "cache", model=m) for m in ("resnet50", "vgg16")]
    together = extract_many(configs)
    assert len(calls) == 18  # 18 images, two backbones, one decode each
    assert [r.counts["extracted"] for r in together] == [18, 18]
    monkeypatch.undo()
    for config, result in zip(configs, together):
        alone = extract_features(config=dataclasses.replace(config, cache_dir=str(tmp_path / "alone")))
        np.testing.assert_allclose(read_feature_set(result.path).features, read_feature_set(alone.path).features,
                                   rtol=1e-5, atol=1e-6)
    assert [r.counts["extracted"] for r in extract_many(configs)] == [0, 0]


def test_several_backbones_must_share_one_data_folder(tiny_dataset, tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.features.extract import extract_many

    other = make_dataset(tmp_path / "other", classes=2, per_class=1)
    with pytest.raises(ConfigError, match="must all name the same `data` folder") as refused:
        extract_many([_config(tiny_dataset, tmp_path / "cache"), _config(other, tmp_path / "cache")])
    assert refused.value.field == "data"
    assert not (tmp_path / "cache").exists()


CHANGED = "changed while it was being extracted; run again"


@pytest.mark.slow
def test_a_file_replaced_while_extracting_is_never_stored_under_its_old_digest(tiny_dataset, tmp_path, monkeypatch):
    from pipeline.features import decode

    # Two of the swapped files have a twin that still holds the content they were hashed with.
    shutil.copy(tiny_dataset / "class0" / "000.png", tiny_dataset / "class0" / "zz-twin.png")
    shutil.copy(tiny_dataset / "class2" / "000.png", tiny_dataset / "class2" / "zz-twin.png")
    other = write_image(tmp_path / "other.png", seed=4242).read_bytes()
    reference_data = shutil.copytree(tiny_dataset, tmp_path / "reference" / "data")
    (reference_data / "class1" / "other.png").write_bytes(other)
    reference = _as_dict(read_feature_set(extract_features(config=_config(reference_data, tmp_path / "ref")).path))

    # Replaced after planning hashed them, before decoding reads them: by another picture, or by junk.
    swapped = {"class0/000.png": other, "class1/000.png": other, "class2/000.png": b"<html>gone</html>"}
    real_read = decode._read_file

    def read(path):
        return swapped.get(Path(path).relative_to(tiny_dataset).as_posix()) or real_read(path)

    monkeypatch.setattr(decode, "_read_file", read)
    config = _config(tiny_dataset, tmp_path / "cache")
    disturbed = extract_features(config=config)
    assert {s.relpath: s.reason for s in disturbed.skipped} == dict.fromkeys(swapped, CHANGED)
    assert disturbed.counts == {"extracted": 17, "reused": 0, "skipped": 3, "removed": 0}
    got = _as_dict(read_feature_set(disturbed.path))
    assert set(got) == set(reference) - {"class1/other.png"} - set(swapped)  # the twins stood in
    for rel, features in got.items():  # every row holds the features of the content its digest names
        np.testing.assert_allclose(features, reference[rel], rtol=1e-5, atol=1e-6, err_msg=rel)

    monkeypatch.undo()
    again = extract_features(config=config)  # a changed file is hashed again, not remembered as skipped
    assert again.counts == {"extracted": 1, "reused": 19, "skipped": 0, "removed": 0}
    got = _as_dict(read_feature_set(again.path))
    assert set(got) == set(reference) - {"class1/other.png"}
    for rel, features in got.items():
        np.testing.assert_allclose(features, reference[rel], rtol=1e-5, atol=1e-6, err_msg=rel)
    assert extract_features(config=config).counts == {"extracted": 0, "reused": 20, "skipped": 0, "removed": 0}


def test_a_weights_file_replaced_while_loading_stores_nothing(tiny_dataset, tmp_path, monkeypatch):
    import keras

    from pipeline.errors import WeightsUnavailableError
    from pipeline.features import backbones

    weights = tmp_path / "small.weights.h5"
    keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    real_build = backbones.build_extractor

    def build_then_replace(*args, **kwargs):
        model = real_build(*args, **kwargs)
        weights.write_bytes(weights.read_bytes() + b"\0")  # replaced after the key hashed it
        return model

    monkeypatch.setattr(backbones, "build_extractor", build_then_replace)
    config = _config(tiny_dataset, tmp_path / "cache", model="mobilenet_v3_small", weights=str(weights))
    with pytest.raises(WeightsUnavailableError, match="changed while it was being loaded") as refused:
        extract_features(config=config)
    assert refused.value.field == "weights"
    assert not list((tmp_path / "cache").glob("*/features.h5"))
    assert not list((tmp_path / "cache").glob("*/shards/[!.]*.h5"))


@pytest.mark.slow
def test_data_folders_of_the_same_name_keep_their_own_feature_sets(tmp_path):
    from pipeline.errors import ConfigError

    a = make_dataset(tmp_path / "A" / "imgs", classes=2, per_class=3)
    b = make_dataset(tmp_path / "B" / "imgs", classes=3, per_class=2, start=50)
    cache = tmp_path / "cache"
    first = extract_features(config=_config(a, cache))
    other = extract_features(config=_config(b, cache))
    assert other.path != first.path and other.counts == {"extracted": 6, "reused": 0, "skipped": 0, "removed": 0}
    again = extract_features(config=_config(a, cache))
    assert again.path == first.path and again.counts == {"extracted": 0, "reused": 6, "skipped": 0, "removed": 0}

    # With an explicit `name`, the second folder is refused instead of replacing the first one's rows.
    named = extract_features(config=_config(a, cache, name="imgs"))
    with pytest.raises(ConfigError, match="both are named 'imgs'") as refused:
        extract_features(config=_config(b, cache, name="imgs"))
    assert refused.value.field == "name"
    assert f"'{a.resolve()}'" in str(refused.value) and f"'{b.resolve()}'" in str(refused.value)
    assert read_feature_set(named.path).paths == read_feature_set(first.path).paths

    # A folder that was moved takes its named set over, reusing its features.
    moved = tmp_path / "C" / "imgs"
    moved.parent.mkdir()
    a.rename(moved)
    taken = extract_features(config=_config(moved, cache, name="imgs"))
    assert taken.path == named.path and taken.counts == {"extracted": 0, "reused": 6, "skipped": 0, "removed": 0}
    assert read_feature_set(taken.path).attrs["data_root"] == str(moved.resolve())
    a.mkdir(parents=True)  # a new folder where the old one was is another folder
    make_dataset(a, classes=2, per_class=1)
    with pytest.raises(ConfigError, match="both are named 'imgs'"):
        extract_features(config=_config(a, cache, name="imgs"))


@pytest.mark.parametrize("name", [".", "..", "", ".hidden", "../../escape", "///", "._", "x" * 101])
def test_a_name_that_makes_a_hidden_empty_or_too_long_folder_is_refused(tiny_dataset, tmp_path, name):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`name` must (make a visible folder name|be at most 100)") as refused:
        extract_features(config=_config(tiny_dataset, tmp_path / "cache", name=name))
    assert refused.value.field == "name" and f"Received: name={name!r}" in str(refused.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_a_hidden_or_long_named_data_folder_gets_a_visible_feature_set(tmp_path):
    from pipeline.store import list_feature_sets

    hidden = make_dataset(tmp_path / ".digits", classes=2, per_class=1)
    long_named = make_dataset(tmp_path / ("d" * 250), classes=2, per_class=1)
    for data in (hidden, long_named):
        config = _config(data, tmp_path / "cache")
        folder = feature_set_dir(config, feature_spec(config), feature_key(feature_spec(config))).name
        assert folder[0] == "d" and len(folder) <= 150
        extract_features(config=config)
    assert len(list_feature_sets(tmp_path / "cache")) == 2


@pytest.mark.slow
def test_the_same_content_under_two_classes_is_reported(tiny_dataset, tmp_path, caplog):
    shutil.copy(tiny_dataset / "class0" / "001.png", tiny_dataset / "class2" / "copy.png")
    shutil.copy(tiny_dataset / "class1" / "002.png", tiny_dataset / "class1" / "same-class-copy.png")  # no conflict
    config = _config(tiny_dataset, tmp_path / "cache")
    for run in ("first", "up to date"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="bottleneck"):
            result = extract_features(config=config)
        assert result.label_conflicts == (("class0/001.png", "class2/copy.png"),), run
        lines = [r.getMessage() for r in caplog.records if "labelling mistake" in r.getMessage()]
        assert lines == ["Same image content in 2 classes, probably a labelling mistake: "
                         "'class0/001.png' and 'class2/copy.png'"], run
        assert "'class0/001.png' = 'class2/copy.png'" in result.dataset_summary, run
        assert result.to_json()["label_conflicts"] == [["class0/001.png", "class2/copy.png"]]
    assert result.counts["extracted"] == 0


@pytest.mark.slow
def test_the_dataset_is_announced_before_any_image_is_extracted(tiny_dataset, tmp_path, caplog):
    announced_by_first_batch = []

    def progress(done, total):
        if not announced_by_first_batch:
            announced_by_first_batch.append(caplog.messages.count("Found 18 images in 3 classes."))

    with caplog.at_level("INFO", logger="bottleneck"):
        result = extract_features(config=_config(tiny_dataset, tmp_path / "cache"), progress=progress)
    assert announced_by_first_batch == [1] and caplog.messages.count("Found 18 images in 3 classes.") == 1
    assert result.dataset_summary == result.to_json()["dataset_summary"] == "Found 18 images in 3 classes."


@pytest.mark.slow  # tens of seconds: left out of make test-fast
def test_decoding_in_processes_from_the_cli_stores_the_same_features(tiny_dataset, tmp_path):
    """Issue 13: worker processes are spawned from `python -m pipeline` and change no number."""
    threads = extract_features(config=_config(tiny_dataset, tmp_path / "threads", decode_mode="threads"))
    done = _cli("features", str(tiny_dataset), "--model", "resnet50", "--size", "32", "--weights", "none",
                "--workers", "2", "--decode-mode", "processes", "--cache-dir", str(tmp_path / "processes"), "--json")
    assert done.returncode == 0, done.stderr
    processes = json.loads(done.stdout.splitlines()[-1])
    assert processes["counts"]["extracted"] == 18
    assert Path(processes["path"]).parent.name == threads.path.parent.name  # decode mode is not in the key
    np.testing.assert_array_equal(read_feature_set(processes["path"]).features, read_feature_set(threads.path).features)


_DATA_PARALLEL = """
import json, logging, sys
import numpy as np
from pipeline.config import ExtractConfig
from pipeline.features.extract import extract_features
from pipeline.store import read_feature_set

logging.basicConfig(level=logging.INFO, format="%(message)s")
data, cache = sys.argv[1], sys.argv[2]
model = dict(model="resnet50", size=32, weights="none", batch_size=3, workers=2)
one = extract_features(config=ExtractConfig(data=data, cache_dir=cache + "/one", devices=1, **model))
two = extract_features(config=ExtractConfig(data=data, cache_dir=cache + "/two", devices="all", **model))
a, b = read_feature_set(one.path).features, read_feature_set(two.path).features
print(json.dumps({"rows": [len(a), len(b)], "max_diff": float(np.abs(a - b).max())}))
"""


@pytest.mark.slow  # tens of seconds: left out of make test-fast
def test_every_device_runs_a_replica_and_the_features_do_not_change(tiny_dataset, tmp_path):
    """Issue 13: one replica per device (JAX data parallelism), tried on two XLA host devices."""
    done = subprocess.run(
        [PYTHON, "-c", _DATA_PARALLEL, str(tiny_dataset), str(tmp_path)], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["rows"] == [18, 18] and result["max_diff"] < 1e-5
    assert "Running each model on 2 devices (data parallel)" in done.stderr  # batches of 3 padded to 4, split in 2


@pytest.mark.slow
def test_more_devices_than_visible_are_refused(tiny_dataset, tmp_path):
    done = _cli("features", str(tiny_dataset), "--model", "resnet50", "--size", "32", "--weights", "none",
                "--devices", "64", "--cache-dir", str(tmp_path), env={"KERAS_BACKEND": "jax"})
    assert done.returncode == 2
    assert "`devices` asks for 64 devices" in done.stderr and "--devices" in done.stderr


def test_nan_or_inf_features_are_never_stored(tmp_path, monkeypatch):
    """A row the backbone answers with NaN/inf is skipped with its reason, on this run and the next."""
    import types

    from PIL import Image

    from pipeline.features import backbones, rounds

    for name, colour in (("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), colour).save(tmp_path / "data" / name / "1.png")

    def predict(model, batch, batch_size):
        features = batch.astype(np.float32).mean(axis=(1, 2))
        features[features[:, 0] > 200, 1] = np.nan  # red gives NaN
        features[features[:, 2] > 200, 0] = np.inf  # blue gives inf
        return features

    monkeypatch.setattr(backbones, "build_extractor", lambda *a, **k: types.SimpleNamespace(output_shape=(None, 3)))
    monkeypatch.setattr(backbones, "predict_batches", predict)
    config = ExtractConfig(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "c"), **MODEL)
    for _ in range(2):
        result = extract_features(config=config)
        assert {s.relpath: s.reason for s in result.skipped} == {
            "red/1.png": rounds.NOT_FINITE, "blue/1.png": rounds.NOT_FINITE}
        fs = read_feature_set(result.path)
        assert fs.paths == ["green/1.png"] and np.isfinite(fs.features).all()


@pytest.mark.slow
def test_a_file_unreadable_once_is_retried_once_readable(tmp_path, monkeypatch):
    """Permission denied is not remembered by size/mtime: `chmod` fixes it without touching the file."""
    from pipeline.features import sources

    make_dataset(tmp_path / "data", classes=2, per_class=2)
    real_hash = sources.file_sha256

    def denied(path):
        if str(path).endswith("class0/000.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_hash(path)

    config = ExtractConfig(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "c"), **MODEL)
    monkeypatch.setattr(sources, "file_sha256", denied)
    first = extract_features(config=config)
    assert [s.relpath for s in first.skipped] == ["class0/000.png"] and "permission denied" in first.skipped[0].reason
    monkeypatch.setattr(sources, "file_sha256", real_hash)
    again = extract_features(config=config)
    assert again.skipped == [] and again.counts["extracted"] == 1
