"""Tests for pipeline.features.discovery and pipeline.features.sample_data."""

import dataclasses
import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import badfiles
from needs import SIGN_DIGITS, require_shared
from pipeline.features import sample_data
from pipeline.features.discovery import (
    IMAGE_EXTENSIONS,
    DataError,
    Dataset,
    file_sha256,
    index_directory,
    split_key,
)
from pipeline.features.sample_data import DIGITS_IMAGES, write_digits

PHOTOS = SIGN_DIGITS


def _touch(root, *relpaths, data=b"x"):
    for relpath in relpaths:
        path = Path(root) / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# --- the bad corpus ----------------------------------------------------------


def test_corpus_listing(bad_corpus):
    root, expected = bad_corpus
    ds = index_directory(root)
    relpaths = [e.relpath for e in ds.entries]
    assert relpaths == sorted(expected)  # exactly the expected files, sorted
    assert ds.root == Path(root).resolve()
    assert ds.class_names == badfiles.CLASSES
    assert not ds.has_folder_splits
    assert {e.folder_split for e in ds.entries} == {""}
    for entry in ds.entries:
        assert ds.class_names[entry.label] == entry.relpath.split("/")[0]
        assert 0.0 <= entry.split_key < 1.0
        assert entry.split_key == split_key(entry.relpath)
    assert ds.ignored == badfiles.IGNORED
    assert ds.empty_classes == (badfiles.EMPTY_CLASS,)
    assert ds.skipped_dirs == ((badfiles.SYMLINK_LOOP, "symlink to a folder, not followed"),)
    for hidden in badfiles.NOT_LISTED:
        assert hidden not in relpaths
    assert "b/nested/deeper/deep.png" in relpaths  # nested folders are searched
    assert ds.paths[0] == ds.root / relpaths[0]
    assert ds.labels == tuple(e.label for e in ds.entries)


def test_stat_results(bad_corpus):
    root, _ = bad_corpus
    by_path = {e.relpath: e for e in index_directory(root).entries}
    broken = by_path["c/broken_link.png"]
    assert (broken.size, broken.mtime_ns) == (-1, -1)
    zero = by_path["a/zero.jpg"]
    assert zero.size == 0 and zero.mtime_ns == os.stat(root / "a/zero.jpg").st_mtime_ns
    # An unreadable file is listed normally: stat needs no read permission.
    unreadable = by_path["c/unreadable.png"]
    assert unreadable.size == (root / "c/unreadable.png").stat().st_size > 0


def test_non_utf8_name_round_trips(bad_corpus):
    root, expected = bad_corpus
    name = os.fsdecode(badfiles.NON_UTF8_NAME)
    if name not in expected:
        pytest.skip("this filesystem refuses non-UTF-8 names")
    entry = next(e for e in index_directory(root).entries if e.relpath == name)
    assert os.fsencode(entry.relpath) == badfiles.NON_UTF8_NAME
    assert (root / entry.relpath).is_file()
    assert entry.size > 0
    # Hashed as the raw bytes: stable whatever the locale.
    assert entry.split_key == split_key(name)


def test_summary_of_corpus(bad_corpus):
    root, expected = bad_corpus
    text = index_directory(root).summary()
    assert text.startswith(f"Found {len(expected)} images in 4 classes.")
    assert "Ignored 1 non-image file." in text
    assert "1 class without images: 'empty'." in text
    assert "'b/nested/up' (symlink to a folder, not followed)" in text
    assert "1 file could not be stat'ed" in text


def test_symlink_loop_does_not_hang(tmp_path):
    _touch(tmp_path, "cat/1.jpg")
    os.symlink("..", tmp_path / "cat/up")  # cat/up -> root
    os.symlink(".", tmp_path / "cat/self")  # cat/self -> cat
    result = []
    worker = threading.Thread(target=lambda: result.append(index_directory(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "index_directory() hung on a symlink loop"
    (ds,) = result
    assert [e.relpath for e in ds.entries] == ["cat/1.jpg"]
    assert [p for p, _ in ds.skipped_dirs] == ["cat/self", "cat/up"]


def test_unlistable_folder_is_reported_not_fatal(tmp_path, monkeypatch):
    _touch(tmp_path, "cat/1.jpg", "cat/locked/2.jpg")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ds = index_directory(tmp_path)
    assert [e.relpath for e in ds.entries] == ["cat/1.jpg"]
    assert ds.skipped_dirs == (("cat/locked", "permission denied"),)


def test_file_symlink_is_followed(tmp_path):
    _touch(tmp_path, "elsewhere/real.png", data=b"abc")
    _touch(tmp_path / "data", "cat/1.png")
    os.symlink(tmp_path / "elsewhere/real.png", tmp_path / "data/cat/link.png")
    entries = index_directory(tmp_path / "data").entries
    assert [(e.relpath, e.size) for e in entries] == [("cat/1.png", 1), ("cat/link.png", 3)]


# --- layout, ordering, labels ------------------------------------------------


def test_order_does_not_depend_on_creation_order(tmp_path):
    names = ["dog/b.jpg", "cat/z.png", "dog/a.JPEG", "cat/sub/y.gif", "cat/a.webp", "bird/1.tif"]
    _touch(tmp_path / "one", *names)
    _touch(tmp_path / "two", *reversed(names))
    one, two = index_directory(tmp_path / "one"), index_directory(tmp_path / "two")
    assert [dataclasses.replace(e, mtime_ns=0) for e in one.entries] == [
        dataclasses.replace(e, mtime_ns=0) for e in two.entries
    ]
    assert one.class_names == ("bird", "cat", "dog")
    assert [(e.relpath, e.label) for e in one.entries] == [
        ("bird/1.tif", 0),
        ("cat/a.webp", 1),
        ("cat/sub/y.gif", 1),
        ("cat/z.png", 1),
        ("dog/a.JPEG", 2),
        ("dog/b.jpg", 2),
    ]


def test_extension_allowlist(tmp_path):
    good = [f"cat/x{ext}" for ext in IMAGE_EXTENSIONS] + [f"cat/y{ext.upper()}" for ext in IMAGE_EXTENSIONS]
    bad = ["cat/a.txt", "cat/b.heic", "cat/c.svg", "cat/noext", "cat/d.jpg.part"]
    _touch(tmp_path, *good, *bad)
    ds = index_directory(tmp_path)
    assert sorted(e.relpath for e in ds.entries) == sorted(good)
    assert ds.ignored == tuple(sorted(bad))
    assert len(IMAGE_EXTENSIONS) == 8


def test_split_folders(tmp_path):
    _touch(
        tmp_path,
        "train/cat/1.jpg",
        "train/dog/2.jpg",
        "val/cat/3.jpg",
        "test/bird/4.jpg",
        "test/cat/1.jpg",
        "train/notes.txt",
        "README.md",
    )
    ds = index_directory(tmp_path)
    assert ds.has_folder_splits
    assert ds.class_names == ("bird", "cat", "dog")
    assert [(e.relpath, e.label, e.folder_split) for e in ds.entries] == [
        ("test/bird/4.jpg", 0, "test"),
        ("test/cat/1.jpg", 1, "test"),
        ("train/cat/1.jpg", 1, "train"),
        ("train/dog/2.jpg", 2, "train"),
        ("val/cat/3.jpg", 1, "validation"),
    ]
    # The split folder is not part of the hashed path.
    assert ds.entries[1].split_key == ds.entries[2].split_key == split_key("cat/1.jpg")
    assert ds.ignored == ("README.md", "train/notes.txt")
    assert ds.summary() == (
        "Found 5 images in 3 classes (train: 2, validation: 1, test: 2). "
        "Ignored 2 non-image files."
    )


def test_split_folder_names_are_case_insensitive(tmp_path):
    _touch(tmp_path, "Train/cat/1.jpg", "Validation/cat/2.jpg")
    ds = index_directory(tmp_path)
    assert ds.has_folder_splits and ds.class_names == ("cat",)
    assert [e.folder_split for e in ds.entries] == ["train", "validation"]


@pytest.mark.parametrize(
    "folders",
    [
        ("train", "valid", "test"),  # Roboflow, Kaggle
        ("training", "validation", "testing"),
        ("Train", "Val", "Test"),
        ("TRAINING", "DEV", "TESTING"),
        ("train", "dev"),
        ("Train", "Valid"),
    ],
)
def test_split_folder_spellings(tmp_path, folders):
    _touch(tmp_path, *(f"{folder}/cat/{i}.jpg" for i, folder in enumerate(folders)))
    ds = index_directory(tmp_path)
    assert ds.has_folder_splits and ds.class_names == ("cat",)
    by_folder = {e.relpath.split("/")[0]: e.folder_split for e in ds.entries}
    assert [by_folder[f] for f in folders] == ["train", "validation", "test"][: len(folders)]


def test_split_names_without_train_are_classes(tmp_path):
    # "test" and "validation" alone are classes: the split layout needs train.
    _touch(tmp_path, "validation/1.jpg", "test/2.jpg")
    assert index_directory(tmp_path).class_names == ("test", "validation")


@pytest.mark.parametrize(
    "tree, splits, others",
    [
        (("train/cat/1.jpg", "test/cat/2.jpg", "cats/3.jpg"), "'test', 'train'", "'cats'"),
        (("train/1.jpg", "cats/2.jpg"), "'train'", "'cats'"),
        (("Training/cat/1.jpg", "valid/cat/2.jpg", "dogs/3.jpg", "cats/4.jpg"), "'Training', 'valid'", "'cats', 'dogs'"),
        (("dev/1.jpg", "cats/2.jpg"), "'dev'", "'cats'"),
        (("train/cat/1.jpg", "test/cat/2.jpg", "empty/"), "'test', 'train'", "'empty'"),
    ],
)
def test_split_and_class_folders_mixed_is_an_error(tmp_path, tree, splits, others):
    # Reading `train` and `test` as classes beside `cats` is a silent wrong result.
    for relpath in tree:
        if relpath.endswith("/"):
            (tmp_path / relpath).mkdir()
        else:
            _touch(tmp_path, relpath)
    with pytest.raises(DataError) as info:
        index_directory(tmp_path)
    message = str(info.value)
    assert f"mixes split folders {splits} with other folders {others}" in message
    assert "neither" in message and f"'{tmp_path}/train/cat/1.jpg'" in message
    assert info.value.field == "data"


@pytest.mark.parametrize(
    "clashing, split",
    [
        (("val", "validation"), "validation"),
        (("dev", "valid"), "validation"),
        (("train", "training"), "train"),
        (("Test", "testing"), "test"),
        (("TRAIN", "train"), "train"),
    ],
)
def test_two_folders_of_one_split_is_an_error(tmp_path, clashing, split):
    _touch(tmp_path, "train/cat/0.jpg", *(f"{folder}/cat/{i}.jpg" for i, folder in enumerate(clashing, 1)))
    with pytest.raises(DataError) as info:
        index_directory(tmp_path)
    names = ", ".join(f"'{n}'" for n in sorted(clashing))
    assert f"split folders {names} that name the same split ('{split}')" in str(info.value)
    assert info.value.field == "data"


def test_two_folders_of_one_split_without_train_is_an_error(tmp_path):
    # `val` and `validation` are never two classes either.
    _touch(tmp_path, "val/cat/1.jpg", "validation/cat/2.jpg")
    with pytest.raises(DataError, match=r"split folders 'val', 'validation' that name the same split"):
        index_directory(tmp_path)


def test_hidden_files_and_folders_are_skipped(tmp_path):
    _touch(tmp_path, "cat/1.jpg", "cat/.2.jpg", ".git/x.jpg", "cat/.thumbs/3.jpg", ".DS_Store")
    ds = index_directory(tmp_path)
    assert ds.class_names == ("cat",)  # one class is fine
    assert [e.relpath for e in ds.entries] == ["cat/1.jpg"]
    assert ds.ignored == ()


def test_images_outside_class_folders(tmp_path):
    _touch(tmp_path, "cat/1.jpg", "loose.jpg")
    ds = index_directory(tmp_path)
    assert [e.relpath for e in ds.entries] == ["cat/1.jpg"]
    assert ds.outside_classes == ("loose.jpg",)
    assert "1 image outside class folders not listed: 'loose.jpg'." in ds.summary()


# --- output folders of bottleneck inside the data folder --------------------

# What `make features DATA=.` then `make train-head` leave in the data folder.
FEATURE_SET = ("features.h5", "shards/20240101T000000-0123456789ab.h5")
RUN = ("lineage.json", "head.joblib", "confusion_matrix.png", "history.png", "eval-1/confusion_matrix.png")
BUNDLE = ("bundle.json", "head.joblib", "weights/w.weights.h5", "manifest.sha256")


def _tree(root, folder, files):
    _touch(root, *(f"{folder}/{name}" for name in files))


def test_output_folders_are_left_out(tmp_path):
    _touch(tmp_path, "cat/1.jpg", "dog/2.jpg")
    _tree(tmp_path, "cache/photos-mobilenet_v2-224-avg-0123abcd", FEATURE_SET)
    _touch(tmp_path, "runs/leaderboard.csv", "runs/leaderboard.md")
    _tree(tmp_path, "runs/photos-mobilenet_v2-224-avg-0123abcd/logreg-20240101T000000-00ff00ff", RUN)
    ds = index_directory(tmp_path)
    assert ds.class_names == ("cat", "dog")
    assert [e.relpath for e in ds.entries] == ["cat/1.jpg", "dog/2.jpg"]
    assert ds.output_dirs == ("cache", "runs")
    assert ds.ignored == () and ds.empty_classes == ()
    assert ds.summary() == (
        "Found 2 images in 2 classes. "
        "Left out 'cache/' and 'runs/': output folders of bottleneck, not images."
    )


@pytest.mark.parametrize(
    "folder, files",
    [
        ("my-features", FEATURE_SET),  # a feature set, whatever its name
        ("half-done", ("shards/20240101T000000-0123456789ab.h5",)),  # no index yet
        ("feats/set-a", FEATURE_SET),  # a cache under another name
        ("feats/set-b", ("features.h5",)),
        ("experiments/logreg-1", RUN),  # a runs folder without leaderboard
        ("experiments/set/svm-2", RUN),
        ("one-run", RUN),  # a run folder alone
        ("exported", BUNDLE),  # an export bundle
        ("board", ("leaderboard.csv",)),  # a runs folder before any run
    ],
)
def test_output_folders_are_found_by_content(tmp_path, folder, files):
    _touch(tmp_path, "cat/1.jpg")
    _tree(tmp_path, folder, files)
    ds = index_directory(tmp_path)
    assert ds.class_names == ("cat",) and len(ds.entries) == 1
    assert ds.output_dirs == (folder.split("/")[0],)
    assert f"Left out '{folder.split('/')[0]}/': an output folder of bottleneck, not images." in ds.summary()


def test_output_folder_names_alone_decide_nothing(tmp_path):
    # Users choose the cache and runs names: folders so named are classes
    # when they hold images and no output, and empty classes when empty.
    _touch(tmp_path, "cache/1.jpg", "runs/2.jpg", "venv/lib/site.py")
    (tmp_path / "shards").mkdir()
    ds = index_directory(tmp_path)
    assert ds.class_names == ("cache", "runs", "shards", "venv")
    assert ds.empty_classes == ("shards", "venv") and ds.output_dirs == ()


def test_output_folder_inside_a_class_is_left_out(tmp_path):
    _touch(tmp_path, "cat/1.jpg", "cat/2020/2.jpg", "dog/3.jpg")
    _tree(tmp_path, "cat/2020/old-run", RUN)
    _tree(tmp_path, "dog/cache/set", FEATURE_SET)
    ds = index_directory(tmp_path)
    assert [e.relpath for e in ds.entries] == ["cat/1.jpg", "cat/2020/2.jpg", "dog/3.jpg"]
    assert ds.output_dirs == ("cat/2020/old-run", "dog/cache/set")
    assert ds.ignored == ()


def test_output_folders_beside_split_folders(tmp_path):
    _touch(tmp_path, "train/cat/1.jpg", "test/cat/2.jpg")
    _tree(tmp_path, "cache/set", FEATURE_SET)
    _tree(tmp_path, "runs/set/logreg-1", RUN)
    _tree(tmp_path, "train/bundle", BUNDLE)
    ds = index_directory(tmp_path)
    assert ds.has_folder_splits and ds.class_names == ("cat",)
    assert [e.relpath for e in ds.entries] == ["test/cat/2.jpg", "train/cat/1.jpg"]
    assert ds.output_dirs == ("cache", "runs", "train/bundle")
    assert "Left out 'cache/', 'runs/' and 'train/bundle/': output folders" in ds.summary()


def test_many_output_folders_are_counted_not_all_named(tmp_path):
    _touch(tmp_path, "cat/1.jpg")
    for name in "abcdef":
        _tree(tmp_path, f"run-{name}", RUN)
    ds = index_directory(tmp_path)
    assert ds.output_dirs == tuple(f"run-{name}" for name in "abcdef")
    assert (
        "Left out 'run-a/', 'run-b/', 'run-c/', 'run-d/', 'run-e/' and 1 more: "
        "output folders of bottleneck, not images."
    ) in ds.summary()


@pytest.mark.parametrize(
    "files, what",
    [(FEATURE_SET, "a feature set"), (RUN, "a run folder"), (BUNDLE, "an export bundle")],
)
def test_data_folder_that_is_an_output_folder_is_an_error(tmp_path, files, what):
    _tree(tmp_path, "out", files)
    with pytest.raises(DataError) as info:
        index_directory(tmp_path / "out")
    assert f"is {what} of bottleneck, not an image folder" in str(info.value)
    assert info.value.field == "data"


def test_only_output_folders_is_an_error(tmp_path):
    _tree(tmp_path, "cache/set", FEATURE_SET)
    _tree(tmp_path, "runs/set/logreg-1", RUN)
    with pytest.raises(DataError) as info:
        index_directory(tmp_path)
    assert "has no class folders" in str(info.value)
    assert "left out 'cache/' and 'runs/': output folders of bottleneck" in str(info.value)


def test_output_file_names_match_their_definitions():
    # Discovery spells them itself to stay independent of store/ and runs/.
    from pipeline.features import discovery
    from pipeline.runs import layout
    from pipeline import store

    assert discovery._FEATURE_SET_INDEX == store.INDEX_NAME
    assert discovery._FEATURE_SET_SHARDS == store.SHARD_DIR
    assert discovery._OUTPUT_FILES == {
        layout.LINEAGE: "a run folder",
        layout.BUNDLE: "an export bundle",
        store.INDEX_NAME: "a feature set",
    }
    assert discovery._RUNS_FILE == layout.LEADERBOARD_CSV


def test_real_dataset():
    require_shared(PHOTOS)
    ds = index_directory(PHOTOS)
    n_files = sum(len(os.listdir(PHOTOS / str(d))) for d in range(10))
    assert ds.class_names == tuple(str(d) for d in range(10))
    assert len(ds.entries) == n_files
    assert ds.summary() == f"Found {n_files} images in 10 classes."


# --- split_key -----------------------------------------------------------------


def test_split_key_is_stable_and_path_only(tmp_path):
    _touch(tmp_path, *(f"cat/{i}.jpg" for i in range(20)))
    before = {e.relpath: e.split_key for e in index_directory(tmp_path).entries}
    _touch(tmp_path, "cat/new.jpg", "dog/0.jpg")
    after = {e.relpath: e.split_key for e in index_directory(tmp_path).entries}
    assert all(after[p] == k for p, k in before.items())
    assert len(after) == 22
    # Pinned: the value must not change between versions or machines.
    digest = hashlib.sha1(b"cat/1.jpg").digest()
    assert split_key("cat/1.jpg") == (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def test_split_key_is_uniform_and_below_one():
    keys = np.array([split_key(f"c{i % 7}/img_{i}.jpg") for i in range(4000)])
    assert keys.min() >= 0.0 and keys.max() < 1.0
    assert len(set(keys.tolist())) == len(keys)
    counts, _ = np.histogram(keys, bins=10, range=(0, 1))
    assert counts.min() > 320 and counts.max() < 480  # 400 expected per bin


def test_split_key_nohash_groups_files():
    assert split_key("cat/bob_nohash_1.jpg") == split_key("cat/bob_nohash_2.png")
    assert split_key("cat/bob_nohash_1.jpg") != split_key("dog/bob_nohash_1.jpg")
    assert split_key("cat/a.jpg") != split_key("cat/b.jpg")


# --- errors ------------------------------------------------------------------------


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as info:
        index_directory(missing)
    assert str(info.value) == (
        f"Data folder '{missing}' does not exist. Pass as `data` a folder "
        "with one subfolder per class."
    )
    assert info.value.field == "data"


@pytest.mark.parametrize(
    "tree",
    [
        ("a.jpg",),  # no class folders
        ("cat/a.txt",),  # no images
        ("train/cat/1.jpg", "val/cat/2.jpg", "validation/cat/3.jpg"),
        ("train/cat/1.jpg", "cats/2.jpg"),
        ("cache/set/features.h5",),  # only output folders
    ],
)
def test_errors_name_the_argument_not_a_flag(tmp_path, tree):
    # The CLI adds the flag and Make variable from `field`.
    _touch(tmp_path, *tree)
    for root in (tmp_path, tmp_path / "missing", tmp_path / tree[0]):
        with pytest.raises(DataError) as info:
            index_directory(root)
        assert info.value.field == "data"
        assert "DATA" not in str(info.value) and "--" not in str(info.value)


def test_root_is_a_file(tmp_path):
    _touch(tmp_path, "x.jpg")
    with pytest.raises(DataError, match=r"'.*x\.jpg' is a file, not a folder"):
        index_directory(tmp_path / "x.jpg")


def test_no_class_folders(tmp_path):
    _touch(tmp_path, "a.jpg")
    with pytest.raises(DataError, match=r"has no class folders\. Expected one subfolder per class"):
        index_directory(tmp_path)


def test_no_images(tmp_path):
    _touch(tmp_path, "cat/a.txt", "dog/b.heic")
    with pytest.raises(DataError) as info:
        index_directory(tmp_path)
    message = str(info.value)
    assert "Found no images" in message and "(2 class folders)" in message
    assert "(ignored 2 other files)" in message
    assert all(ext in message for ext in IMAGE_EXTENSIONS)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_dataset_is_frozen(tmp_path):
    _touch(tmp_path, "cat/1.jpg")
    ds = index_directory(tmp_path)
    assert isinstance(ds, Dataset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.entries = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.entries[0].label = 3


def test_file_sha256(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # spans several 1 MiB blocks
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_named_like_an_image(tmp_path):
    _touch(tmp_path, "cat/1.jpg")
    os.mkfifo(tmp_path / "cat/pipe.jpg")
    entry = index_directory(tmp_path).entries[1]
    assert (entry.relpath, entry.size, entry.mtime_ns) == ("cat/pipe.jpg", -1, -1)
    with pytest.raises(OSError, match="not a regular file"):
        file_sha256(tmp_path / "cat/pipe.jpg")  # must not block


# --- sample data -----------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("sample") / "digits")


@pytest.mark.slow
def test_write_digits(digits):
    ds = index_directory(digits)
    assert len(ds.entries) == DIGITS_IMAGES == 1797
    assert ds.class_names == tuple(str(d) for d in range(10))
    assert ds.ignored == () and ds.empty_classes == ()
    with Image.open(digits / "0" / "0000.png") as img:
        assert img.size == (32, 32) and img.mode in ("L", "RGB")
        pixels = np.asarray(img)
    # Nearest-neighbour upscale: every 4x4 block is one flat value.
    assert (pixels.reshape(8, 4, 8, 4).std(axis=(1, 3)) == 0).all()
    from sklearn.datasets import load_digits

    expected = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(pixels[::4, ::4], expected)  # 0..16 -> 0..255
    # No temporary folder left beside it.
    assert sorted(p.name for p in digits.parent.iterdir()) == ["digits"]


def test_write_digits_returns_complete_copy_untouched(digits):
    stamp = (digits / "3" / "0003.png").stat().st_mtime_ns
    assert write_digits(digits) == digits
    assert (digits / "3" / "0003.png").stat().st_mtime_ns == stamp


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "digits"
    saved = []
    real_save = Image.Image.save

    def save_then_interrupt(self, fp, *args, **kwargs):
        if len(saved) == 100:
            raise KeyboardInterrupt
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_digits(out)
    assert len(saved) == 100
    assert list(tmp_path.iterdir()) == []  # no out_dir, no temp folder


@pytest.mark.slow
def test_leftover_temp_folder_is_not_complete(tmp_path):
    # A killed process leaves a partial temp folder beside out_dir, and the
    # user made out_dir as an empty folder (allowed: it is filled).
    out = tmp_path / "digits"
    out.mkdir()
    partial = tmp_path / ".digits.partial-killed"
    _touch(partial, "0/0000.png", "1/0001.png", sample_data._MARKER)
    assert write_digits(out) == out
    assert sum(1 for _ in out.glob("*/*.png")) == 1797
    assert len(index_directory(out).entries) == 1797
    assert partial.exists()  # not ours to delete: it may belong to a live process


def test_existing_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "digits"
    _touch(out, "0/0000.png")
    (out / sample_data._MARKER).write_text("{}")  # not our marker
    with pytest.raises(ValueError, match=r"`out_dir` '.*digits' already exists and is not a complete"):
        write_digits(out)
    assert (out / "0" / "0000.png").exists()  # never deleted
