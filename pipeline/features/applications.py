"""The `applications` backbone source: ImageNet CNNs of `keras.applications`.

A row (`backbones.BackboneCfg`) names a constructor and the module whose
`preprocess_input` belongs to it; this module builds it, identifies its
weights and says how it is preprocessed. `backbones` reaches it through
its `SOURCES` table, as it reaches `hub` for KerasHub presets.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import tempfile
from pathlib import Path

import numpy as np

from ..store.content import file_sha256
from ..errors import ConfigError, WeightsUnavailableError

SOURCE = "applications"
POOLINGS = ("avg", "max", "none")

# The preprocessing map is measured at 0 and at 255 on each channel, in float64.
_PROBE = np.concatenate([np.zeros((1, 3)), 255.0 * np.eye(3)]).reshape(4, 1, 1, 3)


def spec_row(cfg) -> dict:
    """The row as the feature key holds it."""
    return cfg.to_dict()


def resolve_size(cfg, size: int | None) -> int:
    """The input size to use: `size`, or the row's default when `None`."""
    size = cfg.default_size if size is None else size
    if size < cfg.min_size:
        raise ConfigError(
            f"`size` must be at least {cfg.min_size} for {cfg.name}. Received: size={size}. "
            f"Pass size={cfg.min_size} or more (its ImageNet weights were trained at {cfg.default_size}).",
            field="size",
        )
    return size


def resolve_pooling(cfg, pooling: str, layer: str | None) -> str:
    """`pooling` checked: the token poolings belong to KerasHub encoders."""
    if pooling not in POOLINGS:
        raise ConfigError(
            f"`pooling` must be one of {', '.join(map(repr, POOLINGS))} for {cfg.name} (the token poolings are "
            f"for KerasHub encoders). Received: pooling={pooling!r}", field="pooling")
    return pooling


def weights_identity(cfg, weights: str) -> str:
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


def preprocess_affine(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The row's `preprocess_input` as `x @ kernel + bias` (see `module_affine`)."""
    return module_affine(cfg.module)


def module_affine(module: str) -> tuple[np.ndarray, np.ndarray]:
    """The `preprocess_input` of `keras.applications.<module>` as `x @ kernel + bias`.

    The map is measured on the RGB corners of the colour cube and checked
    on random images; a module whose preprocessing is not a per-pixel
    affine map of the channels is refused.

    Returns:
        `(kernel, bias)`: float32 arrays of shapes `(3, 3)` and `(3,)`, such
        that `preprocess_input(x)[..., j] == sum_i x[..., i] * kernel[i, j]
        + bias[j]` for RGB `x` in 0..255.
    """
    fn = importlib.import_module(f"keras.applications.{module}").preprocess_input
    out = np.asarray(fn(_PROBE.copy()), dtype=np.float64).reshape(4, 3)
    bias = out[0]
    kernel = (out[1:] - bias) / 255.0
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 8, 8, 3)).astype(np.float64)
    expected = np.asarray(fn(x.copy()), dtype=np.float64)
    if expected.shape != x.shape or not np.allclose(x @ kernel + bias, expected, rtol=1e-9, atol=1e-9):
        raise ConfigError(
            f"The preprocess_input of keras.applications.{module} is not a per-channel affine map, so it "
            "cannot be exported with built-in layers. Pass `format='bundle'` instead.",
            field="format",
        )
    return kernel.astype(np.float32), bias.astype(np.float32)


def build_features(keras, cfg, images, *, size: int, weights: str, pooling: str, layer: str | None):
    """The row's `preprocess_input`, the frozen base (cut at `layer`) and pooling, applied to uint8 `images`."""
    from .layers import Preprocess  # a Keras layer: imported once Keras is

    base = _load_base(keras, cfg, size, weights)
    if layer is not None:
        base = keras.Model(base.input, _get_layer(base, layer).output, name=f"{base.name}_to_{layer}")
    base.trainable = False
    x = Preprocess(cfg.module, dtype="float32", name="preprocess")(images)
    x = base(x, training=False)
    pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}.get(pooling)
    return x if pool is None else pool(dtype="float32")(x)


def trainable_blocks(base) -> None:
    """`None`: fine-tuning counts the base's layers with weights (see `finetune_model.unfreeze_top`)."""
    return None


def _get_layer(model, name: str):
    from .backbones import unknown_name_message

    names = [layer.name for layer in model.layers]
    if name not in names:
        raise ConfigError(unknown_name_message("layer", name, names), field="layer")
    return model.get_layer(name)


def _load_base(keras, cfg: BackboneCfg, size: int, weights: str):
    constructor = getattr(keras.applications, cfg.constructor)
    kwargs = dict(include_top=False, input_shape=(size, size, 3), **cfg.kwargs)
    if weights == "none":
        # Seeded so that a resumed run continues with the same random model.
        keras.utils.set_random_seed(0)
        return constructor(weights=None, **kwargs)
    if weights != "imagenet":
        weights_identity(cfg, weights)  # fails early, with the fix, on a missing file
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
