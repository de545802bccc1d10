"""KerasHub encoders as backbones: tiny random presets of each family, saved and run through the CLI.

Every preset here is built with KerasHub's own classes and written with
`save_to_preset`, so these run offline; what is compared against is the
KerasHub model's own output on the same decoded images.
"""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hubgen
from imagegen import make_dataset
from pipeline import cli
from pipeline.errors import ConfigError, WeightsUnavailableError
from pipeline.features import backbones, decode
from pipeline.store import read_feature_set

import keras
import keras_hub  # installed by `make setup` (the `hub` extra): these tests never skip

FAMILIES = hubgen.FAMILIES
SIZE = hubgen.SIZE


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    folders = {}
    for family in FAMILIES:
        folders[family] = hubgen.save_preset(root / family, family)
    folders["dinov2_other"] = hubgen.save_preset(root / "dinov2_other", "dinov2", seed=1)  # other weights
    return folders


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("hubdata") / "data", per_class=2)


def _main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def _features(data, cache, model, *extra):
    status, out, err = _main("features", data, "--model", model, "--cache-dir", cache, "--batch-size", "4",
                             "--json", *extra)
    assert status == 0, err
    return json.loads(out[out.index("{"):])


def _reference(folder: Path, family: str, images: np.ndarray) -> np.ndarray:
    """The KerasHub model's own output: its converter, then its tokens pooled as the family's default says."""
    model = keras_hub.models.Backbone.from_preset(str(folder))
    converter = keras_hub.layers.ImageConverter.from_preset(str(folder))
    x = keras.ops.convert_to_numpy(converter(images.astype("float32")))
    if family == "siglip":
        return keras.ops.convert_to_numpy(model.get_vision_embeddings(x))
    if family == "clip":
        return keras.ops.convert_to_numpy(model.get_vision_embeddings(x))
    tokens = keras.ops.convert_to_numpy(model(x))
    if family == "vit":
        return tokens[:, 0]
    prefix = 1 + getattr(model, "num_register_tokens", 0)
    return np.concatenate([tokens[:, 0], tokens[:, prefix:].mean(axis=1)], axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_stored_features_are_the_keras_hub_models_own(presets, data, tmp_path, family):
    result = _features(data, tmp_path / "cache", f"hub:{presets[family]}")
    assert result["counts"]["extracted"] == 6
    fs = read_feature_set(result["path"])
    images = np.stack([decode.load_image(data / p, SIZE) for p in fs.paths])
    expected = _reference(presets[family], family, images)
    assert fs.features.shape == expected.shape
    np.testing.assert_allclose(fs.features, expected, rtol=1e-5, atol=1e-5)
    again = _features(data, tmp_path / "cache", f"hub:{presets[family]}")
    assert again["counts"]["extracted"] == 0 and again["path"] == result["path"]


@pytest.mark.slow
def test_key_follows_preset_weights_and_pooling(presets, data, tmp_path):
    cache = tmp_path / "cache"
    first = _features(data, cache, f"hub:{presets['dinov2']}")["path"]
    other = _features(data, cache, f"hub:{presets['dinov2_other']}")["path"]
    cls = _features(data, cache, f"hub:{presets['dinov2']}", "--pooling", "cls")
    assert len({first, other, cls["path"]}) == 3
    assert cls["feature_shape"] == [16]
    cfg = backbones.get_backbone_cfg(f"hub:{presets['dinov2']}")
    assert backbones.weights_identity("imagenet", cfg).startswith("preset-sha256:")
    assert backbones.weights_identity("imagenet", cfg) != backbones.weights_identity(
        "imagenet", backbones.get_backbone_cfg(f"hub:{presets['dinov2_other']}"))


def test_key_holds_resolved_pooling_and_converter(presets, tmp_path):
    import shutil

    from pipeline.config import ExtractConfig
    from pipeline.features.extract import feature_spec
    from pipeline.store import feature_key

    def key(folder, pooling="avg"):
        return feature_key(feature_spec(ExtractConfig(data=str(tmp_path), model=f"hub:{folder}", pooling=pooling)))

    assert key(presets["dinov2"]) == key(presets["dinov2"], "cls+mean")  # "avg" names the family's default
    assert key(presets["dinov2"]) != key(presets["dinov2"], "mean")
    changed = tmp_path / "converter"
    shutil.copytree(presets["dinov2"], changed)
    converter = json.loads((changed / "image_converter.json").read_text())
    converter["config"]["scale"] = [1 / 255] * 3
    (changed / "image_converter.json").write_text(json.dumps(converter))
    assert key(changed) != key(presets["dinov2"])
    with pytest.raises(ConfigError, match="embedding"):
        key(presets["dinov2"], "embedding")
    with pytest.raises(ConfigError, match="size"):
        backbones.resolve_size(backbones.get_backbone_cfg(f"hub:{presets['vit']}"), 42)
    assert backbones.resolve_size(backbones.get_backbone_cfg(f"hub:{presets['dinov2']}"), 42) == 42


@pytest.mark.slow
def test_two_backbones_in_one_pass(presets, data, tmp_path):
    status, out, err = _main("features", data, "--model", f"hub:{presets['vit']}", "mobilenet_025",
                             "--weights", "imagenet", "none", "--cache-dir", tmp_path / "cache", "--json")
    assert status == 0, err
    results = json.loads(out[out.index("{"):])["feature_sets"]
    assert [r["feature_shape"] for r in results] == [[16], [256]]
    assert [r["counts"]["extracted"] for r in results] == [6, 6]


def test_unknown_preset_gets_suggestions():
    with pytest.raises(ConfigError, match="dinov2_small"):
        backbones.get_backbone_cfg("dinov2_smal")


def test_truncated_or_missing_weights_are_refused(presets, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(presets["vit"], broken)
    weights = broken / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:5000])
    cfg = backbones.get_backbone_cfg(f"hub:{broken}")
    with pytest.raises(WeightsUnavailableError, match="model.weights.h5"):
        backbones.weights_identity("imagenet", cfg)
    weights.unlink()
    with pytest.raises(WeightsUnavailableError, match="model.weights.h5"):
        backbones.weights_identity("imagenet", cfg)


def test_offline_preset_name_is_one_line(monkeypatch, tmp_path):
    import socket

    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    with pytest.raises(WeightsUnavailableError) as caught:
        backbones.resolve_size(backbones.get_backbone_cfg("dinov2_small"), None)
    message = str(caught.value)
    assert "\n" not in message and "dinov2_small" in message and "hub:/path/to/folder" in message


def test_list_shows_hub_rows_without_importing_keras():
    code = ("import sys; from pipeline.cli import main; main(['list']); "
            "assert not any(m == 'keras' or m.startswith(('keras.', 'keras_hub', 'tensorflow')) for m in sys.modules), "
            "sorted(m for m in sys.modules if 'keras' in m)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "keras_hub" in rows["dinov2_small"] and "768 features" in rows["dinov2_small"]
    assert "applications" in rows["mobilenet_v2"]
    assert {"dinov3_vit_small_lvd1689m", "siglip2_base_patch16_224", "clip_vit_base_patch16",
            "vit_base_patch16_224_imagenet", "dinov2_with_registers_large"} <= set(rows)


def test_preset_table_matches_installed_keras_hub():
    from pipeline.features import hub_presets

    assert hub_presets.KERAS_HUB_VERSION == keras_hub.__version__
    assert Path(hub_presets.__file__).read_text().endswith("# ---- generated\n" + hub_presets.generate() + "\n")


@pytest.mark.slow
def test_predict_and_export_agree_on_a_hub_run(presets, data, tmp_path):
    from pipeline.config import ExtractConfig, TrainConfig
    from pipeline.features.extract import extract_features
    from pipeline.runs.export import export_run
    from pipeline.runs.predict import Predictor
    from pipeline.runs.train import train_heads

    result = extract_features(config=ExtractConfig(data=str(data), model=f"hub:{presets['dinov2']}",
                                                   cache_dir=str(tmp_path / "cache"), batch_size=4))
    (run,) = train_heads(result.path, config=TrainConfig(heads=("logreg",), runs_dir=str(tmp_path / "runs"),
                                                         cache_dir=str(tmp_path / "cache")))
    fs = read_feature_set(result.path)
    predictor = Predictor.load(run.run_dir)
    features, ok, errors = predictor.extract([data / p for p in fs.paths])
    assert not errors
    np.testing.assert_allclose(features, fs.features, rtol=1e-5, atol=1e-5)
    exported = export_run(run.run_dir, tmp_path / "model.keras")
    model = keras.saving.load_model(exported.path)
    images = np.stack([decode.load_image(data / p, SIZE) for p in fs.paths])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), predictor.predict_proba(features),
                               atol=1e-4)


@pytest.mark.slow
def test_finetune_trains_only_the_top_block_and_above(presets, tmp_path):
    from pipeline.config import ExtractConfig, FinetuneConfig, TrainConfig
    from pipeline.features.extract import extract_features
    from pipeline.runs import finetune
    from pipeline.runs.predict import Predictor
    from pipeline.runs.train import train_heads

    data = make_dataset(tmp_path / "data", per_class=3)
    result = extract_features(config=ExtractConfig(data=str(data), model=f"hub:{presets['dinov2']}",
                                                   cache_dir=str(tmp_path / "cache"), batch_size=4))
    # `standard`: on these random features the default sqrt-l2 head's one fine-tune epoch at 1e-2 does not beat
    # the start, and fine-tuning then keeps the start (best epoch 0): nothing would change to check.
    (run,) = train_heads(result.path, config=TrainConfig(
        heads=("dense",), params={"dense.epochs": 2}, transform="standard", runs_dir=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache")))
    tuned = finetune.finetune_run(run.run_dir, config=FinetuneConfig(
        unfreeze=1, epochs=1, learning_rate=1e-2, batch_size=4, early_stopping_patience=None, workers=1))
    assert list(tuned.unfrozen) == ["layers_1", "dinov2_backbone_layernorm"]  # the top block of two, the final norm
    before = Predictor.load(run.run_dir).extractor()
    after = Predictor.load(tuned.run_dir).extractor()
    changed = {v.path for v, w in zip(before.weights, after.weights)
               if not np.allclose(keras.ops.convert_to_numpy(v), keras.ops.convert_to_numpy(w))}
    assert changed and all("layers_0" not in p and "embeddings" not in p for p in changed), sorted(changed)
    assert any("layers_1" in p for p in changed)
    heads = [Predictor.load(r).head.model_.get_weights() for r in (run.run_dir, tuned.run_dir)]
    assert any(not np.allclose(a, b) for a, b in zip(*heads))  # the head trained with the top block


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_class_tokens_of_the_last_blocks_are_keras_hubs_normed_block_outputs(presets, data, tmp_path, family):
    cache = tmp_path / "cache"
    last2 = _features(data, cache, f"hub:{presets[family]}", "--pooling", "cls_last2")
    with_mean = _features(data, cache, f"hub:{presets[family]}", "--pooling", "cls_last2+mean")
    fs, fs_mean = read_feature_set(last2["path"]), read_feature_set(with_mean["path"])
    # KerasHub's own intermediate outputs: every block's tokens through the final LayerNorm (DINOv2's recipe).
    model = keras_hub.models.Backbone.from_preset(str(presets[family]), apply_layernorm=True)
    converter = keras_hub.layers.ImageConverter.from_preset(str(presets[family]))
    images = np.stack([decode.load_image(data / p, SIZE) for p in fs.paths])
    stages = keras.Model(model.inputs, model.pyramid_outputs)(converter(images.astype("float32")))
    stages = {k: keras.ops.convert_to_numpy(v) for k, v in stages.items()}
    expected = np.concatenate([stages["stage1"][:, 0], stages["stage2"][:, 0]], axis=1)
    np.testing.assert_allclose(fs.features, expected, rtol=1e-5, atol=1e-5)
    prefix = 1 + int(getattr(model, "num_register_tokens", 0) or 0)
    mean = keras.ops.convert_to_numpy(model(converter(images.astype("float32"))))[:, prefix:].mean(axis=1)
    np.testing.assert_allclose(fs_mean.features, np.concatenate([expected, mean], axis=1), rtol=1e-5, atol=1e-5)
    assert len({last2["path"], with_mean["path"], _features(data, cache, f"hub:{presets[family]}", "--pooling",
                                                            "cls")["path"]}) == 3  # each pooling its own key


@pytest.mark.parametrize("family, pooling, message", [
    ("dinov2", "cls_last3", "which has 2"), ("vit", "cls_last2", "DINOv2 and DINOv3"),
    ("siglip", "cls_last2", "one of 'embedding', 'mean'"), ("dinov2", "cls_last", "cls_lastN")])
def test_last_blocks_pooling_is_refused_where_it_cannot_be(presets, tmp_path, family, pooling, message):
    from pipeline.config import ExtractConfig
    from pipeline.features.extract import feature_spec

    with pytest.raises(ConfigError, match=message) as refused:
        feature_spec(ExtractConfig(data=str(tmp_path), model=f"hub:{presets[family]}", pooling=pooling))
    assert refused.value.field == "pooling"


def test_one_key_one_folder_whichever_spelling_names_the_pooling_or_preset(presets, data, tmp_path):
    from pipeline.config import ExtractConfig
    from pipeline.features.identity import feature_set_dir

    cache, model = tmp_path / "cache", f"hub:{presets['dinov2']}"
    default = _features(data, cache, model)
    spelled = _features(data, cache, model, "--pooling", "cls+mean")
    assert spelled["path"] == default["path"] and spelled["counts"]["extracted"] == 0
    assert "-cls_mean-" in Path(default["path"]).parent.name
    cls = _features(data, cache, model, "--pooling", "cls")
    last1 = _features(data, cache, model, "--pooling", "cls_last1")
    assert last1["path"] == cls["path"] and last1["counts"]["extracted"] == 0
    # A registry preset named by its handle is that row, so it gets the row's folder.
    row = backbones.get_backbone_cfg("dinov2_small")
    assert backbones.get_backbone_cfg(f"hub:{row.handle}") is row
    spec = {"size": 224, "pooling": "cls+mean"}
    assert len({feature_set_dir(ExtractConfig(data=str(data), model=name, cache_dir=str(cache)), spec, "0" * 64)
                for name in ("dinov2_small", f"hub:{row.handle}")}) == 1
