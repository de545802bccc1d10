"""Reliability of the features stage: kills, bad input, storage faults,
concurrency, cache identity and untrusted files.

Runs of `bottleneck features` are forked from one server process that
imported TensorFlow once (`soak.Zygote`), so a killed run costs ~2 s, not
~15 s; they use VGG16 at 32 px with random weights (see `soak.FAST_MODEL`).
The longer randomised soak is `make soak`. docs/reliability.md lists what
is covered, with the counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import h5py
import numpy as np
import pytest

pytest.register_assert_rewrite("soak")

import soak  # noqa: E402
from badfiles import REASONS  # noqa: E402
from imagegen import write_image  # noqa: E402
from soak import FAST_MODEL, SMALL_BATCHES, Campaign, Kill, assert_same_set, assert_shards_whole, snapshot  # noqa: E402

from pipeline.features import backbones, decode, extract  # noqa: E402
from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.store import (  # noqa: E402
    FeatureStore,
    FeatureStoreError,
    IndexRow,
    StoreBusyError,
    feature_key,
    read_feature_set,
)

SEED = 20261123  # the kill schedule is random, but the same on every CI run
DISK_FULL = re.compile(r"disk is full|no space left|file too large|write failed", re.IGNORECASE)


def _argv(data, cache, *extra):
    return ["features", str(data), *FAST_MODEL, *SMALL_BATCHES, "--cache-dir", str(cache), "--json", *extra]


def _copy_set(src_root: Path, dst_root: Path) -> Path:
    """Copies a data folder and its cache, keeping mtimes (so the copy is up to date)."""
    shutil.copytree(src_root, dst_root, symlinks=True)
    return dst_root


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@dataclasses.dataclass
class Built:
    root: Path  # holds data/ and cache/
    data: Path
    cache: Path
    set_dir: Path
    snap: soak.Snapshot

    def copy(self, dst: Path) -> "Built":
        _copy_set(self.root, dst)
        # A set's folder name hashes its data folder's path: the copy goes under the name of its new place.
        set_dir = _set_dir(dst / "data", dst / "cache")
        (dst / "cache" / self.set_dir.name).rename(set_dir)
        return Built(dst, dst / "data", dst / "cache", set_dir, self.snap)


def _set_dir(data: Path, cache: Path) -> Path:
    """The folder `features` gives the set of `data` with `FAST_MODEL`."""
    return _folder(ExtractConfig(data=str(data), cache_dir=str(cache), model="vgg16", size=32, weights="none"))


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    server = soak.Zygote(tmp_path_factory.mktemp("runs"))
    yield server
    server.close()


def _build(zygote, root: Path, classes: int, per_class: int, bad: bool) -> Built:
    data = soak.write_images(root / "data", classes, per_class)
    if bad:
        soak.add_bad_files(data)
    run = zygote.run(_argv(data, root / "cache"), name=f"build-{root.name}")
    set_dir = Path(run.report["path"]).parent
    return Built(root, data, root / "cache", set_dir, snapshot(set_dir))


@pytest.fixture(scope="module")
def kill_base(zygote, tmp_path_factory):
    """200 tiny PNGs in 4 classes plus 2 bad files, and their uninterrupted feature set."""
    return _build(zygote, tmp_path_factory.mktemp("kill") / "base", 4, 50, bad=True)


@pytest.fixture(scope="module")
def small(zygote, tmp_path_factory):
    """40 images, extracted without interruption: 5 shards of 8 rows."""
    return _build(zygote, tmp_path_factory.mktemp("small") / "base", 4, 10, bad=False)


# -- kills --------------------------------------------------------------------------


@pytest.mark.slow
def test_kills_and_ctrl_c_at_every_write_moment_resume_to_the_uninterrupted_result(zygote, kill_base, tmp_path):
    rng = random.Random(SEED)
    data = shutil.copytree(kill_base.data, tmp_path / "data")
    set_dir = _set_dir(data, tmp_path / "cache")
    campaign = Campaign(zygote, _argv(data, tmp_path / "cache"), set_dir, target=kill_base.snap)
    plan = [
        Kill("async:shards", rng.randint(1, 3), "KILL", rng.uniform(0, 0.15)),  # a random moment
        Kill("shard_write", rng.randint(2, 6)),                 # rows half-appended to a .tmp- shard
        Kill("async:tmp_shard", 1, "KILL", rng.uniform(0, 0.02)),  # just after a .tmp- shard appears
        Kill("shard_created", rng.randint(1, 3)),               # an empty .tmp- shard
        Kill("shard_write", 3 * rng.randint(1, 2) + 1, "INT"),  # Ctrl-C between features and digests
        Kill("shard_closed", rng.randint(1, 3)),                # complete but not renamed
        Kill("shard_closed", rng.randint(1, 3), "INT"),         # Ctrl-C: the finished shard is kept
        Kill("shard_renamed", rng.randint(1, 3)),
        Kill("async:shards", rng.randint(1, 3), "INT", rng.uniform(0, 0.3)),  # Ctrl-C at a random moment
        Kill("index_write", 1),                                 # .tmp- index half written (all rows extracted)
        Kill("index_closed", 1, "INT"),
        Kill("index_closed", 1),                                # index complete but not renamed
        Kill("index_renamed", 1),                               # new index in place, cleanup not done
    ]
    for kill in plan:
        campaign.interrupt(kill)
    report = campaign.finish()
    print("\n".join(f"{p.kill}: {p.outcome}" for p in campaign.points))
    assert report["counts"]["extracted"] == 0  # the last kill came after the index was replaced

    survived = [str(p.kill) for p in campaign.points]
    assert len(survived) >= 11, f"only {survived} interrupted a run; missed: {campaign.missed}"
    assert {p.outcome for p in campaign.points} == {"no set yet", "new set"}
    assert sum(p.kill.signal == "INT" for p in campaign.points) >= 3


@pytest.mark.slow
def test_kills_while_updating_a_set_leave_the_previous_complete_set_readable(zygote, kill_base, tmp_path):
    start = kill_base.copy(tmp_path / "work")
    # Remove class0's first 16 images (the whole first two shards), add 24, change 2.
    for i in range(16):
        (start.data / "class0" / f"{i:03d}.png").unlink()
    soak.write_images(start.data, 4, 6, start=300)
    for i, rel in enumerate(("class1/010.png", "class2/020.png")):
        write_image(start.data / rel, seed=99_000 + i, size=16)
    reference = zygote.run(_argv(start.data, tmp_path / "ref"), name="update-reference")
    target = snapshot(Path(reference.report["path"]).parent)

    campaign = Campaign(zygote, _argv(start.data, start.cache), start.set_dir, target=target, previous=kill_base.snap)
    for kill in [
        # An exact moment, not a random delay: on a fast machine this small
        # update can finish within 0.1 s of its first shard appearing.
        Kill("shard_write", 2),  # the first new shard holds features but no digests yet
        Kill("shard_closed", 1, "INT"),
        Kill("index_write", 1, "INT"),  # the temporary index is deleted, the old one stays
        Kill("index_closed", 1),
        Kill("shard_deleted", 1),  # new index in place, old shards half deleted
    ]:
        campaign.interrupt(kill)
    print("\n".join(f"{p.kill}: {p.outcome}" for p in campaign.points))
    assert [p.outcome for p in campaign.points] == ["previous set"] * 4 + ["new set"], campaign.points
    report = campaign.finish()
    assert report["counts"]["removed"] == 0  # the killed run already removed them


def test_ctrl_c_in_the_middle_of_an_append_publishes_whole_rows_only(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path / "set")
    original = h5py.Dataset.__setitem__
    armed = []

    def interrupted(self, key, value):
        original(self, key, value)
        if armed and armed.pop():
            raise KeyboardInterrupt  # Ctrl-C after the features, before the digests

    monkeypatch.setattr(h5py.Dataset, "__setitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with store.shard_appender("k" * 64, (4,), "float32", shard_rows=8) as shard:
            shard.append(np.ones((2, 4), np.float32), ["a" * 64, "b" * 64], ["a.png", "b.png"])
            armed.append(True)
            shard.append(np.zeros((2, 4), np.float32), ["c" * 64, "d" * 64], ["c.png", "d.png"])
    monkeypatch.undo()
    assert assert_shards_whole(store.root) == 1
    located, bad = store.scan_shards("k" * 64)
    assert sorted(located) == ["a" * 64, "b" * 64] and bad == []


def test_a_shard_with_a_damaged_digest_is_set_aside_not_a_crash(tmp_path):
    store = FeatureStore(tmp_path / "set")
    for digest in ("a", "b"):
        with store.shard_appender("k" * 64, (4,), "float32", shard_rows=8) as shard:
            shard.append(np.ones((1, 4), np.float32), [digest * 64], [f"{digest}.png"])
    damaged = store.shard_names()[0]
    with h5py.File(store.shard_dir / damaged, "r+") as f:
        f["sha256"][0] = b"\xff" + f["sha256"][0][1:]  # one flipped high bit in a hex digit
    located, bad = store.scan_shards("k" * 64)
    assert bad == [damaged] and len(located) == 1


# -- bad input ------------------------------------------------------------------------


@pytest.mark.slow
def test_every_kind_of_bad_input_is_extracted_or_skipped_with_its_reason(zygote, bad_corpus, tmp_path):
    root, outcomes = bad_corpus
    data = shutil.copytree(root, tmp_path / "in" / "corpus", symlinks=True)
    outcomes = {**outcomes, "c/unreadable.png": "skip"}  # denied below: we run as root
    reasons = {**REASONS, "c/unreadable.png": "permission denied"}
    cache = tmp_path / "cache"
    run = zygote.run(_argv(data, cache, "--name", "a/../../escape"), deny=("c/unreadable.png",), name="bad-corpus")
    report = run.report

    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    fs = read_feature_set(report["path"])
    with h5py.File(report["path"], "r") as f:
        in_file = dict(zip([os.fsdecode(p) for p in f["skipped/path"][:]], f["skipped/reason"].asstr()[:]))
    assert in_file == skipped
    assert set(fs.paths) == {rel for rel, o in outcomes.items() if o == "ok"}
    assert set(skipped) == {rel for rel, o in outcomes.items() if o == "skip"}
    for rel, reason in skipped.items():
        assert reasons[rel] in reason, (rel, reason)
        assert f"skipped {rel}: {reason}" in run.stdout
    assert np.isfinite(fs.features).all() and len(set(fs.paths)) == len(fs.paths)
    # Files holding the same picture get the same features, other pictures other ones.
    row = {p: fs.features[i] for i, p in enumerate(fs.paths)}
    groups = [["a/with space.png", "b/nested/deeper/deep.png"], ["a/png_named.jpg", "b/image.bmp"],
              ["b/image.webp", "b/wide.png"] + [p for p in fs.paths if p.startswith("b/caf")]]
    for group in groups:
        for other in group[1:]:
            np.testing.assert_allclose(row[other], row[group[0]], rtol=1e-5, atol=1e-6, err_msg=other)
    assert not np.allclose(row[groups[0][0]], row[groups[1][0]]) and not np.allclose(row[groups[1][0]], row[groups[2][0]])

    # `--name a/../../escape` stays a folder name inside the cache.
    assert Path(report["path"]).parent.parent == cache
    for folder in (tmp_path, tmp_path.parent, tmp_path.parent.parent):  # where ../ and ../../ would land
        assert not [p for p in folder.iterdir() if p.name.startswith("escape")]
    assert [p.name for p in cache.iterdir()] == [Path(report["path"]).parent.name]

    # The decompression bombs were refused before any pixel was decoded: the
    # run's peak memory is that of the same run without them (decoding the
    # 10,000 x 10,000 one alone would take 100-300 MB).
    calm = shutil.copytree(data, tmp_path / "calm" / "corpus", symlinks=True)
    for bomb in ("b/bomb.png", "b/bomb_warn.png"):
        (calm / bomb).unlink()
    baseline = zygote.run(_argv(calm, tmp_path / "calm-cache"), deny=("c/unreadable.png",), name="no-bombs")
    assert baseline.status == 0
    extra_mb = (run.maxrss_kb - baseline.maxrss_kb) / 1024
    assert extra_mb < 50, f"peak RSS {run.maxrss_kb / 1024:.0f} MB with the bombs, {extra_mb:.0f} MB more than without"


@pytest.mark.slow
def test_a_folder_of_only_bad_files_is_refused_naming_the_files_and_reasons(zygote, tmp_path):
    data = tmp_path / "broken"
    (data / "cats").mkdir(parents=True)
    (data / "cats" / "a.jpg").write_bytes(b"")
    (data / "cats" / "b.png").write_text("<html>404</html>")
    run = zygote.run(_argv(data, tmp_path / "cache"), name="only-bad")
    assert run.status == 2 and "Traceback" not in run.stderr
    message = run.stderr.strip().splitlines()[-1]
    assert str(data.resolve()) in message and "cats/a.jpg: empty file" in message and "cats/b.png: not an image" in message
    assert not list((tmp_path / "cache").glob("*/features.h5"))


# -- storage faults ---------------------------------------------------------------------


def _limited_file_size(limit):
    def preexec():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return preexec


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["shards", "index"])
def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_set(zygote, small, tmp_path, moment):
    work = small.copy(tmp_path / "work")
    soak.write_images(work.data, 4, 4, start=100)
    before = _file_hashes(work.set_dir)
    if moment == "shards":  # no file may grow past 4 KiB: the first shard cannot be written
        run = zygote.run(_argv(work.data, work.cache), fsize=4096, name="full-disk-shards")
        status, stderr = run.status, run.stderr
    else:
        # Extract the new images but stop before the index; then a real
        # `python -m pipeline` (no TensorFlow needed: only the index is left
        # to write) runs into the full disk, so its whole stderr is checked.
        killed = zygote.run(_argv(work.data, work.cache), fault={"event": "index_write", "n": 1}, name="shards-only")
        assert killed.status == -9
        run = subprocess.run([sys.executable, "-m", "pipeline", *_argv(work.data, work.cache)], cwd=soak.REPO,
                             capture_output=True, text=True, timeout=120, preexec_fn=_limited_file_size(4096))
        status, stderr = run.returncode, run.stderr
    assert status not in (0, 130) and status > 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: Cannot write '") and DISK_FULL.search(message), stderr
    assert str(work.set_dir) in message, message  # names the file
    assert "again" in message and "free some space" in message, message  # says what to do
    assert not re.search(r"buf = 0x|id ref count|file descriptor =", stderr), stderr  # no HDF5 internals

    # The previous set is untouched and readable; nothing half-written is published.
    now = _file_hashes(work.set_dir)
    assert {k: v for k, v in now.items() if k in before} == before
    assert_same_set(snapshot(work.set_dir), small.snap, "after the failed write")
    assert_shards_whole(work.set_dir)

    resumed = zygote.run(_argv(work.data, work.cache), name="after-full-disk").report
    got = snapshot(work.set_dir)
    assert len(got.paths) == 56 and set(small.snap.paths) < set(got.paths)
    old = [got.paths.index(p) for p in small.snap.paths]
    np.testing.assert_array_equal(got.features[old], small.snap.features)
    # Shards finished before the index write failed are reused, not extracted again.
    assert resumed["counts"]["extracted"] == (16 if moment == "shards" else 0)


def _flip_a_feature_bit(shard: Path) -> None:
    with h5py.File(shard, "r") as f:
        chunk = f["features"].id.get_chunk_info(0)
    data = bytearray(shard.read_bytes())
    data[chunk.byte_offset + chunk.size // 2] ^= 0x04
    shard.write_bytes(bytes(data))


@pytest.mark.slow
def test_damaged_shards_are_detected_reported_and_rebuilt(zygote, small, tmp_path):
    work = small.copy(tmp_path / "work")
    flipped, cut = [s.name for s in FeatureStore(work.set_dir).read_index_state().shards[1:3]]
    _flip_a_feature_bit(work.set_dir / "shards" / flipped)
    path = work.set_dir / "shards" / cut
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(FeatureStoreError, match=r"(?s)Shard '.*shards/.*' .* corrupt.*again") as refused:
        read_feature_set(work.set_dir)
    assert flipped in str(refused.value) or cut in str(refused.value)

    run = zygote.run(_argv(work.data, work.cache), name="rebuild-shards")
    report = run.report
    assert sorted(report["quarantined"]) == sorted([flipped, cut])
    assert flipped in run.stderr and cut in run.stderr and "Damaged" in run.stderr
    assert report["counts"]["extracted"] == 16 and report["counts"]["reused"] == 24
    assert_same_set(snapshot(work.set_dir), small.snap, "after rebuilding damaged shards")
    referenced = [s.name for s in FeatureStore(work.set_dir).read_index_state().shards]
    assert flipped not in referenced and cut not in referenced
    assert_shards_whole(work.set_dir)


def _index_damages(index: Path):
    with h5py.File(index, "r") as f:
        row_table = f["images/row"].id.get_offset()
    size = index.stat().st_size
    return {
        "truncated": lambda b: b[: size * 2 // 3],
        "bit flip in the row table": lambda b: b[:row_table + 8] + bytes([b[row_table + 8] ^ 1]) + b[row_table + 9:],
        "zeroed block": lambda b: b[: size // 2] + bytes(512) + b[size // 2 + 512:],
        "not HDF5": lambda b: b"<html>502 Bad Gateway</html>",
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "bit flip in the row table", "zeroed block", "not HDF5"])
def test_a_damaged_index_is_a_clear_error_for_readers_and_rebuilt(zygote, small, tmp_path, kind):
    work = small.copy(tmp_path / "work")
    index = work.set_dir / "features.h5"
    index.write_bytes(_index_damages(index)[kind](index.read_bytes()))
    with pytest.raises(FeatureStoreError, match="features") as refused:
        read_feature_set(work.set_dir)
    assert str(index) in str(refused.value) and "again" in str(refused.value)
    assert FeatureStore(work.set_dir).read_index_state() is None

    report = zygote.run(_argv(work.data, work.cache), name="rebuild-index").report
    assert report["counts"] == {"extracted": 0, "reused": 40, "skipped": 0, "removed": 0}
    assert_same_set(snapshot(work.set_dir), small.snap, "after rebuilding the index")


@pytest.mark.slow
@pytest.mark.parametrize("what", ["index", "shard"])
def test_damage_anywhere_in_a_file_is_refused_or_harmless_never_wrong_data(small, what):
    # In a subprocess: some damage used to make HDF5 loop forever.
    out = subprocess.run(
        [sys.executable, str(Path(soak.__file__)), "--damage", what, str(small.set_dir), "--trials", "120",
         "--seed", str(SEED)],
        capture_output=True, text=True, timeout=240, cwd=soak.REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    outcomes = json.loads(out.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in outcomes.items() if k.startswith(("WRONG", "CRASH"))}
    assert not bad, bad
    assert outcomes.get("refused", 0) > (60 if what == "index" else 20), outcomes


# -- concurrency ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_waits_for_the_lock_then_finds_the_set_up_to_date(zygote, small, tmp_path):
    data = shutil.copytree(small.data, tmp_path / "data")
    argv = _argv(data, tmp_path / "cache")
    # The first run holds the lock a little longer after its first shard.
    first = zygote.spawn(argv, fault={"event": "shard_renamed", "n": 1, "action": "SLEEP:3"}, name="first")
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache").glob("*/shards/2*.h5")) and time.monotonic() < deadline:
        assert first.running(), first.wait().stderr
        time.sleep(0.01)
    second = zygote.spawn(argv, name="second")
    first.wait(), second.wait()
    a, b = first.report, second.report
    assert a["counts"]["extracted"] == 40
    assert b["counts"] == {"extracted": 0, "reused": 40, "skipped": 0, "removed": 0} and b["path"] == a["path"]
    assert f"Waiting for pid {first.pid}" in second.stderr and "Up to date" in second.stdout
    set_dir = Path(a["path"]).parent
    assert_same_set(snapshot(set_dir), small.snap, "after two concurrent runs")
    assert assert_shards_whole(set_dir) == 5


@pytest.mark.slow
def test_a_reader_during_updates_always_gets_the_old_or_the_new_complete_set(zygote, small, tmp_path):
    work = small.copy(tmp_path / "work")
    argv = _argv(work.data, work.cache)

    def fingerprint(fs):
        return fs.content_hash, hashlib.sha256("\n".join(fs.paths).encode("utf-8", "surrogateescape")
                                               + fs.labels.tobytes() + fs.features.tobytes()).hexdigest()

    complete = {fingerprint(read_feature_set(work.set_dir))}
    seen: list[tuple[str, str]] = []
    for step in ("add", "remove and change"):
        if step == "add":
            soak.write_images(work.data, 4, 4, start=100)
        else:
            for i in range(8):  # the whole first shard
                (work.data / "class0" / f"{i:03d}.png").unlink()
            write_image(work.data / "class3" / "005.png", seed=4242, size=16)
        # Linger after replacing the index, so reads of the new index overlap old shards' deletion.
        writer = zygote.spawn(argv, fault={"event": "index_renamed", "n": 1, "action": "SLEEP:0.5"}, name=f"writer-{step}")
        while writer.running():
            seen.append(fingerprint(read_feature_set(work.set_dir)))  # must never raise
            time.sleep(0.003)
        assert writer.wait().status == 0, writer.stderr
        complete.add(fingerprint(read_feature_set(work.set_dir)))
    assert len(complete) == 3
    assert set(seen) <= complete, "a reader got a set that was never complete"
    assert len(seen) > 50 and len(set(seen)) == 3, (len(seen), len(set(seen)))
    assert_shards_whole(work.set_dir)


# -- cache identity ---------------------------------------------------------------------


def _key(config):
    return feature_key(extract.feature_spec(config))


def _folder(config):
    spec = extract.feature_spec(config)
    return extract.feature_set_dir(config, spec, feature_key(spec))


def _base_config(tmp_path, **overrides):
    return ExtractConfig(**{"data": str(tmp_path / "data"), "model": "vgg16", "size": 32, "weights": "none",
                            "cache_dir": str(tmp_path / "cache"), **overrides})


def _row_with(monkeypatch, name, **changes):
    rows = dict(backbones.BACKBONES)
    rows[name] = dataclasses.replace(rows[name], **changes)
    monkeypatch.setattr(backbones, "BACKBONES", MappingProxyType(rows))


def _keras_version(monkeypatch, version):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == "keras" else real(name))


CHANGES_THE_NUMBERS = {
    "decoder": lambda mp, tmp: mp.setattr(decode, "DECODER_ID", decode.DECODER_ID + "-sharper"),
    "keras major version": lambda mp, tmp: _keras_version(mp, "4.0.0"),
    "preprocessing module of the row": lambda mp, tmp: _row_with(mp, "vgg16", module="resnet"),
    "constructor of the row": lambda mp, tmp: _row_with(mp, "vgg16", constructor="VGG19"),
    "constructor options of the row": lambda mp, tmp: _row_with(mp, "vgg16", kwargs={"alpha": 0.5}),
    "FEATURES_VERSION bump": lambda mp, tmp: mp.setattr(extract, "FEATURES_VERSION", extract.FEATURES_VERSION + 1),
}


@pytest.mark.parametrize("change", CHANGES_THE_NUMBERS)
def test_the_cache_key_changes_with_anything_that_changes_the_numbers(tmp_path, monkeypatch, change):
    config = _base_config(tmp_path)
    before = _key(config)
    CHANGES_THE_NUMBERS[change](monkeypatch, tmp_path)
    assert _key(config) != before
    monkeypatch.undo()
    assert _key(config) == before


def test_the_cache_key_follows_the_weights_files_content_not_its_name(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"first")
    config = _base_config(tmp_path, weights=str(weights))
    first = _key(config)
    weights.write_bytes(b"second")
    assert _key(config) != first
    moved = tmp_path / "elsewhere.weights.h5"
    shutil.copy(weights, moved)
    assert _key(_base_config(tmp_path, weights=str(moved))) == _key(config)
    assert f"pillow{__import__('PIL').__version__.split('.')[0]}" in decode.DECODER_ID  # Pillow major is in the key


def test_harmless_options_keep_the_same_feature_set_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    base = _base_config(tmp_path)
    (tmp_path / "other" / "data").mkdir(parents=True)
    for harmless in [
        _base_config(tmp_path, cache_dir=str(tmp_path / "moved-cache")),  # the cache's location
        _base_config(tmp_path, batch_size=3, workers=1, shard_size=5),
    ]:
        assert _folder(harmless).name == _folder(base).name
    # Another data folder of the same name: same key, but its own set, so neither replaces the other's rows.
    namesake = _base_config(tmp_path, data=str(tmp_path / "other" / "data"))
    assert _key(namesake) == _key(base) and _folder(namesake) != _folder(base)
    _keras_version(monkeypatch, importlib.metadata.version("keras").split(".")[0] + ".99.0")
    assert _folder(base) == _folder(_base_config(tmp_path))  # a keras minor release keeps random-weight sets


# -- untrusted files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../etc", "/etc/cron.d", "..", "a/../../b", "x\x00y", "~root/.ssh", "C:\\Windows"])
def test_a_dataset_name_cannot_place_a_feature_set_outside_the_cache(tmp_path, name):
    cache = tmp_path / "cache"
    if name.startswith("."):  # '..', '../../etc': a hidden folder name, refused
        with pytest.raises(ConfigError, match="`name` must make a visible folder name") as refused:
            _folder(_base_config(tmp_path, name=name))
        assert refused.value.field == "name"
        return
    folder = _folder(_base_config(tmp_path, name=name))
    assert folder.parent == cache
    assert "/" not in folder.name and "\x00" not in folder.name and folder.name not in (".", "..")
    assert (cache / folder.name).resolve().parent == cache.resolve()


@pytest.mark.slow
@pytest.mark.parametrize("hostile", ["../../outside.h5", "/ABS/outside.h5", "../shards/../../outside.h5"])
def test_shard_names_read_from_an_index_cannot_leave_the_shard_folder(small, tmp_path, hostile):
    work = small.copy(tmp_path / "work")
    store = FeatureStore(work.set_dir)
    state = store.read_index_state()
    outside = tmp_path / "ABS" / "outside.h5"
    outside.parent.mkdir()
    shutil.copy(work.set_dir / "shards" / state.shards[0].name, outside)
    shutil.copy(outside, work.cache / "outside.h5")
    hostile = hostile.replace("/ABS", str(outside.parent))
    with h5py.File(store.index_path, "r") as f:
        images = f["images"]
        rows = [IndexRow(os.fsdecode(p), int(label), s, float(k), int(size), int(m), d.decode())
                for p, label, s, k, size, m, d in zip(images["path"][:], f["labels"][:], images["folder_split"].asstr()[:],
                                                      images["split_key"][:], images["size"][:], images["mtime_ns"][:],
                                                      images["sha256"][:])]
        names = [s.decode() for s in f["shards/name"][:]]
        locations = [(names[s], int(r)) for s, r in zip(images["shard"][:], images["row"][:])]
        attrs = {"feature_key": f.attrs["feature_key"]}
    locations = [(hostile if n == names[0] else n, r) for n, r in locations]
    store.write_index(rows, locations, [], small.snap.class_names, feature_shape=(512,), dtype="float32", attrs=attrs)

    with pytest.raises(FeatureStoreError, match="shard") as refused:
        read_feature_set(work.set_dir)
    assert hostile in str(refused.value) and "again" in str(refused.value)
    assert store.read_index_state() is None  # the next `features` run rebuilds the index


# -- messages ---------------------------------------------------------------------------


def test_refusals_name_the_file_and_say_what_to_do(small, tmp_path):
    messages = {}
    missing = tmp_path / "cache" / "nothing-here"
    with pytest.raises(FeatureStoreError) as e:
        read_feature_set(missing)
    messages["missing set"] = (str(e.value), str(missing))

    work = small.copy(tmp_path / "work")
    index = work.set_dir / "features.h5"
    index.write_bytes(index.read_bytes()[:100])
    with pytest.raises(FeatureStoreError) as e:
        read_feature_set(work.set_dir)
    messages["damaged index"] = (str(e.value), str(index))

    store = FeatureStore(small.set_dir)
    with store.write_lock():
        with pytest.raises(StoreBusyError) as e:
            with FeatureStore(small.set_dir).write_lock(wait=False):
                pass
    messages["busy"] = (str(e.value), str(small.set_dir))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as e:
        extract.extract_features(config=_base_config(tmp_path, data=str(empty)))
    messages["no images"] = (str(e.value), str(empty))
    for what, (message, path) in messages.items():
        assert path in message, (what, message)
        assert re.search(r"\b(run|Run|pass|Pass|wait|Wait|add|Add|put|Put|point|Point)\b", message), (what, message)
