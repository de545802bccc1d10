"""Registry of frozen ImageNet bases from `keras.applications`.

A backbone is one row of `BACKBONES`: the Keras constructor, the module whose
`preprocess_input` belongs to it, its default and minimum input sizes and
fixed constructor options (MobileNet's `alpha`). The table holds names,
not objects, so listing backbones and computing cache keys never imports
Keras; `build_extractor` imports it when a model is really needed.

Every model built here takes raw `uint8` RGB batches of shape
`(batch, size, size, 3)` and applies the row's own `preprocess_input` inside
the model, on the device, in float32; `predict_batches` runs one over
decoded images in fixed-shape passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import fnmatch
import importlib.metadata
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import ConfigError, WeightsUnavailableError, did_you_mean
from ..store.content import file_sha256

log = logging.getLogger("bottleneck")


@dataclasses.dataclass(frozen=True)
class BackboneCfg:
    """One row of the backbone registry.

    Args:
        name: registry name, lower case with underscores.
        constructor: attribute of `keras.applications`, e.g. `"VGG16"`.
        module: submodule of `keras.applications` whose `preprocess_input`
            matches the weights, e.g. `"vgg16"`.
        default_size: input size the ImageNet weights were trained at.
        min_size: smallest input size the architecture accepts.
        kwargs: fixed constructor options, e.g. `{"alpha": 0.25}`.
    """

    name: str
    constructor: str
    module: str
    default_size: int = 224
    min_size: int = 32
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    def to_dict(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**row, "kwargs": dict(self.kwargs)}


def _rows() -> list[BackboneCfg]:
    rows = [
        BackboneCfg("vgg16", "VGG16", "vgg16"),
        BackboneCfg("vgg19", "VGG19", "vgg19"),
        BackboneCfg("xception", "Xception", "xception", 299, 71),
        BackboneCfg("inception_v3", "InceptionV3", "inception_v3", 299, 75),
        BackboneCfg("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, 75),
        BackboneCfg("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3"),
        BackboneCfg("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3"),
        BackboneCfg("nasnet_mobile", "NASNetMobile", "nasnet"),
        BackboneCfg("nasnet_large", "NASNetLarge", "nasnet", 331),
    ]
    for depth in (50, 101, 152):
        rows.append(BackboneCfg(f"resnet{depth}", f"ResNet{depth}", "resnet"))
        rows.append(BackboneCfg(f"resnet{depth}_v2", f"ResNet{depth}V2", "resnet_v2"))
    for alpha, suffix in ((1.0, ""), (0.75, "_075"), (0.5, "_050"), (0.25, "_025")):
        rows.append(BackboneCfg(f"mobilenet{suffix}", "MobileNet", "mobilenet", kwargs={"alpha": alpha}))
    for alpha, suffix in ((1.0, ""), (0.35, "_035"), (0.5, "_050"), (0.75, "_075"), (1.3, "_130"), (1.4, "_140")):
        rows.append(BackboneCfg(f"mobilenet_v2{suffix}", "MobileNetV2", "mobilenet_v2", kwargs={"alpha": alpha}))
    for depth in (121, 169, 201):
        rows.append(BackboneCfg(f"densenet{depth}", f"DenseNet{depth}", "densenet"))
    for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        rows.append(BackboneCfg(f"efficientnet_b{i}", f"EfficientNetB{i}", "efficientnet", size))
    for variant, size in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384), ("m", 480), ("l", 480)):
        rows.append(
            BackboneCfg(f"efficientnet_v2_{variant}", f"EfficientNetV2{variant.upper()}", "efficientnet_v2", size)
        )
    for variant, cls in (("tiny", "Tiny"), ("small", "Small"), ("base", "Base"), ("large", "Large"), ("xlarge", "XLarge")):
        rows.append(BackboneCfg(f"convnext_{variant}", f"ConvNeXt{cls}", "convnext"))
    return rows


BACKBONES: Mapping[str, BackboneCfg] = MappingProxyType({row.name: row for row in _rows()})


def list_backbones(pattern: str = "") -> list[str]:
    """Sorted backbone names, filtered by an fnmatch `pattern` such as `"resnet*"`."""
    return sorted(n for n in BACKBONES if not pattern or fnmatch.fnmatch(n, pattern))


def get_backbone_cfg(name: str) -> BackboneCfg:
    """The registry row of `name`; unknown names list the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(_unknown_name_message("model", name, list(BACKBONES)), field="model") from None


def resolve_size(cfg: BackboneCfg, size: int | None) -> int:
    """The input size to use: `size`, or the row's default when `None`."""
    size = cfg.default_size if size is None else size
    if size < cfg.min_size:
        raise ConfigError(
            f"`size` must be at least {cfg.min_size} for {cfg.name}. Received: size={size}. "
            f"Pass size={cfg.min_size} or more (its ImageNet weights were trained at {cfg.default_size}).",
            field="size",
        )
    return size


def weights_identity(weights: str) -> str:
    """A string naming exactly which weights `weights` selects.

    `"imagenet"` is identified by the Keras version that downloads it,
    `"none"` by itself, and a file by the sha256 of its content, so a cache
    built from one weights file is never served for another.
    """
    if weights == "imagenet":
        return f"imagenet@keras-{importlib.metadata.version('keras')}"
    if weights == "none":
        return "none"
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Weights file '{weights}' does not exist. Pass `weights='imagenet'` to download the "
            "ImageNet weights, the path of a local weights file, or `weights='none'` for random "
            "weights (smoke runs only).",
            field="weights",
        )
    return f"sha256:{file_sha256(path)}"


def build_extractor(
    cfg: BackboneCfg,
    *,
    size: int,
    weights: str,
    pooling: str = "avg",
    layer: str | None = None,
    precision: str = "float32",
):
    """Builds the frozen feature extractor of a backbone row.

    Args:
        cfg: the backbone's registry row, from `get_backbone_cfg`.
        size: square input size in pixels.
        weights: `"imagenet"`, `"none"` or a weights file path.
        pooling: `"avg"`, `"max"` or `"none"`. Defaults to `"avg"`.
        layer: name of the layer whose output is taken, or `None` for the
            last layer. Defaults to `None`.
        precision: Keras dtype policy name. Defaults to `"float32"`.

    Returns:
        A `keras.Model` mapping `uint8` images `(batch, size, size, 3)` to
        features `(batch, dim)`, or `(batch, h, w, dim)` when `pooling` is
        `"none"`.

    Example:

    >>> model = build_extractor(get_backbone_cfg("mobilenet_v2"), size=96, weights="none")
    >>> model.output_shape
    (None, 1280)
    """
    from .._keras import import_keras

    keras = import_keras()
    from .layers import Preprocess  # a Keras layer: imported once Keras is

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        base = _load_base(keras, cfg, size, weights)
        if layer is not None:
            base = keras.Model(base.input, _get_layer(base, layer).output, name=f"{base.name}_to_{layer}")
        base.trainable = False
        inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
        x = Preprocess(cfg.module, dtype="float32")(inputs)
        x = base(x, training=False)
        pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}.get(pooling)
        if pool is not None:
            x = pool(dtype="float32")(x)
        x = keras.layers.Activation("linear", dtype="float32", name="features")(x)
        return keras.Model(inputs, x, name=f"{cfg.name}_extractor")
    finally:
        keras.config.set_dtype_policy(policy)


def _load_base(keras, cfg: BackboneCfg, size: int, weights: str):
    constructor = getattr(keras.applications, cfg.constructor)
    kwargs = dict(include_top=False, input_shape=(size, size, 3), **cfg.kwargs)
    if weights == "none":
        # Seeded so that a resumed run continues with the same random model.
        keras.utils.set_random_seed(0)
        return constructor(weights=None, **kwargs)
    if weights != "imagenet":
        weights_identity(weights)  # fails early, with the fix, on a missing file
        # What keras.applications does with a path, less its choice of loader by file name.
        base = constructor(weights=None, **kwargs)
        _load_weights_file(base, Path(weights), f"{cfg.name} (size {size}, options {dict(cfg.kwargs)})")
        return base
    try:
        return constructor(weights="imagenet", **kwargs)
    except Exception as e:  # Keras raises a bare Exception on a failed download
        raise WeightsUnavailableError(
            f"Could not get the ImageNet weights of {cfg.name}: {e}. Keras downloads "
            "them into ~/.keras/models (or $KERAS_HOME/models) and needs the network "
            "for that once. Offline, pass the path of a local weights file as `weights`, "
            "or `weights='none'` for a smoke run with random weights.",
            field="weights",
        ) from e


def _load_weights_file(model, path: Path, what: str) -> None:
    """Loads a weights file into `model` with the loader its content needs, whatever its name.

    Keras picks the loader by file name (`*.weights.h5`: Keras 3, other
    `*.h5`: legacy, `*.keras`: archive), so a renamed file fails with a
    misleading error. The format is read from the content instead, and
    Keras is handed a symlink whose name says it.
    """
    try:
        suffix = _weights_suffix(path)
        if suffix is None:  # not HDF5 nor zip: Keras's own checks say what it is
            model.load_weights(str(path))
            return
        with tempfile.TemporaryDirectory(prefix="bottleneck-weights-") as folder:
            link = Path(folder) / f"weights{suffix}"
            link.symlink_to(path.resolve())
            model.load_weights(str(link))
    except Exception as e:  # noqa: BLE001 - Keras reports a wrong file with many exception types
        raise WeightsUnavailableError(
            f"Could not load weights file '{path}' into {what}: {_one_line(e)} Check that the file "
            "holds no-top weights of this exact model, or pass other `weights`.",
            field="weights",
        ) from e


def _weights_suffix(path: Path) -> str | None:
    """The file name ending Keras needs to load `path`, read from its content; `None` if unknown."""
    import h5py

    with path.open("rb") as f:
        if f.read(4) == b"PK\x03\x04":
            return ".keras"  # a zip archive: a whole saved model
    if not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as f:
        # Keras 3 writes top-level `layers` and `vars` groups; the legacy format
        # lists its layers in `layer_names` (under `model_weights` in a full model).
        if "layer_names" in f.attrs or "model_weights" in f:
            return ".h5"
        if "layers" in f or "vars" in f:
            return ".weights.h5"
    return None


def _one_line(error: Exception, limit: int = 300) -> str:
    """The start of an error's message on one line: Keras's can run to pages of tensor values."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
    return text if text.endswith((".", "...")) else text + "."


def _get_layer(model, name: str):
    names = [layer.name for layer in model.layers]
    if name not in names:
        raise ConfigError(_unknown_name_message("layer", name, names), field="layer")
    return model.get_layer(name)


def _unknown_name_message(what: str, name: str, valid: list[str]) -> str:
    hint = did_you_mean(name, valid)
    shown = ", ".join(sorted(valid)) if len(valid) <= 60 else f"{len(valid)} names"
    return f"Unknown {what} {name!r}.{hint} Valid: {shown}."


@contextlib.contextmanager
def replicas(devices: int | str) -> Iterator[int]:
    """Models built and run inside hold one replica per device, each fed a slice of every batch.

    Keras' data-parallel distribution (JAX backend): the weights are copied
    to each device and every forward pass is split over them, so a machine's
    GPUs all work on one feature set. `devices`: `"auto"` (every GPU when
    there are several, else one device), `"all"` (every device of the
    default platform; CPUs too, where XLA is told to make several) or a number.
    Other backends run on one device (a warning says so when more were
    asked for). Yields the number of replicas.

    Raises:
        ConfigError: `devices` asks for more devices than there are.
    """
    from .._keras import import_keras

    keras = import_keras()
    if keras.backend.backend() != "jax":
        if devices not in ("auto", 1):
            log.warning("devices=%s needs the JAX backend (KERAS_BACKEND=jax); running on one device.", devices)
        yield 1
        return
    available = keras.distribution.list_devices()  # of the default platform: accelerators when there are any
    accelerators = [d for d in available if not d.startswith("cpu")]
    wanted = {"auto": len(accelerators) or 1, "all": len(available)}.get(devices, devices)
    if wanted > len(available):
        raise ConfigError(
            f"`devices` asks for {wanted} devices but {len(available)} are visible ({', '.join(available)}). "
            "Pass a smaller number, 'all' or 'auto'.",
            field="devices",
        )
    if wanted < 2:
        yield 1
        return
    log.info("Running each model on %d devices (data parallel): %s", wanted, ", ".join(available[:wanted]))
    with keras.distribution.DataParallel(devices=available[:wanted]).scope():
        yield wanted


def _replicas_now() -> int:
    from .._keras import import_keras

    distribution = import_keras().distribution.distribution()
    return 1 if distribution is None else int(distribution.device_mesh.devices.size)


def predict_batches(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Runs an extractor over uint8 images in forward passes of exactly `batch_size` images.

    Every pass has the same shape, so the compiled step is traced once.
    Inside `replicas`, `batch_size` is rounded up to a multiple of the
    device count, so every device gets an equal slice.

    The last, short batch is padded with zeros; a longer input (another
    backbone's decode batch) is cut into batches. Returns one row per image.
    """
    n_replicas = _replicas_now()
    batch_size = -(-batch_size // n_replicas) * n_replicas
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        outputs.append(np.asarray(model.predict_on_batch(batch))[:n])
    return np.concatenate(outputs)
