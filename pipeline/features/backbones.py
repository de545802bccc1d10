"""Registry of frozen image encoders, from two sources.

A backbone is one row of `BACKBONES`. Each row has a `source` whose module
(`SOURCES`) owns what differs between them: building the frozen model,
input size rules, pooling, preprocessing (for export), weights identity
(for the key) and where fine-tuning's blocks are.

- `applications` (`applications.py`): ImageNet CNNs of `keras.applications`;
  a row (`BackboneCfg`) names the constructor and the module whose
  `preprocess_input` belongs to it.
- `keras_hub` (`hub.py`): KerasHub vision encoders (DINOv2/v3, SigLIP,
  CLIP, ViT); a row (`hub.HubPresetCfg`) names a preset. The registry holds
  the built-in presets of `hub_presets.py`; `hub:<handle>` names any other
  (`hub:/path/to/preset_folder`, `hub:kaggle://...`, `hub:hf://...`).

The tables hold names, not objects, so listing backbones and computing
cache keys never imports Keras; `build_extractor` imports it when a model
is really needed. Every model built here takes raw `uint8` RGB batches of
shape `(batch, size, size, 3)` and preprocesses inside the model, on the
device, in float32; `predict_batches` runs one over decoded images in
fixed-shape passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib
import logging
from types import MappingProxyType, ModuleType
from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import ConfigError, WeightsUnavailableError, did_you_mean  # noqa: F401 - the error is re-exported
from . import hub, hub_presets

log = logging.getLogger("bottleneck")

# source name -> the module implementing it (imported when a row of it is used).
SOURCES: Mapping[str, str] = MappingProxyType({"applications": "applications", "keras_hub": "hub"})
# name prefix -> the function making a row of a reference the registry does not list.
PREFIXES: Mapping[str, Any] = MappingProxyType({hub.PREFIX: hub.row_for})


@dataclasses.dataclass(frozen=True)
class BackboneCfg:
    """One `keras.applications` row of the backbone registry.

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

    source = "applications"  # a class attribute: not a field, so not in `to_dict` nor in existing keys

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


def _hub_rows() -> list[hub.HubPresetCfg]:
    return [
        hub.HubPresetCfg(name, handle, family, size, dim, params, licence)
        for name, family, handle, params, size, dim, licence in hub_presets.PRESETS
    ]


BACKBONES: Mapping[str, Any] = MappingProxyType({row.name: row for row in [*_rows(), *_hub_rows()]})
_BY_HANDLE: Mapping[str, Any] = MappingProxyType({row.handle: row for row in BACKBONES.values() if hasattr(row, "handle")})


def source_of(cfg) -> ModuleType:
    """The module of the row's source (`applications` or `hub`)."""
    return importlib.import_module(f"{__package__}.{SOURCES[cfg.source]}")


def list_backbones(pattern: str = "") -> list[str]:
    """Sorted backbone names, filtered by an fnmatch `pattern` such as `"resnet*"`."""
    return sorted(n for n in BACKBONES if not pattern or fnmatch.fnmatch(n, pattern))


def get_backbone_cfg(name: str):
    """The registry row of `name`, or the row a prefixed reference (`hub:...`) makes; unknown names list the valid ones."""
    if name in BACKBONES:
        return BACKBONES[name]
    for prefix, make_row in PREFIXES.items():
        if name.startswith(prefix):
            row = make_row(name)
            # A handle the registry lists is that row (`hub:kaggle://.../dinov2_small/1` is `dinov2_small`).
            return _BY_HANDLE.get(getattr(row, "handle", None), row)
    message = unknown_name_message("model", name, list(BACKBONES))
    raise ConfigError(f"{message} Or pass a KerasHub preset as hub:/path/to/preset_folder.", field="model")


def resolve_size(cfg, size: int | None) -> int:
    """The input size to use: `size` checked by the row's source, or the row's default when `None`."""
    return source_of(cfg).resolve_size(cfg, size)


def resolve_pooling(cfg, pooling: str, layer: str | None = None) -> str:
    """The pooling the row's source will apply for `pooling` (checked; `"avg"` may name a source default)."""
    return source_of(cfg).resolve_pooling(cfg, pooling, layer)


def spec_row(cfg) -> dict[str, Any]:
    """The row as the feature key holds it (a KerasHub row: its preset's architecture and preprocessing)."""
    return source_of(cfg).spec_row(cfg)


def weights_identity(weights: str, cfg=None) -> str:
    """A string naming exactly which weights `weights` selects for the row `cfg` (default: a keras.applications row).

    `"imagenet"` names the row's published weights (`imagenet@keras-X` for
    keras.applications, `preset-sha256:...` of the preset's weights files
    for KerasHub), `"none"` random weights, and a file its sha256.
    """
    cfg = BACKBONES["mobilenet_v2"] if cfg is None else cfg
    return source_of(cfg).weights_identity(cfg, weights)


def preprocess_affine(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The row's preprocessing as `x @ kernel + bias` on RGB 0..255 (export writes it as a `Dense(3)`)."""
    return source_of(cfg).preprocess_affine(cfg)


def trainable_blocks(cfg, base) -> list | None:
    """The base's transformer blocks bottom to top, or `None` where fine-tuning counts layers with weights."""
    if cfg.source == "applications":
        return None
    return source_of(cfg).trainable_blocks(base, hub.family_of(hub.preset_folder(cfg))[1].block)


def build_extractor(
    cfg,
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
        weights: `"imagenet"` (the row's published weights), `"none"` or a weights file path.
        pooling: `"avg"`, `"max"` or `"none"` (keras.applications); `"cls"`,
            `"mean"`, `"cls+mean"` or `"embedding"` (KerasHub, as its family
            offers; `"avg"` picks the family's default). Defaults to `"avg"`.
        layer: name of the layer whose output is taken, or `None` for the
            last layer (keras.applications only). Defaults to `None`.
        precision: Keras dtype policy name. Defaults to `"float32"`.

    Returns:
        A `keras.Model` mapping `uint8` images `(batch, size, size, 3)` to
        features `(batch, dim)`, or `(batch, h, w, dim)` when `pooling` is
        `"none"`. Its preprocessing layer is named `"preprocess"`.

    Example:

    >>> model = build_extractor(get_backbone_cfg("mobilenet_v2"), size=96, weights="none")
    >>> model.output_shape
    (None, 1280)
    """
    from .._keras import import_keras

    keras = import_keras()
    source = source_of(cfg)
    pooling = source.resolve_pooling(cfg, pooling, layer)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        if weights == "none":
            # Seeded so that a resumed run continues with the same random model.
            keras.utils.set_random_seed(0)
        inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
        options = {"layer": layer} if cfg.source == "applications" else {}
        x = source.build_features(keras, cfg, inputs, size=size, weights=weights, pooling=pooling, **options)
        x = keras.layers.Activation("linear", dtype="float32", name="features")(x)
        model = keras.Model(inputs, x, name=f"{model_name(cfg.name)}_extractor")
        model.trainable = False
        return model
    finally:
        keras.config.set_dtype_policy(policy)


def describe_backbone(cfg) -> str:
    """One line of `bottleneck list`: name, source, default size, feature width and how it preprocesses or its licence."""
    if cfg.source == "applications":
        return f"{cfg.name:34} applications {cfg.default_size:4d} px (min {cfg.min_size}), preprocess: {cfg.module}"
    params = f"{cfg.params / 1e6:.0f}M params" if cfg.params else "params ?"
    return (f"{cfg.name:34} keras_hub    {cfg.default_size or 0:4d} px, {cfg.family} {cfg.feature_dim or '?'} features, "
            f"{params}, licence: {cfg.licence}")


def model_name(name: str) -> str:
    """`name` as a Keras model name: letters, digits and `_`, its last 60 characters, starting with a
    letter or digit (TensorFlow refuses a root name scope that starts with `_`, as a cut path may)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)[-60:].lstrip("_") or "model"


def unknown_name_message(what: str, name: str, valid: list[str]) -> str:
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
    n_replicas = getattr(model, "replicas", None) or _replicas_now()
    batch_size = -(-batch_size // n_replicas) * n_replicas
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        outputs.append(np.asarray(model.predict_on_batch(batch))[:n])
    return np.concatenate(outputs)
