"""Export a trained run for use outside this package.

Entry point: `export_run(run_dir, out)`. Four formats, the rows of
`export_formats.FORMATS`, of two kinds:

- `"keras"`, `"saved_model"`, `"onnx"` (dense heads, and `logreg`,
  `linear_svm`, `ridge` as one `Dense` layer): the whole classifier, raw
  image in, class probabilities out::

      image (batch, H, W, 3) uint8, any H and W
        -> Rescaling(1.0)                   cast to float32
        -> resize to SIZE x SIZE            the reference decoder's: Pillow's
                                            bilinear, exactly (`export_resize`)
        -> Dense(3) on the channel axis     the backbone's preprocess_input
        -> backbone -> pooling              the run's extractor
        -> dense head                       softmax over the run's classes

  The `.keras` file holds built-in Keras layers and operations only, so
  `keras.saving.load_model(path)` loads it in any process, on any Keras 3
  backend, without this package.
  Every `keras.applications` `preprocess_input` is a per-channel affine
  map, possibly after an RGB -> BGR flip ("caffe", "tf", "torch" modes, or
  nothing at all): `preprocess_affine` measures that map and checks it, and
  a fixed `Dense(3)` reproduces it. Beside the model, `<out>.json` records
  the class names (the order of the output columns), SIZE, the lineage and
  the model's sha256, and `preprocess.py` (the reference decoder, Pillow
  only) is written beside it.

  Every format repeats the reference decoder's resize exactly
  (`export_resize`), so given a decoded photo of any size it predicts
  what `bottleneck predict` does. Images at least twice
  SIZE differ more, where the decoder shrinks JPEGs while decoding: decode
  files with the shipped `preprocess.py` (docs/predict.md). The SavedModel
  also has a second signature, `serve_bytes`: encoded files in, decoded in
  the graph as the reference decoder does (`export_decode`), so it agrees
  with `predict` on raw files of every size.

- `"bundle"` (every head): a self-contained folder that `predict_images`
  and `evaluate_run` accept in place of the run folder (layout in
  `layout`'s module doc): the head (skops, `safe_head`), the run's
  lineage, `preprocess.py`, a copy of the weights file when the run was
  extracted from one, and a `manifest.sha256` checked before anything is
  loaded (`source.RunSource`).

Both are published atomically: the model file through `_atomic.replacing`,
the bundle as a staged folder renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic, heads
from ..errors import BottleneckError, ConfigError, RunError
from .._versions import library_versions
from ..features import discovery
from ..features.decode import DECODER_ID
from ..heads.transforms import keras_layers, split_transform
from . import export_decode, export_loading, layout, preprocess, safe_head
from .export_bases import base_branch, reference_features
from .export_resize import computes_in_float64
from .export_formats import EXPORT_FORMATS, FORMATS, ExportFormat, format_of_suffix
from .predict import Predictor, check_output_file

__all__ = ["BundlePickleWarning", "EXPORT_FORMATS", "ExportResult", "build_export_model", "export_run", "preprocess_affine"]



class BundlePickleWarning(UserWarning):
    """A bundle keeps its head as a pickle: its users must trust it."""


_CHECK_TOLERANCE = 1e-4  # exported model vs extractor + head, on random images


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_run` wrote.

    Attributes:
        path: the model file or folder, or the bundle folder.
        format: the name of a row of `export_formats.FORMATS`.
        files: every file written, with its sha256.
        max_abs_diff: for `"keras"`, the largest difference between the
            exported model and extractor + head on random images at SIZE
            (checked below 1e-4 before writing); `None` for bundles.
    """

    path: Path
    format: str
    files: dict[str, str]
    max_abs_diff: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "files": self.files, "max_abs_diff": self.max_abs_diff}


def preprocess_affine(module: str) -> tuple[np.ndarray, np.ndarray]:
    """The `preprocess_input` of `keras.applications.<module>` as `x @ kernel + bias`.

    The map is measured on the RGB corners of the colour cube and checked
    on random images; a module whose preprocessing is not a per-pixel
    affine map of the channels is refused.

    Args:
        module: submodule of `keras.applications`, as in the backbone row
            (`"vgg16"`, `"mobilenet_v2"`, ...).

    Returns:
        `(kernel, bias)`: float32 arrays of shapes `(3, 3)` and `(3,)`, such
        that `preprocess_input(x)[..., j] == sum_i x[..., i] * kernel[i, j]
        + bias[j]` for RGB `x` in 0..255.

    Example:

    >>> kernel, bias = preprocess_affine("vgg16")  # "caffe": RGB -> BGR, ImageNet mean subtracted
    >>> float(kernel[2, 0]), round(float(bias[0]), 3)  # output B is input B minus 103.939
    (1.0, -103.939)
    """
    from ..features.applications import module_affine

    return module_affine(module)


def build_export_model(predictor: Predictor):
    """The run's extractor and head as one Keras model of built-in layers and operations.

    Dense heads are their own network (their feature transform inside);
    `logreg`, `linear_svm` and `ridge` become one `Dense` layer (see
    `heads.linear_softmax_weights`) after their feature transform's
    layers (`heads.transforms.keras_layers`). Images are resized with the
    reference decoder's Pillow arithmetic, in `keras.ops` calls
    (`export_resize`).

    Args:
        predictor: a loaded `Predictor`.

    Returns:
        A `keras.Model` mapping uint8 RGB images `(batch, H, W, 3)` of any
        size to class probabilities `(batch, len(predictor.class_names))`.
        Its last layer, named `"head"`, maps features to probabilities.

    Raises:
        ConfigError: the head has no Keras form (`field="format"`).
    """
    from .._keras import import_keras

    keras = import_keras()
    return _build(keras, predictor, traced=False)


def _build(keras, predictor: Predictor, *, traced: bool):
    """uint8 images -> every base's features (concatenated for a fused run) -> head, as one model."""
    from ..features import backbones

    inputs = keras.Input((None, None, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0, dtype="float32", name="to_float32")(inputs)
    if len(predictor.bases) == 1:
        x = base_branch(keras, predictor, 0, x, traced=traced, suffix="")
        name = f"{backbones.model_name(predictor.config.model)}_{predictor.size}_classifier"
    else:
        # Each base sees the same uint8 image; their features are joined as `store.fused` joined them.
        branches = [base_branch(keras, predictor, i, x, traced=traced, suffix=f"_{i}") for i in range(len(predictor.bases))]
        flat = [keras.layers.Flatten(name=f"flatten_{i}")(b) if len(b.shape) > 2 else b for i, b in enumerate(branches)]
        x = keras.layers.Concatenate(name="fused")(flat)
        name = "_".join(backbones.model_name(b.config.model) for b in predictor.bases) + "_fused_classifier"
    head = _head_model(keras, predictor, x.shape[1:])
    return keras.Model(inputs, head(x), name=name)


def _head_model(keras, predictor: Predictor, feature_shape):
    """Features -> probabilities, as a Keras model named "head"."""
    features = keras.Input(tuple(feature_shape), dtype="float32", name="features")
    if predictor.is_dense:
        return keras.Model(features, predictor.head.model_(features), name="head")
    transform, linear = split_transform(predictor.head)
    try:
        kernel, bias, link = heads.linear_softmax_weights(linear, len(predictor.class_names))
    except ValueError as e:
        raise ConfigError(
            f"This run's head ({type(predictor.head).__name__}) has no Keras form: {e}. Only dense, logreg, "
            "linear_svm and ridge heads export as a model; pass `format='bundle'` and a folder for `out`.",
            field="format",
        ) from None
    x = keras.layers.Flatten(name="flatten")(features) if len(feature_shape) > 1 else features
    if transform is not None:
        x = keras_layers(keras, x, transform)  # the head's fitted feature transform, as layers
    dense = keras.layers.Dense(len(bias), activation=link, dtype="float32", name="linear")
    x = dense(x)
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return keras.Model(features, keras.layers.Activation("softmax", name="softmax")(x), name="head")


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str | None = None,
    weights: str | os.PathLike | None = None,
    include_weights: bool = True,
    overwrite: bool = False,
    trust: bool = False,
) -> ExportResult:
    """Exports a trained run as one `.keras` model or a self-contained bundle.

    The run is checked as for prediction (head sha256, weights identity)
    before anything is written; see the module doc for the formats.

    Args:
        run_dir: a run folder (or a bundle folder).
        out: for `"keras"`, the model file to write, ending in `.keras`
            (`<out>.json` is written beside it; missing folders are
            created); for `"bundle"`, a folder that must not exist yet.
        format: a row of `export_formats.FORMATS` (`"keras"`,
            `"saved_model"`, `"onnx"`, `"bundle"`), or `None` for the
            format of `out`'s suffix, else `"keras"` with a
            dense head and `"bundle"` otherwise. Defaults to `None`.
        weights: a weights file replacing the recorded one (same sha256).
            Defaults to `None`.
        include_weights: bool, for `"bundle"`: copy the run's weights file
            into the bundle. With `False` the bundle refers to the recorded
            path (or `weights=` when predicting). Defaults to `True`.
        overwrite: bool, for `"keras"`: replace an existing `out` and its
            `<out>.json`. Defaults to `False`.
        trust: bool, accept a bundle whose head is a pickle (loading it
            runs code from the bundle). Defaults to `False`.

    Returns:
        An `ExportResult`.

    Raises:
        RunError: the run or one of its files is missing or changed.
        ConfigError: an unknown `format`, `"keras"` for a scikit-learn
            head, an `out` that does not fit the format or already exists.
        WriteError: `out` could not be written; nothing was replaced.

    Example:

    ```python
    export_run("runs/digits-mobilenet_v2-96-avg-1a2b3c4d/dense-20250101T000000-0a1b2c3d", "digits.keras")
    # elsewhere, without this package:
    model = keras.saving.load_model("digits.keras")
    proba = model.predict(images_uint8)  # (n, H, W, 3) -> (n, n_classes)
    ```
    """
    if format is not None and format not in FORMATS:
        raise ConfigError(
            f"`format` must be one of {', '.join(map(repr, FORMATS))}. Received: format={format!r}",
            field="format",
        )
    out = Path(out)
    name = format or format_of_suffix(out.suffix)
    row = FORMATS[name] if name else None
    if row is not None and row.is_model:
        out = _check_model_out(out, row, overwrite)
    elif out.exists():
        raise ConfigError(f"`out` '{out}' already exists; pass a new folder for the bundle (it is created).", field="out")
    if row is not None and row.traced:
        _check_backend(row)
    predictor = Predictor.load(run_dir, weights=weights, trust=trust)
    if row is None:  # a model for dense heads, else a bundle
        row = FORMATS["keras" if predictor.is_dense else "bundle"]
        if row.is_model:
            out = _check_model_out(out, row, overwrite)
    if not row.is_model:
        _check_one_base(predictor)
        return _export_bundle(predictor, out, include_weights)
    if predictor.config.decoder != "pillow":
        raise ConfigError(
            f"`run` '{predictor.root}' trained on features decoded by {predictor.config.decoder}; an exported model "
            "decodes as the reference decoder does, so it would not agree with predict. Export a bundle "
            "(format='bundle'), or extract with decoder pillow and train again.",
            field="format",
        )
    return _export_model(predictor, out, row)


def _check_one_base(predictor: Predictor) -> None:
    """A bundle records one base; a fused run exports as one model instead."""
    if len(predictor.bases) > 1:
        raise ConfigError(
            f"Run '{predictor.root}' fuses {len(predictor.bases)} feature sets, and a bundle holds one base. "
            "Export it as a model (format 'keras', 'saved_model' or 'onnx', with a dense, logreg, linear_svm or "
            "ridge head), or use the run folder itself with predict and evaluate.",
            field="format",
        )


def _check_model_out(out: Path, row: ExportFormat, overwrite: bool) -> Path:
    suffix = row.suffix
    if suffix and not out.suffix:  # `OUT=model` names the model: `model.keras`
        out = out.with_suffix(suffix)
    if out.suffix != suffix:
        wanted = f"end with {suffix!r}" if suffix else "be a folder name without a suffix"
        raise ConfigError(f"`out` must {wanted} for format={row.name!r}. Received: out={str(out)!r}", field="out")
    if not suffix and out.exists():
        raise ConfigError(f"`out` '{out}' already exists; pass a new folder for the {row.title}.", field="out")
    for path in (out, _sidecar(out)):
        check_output_file(path, overwrite=overwrite, field="out")
    shipped = out.parent / layout.PREPROCESS
    if shipped.exists() and shipped.read_bytes() != _preprocess_source():
        check_output_file(shipped, overwrite=overwrite, field="out")
    return out


def _preprocess_source() -> bytes:
    return Path(preprocess.__file__).read_bytes()


def _ship_preprocess(folder: Path) -> dict[str, str]:
    """Writes `preprocess.py` (the reference decoder, Pillow only) into `folder`; returns `{name: sha256}`."""
    target = folder / layout.PREPROCESS
    source = _preprocess_source()
    if not (target.is_file() and target.read_bytes() == source):
        _atomic.write_bytes(target, source)
    return {layout.PREPROCESS: discovery.file_sha256(target)}


def _check_backend(row: ExportFormat) -> None:
    """Refuses, before any work, a traced format the backend or the installed packages cannot write."""
    from .._keras import import_keras

    backend = import_keras().backend.backend()
    if backend != "tensorflow":
        raise ConfigError(
            f"format={row.name!r} is written through TensorFlow (Keras' `model.export`), and this process runs "
            f"Keras on {backend!r}. Export with KERAS_BACKEND=tensorflow, or pass format='keras'.",
            field="format",
        )
    missing = [name for name in row.packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"format={row.name!r} needs {', '.join(missing)}: {row.install} (or pass format='keras').",
            field="format",
        )


def _sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _export_model(predictor: Predictor, out: Path, row: ExportFormat) -> ExportResult:
    from .._keras import import_keras

    keras = import_keras()
    model = _build(keras, predictor, traced=row.traced)
    diff = _check_export(model, predictor, other_sizes=computes_in_float64(keras))
    with _atomic.writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        if not row.suffix:  # a folder
            with _atomic.staged_folder(out) as staged:
                _write_model(model, staged.path, row, predictor.size, export_decode.one_decode_size(predictor.bases))
            digest = None
        else:
            with _atomic.replacing(out) as tmp:
                _write_model(model, tmp, row, predictor.size, export_decode.one_decode_size(predictor.bases))
                digest = discovery.file_sha256(tmp)
    info = {
        "format": f"bottleneck-{row.name}-export",
        "model": out.name,
        "model_sha256": digest,
        "class_names": list(predictor.class_names),
        "input": {
            "dtype": "uint8",
            "shape": [None, None, None, 3],
            "channels": "RGB",
            "size": predictor.size,
            "preprocess": f"{layout.PREPROCESS}: load_image(path, size) decodes a file exactly as predict does",
            "decoder": DECODER_ID,
            "note": "RGB images of any size, resized inside to SIZE x SIZE as the reference decoder does "
            f"(Pillow's antialiased bilinear, squash); decode files with {layout.PREPROCESS}'s load_image, "
            "which also applies EXIF orientation, transparency on white, 16-bit scaling and the decoder's "
            "draft/reduce steps for big photos",
        },
        "output": "softmax probabilities, one column per class_names entry",
        "backbone": predictor.config.model,
        "lineage": predictor.lineage,
        "source": str(predictor.root),
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    sidecar = _sidecar(out)
    with _atomic.writing(sidecar):
        layout.write_json(sidecar, info)
    files = {sidecar.name: discovery.file_sha256(sidecar), **_ship_preprocess(out.parent)}
    if digest is not None:
        files[out.name] = digest
    return ExportResult(out, row.name, files, diff)


def _write_model(model, path: Path, row: ExportFormat, size: int, decode_size: int | None) -> None:
    """Writes the model as `row` says; it is loaded back and compared before it is published.

    A SavedModel gets the encoded-file signatures when every base decodes files at one size (`decode_size`).
    """
    with_bytes = row.keras_export == "tf_saved_model" and decode_size is not None
    if not row.traced:
        with export_loading.keras_hub_configs_that_load():
            model.save(path)
        with export_loading.refused_unless_it_runs(row):
            _check_artifact(_keras_runner(path), model, size)
        return
    export_loading.register_ops(row)
    if with_bytes:  # with a second signature, `serve_bytes`, for encoded files
        from .._keras import import_keras

        export_decode.write_saved_model(import_keras(), model, path, decode_size, model.output_shape[-1])
    else:
        model.export(str(path), format=row.keras_export, verbose=False)
    with export_loading.refused_unless_it_runs(row):
        _check_artifact(_RUNNERS[row.keras_export](path), model, size)
        if with_bytes:
            export_decode.check_bytes_signature(path, model, decode_size, _CHECK_TOLERANCE)


def _check_images(height: int, width: int | None = None) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(4, height, width or height, 3), dtype=np.uint8)


def _check_export(model, predictor: Predictor, *, other_sizes: bool) -> float:
    """Runs the exported graph and extractor + head on the same random images, and its head on the run's features.

    Images at SIZE and, where this backend computes the resize in float64
    (`other_sizes`: then it repeats the reference decoder's exactly), of
    another size and shape. Returns the largest difference.
    """
    size = predictor.size
    checks = []
    shapes = [(size, size), (size + 37, size * 2 // 3)][: 2 if other_sizes else 1]
    for images in (_check_images(*shape) for shape in shapes):
        exported = np.asarray(model.predict_on_batch(images), dtype=np.float64)
        features = reference_features(predictor, images)
        checks.append(float(np.max(np.abs(exported - predictor.predict_proba(features)))))
    cached = _run_features(predictor)
    if cached is not None:
        head = np.asarray(model.get_layer("head").predict(cached, verbose=0), dtype=np.float64)
        checks.append(float(np.max(np.abs(head - predictor.predict_proba(cached)))))
    for diff in checks:
        if not diff < _CHECK_TOLERANCE:
            raise RuntimeError(
                f"The exported model differs from extractor + head by {diff:.3g} (more than {_CHECK_TOLERANCE}) "
                "on random images or the run's features; nothing was written. Report this with the run folder."
            )
    return max(checks)


def _run_features(predictor: Predictor, limit: int = 512) -> np.ndarray | None:
    """Up to `limit` rows of the features the head was trained on, or `None` when the set is gone or changed."""
    from ..store import read_feature_set
    from ..store.fused import read_fused

    members = predictor.lineage.get("members")
    path = predictor.lineage.get("features_path")
    try:
        if members:
            fs = read_fused([m.get("features_path") or "" for m in members])
        else:
            fs = read_feature_set(path) if path else None
    except BottleneckError:
        return None
    if fs is None or fs.content_hash != predictor.lineage.get("content_hash"):
        return None
    return np.asarray(fs.features[:limit], dtype=np.float32)


def _onnx_runner(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})[0]


def _keras_runner(path: Path):
    from .._keras import import_keras

    return import_keras().saving.load_model(path).predict_on_batch


def _saved_model_runner(path: Path):
    from .._keras import import_keras

    return import_keras().layers.TFSMLayer(str(path), call_endpoint="serve")


# What runs each traced format's written file, by `ExportFormat.keras_export`.
_RUNNERS = {"onnx": _onnx_runner, "tf_saved_model": _saved_model_runner}


def _check_artifact(run, model, size: int) -> None:
    """The written file, loaded back, gives the model's numbers (a converter may drop an op unnoticed)."""
    images = _check_images(size + 13)  # resized inside
    got = np.asarray(run(images), dtype=np.float64)
    diff = float(np.max(np.abs(got - np.asarray(model.predict_on_batch(images), np.float64))))
    if not diff < _CHECK_TOLERANCE:
        raise export_loading.ExportMismatch(
            f"The written model, loaded back, differs from the built one by {diff:.3g}; nothing was written. "
            "Report this with the run folder and the versions of keras, tf2onnx and onnxruntime."
        )


def _export_bundle(predictor: Predictor, out: Path, include_weights: bool) -> ExportResult:
    with _atomic.writing(out), _atomic.staged_folder(out) as staged:
        head_file = _write_head(predictor, staged.path)
        weights_file = _copy_weights(predictor, staged.path, include_weights)
        lineage = dict(predictor.lineage)
        weights = predictor.config.weights
        if not include_weights and weights not in ("imagenet", "none"):
            # Keep the path the weights were found at, for predicting without `weights=`.
            lineage["extraction_config"] = {**lineage["extraction_config"], "weights": str(Path(weights).resolve())}
        bundle = {
            "format": layout.BUNDLE_FORMAT,
            "format_version": layout.BUNDLE_FORMAT_VERSION,
            "head": head_file,
            "head_sha256": discovery.file_sha256(staged.path / head_file),
            "head_type": type(predictor.head).__name__,
            "weights_file": weights_file,
            "class_names": list(predictor.class_names),
            "backbone": {
                "model": predictor.config.model,
                "size": predictor.size,
                "pooling": predictor.config.pooling,
                "layer": predictor.config.layer,
                "precision": predictor.config.precision,
                "storage_dtype": predictor.config.storage_dtype,
                "weights": predictor.lineage["weights"],
            },
            "lineage": lineage,
            "source": str(predictor.root),
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        layout.write_json(staged.path / layout.BUNDLE, bundle)
        _ship_preprocess(staged.path)
        names = [layout.BUNDLE, head_file, layout.PREPROCESS] + ([weights_file] if weights_file else [])
        files = {name: discovery.file_sha256(staged.path / name) for name in names}
        _atomic.write_text(staged.path / layout.MANIFEST, "".join(f"{digest}  {name}\n" for name, digest in files.items()))
    return ExportResult(out, "bundle", files)


def _write_head(predictor: Predictor, folder: Path) -> str:
    """Writes the head into `folder` with skops, else copies its pickle; returns its file name.

    A skops head loads without running code from the bundle; a pickle
    (a head class outside scikit-learn) is loaded by the receiver only
    with `--trust`, which the warning says.
    """
    try:
        safe_head.dump_head(folder / layout.HEAD_SKOPS, predictor.head, predictor.head_metadata)
        return layout.HEAD_SKOPS
    except safe_head.NotPortable as e:
        warnings.warn(
            f"The bundle keeps the head as a pickle because {e}; whoever uses the bundle must pass --trust.",
            BundlePickleWarning,
            stacklevel=4,
        )
    source = predictor.source
    if source.head_format != "pickle":
        raise RunError(f"'{source.head_path}' holds types that cannot be exported safely; train the head again.")
    shutil.copyfile(source.head_path, folder / layout.HEAD)
    if discovery.file_sha256(folder / layout.HEAD) != source.head_sha256:
        raise RunError(f"'{source.head_path}' changed while it was copied; export again.")
    return layout.HEAD


def _copy_weights(predictor: Predictor, folder: Path, include_weights: bool) -> str | None:
    """Copies the weights file into `folder`, checked against its recorded sha256.

    Returns:
        The weights file's path inside `folder`, or `None` when none was copied.
    """
    weights = predictor.config.weights
    if not include_weights or weights in ("imagenet", "none"):
        return None
    weights_file = f"weights/{Path(weights).name}"
    (folder / "weights").mkdir()
    shutil.copyfile(weights, folder / weights_file)
    if f"sha256:{discovery.file_sha256(folder / weights_file)}" != predictor.lineage["weights"]:
        raise RunError(f"'{weights}' changed while it was copied; export again.")
    return weights_file
