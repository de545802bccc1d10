"""Augmented views: parsing, per-image determinism, caching, resume, and training on them."""

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest

from imagegen import make_dataset
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.features import augment, decode
from pipeline.features.extract import extract_features
from pipeline.heads import training_splits
from pipeline.runs import train
from pipeline.store import FeatureStore, read_feature_set
from pipeline.store.lookup import list_view_sets

MODEL = dict(model="resnet50", size=32, weights="none", batch_size=4, workers=2)
OPS = "flip,rotation=0.1,zoom=0.2,translation=0.1,contrast=0.1,brightness=0.1"


def _config(data, cache, **overrides):
    return ExtractConfig(data=str(data), cache_dir=str(cache), **{**MODEL, **overrides})


def _views(result):
    return {folder.name: read_feature_set(folder) for folder in list_view_sets(result.path)}


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """train/ (3 classes x 3 images) and test/ (3 classes x 1) folders."""
    root = tmp_path_factory.mktemp("augment") / "data"
    make_dataset(root / "train", per_class=3)
    make_dataset(root / "test", per_class=1, start=50)
    return root


@pytest.fixture(scope="module")
def extracted(split_data, tmp_path_factory):
    """The split data extracted with 2 views, then 4 (each run's result)."""
    cache = tmp_path_factory.mktemp("augment-cache")
    two = extract_features(config=_config(split_data, cache, augment=2, augment_ops=OPS))
    four = extract_features(config=_config(split_data, cache, augment=4, augment_ops=OPS))
    return cache, two, four


@pytest.mark.parametrize("text", ["flip,bogus", "rotation=2", "zoom=abc", "flip=diagonal", "flip,flip", "", "zoom=0",
                                  "rotate=10", "rotate=200deg", "crop=0.8-0.6", "crop=0-1", "crop=a-b", "flip,crop",
                                  "jitter=2"])
def test_bad_ops_are_refused_naming_augment_ops(text):
    with pytest.raises(ConfigError) as info:
        augment.parse_augment_ops(text)
    assert info.value.field == "augment_ops" and repr(text) in str(info.value)


def test_ops_have_one_canonical_text_in_the_order_given():
    ops = augment.parse_augment_ops(" zoom=0.20, flip ")
    assert augment.format_augment_ops(ops) == "zoom=0.2,flip=horizontal"
    assert augment.parse_augment_ops(augment.format_augment_ops(ops)) == ops


PHOTO_OPS = "crop=0.6-1.0,flip=horizontal,rotate=10deg,jitter=0.1"


def test_the_default_ops_are_the_photo_ops_in_units_a_user_reads():
    assert ExtractConfig(data="d").augment_ops == PHOTO_OPS
    ops = augment.parse_augment_ops("crop=0.6, flip, rotate=10.0deg, jitter")
    assert augment.format_augment_ops(ops) == PHOTO_OPS
    assert dict(ops)["rotate"] == 10.0 and dict(ops)["crop"] == (0.6, 1.0)


def test_the_older_ops_keep_their_canonical_text_so_cached_views_keep_their_keys():
    # The text the view sets made before the photo ops were named under (`view_set_dir` hashes it).
    for given, canonical in [("flip,rotation=0.2,zoom=0.2", "flip=horizontal,rotation=0.2,zoom=0.2"),
                             (OPS, "flip=horizontal,rotation=0.1,zoom=0.2,translation=0.1,contrast=0.1,brightness=0.1")]:
        assert augment.format_augment_ops(augment.parse_augment_ops(given)) == canonical
    ops = augment.parse_augment_ops(OPS)
    assert not augment.needs_decoded(ops)
    assert augment.view_draws(["ab"], ops=ops, seed=0, view=1).shape == (1, 7)  # the draws of before, column for column


def test_rotate_in_degrees_is_rotation_in_turns():
    rng = np.random.default_rng(0).random((4, 1))
    mine = augment.AUGMENT_OPS["rotate"].transformation(rng, 36.0, 24)["rotation_matrix"]
    np.testing.assert_allclose(mine, augment.AUGMENT_OPS["rotation"].transformation(rng, 0.1, 24)["rotation_matrix"])
    angles = np.degrees(np.arctan2(mine[:, 3], mine[:, 0]))
    assert np.all(np.abs(angles) <= 36.0)


def test_a_crop_covers_its_fraction_of_the_area_with_a_bounded_aspect():
    draws = np.random.default_rng(1).random((500, 4))
    boxes = np.array([augment.crop_box(u, (0.6, 1.0), 300, 200) for u in draws])
    top, left, rows, columns = boxes.T
    area = rows * columns / (300 * 200)
    assert area.min() >= 0.6 * 0.75 - 0.01 and area.max() <= 1.0 and np.median(area) > 0.7
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + rows <= 300) and np.all(left + columns <= 200)
    assert area.std() > 0.05 and np.unique(left).size > 20  # the crops vary in size and place


def test_a_crop_is_cut_from_the_decoded_image_not_from_the_resized_one():
    # The resized batch is blue; the decoded images (4x larger) are red with a fine pattern the resize averages away.
    size, n = 16, 3
    resized = np.zeros((n, size, size, 3), np.uint8)
    resized[..., 2] = 255
    decoded = [np.zeros((4 * size, 4 * size, 3), np.uint8) for _ in range(n)]
    for image in decoded:
        image[..., 0] = 255
        image[::2, ::2, 1] = 255
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(n)]
    out = augment.apply_view(resized, digests, ops=augment.parse_augment_ops("crop=0.5-0.5"), seed=0, view=1,
                             decoded=decoded)
    assert out.shape == resized.shape and np.all(out[..., 0] == 255) and np.all(out[..., 2] == 0)
    with pytest.raises(ValueError, match="decoded"):
        augment.apply_view(resized, digests, ops=augment.parse_augment_ops("crop"), seed=0, view=1)


def test_a_photo_view_depends_on_the_image_alone_not_on_its_batch():
    rng = np.random.default_rng(0)
    decoded = [rng.integers(0, 256, (40 + 3 * i, 50, 3), dtype=np.uint8) for i in range(6)]
    images = np.stack([decode.resize_squash(d, 32) for d in decoded])
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(6)]
    ops = augment.parse_augment_ops(PHOTO_OPS)
    whole = augment.apply_view(images, digests, ops=ops, seed=0, view=1, decoded=decoded)
    order = [4, 1, 5]
    part = augment.apply_view(images[order], [digests[i] for i in order], ops=ops, seed=0, view=1,
                              decoded=[decoded[i] for i in order])
    np.testing.assert_array_equal(part, whole[order])
    again = augment.apply_view(images, digests, ops=ops, seed=0, view=1, decoded=decoded)
    np.testing.assert_array_equal(again, whole)
    assert whole.dtype == np.uint8 and not np.array_equal(whole, images)
    assert not np.array_equal(augment.apply_view(images, digests, ops=ops, seed=1, view=1, decoded=decoded), whole)
    assert not np.array_equal(augment.apply_view(images, digests, ops=ops, seed=0, view=2, decoded=decoded), whole)


def test_jitter_keeps_the_image_near_and_grey_stays_grey():
    grey = np.full((2, 8, 8, 3), 100, np.float32)
    out = augment.AUGMENT_OPS["jitter"].pixels(grey, np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]]), 0.1)
    assert np.allclose(out[0], 90) and np.allclose(out[1], 110)  # brightness x0.9 / x1.1; contrast and saturation keep grey


@pytest.mark.slow
def test_photo_views_extract_from_files_reproducibly(split_data, tmp_path):
    first = extract_features(config=_config(split_data, tmp_path / "a", augment=1, augment_ops=PHOTO_OPS))
    again = extract_features(config=_config(split_data, tmp_path / "b", augment=1, augment_ops=PHOTO_OPS, batch_size=3))
    (name, view), = _views(first).items()
    (other, view_again), = _views(again).items()
    assert name == other and view.paths == [p for p in read_feature_set(first.path).paths if p.startswith("train/")]
    np.testing.assert_allclose(view.features, view_again.features, rtol=1e-5, atol=1e-6)
    clean = read_feature_set(first.path)
    assert not np.allclose(view.features, clean.features[: len(view.paths)])


def test_transformations_match_what_the_keras_layers_build():
    keras = pytest.importorskip("keras")
    ops = augment.parse_augment_ops(OPS)
    images = keras.ops.zeros((5, 24, 24, 3))
    for (name, value), layer in zip(ops, augment._layers(ops)):
        theirs = layer.get_random_transformation(images, training=True, seed=1)
        op = augment.AUGMENT_OPS[name]
        mine = op.transformation(np.random.default_rng(0).random((5, op.draws)), value, 24)
        assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(theirs[k].shape) for k in mine}, name
    rotation = augment._layers(ops)[1]
    theirs = rotation.get_random_transformation(images, training=True, seed=3)
    u = (np.asarray(theirs["angle"]) / (0.1 * 360) + 1) / 2  # the draws that give Keras' angles
    mine = augment.AUGMENT_OPS["rotation"].transformation(u[:, None], 0.1, 24)
    np.testing.assert_allclose(mine["rotation_matrix"], np.asarray(theirs["rotation_matrix"]), atol=1e-4)


def test_a_view_depends_on_the_image_alone_not_on_its_batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(6)]
    ops = augment.parse_augment_ops(OPS)
    whole = augment.apply_view(images, digests, ops=ops, seed=0, view=1)
    order = [4, 1, 5]
    part = augment.apply_view(images[order], [digests[i] for i in order], ops=ops, seed=0, view=1)
    np.testing.assert_array_equal(part, whole[order])
    assert whole.dtype == np.uint8 and not np.array_equal(whole, images)
    assert not np.array_equal(augment.apply_view(images, digests, ops=ops, seed=1, view=1), whole)
    assert not np.array_equal(augment.apply_view(images, digests, ops=ops, seed=0, view=2), whole)


@pytest.mark.slow
def test_views_of_train_images_only_and_k4_after_k2_extracts_two_more(extracted):
    _, two, four = extracted
    assert two.counts == {"extracted": 12, "reused": 0, "skipped": 0, "removed": 0, "views": 2 * 9}
    assert four.counts == {"extracted": 0, "reused": 12, "skipped": 0, "removed": 0, "views": 2 * 9}
    assert four.images_per_second > 0  # views alone are extracted rows too
    clean = read_feature_set(four.path)
    views = _views(four)
    assert len(views) == 4 and len({name.split("-")[1] for name in views}) == 1  # one ops+seed tag
    train_paths = [p for p, s in zip(clean.paths, clean.folder_splits) if s == "train"]
    for view in views.values():
        assert view.paths == train_paths
        assert not np.allclose(view.features, clean.features[: len(train_paths)])
    first, second = (v.features for v in list(views.values())[:2])
    assert not np.allclose(first, second)


@pytest.mark.slow
def test_cache_ls_lists_the_clean_set_with_its_views_count(extracted, capsys):
    from pipeline.cli import main

    cache, _, four = extracted
    assert main(["cache", "ls", "--cache-dir", str(cache), "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert listed["name"] == four.path.parent.name and listed["images"] == 12 and listed["views"] == 4


@pytest.mark.slow
def test_views_are_reproducible_and_another_seed_gives_others(extracted, split_data, tmp_path):
    _, _, four = extracted
    again = extract_features(config=_config(split_data, tmp_path / "a", augment=2, augment_ops=OPS))
    for name, view in _views(again).items():
        np.testing.assert_array_equal(view.features, _views(four)[name].features)  # bit for bit
    other_batch = extract_features(config=_config(split_data, tmp_path / "b", augment=1, augment_ops=OPS, batch_size=3))
    (name, view), = _views(other_batch).items()
    np.testing.assert_allclose(view.features, _views(four)[name].features, rtol=1e-5, atol=1e-6)
    seeded = extract_features(config=_config(split_data, tmp_path / "c", augment=1, augment_ops=OPS, augment_seed=7))
    (other, view7), = _views(seeded).items()
    assert other != name and not np.allclose(view7.features, view.features)


@pytest.mark.slow
def test_an_interrupted_view_extraction_resumes_to_the_uninterrupted_result(extracted, split_data, tmp_path, monkeypatch):
    _, _, four = extracted
    real, calls = augment.apply_view, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    config = _config(split_data, tmp_path / "cache", augment=2, augment_ops=OPS, shard_size=2)
    monkeypatch.setattr(augment, "apply_view", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_features(config=config)
    monkeypatch.setattr(augment, "apply_view", real)
    resumed = extract_features(config=config)
    assert 0 < resumed.counts["views"] < 18  # the views finished before the interrupt were kept
    for name, view in _views(resumed).items():
        expected = _views(four)[name]
        assert view.paths == expected.paths
        np.testing.assert_allclose(view.features, expected.features, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_augmented_training_never_sees_a_view_of_a_held_out_image(tmp_path):
    # Data without split folders: every image has views, and only the training rows' may be used.
    data = tmp_path / "data"
    make_dataset(data, per_class=6)
    result = extract_features(config=_config(data, tmp_path / "cache", augment=2, augment_ops=OPS))
    fs = read_feature_set(result.path)
    config = TrainConfig(splits=(0.5, 0.25, 0.25), fraction=0.5, augmented=True)
    parts = training_splits(fs, config=config)
    grown, grown_parts, record = train.add_views(fs, parts)

    sha = {p: f.sha256 for p, f in FeatureStore(result.path.parent).read_index_state().files.items()}
    trained = {sha[fs.paths[i]] for i in parts["train"]}
    held_out = {sha[fs.paths[i]] for split in ("validation", "test") for i in parts[split]}
    added = grown_parts["train"][len(parts["train"]):]
    assert len(added) == 2 * len(parts["train"])
    assert {sha[grown.paths[i]] for i in added} == trained and not trained & held_out
    for split in ("validation", "test"):
        np.testing.assert_array_equal(grown_parts[split], parts[split])
    assert record == [{"ops": augment.format_augment_ops(augment.parse_augment_ops(OPS)), "seed": 0,
                       "views": [1, 2], "rows": len(added), "chosen": "latest", "not_used": [],
                       "coverage": {"images": len(parts["train"]), "train_images": len(parts["train"])}}]

    [run] = train.train_heads(result.path, config=dataclasses.replace(config, runs_dir=str(tmp_path / "runs")))
    assert run.sizes["train"] == 3 * len(parts["train"])
    assert (run.run_dir / "lineage.json").read_text().count('"views"') == 1


def test_augmented_without_views_says_which_command_makes_them(extracted, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(extracted[0], cache)
    for folder in list_view_sets(cache / extracted[1].path.parent.name):
        shutil.rmtree(folder)
    with pytest.raises(ConfigError) as info:
        train.train_heads(None, config=TrainConfig(augmented=True, cache_dir=str(cache), runs_dir=str(tmp_path / "r")))
    assert info.value.field == "augmented" and "--augment" in str(info.value)


def test_an_up_to_date_set_whose_views_were_extracted_says_what_took_the_time(capsys, tmp_path):
    import types

    from pipeline.cli.terminal import print_features_summary

    result = types.SimpleNamespace(
        counts={"extracted": 0, "reused": 3781, "skipped": 0, "removed": 0, "views": 6136}, worker=None,
        quarantined=[], seconds=312.02, images_per_second=19.7, skipped=[], feature_shape=(1280,),
        path=tmp_path / "features.h5",
    )
    print_features_summary(result)
    out = capsys.readouterr().out
    assert "3781 images up to date, 0 skipped; 6136 augmented views extracted in 312.0 s." in out
    assert "Up to date" not in out and out.count("6136") == 1


def test_finetune_refuses_a_crop_before_loading_anything(tmp_path):
    from pipeline.config import FinetuneConfig
    from pipeline.runs.finetune import finetune_run

    with pytest.raises(ConfigError) as info:
        finetune_run(tmp_path / "no-such-run", config=FinetuneConfig(augment_ops="crop,flip"))
    assert info.value.field == "augment_ops" and "crop" in str(info.value)


@pytest.fixture(scope="module")
def two_view_sets(tmp_path_factory):
    """A set without split folders, with one view made with `flip`, then one with `rotation=0.1`."""
    root = tmp_path_factory.mktemp("two-view-sets")
    make_dataset(root / "data", per_class=4)
    extract_features(config=_config(root / "data", root / "cache", augment=1, augment_ops="flip"))
    result = extract_features(config=_config(root / "data", root / "cache", augment=1, augment_ops="rotation=0.1"))
    return root, result


@pytest.mark.slow
def test_augmented_trains_on_one_view_set_the_latest_or_the_named_one(two_view_sets):
    _, result = two_view_sets
    fs = read_feature_set(result.path)
    parts = training_splits(fs, config=TrainConfig(splits=(0.5, 0.25, 0.25)))
    n_train = len(parts["train"])
    grown, grown_parts, [record] = train.add_views(fs, parts)
    assert record["ops"] == "rotation=0.1" and record["chosen"] == "latest" and record["rows"] == n_train
    assert len(grown_parts["train"]) == 2 * n_train  # one view per image: the flip views are not mixed in
    assert record["not_used"] == ["flip=horizontal seed 0"]
    assert record["coverage"] == {"images": n_train, "train_images": n_train}
    _, flipped_parts, [flipped] = train.add_views(fs, parts, views="flip")
    assert flipped["ops"] == "flip=horizontal" and flipped["chosen"] == "named"
    assert len(flipped_parts["train"]) == 2 * n_train
    with pytest.raises(ConfigError) as info:
        train.add_views(fs, parts, views="zoom=0.2")
    assert info.value.field == "views" and "flip=horizontal" in str(info.value) and "rotation=0.1" in str(info.value)


def test_augmented_run_says_which_views_on_stdout_and_in_metrics(two_view_sets, tmp_path, capsys):
    from pipeline.cli import main

    root, result = two_view_sets
    assert main(["train-head", str(result.path), "--augmented", "--views", "flip", "--runs-dir", str(tmp_path),
                 "--cache-dir", str(root / "cache")]) == 0
    out = capsys.readouterr().out
    assert "Views: flip=horizontal seed 0 (named; 1 views" in out
    [metrics] = [json.loads(p.read_text()) for p in tmp_path.glob("*/*/metrics.json")]
    assert [v["ops"] for v in metrics["augmented"]] == ["flip=horizontal"]
    assert main(["train-head", str(result.path), "--views", "flip", "--runs-dir", str(tmp_path)]) == 2


@pytest.mark.slow
def test_augmented_warns_with_the_coverage_when_images_came_after_the_views(two_view_sets, tmp_path, caplog):
    root, _ = two_view_sets
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    cache = tmp_path / "cache"
    extract_features(config=_config(data, cache, augment=1, augment_ops="flip"))
    make_dataset(data, per_class=2, start=50)  # 6 images more, without views
    result = extract_features(config=_config(data, cache))
    fs = read_feature_set(result.path)
    parts = training_splits(fs, config=TrainConfig(splits=(0.5, 0.25, 0.25)))
    with caplog.at_level("WARNING", logger="bottleneck"):
        _, _, [record] = train.add_views(fs, parts)
    covered, total = record["coverage"]["images"], record["coverage"]["train_images"]
    assert 0 < covered < total == len(parts["train"])
    assert f"cover {covered} of {total} training images" in caplog.text and "--augment 1" in caplog.text


@pytest.mark.slow
def test_a_file_whose_bytes_changed_before_its_crop_is_set_aside_not_stored(split_data, tmp_path, monkeypatch):
    real = decode.load_decoded

    def replaced(path, size):  # the file's bytes are no longer those its clean row was hashed from
        image, digest = real(path, size)
        return image, "0" * 64 if str(path).endswith("class0/000.png") else digest

    monkeypatch.setattr(decode, "load_decoded", replaced)
    result = extract_features(config=_config(split_data, tmp_path / "cache", augment=1, augment_ops=PHOTO_OPS))
    (_, view), = _views(result).items()
    assert "train/class0/000.png" not in view.paths and len(view.paths) == 8
