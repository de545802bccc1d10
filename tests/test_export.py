"""Exported models predict like `bottleneck predict`, on raw photos of any size.

One module fixture, `signs`: real MobileNetV2 weights at 128 px over 40
sign-language-digit photos (4 per digit), with a `logreg` and a `dense`
run. The photos predicted are 10 others, written as a user's files would
be: smaller than SIZE, larger, not square, JPEG and PNG (JPEGs stay below
twice SIZE, where the reference decoder's JPEG draft mode starts; that case
is measured in docs/predict.md). Each is decoded at full size by Pillow
and fed to the traced exports as it is; every kind of photo, big ones
included, goes through the shipped `preprocess.py` into every format, and
as encoded bytes into the SavedModel's `serve_bytes` signature.
"""

import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import types

import numpy as np
import pytest
from PIL import Image

from helpers import sign_digit_features
from needs import require
from imagegen import PYTHON, REPO, SIGN_DIGITS, require_shared
from pipeline import cli
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.features.decode import load_image
from pipeline.heads import create_head, linear_softmax_weights
from pipeline.runs.export import export_run
from pipeline.runs.predict import predict_images
from pipeline.runs.train import train_heads

SIZE = 128
# (width, height, format): smaller than SIZE, the photos' own 100 x 100, larger, not square.
VARIANTS = [(64, 48, "PNG"), (100, 100, "JPEG"), (200, 150, "JPEG"), (90, 170, "JPEG"), (400, 260, "PNG")]
TOLERANCE = 1e-3  # the spec: probabilities within 1e-3 of `predict`, the same top class


@pytest.fixture(scope="module")
def signs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    features, photos = sign_digit_features(root, SIZE)
    runs = train_heads(features, config=TrainConfig(
        heads=("logreg", "dense"), params={"dense.epochs": 30, "dense.learning_rate": 1e-3},
        runs_dir=str(root / "runs"), cache_dir=str(root / "cache"),
    ))
    images = []
    for i, (width, height, fmt) in enumerate(VARIANTS * 2):
        with Image.open(photos[i][10]) as photo:
            path = root / "new" / f"{i}-{width}x{height}.{fmt.lower()}"
            path.parent.mkdir(exist_ok=True)
            photo.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(path, fmt)
            images.append(path)
    return types.SimpleNamespace(root=root, runs={r.head: r.run_dir for r in runs}, images=images)


def _raw(path):
    """The file decoded at full size, as a user without this package would."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))[None]


def _predicted(run, images):
    return np.array([p.probabilities for p in predict_images(run, images, top_k=1)])


def _assert_agrees(got, expected):
    assert got.shape == expected.shape
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() <= TOLERANCE


def _onnx(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {session.get_inputs()[0].name: images})[0]


def _saved_model(path):
    import keras

    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serve")
    return lambda images: np.asarray(layer(images))


def _keras_model(path):
    import keras

    model = keras.saving.load_model(path)
    return lambda images: model.predict(images, verbose=0)


@pytest.mark.slow
@pytest.mark.weights
@pytest.mark.parametrize("head", ["dense", "logreg"])
@pytest.mark.parametrize("fmt, out", [pytest.param("onnx", "signs.onnx", marks=pytest.mark.onnx),
                                      ("saved_model", "signs_saved_model"), ("keras", "signs.keras")])
def test_exported_model_on_raw_photos_of_any_size_agrees_with_predict(signs, tmp_path, head, fmt, out):
    """Every format resizes as the reference decoder does, bit for bit, so raw pixels of any size agree."""
    run = signs.runs[head]
    status = cli.main(["export", str(run), str(tmp_path / out), "--format", fmt, "--quiet"])
    assert status == cli.ExitStatus.OK
    model = {"keras": _keras_model, "onnx": _onnx, "saved_model": _saved_model}[fmt](tmp_path / out)
    got = np.concatenate([model(_raw(p)) for p in signs.images])
    _assert_agrees(got, _predicted(run, signs.images))
    sidecar = json.loads((tmp_path / f"{out}.json").read_text())
    assert sidecar["class_names"] == [str(d) for d in range(10)] and sidecar["format"] == f"bottleneck-{fmt}-export"


@pytest.mark.slow
@pytest.mark.weights
def test_logreg_exports_to_keras_and_matches_predict_at_size(signs, tmp_path):
    """`.keras` holds built-in layers and operations only: it loads without this package."""
    import keras

    run = signs.runs["logreg"]
    result = export_run(run, tmp_path / "logreg.keras")  # the suffix asks for a model, whatever the head
    assert result.format == "keras" and result.max_abs_diff < 1e-4
    model = keras.saving.load_model(tmp_path / "logreg.keras")
    assert [layer.name for layer in model.get_layer("head").layers][-2:] == ["linear", "softmax"]
    got = model.predict(np.stack([load_image(p, SIZE) for p in signs.images]), verbose=0)
    expected = _predicted(run, signs.images)
    assert (got.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="already exists"):
        export_run(run, tmp_path / "logreg.keras")


@pytest.mark.parametrize("name", ["logreg", "linear_svm", "ridge"])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_linear_softmax_weights_equal_the_heads_predict_proba(name, n_classes):
    rng = np.random.default_rng(n_classes)
    y = np.arange(90) % n_classes
    X = rng.normal(size=(90, 7))
    X[np.arange(90), y] += 3.0  # learnable, so the probabilities are not all near uniform
    X = 3.0 + X * rng.uniform(0.1, 10, size=7)  # unscaled: the folded StandardScaler matters
    head = create_head(name).fit(X, y)
    kernel, bias, link = linear_softmax_weights(head, n_classes)
    z = X @ kernel + bias
    if link == "log_sigmoid":
        z = -np.logaddexp(0, -z)
    proba = np.exp(z - z.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)
    expected = head.predict_proba(X)
    assert expected.max(1).mean() > 0.6
    np.testing.assert_allclose(proba, expected, atol=1e-9, rtol=0)


def test_heads_without_a_linear_form_are_refused_with_the_reason():
    X, y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 3
    with pytest.raises(ValueError, match="KNeighborsClassifier is not LogisticRegression"):
        linear_softmax_weights(create_head("knn").fit(X, y), 3)
    with pytest.raises(ValueError, match=r"classes \[0, 1, 2\], not every one of the 4"):
        linear_softmax_weights(create_head("logreg").fit(X, y), 4)
    with pytest.raises(ValueError, match="ensemble=False"):
        linear_softmax_weights(create_head("linear_svm", ensemble=True).fit(X, y), 3)


@pytest.mark.parametrize("out, fmt, message", [
    ("m.keras", "onnx", "must end with '.onnx'"),
    ("m.onnx", "saved_model", "folder name without a suffix"),
    ("m.txt", "keras", "must end with '.keras'"),
    ("taken", "saved_model", "already exists"),
])
def test_an_out_that_does_not_fit_the_format_is_refused_before_loading(tmp_path, out, fmt, message):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match=message) as caught:
        export_run(tmp_path / "no-such-run", tmp_path / out, format=fmt)
    assert caught.value.field == "out"


def test_export_format_flag_lists_every_format():
    from pipeline.runs.export import EXPORT_FORMATS

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        cli.main(["export", "run", "out", "--format", "tflite"])
    assert exited.value.code == cli.ExitStatus.BAD_INPUT and all(repr(f) in err.getvalue() for f in EXPORT_FORMATS)


def test_export_formats_are_rows_that_export_and_the_cli_read(monkeypatch):
    import types

    from pipeline.cli import options as cli_options
    from pipeline.runs import export as export_module
    from pipeline.runs.export_formats import FORMATS, ExportFormat, format_of_suffix

    assert cli_options.EXPORT_FORMATS is export_module.EXPORT_FORMATS and tuple(FORMATS) == export_module.EXPORT_FORMATS
    assert [format_of_suffix(s) for s in (".keras", ".onnx", ".h5", "")] == ["keras", "onnx", None, None]
    assert [row.name for row in FORMATS.values() if row.traced] == ["saved_model", "onnx"]
    # A new row is known by suffix and refused for a wrong `out` without a line of export.py changing.
    rows = types.MappingProxyType({**FORMATS, "tflite": ExportFormat("tflite", "TFLite model", ".tflite", "litert")})
    monkeypatch.setattr(export_module, "FORMATS", rows)
    monkeypatch.setattr("pipeline.runs.export_formats.FORMATS", rows)
    with pytest.raises(ConfigError, match=r"end with '\.tflite' for format='tflite'"):
        export_module.export_run("no-such-run", "model.keras", format="tflite")


# Both of Pillow's pass orders (vertical first when the height shrinks by more than twice as many pixels
# as the width), a side already at SIZE (Pillow skips that pass), enlarging and shrinking.
RESIZE_SHAPES = [(64, 48), (100, 100), (170, 90), (31, 33), (255, 256), (300, 447), (447, 300), (128, 128),
                 (128, 500), (700, 128), (1000, 20), (2, 148), (578, 381)]


@pytest.mark.parametrize("height, width", RESIZE_SHAPES)
def test_the_traced_formats_resize_exactly_as_the_reference_decoder(height, width):
    """SavedModel and ONNX repeat Pillow's fixed-point bilinear, bit for bit, on static and dynamic shapes."""
    import keras

    from pipeline.features.decode import resize_squash
    from pipeline.runs.export_resize import pillow_bilinear_resize

    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    layer = pillow_bilinear_resize(keras, SIZE)
    expected = resize_squash(image, SIZE)
    np.testing.assert_array_equal(np.asarray(layer(image[None].astype("float32")))[0], expected)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        np.testing.assert_array_equal(np.asarray(traced(image[None].astype("float32")))[0], expected)


@pytest.fixture(scope="module")
def resize_file(tmp_path_factory):
    """The `.keras` form of the resize alone, saved as the export saves it."""
    import keras

    from pipeline.runs.export_resize import pillow_bilinear_resize_ops

    images = keras.Input((None, None, 3), dtype="float32")
    path = tmp_path_factory.mktemp("resize") / "resize.keras"
    keras.Model(images, pillow_bilinear_resize_ops(keras, images, SIZE)).save(path)
    return path


@pytest.mark.parametrize("height, width", RESIZE_SHAPES)
def test_the_keras_format_resizes_exactly_as_the_reference_decoder(resize_file, height, width):
    """`.keras` holds built-in operations only (loaded in safe mode), and they repeat Pillow's arithmetic bit for bit."""
    import keras

    from pipeline.features.decode import resize_squash

    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    got = np.asarray(keras.saving.load_model(resize_file)(image[None].astype("float32")))[0]
    np.testing.assert_array_equal(got, resize_squash(image, SIZE))


_RESIZE_ON_JAX = """
import json, sys
import keras, numpy as np
from pipeline.features.decode import resize_squash
from pipeline.runs.export_resize import computes_in_float64

model = keras.saving.load_model(sys.argv[1])
worst = 0.0
for height, width in json.loads(sys.argv[2]):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    got = np.asarray(model(image[None].astype("float32")))[0]
    worst = max(worst, float(np.abs(got - resize_squash(image, int(sys.argv[3]))).max()))
print(json.dumps({"backend": keras.backend.backend(), "float64": computes_in_float64(keras), "worst": worst}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("x64", ["1", "0"])
def test_the_keras_format_on_jax_is_exact_with_float64_and_within_a_grey_level_without(resize_file, x64):
    """JAX computes in float32 unless `jax_enable_x64`: export then checks only images at SIZE (docs/predict.md)."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_ENABLE_X64": x64, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([PYTHON, "-c", _RESIZE_ON_JAX, str(resize_file), json.dumps(RESIZE_SHAPES[:7]), str(SIZE)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax" and result["float64"] is (x64 == "1")
    assert result["worst"] == 0.0 if x64 == "1" else result["worst"] <= 1.0


# -- the shipped preprocess.py is the reference decoder ----------------------


def _photo_kinds(src, folder, size):
    """One file per kind a phone or an editor writes, made from a real photo."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as photo:
        rgb = photo.convert("RGB").resize((size + 37, size + 11), Image.Resampling.BICUBIC)
    kinds = {}

    def save(name, image, **kwargs):
        kinds[name] = folder / name
        image.save(kinds[name], **kwargs)

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    save("exif-rotated.jpg", rgb.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())
    grey16 = (np.asarray(rgb.convert("L"), np.uint16) * 257 + 100).astype(np.uint16)
    save("grey16.png", Image.fromarray(grey16.astype("<u2")))  # Pillow opens it as I;16
    rgba = rgb.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:, : rgba.size[0] // 3] = 0  # a transparent band over arbitrary colours
    rgba.putalpha(Image.fromarray(alpha))
    save("rgba.png", rgba)
    palette = rgb.quantize(64)
    save("palette-transparent.png", palette, transparency=int(np.asarray(palette)[0, 0]))
    save("cmyk.jpg", rgb.convert("CMYK"), quality=95)
    save("grey.jpg", rgb.convert("L"), quality=95)
    for factor in (2, 4, 8):
        save(f"big-{factor}x.jpg", rgb.resize((size * factor + 5, size * factor)), quality=92)
    save("big-4x.png", rgb.resize((size * 4 + 3, size * 4 + 9)))
    save("big-8x.png", rgb.resize((size * 8 + 1, size * 8 + 6)))
    save("big-2x.webp", rgb.resize((size * 2, size * 2 + 7)), quality=90)
    save("big-8x.webp", rgb.resize((size * 8 + 9, size * 8 + 2)), quality=90)
    save("small.webp", rgba.resize((size // 2, size // 2 + 5)), quality=90)  # with alpha
    save("palette.gif", palette)
    save("rgb.bmp", rgb)
    return kinds


def _shipped_preprocess(folder):
    """The `preprocess.py` an export wrote, imported from its file as a user would."""
    spec = importlib.util.spec_from_file_location("shipped_preprocess", folder / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_preprocess_decodes_every_kind_as_the_reference_decoder(tmp_path):
    kinds = _photo_kinds(sorted((require_shared(SIGN_DIGITS) / "3").glob("*.JPG"))[0], tmp_path / "kinds", 32)
    shutil.copyfile(importlib.util.find_spec("pipeline.runs.preprocess").origin, tmp_path / "preprocess.py")
    shipped = _shipped_preprocess(tmp_path)
    for name, path in kinds.items():
        for size in (32, 48, 224):  # shrunk and enlarged
            np.testing.assert_array_equal(shipped.load_image(path, size), load_image(path, size), err_msg=name)


@pytest.mark.slow
@pytest.mark.weights
@pytest.mark.parametrize("fmt, out", [("keras", "signs.keras"), ("onnx", "signs.onnx"),
                                      ("saved_model", "signs_saved_model")])
def test_export_plus_shipped_preprocess_equals_predict_on_every_kind_of_photo(signs, tmp_path, fmt, out):
    if fmt == "onnx":
        require("onnx")
    run = signs.runs["dense"]
    assert cli.main(["export", str(run), str(tmp_path / "model" / out), "--format", fmt, "--quiet"]) == 0
    model = {"keras": _keras_model, "onnx": _onnx, "saved_model": _saved_model}[fmt](tmp_path / "model" / out)
    shipped = _shipped_preprocess(tmp_path / "model")
    size = json.loads((tmp_path / "model" / f"{out}.json").read_text())["input"]["size"]
    kinds = _photo_kinds(signs.images[1], tmp_path / "kinds", SIZE)

    got = np.concatenate([model(shipped.load_image(path, size)[None]) for path in kinds.values()])
    expected = _predicted(run, list(kinds.values()))

    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() <= 1e-3, dict(zip(kinds, np.abs(got - expected).max(1)))


# -- the SavedModel's `serve_bytes` signature decodes files as the reference decoder ----

# Kinds TensorFlow cannot decode as Pillow does: `serve_bytes` refuses them with an assertion naming the
# pixel signature and the shipped preprocess.py.
REFUSED_KINDS = ("palette.gif", "rgb.bmp", "grey-1bit.png", "palette-4bit.png")


def _bytes_kinds(src, folder, size):
    """`_photo_kinds` plus every EXIF orientation in JPEG, PNG and WebP, big-endian EXIF, XMP, 16-bit RGB, low-bit PNGs."""
    import tensorflow as tf

    kinds = _photo_kinds(src, folder, size)
    with Image.open(src) as photo:
        rgb = photo.convert("RGB").resize((size * 2 + 7, size + 3), Image.Resampling.BICUBIC)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        for fmt in ("jpg", "png", "webp"):
            kinds[f"exif-{orientation}.{fmt}"] = folder / f"exif-{orientation}.{fmt}"
            rgb.save(kinds[f"exif-{orientation}.{fmt}"], exif=exif.tobytes())
    # Motorola byte order, orientation 8, written by hand: Pillow writes Intel order.
    motorola = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x08\x00\x00" + bytes(4)
    kinds["exif-motorola.jpg"] = folder / "exif-motorola.jpg"
    rgb.save(kinds["exif-motorola.jpg"], exif=motorola)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="3"/></x:xmpmeta>'
    kinds["xmp-rotated.jpg"] = folder / "xmp-rotated.jpg"
    rgb.save(kinds["xmp-rotated.jpg"], xmp=xmp)
    kinds["rgb16.png"] = folder / "rgb16.png"
    kinds["rgb16.png"].write_bytes(tf.io.encode_png(np.asarray(rgb, np.uint16) * 257 + 3).numpy())
    fade = np.linspace(0, 65535, rgb.size[0]).astype(np.uint16)[None, :, None]  # transparent to opaque
    for name, mode in (("grey-alpha16.png", "L"), ("rgba16.png", "RGB")):
        colour = np.atleast_3d(np.asarray(rgb.convert(mode), np.uint16)) * 257
        kinds[name] = folder / name
        kinds[name].write_bytes(tf.io.encode_png(np.concatenate([colour, np.broadcast_to(fade, colour[..., :1].shape)], 2)).numpy())
    kinds["grey-1bit.png"] = folder / "grey-1bit.png"
    rgb.convert("1").save(kinds["grey-1bit.png"])
    kinds["palette-4bit.png"] = folder / "palette-4bit.png"
    rgb.quantize(16).save(kinds["palette-4bit.png"], bits=4)
    return kinds


@pytest.fixture(scope="module")
def bytes_kinds(tmp_path_factory):
    src = sorted((require_shared(SIGN_DIGITS) / "3").glob("*.JPG"))[0]
    return _bytes_kinds(src, tmp_path_factory.mktemp("bytes-kinds"), 32)


def test_the_in_graph_decoder_gives_the_reference_decoders_pixels_on_every_kind(bytes_kinds):
    """JPEG draft scaling, EXIF/XMP orientation, alpha on white, 16-bit, box reduce: bit for bit, before the resize."""
    import tensorflow as tf

    from pipeline.features.decode import load_decoded
    from pipeline.runs.export_decode import decoded_file

    for size in (32, 13):  # at 13 every big kind takes the reduce, and the JPEGs the 1/8 scale
        decode = tf.function(lambda data, size=size: decoded_file(tf, data, size))
        for name, path in bytes_kinds.items():
            if name in REFUSED_KINDS:
                continue
            got = decode(tf.constant(path.read_bytes())).numpy()
            np.testing.assert_array_equal(got, load_decoded(path, size)[0], err_msg=f"{name} at size {size}")


def test_the_in_graph_decoder_refuses_kinds_it_cannot_decode_as_the_reference_does(bytes_kinds):
    import tensorflow as tf

    from pipeline.runs.export_decode import decoded_file

    decode = tf.function(lambda data: decoded_file(tf, data, 32))
    for name in REFUSED_KINDS:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"serve_bytes decodes JPEG.*preprocess\.py.*`serve`"):
            decode(tf.constant(bytes_kinds[name].read_bytes()))


@pytest.mark.slow
@pytest.mark.weights
def test_saved_model_bytes_signature_equals_predict_on_every_kind_of_photo(signs, tmp_path):
    """Encoded files of every kind and size, in one batch, through `serve_bytes`: predict's numbers; refusals named."""
    import tensorflow as tf

    run = signs.runs["dense"]
    out = tmp_path / "model" / "signs_saved_model"
    assert cli.main(["export", str(run), str(out), "--format", "saved_model", "--quiet"]) == 0
    loaded = tf.saved_model.load(str(out))
    kinds = _bytes_kinds(signs.images[1], tmp_path / "kinds", SIZE)
    accepted = [name for name in kinds if name not in REFUSED_KINDS]

    got = loaded.serve_bytes(tf.constant([kinds[name].read_bytes() for name in accepted])).numpy()
    expected = _predicted(run, [kinds[name] for name in accepted])

    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() <= TOLERANCE, dict(zip(accepted, np.abs(got - expected).max(1)))
    for name in REFUSED_KINDS:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"serve_bytes decodes JPEG.*preprocess\.py"):
            loaded.serve_bytes(tf.constant([kinds[name].read_bytes()]))
    pixels = np.stack([load_image(kinds["big-8x.jpg"], SIZE)])
    np.testing.assert_allclose(loaded.serve(pixels).numpy(), expected[[accepted.index("big-8x.jpg")]], atol=TOLERANCE)


@pytest.mark.slow
@pytest.mark.weights
def test_a_saved_model_whose_bytes_signature_disagrees_is_never_written(signs, tmp_path, monkeypatch):
    """The export decodes a few files through the written `serve_bytes`: one that ignored EXIF is refused."""
    from pipeline.runs import export_decode
    from pipeline.runs.export_loading import ExportMismatch

    monkeypatch.setattr(export_decode, "_oriented", lambda tf, image, orientation: image)
    out = tmp_path / "signs_saved_model"
    with pytest.raises(ExportMismatch, match="serve_bytes signature differs"):
        export_run(signs.runs["logreg"], out, format="saved_model")
    assert not out.exists() and not (tmp_path / "signs_saved_model.json").exists()


def test_a_fused_run_of_several_sizes_gets_no_bytes_signature():
    """Draft mode and the reduce depend on SIZE: one in-graph decode cannot feed bases of different sizes."""
    from pipeline.runs.export_decode import one_decode_size

    assert one_decode_size([types.SimpleNamespace(size=128)] * 2) == 128
    assert one_decode_size([types.SimpleNamespace(size=128), types.SimpleNamespace(size=224)]) is None
