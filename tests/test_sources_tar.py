"""WebDataset tar shards as data: the same features as the images in a folder, per-sample reuse, bad members skipped."""

from __future__ import annotations

import json
import tarfile

import pytest

from imagegen import make_dataset, write_image
from pipeline.config import ExtractConfig
from pipeline.features.extract import extract_features
from pipeline.features.sources import open_source
from pipeline.store import read_feature_set
from servers import TINY_MODEL, extract_tiny, rows_by_content, serve_folder
from sourcefiles import shards_of, write_shard

pytest.importorskip("fsspec")


@pytest.fixture
def folder(tmp_path):
    return make_dataset(tmp_path / "data", classes=2, per_class=4)


@pytest.mark.slow
def test_shards_give_the_folder_features_then_reuse_then_reextract_one_changed_sample(folder, tmp_path):
    shards_of(folder, tmp_path / "shards")
    pattern = str(tmp_path / "shards" / "{000..002}.tar")
    local = extract_tiny(folder, tmp_path / "local-cache")
    first = extract_tiny(pattern, tmp_path / "cache")
    assert first.counts == {"extracted": 8, "reused": 0, "skipped": 0, "removed": 0}
    assert rows_by_content(first) == rows_by_content(local)
    assert read_feature_set(first.path).paths[:2] == ["000.tar/s0000.png", "000.tar/s0001.png"]
    assert extract_tiny(pattern, tmp_path / "cache").counts["extracted"] == 0

    # Shard 001 rewritten with one sample's image changed: only that sample is extracted again.
    changed = write_image(tmp_path / "new.png", seed=77).read_bytes()
    with tarfile.open(tmp_path / "shards" / "001.tar") as tar:
        members = [(m.name.split(".")[0], m.name.split(".")[1], tar.extractfile(m).read()) for m in tar]
    samples = {}
    for key, ext, data in members:
        samples.setdefault(key, {})[ext] = changed if (key, ext) == ("s0004", "png") else data
    write_shard(tmp_path / "shards" / "001.tar", list(samples.items()))
    again = extract_tiny(pattern, tmp_path / "cache")
    assert again.counts == {"extracted": 1, "reused": 7, "skipped": 0, "removed": 0}


def test_a_relative_shard_pattern_is_recorded_as_an_absolute_data_root(folder, tmp_path, monkeypatch):
    shards_of(folder, tmp_path / "shards")
    monkeypatch.chdir(tmp_path)
    result = extract_tiny("shards/{000..002}.tar", tmp_path / "cache")
    monkeypatch.chdir(tmp_path / "shards")  # predict, evaluate and the report may run from anywhere
    recorded = read_feature_set(result.path).attrs["data_root"]
    assert recorded == str(tmp_path.resolve() / "shards" / "{000..002}.tar")
    assert len(open_source(recorded).list().entries) == 8


@pytest.mark.slow
def test_shards_over_http_give_the_folder_features(folder, tmp_path):
    shards_of(folder, tmp_path / "site" / "shards")
    local = extract_tiny(folder, tmp_path / "local-cache")
    with serve_folder(tmp_path / "site", latency_s=0.01) as (base, _):
        remote = extract_tiny(base + "/shards/{000..002}.tar", tmp_path / "cache")
    assert remote.counts["extracted"] == 8
    assert rows_by_content(remote) == rows_by_content(local)


@pytest.mark.slow
def test_corrupt_member_is_skipped_with_its_reason_and_a_broken_shard_is_reported(tmp_path):
    image = [write_image(tmp_path / f"{i}.png", seed=i).read_bytes() for i in range(4)]
    write_shard(tmp_path / "s" / "0.tar", [("a", {"png": image[0], "cls": b"1"}), ("b", {"png": b"not a png", "cls": b"0"}),
                                           ("c", {"png": image[1], "json": json.dumps({"label": 10}).encode()})])
    broken = write_shard(tmp_path / "s" / "1.tar", [("d", {"png": image[2], "cls": b"2"}), ("e", {"png": image[3], "cls": b"2"})])
    with tarfile.open(broken) as tar:
        cut = tar.getmember("e.png").offset + 100
    broken.write_bytes(broken.read_bytes()[:cut])  # ends inside the second sample's header: 'e' is lost
    dataset = open_source(str(tmp_path / "s" / "{0..1}.tar")).list()
    assert dataset.class_names == ("0", "1", "2", "10")  # .cls labels sort as numbers
    assert [e.relpath for e in dataset.entries] == ["0.tar/a.png", "0.tar/b.png", "0.tar/c.png", "1.tar/d.png"]
    assert [name for name, _ in dataset.skipped_dirs] == ["1.tar"]
    result = extract_tiny(tmp_path / "s" / "{0..1}.tar", tmp_path / "cache")
    assert result.counts["extracted"] == 3 and result.counts["skipped"] == 1
    (bad,) = result.skipped
    assert (bad.relpath, bad.reason) == ("0.tar/b.png", "not an image: the file is text saved with an image extension")


def test_samples_without_a_label_are_not_listed_but_reported(tmp_path):
    good = write_image(tmp_path / "a.png", seed=1).read_bytes()
    write_shard(tmp_path / "0.tar", [("a", {"png": good, "txt": b"cat"}), ("b", {"png": good})])
    dataset = open_source(str(tmp_path / "0.tar")).list()
    assert [e.relpath for e in dataset.entries] == ["0.tar/a.png"] and dataset.outside_classes == ("0.tar/b.png",)


@pytest.mark.slow
def test_an_interrupted_run_resumes_at_the_sample_losing_and_duplicating_nothing(folder, tmp_path, monkeypatch):
    from pipeline.features import tar_source

    shards_of(folder, tmp_path / "shards")
    pattern = str(tmp_path / "shards" / "{000..002}.tar")
    config = ExtractConfig(data=pattern, cache_dir=str(tmp_path / "cache"), shard_size=2, **TINY_MODEL)
    real = tar_source.TarMember.read_bytes

    def interrupted(self, limit):
        if self.shard.endswith("002.tar"):  # samples 7 and 8: the first batch of 4 is stored, the second not
            raise KeyboardInterrupt
        return real(self, limit)

    monkeypatch.setattr(tar_source.TarMember, "read_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_features(config=config)
    monkeypatch.setattr(tar_source.TarMember, "read_bytes", real)
    resumed = extract_features(config=config)
    assert 0 < resumed.counts["reused"] < 8 and resumed.counts["reused"] + resumed.counts["extracted"] == 8
    fs = read_feature_set(resumed.path)
    assert len(set(fs.paths)) == len(fs.paths) == 8
    assert rows_by_content(resumed) == rows_by_content(extract_tiny(folder, tmp_path / "local-cache"))


def test_brace_patterns_expand_in_order():  # the Ray engine reads shards too: tests/test_ray_sources.py
    from pipeline.features.tar_source import expand_braces

    assert expand_braces("s/{008..010}.tar") == ["s/008.tar", "s/009.tar", "s/010.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]


def _listing_bytes(folder, n):
    """`(retained, peak)` bytes Python allocates to list `n` samples in 10 shards (the same image bytes each)."""
    import gc
    import tracemalloc

    png = write_image(folder / "x.png", seed=1).read_bytes()
    for s in range(10):
        write_shard(folder / f"{n}" / f"{s}.tar",
                    [(f"{i:07d}", {"png": png, "cls": str(i % 10).encode()}) for i in range(s * n // 10, (s + 1) * n // 10)])
    source = open_source(str(folder / f"{n}" / "{0..9}.tar"))
    gc.collect()
    tracemalloc.start()
    try:
        dataset = source.list()
        gc.collect()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset.entries) == n and dataset.root.readers[dataset.entries[-1].relpath].read_bytes(1 << 20) == png
    return retained, peak


def test_a_listing_holds_a_few_hundred_bytes_per_sample(tmp_path):
    # Held for the whole run: an entry per sample (id, label, size, change token, split key) and its
    # member's offset and size in compact arrays, no reader object (100,000 samples used to take 70 MiB).
    small, large = _listing_bytes(tmp_path, 1000), _listing_bytes(tmp_path, 5000)
    assert (large[0] - small[0]) / 4000 < 320
    assert (large[1] - small[1]) / 4000 < 640
