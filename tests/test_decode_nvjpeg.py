"""`--decoder nvjpeg`: JPEGs decoded and resized by torchvision, run here on the CPU (no GPU needed).

On a GPU the same calls run on CUDA (nvJPEG); `bench/gpu.py` measures them there.
"""

import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.config import ExtractConfig, FinetuneConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.features import decode, decode_nvjpeg
from pipeline.features.decode import decode_batches, load_image
from pipeline.features.extract import extract_features
from pipeline.heads import load_head
from pipeline.runs.export import export_run
from pipeline.runs.finetune import finetune_run
from pipeline.runs.predict import predict_images
from pipeline.runs.train import train_heads
from pipeline.store import read_feature_set

pytestmark = pytest.mark.nvjpeg
SIZE = 48


def _photo(width, height, seed=0):
    """A smooth scene with edges and a little noise: what a photo gives a JPEG encoder."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, 128 + 100 * np.sin((x + 2 * y) / 9)], axis=-1)
    base[height // 3: height // 2, width // 4: width // 2] = (250, 20, 40)  # a block that shows where "up" is
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def _jpeg(path, pixels, orientation=1, mode="RGB"):
    img = Image.fromarray(pixels).convert(mode)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


def _pillow_full_decode(path, size):
    """What nvjpeg aims at: the whole JPEG decoded (no draft), turned upright, Pillow's bilinear resize."""
    with Image.open(path) as img:
        upright = ImageOps.exif_transpose(img.convert("RGB") if img.mode != "RGB" else img)
        return np.asarray(upright.resize((size, size), Image.Resampling.BILINEAR))


def _decoded(folder, names, size=SIZE, batch_size=64):
    entries = [types.SimpleNamespace(relpath=name) for name in names]
    out = {}
    for ok, images, failures in decode_batches(folder, entries, size, batch_size, 2, decoder="nvjpeg"):
        out.update((e.relpath, image) for e, image in zip(ok, images))
        out.update((e.relpath, reason) for e, reason in failures)
    return out


@pytest.mark.parametrize("width,height", [(40, 30), (100, 70), (200, 140), (400, 290)])  # up to 8x SIZE
@pytest.mark.parametrize("orientation", range(1, 9))
def test_nvjpeg_is_pillows_full_decode_and_resize_within_rounding(tmp_path, width, height, orientation):
    path = _jpeg(tmp_path / "a.jpg", _photo(width, height), orientation)
    want = _pillow_full_decode(path, SIZE).astype(int)

    got = _decoded(tmp_path, ["a.jpg"])["a.jpg"]

    assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8
    difference = np.abs(got.astype(int) - want)
    # Pillow rounds after each pass in fixed point, torch once in float: a grey level or two, never more.
    assert difference.max() <= 2 and difference.mean() < 0.3, (difference.max(), difference.mean())


def test_greyscale_jpeg_is_replicated_to_rgb(tmp_path):
    path = _jpeg(tmp_path / "grey.jpg", _photo(120, 90), mode="L")
    got = _decoded(tmp_path, ["grey.jpg"])["grey.jpg"]
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 0], got[..., 2])
    assert np.abs(got.astype(int) - _pillow_full_decode(path, SIZE)).max() <= 2


def test_other_files_take_the_reference_decoder_and_bad_ones_fail_alone(tmp_path):
    Image.fromarray(_photo(90, 60, seed=1)).save(tmp_path / "b.png")
    _jpeg(tmp_path / "c.jpg", _photo(90, 60, seed=2), mode="CMYK")
    _jpeg(tmp_path / "d.jpg", _photo(90, 60, seed=3))
    whole = (tmp_path / "d.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "text.jpg").write_text("not an image at all\n")

    got = _decoded(tmp_path, ["b.png", "c.jpg", "cut.jpg", "d.jpg", "text.jpg"])

    assert np.array_equal(got["b.png"], load_image(tmp_path / "b.png", SIZE))  # PNG: exactly the reference
    assert np.array_equal(got["c.jpg"], load_image(tmp_path / "c.jpg", SIZE))  # CMYK JPEG: the reference
    assert np.abs(got["d.jpg"].astype(int) - _pillow_full_decode(tmp_path / "d.jpg", SIZE)).max() <= 2
    assert isinstance(got["text.jpg"], str) and "text" in got["text.jpg"]  # the reference decoder's message
    assert isinstance(got["cut.jpg"], str) and "nvjpeg decoder" in got["cut.jpg"], got["cut.jpg"]


def test_a_jpeg_over_the_bomb_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    _jpeg(tmp_path / "big.jpg", _photo(300, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 200 // 2 - 1)
    reason = _decoded(tmp_path, ["big.jpg"])["big.jpg"]
    assert isinstance(reason, str) and "decompression bomb" in reason


def test_the_key_names_torchvision_and_the_device(tmp_path):
    identity = decode.decoder_id("nvjpeg")
    assert identity.startswith("nvjpeg-torchvision") and f"-{decode_nvjpeg.device()}-" in identity
    assert identity.endswith(decode.DECODER_ID)  # non-JPEGs: the reference decoder
    assert decode.decoder_id("pillow") == decode.DECODER_ID


def test_missing_torch_names_the_extra(monkeypatch):
    decode_nvjpeg._torch.cache_clear()
    monkeypatch.setitem(sys.modules, "torchvision", None)
    try:
        with pytest.raises(ConfigError, match=r"bottleneck-features\[nvjpeg\]") as raised:
            decode.decoder_id("nvjpeg")
        assert raised.value.field == "decoder"
    finally:
        decode_nvjpeg._torch.cache_clear()


@pytest.mark.parametrize("clash", [dict(decode_mode="processes"), dict(augment=2), dict(engine="ray")])
def test_what_the_nvjpeg_decoder_cannot_serve_is_refused(clash):
    with pytest.raises(ConfigError, match=f"decoder` nvjpeg cannot run with {next(iter(clash))}="):
        ExtractConfig(data="x", model="resnet50", decoder="nvjpeg", **clash)


@pytest.mark.slow
def test_features_and_predict_use_the_sets_decoder_under_its_own_key(tmp_path):
    data = tmp_path / "data"
    for label in range(2):
        (data / f"class{label}").mkdir(parents=True)
        for i in range(5):
            _jpeg(data / f"class{label}" / f"{i}.jpg", _photo(160, 120, seed=10 * label + i), orientation=1 + i)
    common = dict(data=str(data), cache_dir=str(tmp_path / "cache"), model="resnet50", size=32, weights="none",
                  batch_size=4, workers=2)
    by_pillow = extract_features(config=ExtractConfig(**common))
    by_nvjpeg = extract_features(config=ExtractConfig(**common, decoder="nvjpeg"))

    assert by_nvjpeg.path != by_pillow.path  # another key: other pixels
    assert by_nvjpeg.counts["extracted"] == 10
    nv, ref = read_feature_set(by_nvjpeg.path), read_feature_set(by_pillow.path)
    assert nv.paths == ref.paths and not np.array_equal(nv.features, ref.features)
    again = extract_features(config=ExtractConfig(**common, decoder="nvjpeg"))
    assert again.counts == {"extracted": 0, "reused": 10, "skipped": 0, "removed": 0}

    [run] = train_heads(by_nvjpeg.path, config=TrainConfig(
        heads=("logreg",), runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache")))
    head, _ = load_head(run.run_dir / "head.joblib")
    expected = head.predict_proba(nv.features.reshape(len(nv.features), -1))
    predictions = predict_images(run.run_dir, [data / p for p in nv.paths])
    got = np.array([[dict(p.top_k)[c] for c in nv.class_names] for p in predictions])
    np.testing.assert_allclose(got, expected, atol=1e-5)  # predict decoded with nvjpeg, as the set was

    # Views and fine-tuning decode with the reference decoder: refused, not mixed in.
    with pytest.raises(ConfigError, match="decoded by nvjpeg"):
        predict_images(run.run_dir, [data / nv.paths[0]], tta=2)
    with pytest.raises(ConfigError, match="decoded by nvjpeg"):
        finetune_run(run.run_dir, config=FinetuneConfig())
    with pytest.raises(ConfigError, match="decoded by nvjpeg") as refused:
        export_run(run.run_dir, tmp_path / "model.onnx", format="onnx")
    assert refused.value.field == "format" and not (tmp_path / "model.onnx").exists()


def test_nvjpeg_runs_in_a_process_that_loaded_tensorflow_first(tmp_path):
    # Triton's LLVM (imported by torch) crashed such a process with SIGSEGV: the Keras runtime loads
    # TensorFlow before the first batch is decoded.
    _jpeg(tmp_path / "a.jpg", _photo(120, 90))
    code = (
        "import types, sys, tensorflow\n"
        "from pathlib import Path\n"
        "from pipeline.features.decode import decode_batches\n"
        f"[(ok, images, failures)] = decode_batches(Path({str(tmp_path)!r}), [types.SimpleNamespace(relpath='a.jpg')],"
        " 32, 4, 1, decoder='nvjpeg')\n"
        "print(images.shape, len(failures))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "(1, 32, 32, 3) 0"
