"""The `keras_hub` backbone source: KerasHub vision encoders as frozen feature extractors.

A row names a KerasHub preset: a built-in preset the registry knows
(`dinov2_small`), or `hub:` and a preset handle (`hub:/path/to/folder`,
`hub:kaggle://keras/dinov2/keras/dinov2_base/1`, `hub:hf://org/name`).
Named and `kaggle://` presets are fetched through `kagglehub`'s cache,
`hf://` ones through `huggingface_hub`'s; nothing here imports Keras until
a model is built, so keying and listing stay light.

What a preset holds decides the rest, read from its files: the family
(`FAMILIES`, keyed by the class in `config.json`) says how tokens are
pooled, whether the position embeddings follow the input size and where
the transformer blocks are; `image_converter.json` gives the per-channel
`scale` and `offset` applied inside the model (the reference decoder has
already squashed the image to SIZE, so the converter's own resize is not
used); the weights identity is the sha256 of the weights file(s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..config.features import LAST_BLOCKS_POOLING
from ..errors import ConfigError, WeightsUnavailableError
from ..store.content import file_sha256

SOURCE = "keras_hub"
PREFIX = "hub:"
WEIGHTS_FILE = "model.weights.h5"
SHARDED_INDEX = "model.weights.json"


@dataclasses.dataclass(frozen=True)
class Family:
    """How one KerasHub model class is used as a frozen encoder.

    Args:
        name: short family name, as `bottleneck list` shows it.
        tower: attribute of the loaded backbone holding the image tower, or
            `""` when the backbone is the tower.
        block: class name of its transformer blocks (fine-tuning unfreezes the top ones).
        poolings: the poolings it offers; the first is its default.
        interpolates: its position embeddings follow the input size (any
            multiple of the patch size); otherwise only the preset's size works.
        licence: the weights' licence, as published.
        block_outputs: each block's tokens are reachable (KerasHub's
            `pyramid_outputs`), so the class tokens of the last N blocks
            (`cls_lastN`) are offered.
    """

    name: str
    tower: str
    block: str
    poolings: tuple[str, ...]
    interpolates: bool
    licence: str
    block_outputs: bool = False


# Keyed by the class name in a preset's config.json.
FAMILIES: dict[str, Family] = {
    "DINOV2Backbone": Family("dinov2", "", "DINOV2Layer", ("cls+mean", "cls", "mean"), True, "Apache-2.0",
                             block_outputs=True),
    "DINOV3Backbone": Family("dinov3", "", "DINOV3Layer", ("cls+mean", "cls", "mean"), True,
                             "DINOv3 License (gated)", block_outputs=True),
    "SigLIPBackbone": Family("siglip", "vision_encoder", "SigLIPEncoderLayer", ("embedding", "mean"), False,
                             "Apache-2.0"),
    "CLIPBackbone": Family("clip", "vision_encoder", "CLIPEncoderLayer", ("embedding", "cls", "mean", "cls+mean"),
                           False, "MIT"),
    "ViTBackbone": Family("vit", "", "ViTEncoderBlock", ("cls", "mean", "cls+mean"), False, "Apache-2.0"),
}


@dataclasses.dataclass(frozen=True)
class HubPresetCfg:
    """One KerasHub row: a preset and what the listing shows of it.

    Args:
        name: registry name (`dinov2_small`) or `hub:<handle>`.
        handle: the preset: a `kaggle://` or `hf://` handle or a local folder.
        family: `Family.name`, or `""` until the preset's files say.
        default_size: input size when none is given (`None`: the preset's own).
        feature_dim: features per image with the default pooling, for the listing.
        params: parameter count of the whole preset, for the listing.
        licence: the weights' licence, for the listing.
    """

    name: str
    handle: str
    family: str = ""
    default_size: int | None = None
    feature_dim: int | None = None
    params: int | None = None
    licence: str = ""
    source: str = SOURCE

    @property
    def min_size(self) -> int:
        return 14


def row_for(reference: str) -> HubPresetCfg:
    """The row of `hub:<handle>`; a local folder is made absolute."""
    handle = reference[len(PREFIX):]
    if not handle:
        raise ConfigError(f"`model` {reference!r} names no preset. Pass hub:/path/to/preset_folder, "
                          "hub:kaggle://..., or hub:hf://...", field="model")
    if "://" not in handle:
        handle = os.path.abspath(handle)
    return HubPresetCfg(reference, handle)


# ---------------------------------------------------------------------------- the preset's files


def preset_folder(cfg: HubPresetCfg) -> Path:
    """The local folder of the row's preset, fetched into the hub's cache the first time."""
    handle = cfg.handle
    scheme, _, rest = handle.partition("://")
    if not rest:
        folder = Path(handle)
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"'{folder}' is not a KerasHub preset folder: it has no config.json. Pass a folder written by "
                "`save_to_preset` or downloaded with kagglehub.", field="model")
        return folder
    try:
        if scheme == "kaggle":
            import kagglehub

            return Path(kagglehub.model_download(rest))
        if scheme == "hf":
            import huggingface_hub

            return Path(huggingface_hub.snapshot_download(rest))
    except Exception as e:  # noqa: BLE001 - network, auth and missing-package errors alike
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise WeightsUnavailableError(
            f"Could not get KerasHub preset {cfg.name!r} ({handle}): {first}. Offline, download it once "
            f"elsewhere (e.g. kagglehub.model_download('{rest}')) and pass the folder: --model hub:/path/to/folder.",
            field="model",
        ) from None
    raise ConfigError(f"Unknown preset scheme {scheme!r} in {handle!r}; use kaggle://, hf:// or a folder.",
                      field="model")


def _json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"Cannot read '{path}' of the KerasHub preset: {e}.", field="model") from None
    if not isinstance(value, dict):
        raise ConfigError(f"'{path}' of the KerasHub preset is not a JSON object.", field="model")
    return value


def family_of(folder: Path) -> tuple[str, Family]:
    """The preset's model class and its family row."""
    class_name = _json(folder, "config.json").get("class_name")
    if class_name not in FAMILIES:
        raise ConfigError(
            f"KerasHub preset '{folder}' holds a {class_name!r}; the image encoders this product can use are "
            f"{', '.join(sorted(FAMILIES))}.", field="model")
    return class_name, FAMILIES[class_name]


def converter(folder: Path) -> dict[str, Any]:
    """The preset's per-channel preprocessing, `x * scale + offset` on 0..255 pixels, and its native size."""
    config = _json(folder, "image_converter.json").get("config", {})

    def channels(value, neutral):
        value = neutral if value is None else value
        value = [value] * 3 if isinstance(value, (int, float)) else value
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
            raise ConfigError(f"image_converter.json of '{folder}' has an unusable scale/offset {value!r}.",
                              field="model")
        return [float(v) for v in value]

    size = config.get("image_size")
    return {"scale": channels(config.get("scale"), 1.0), "offset": channels(config.get("offset"), 0.0),
            "size": int(size[0]) if isinstance(size, list) and size and isinstance(size[0], int) else None}


def architecture(folder: Path) -> dict[str, Any]:
    """The tower's patch size and native input size, from config.json."""
    config = _json(folder, "config.json")["config"]
    tower = config.get("vision_encoder", {}).get("config", config)
    patch = tower.get("patch_size", 16)
    patch = patch[0] if isinstance(patch, list) else patch
    shape = tower.get("image_shape") or [224]
    return {"patch": int(patch), "size": int(shape[0]), "blocks": int(tower.get("num_layers", 0))}


def weights_files(folder: Path) -> list[Path]:
    """The preset's weights files, each checked to be a whole HDF5 file."""
    import h5py

    index = folder / SHARDED_INDEX
    if (folder / WEIGHTS_FILE).exists() or not index.exists():
        files = [folder / WEIGHTS_FILE]
    else:
        names = set()
        for value in _json(folder, SHARDED_INDEX).get("weight_map", {}).values():
            names.update(value if isinstance(value, list) else [value])
        files = [index] + [folder / name for name in sorted(names)]
    for path in files:
        if not path.is_file():
            raise WeightsUnavailableError(
                f"KerasHub preset '{folder}' lacks its weights file '{path}'. Copy the whole preset folder again; "
                "a preset is never used with random weights unless `weights='none'` says so.", field="model")
        if path.suffix == ".h5":
            try:
                with h5py.File(path, "r"):
                    pass
            except OSError as e:
                raise WeightsUnavailableError(
                    f"Weights file '{path}' of the KerasHub preset is damaged or truncated ({' '.join(str(e).split())[:120]}). "
                    "Copy the preset folder again.", field="model") from None
    return files


def _sha256(paths: list[Path]) -> str:
    """One file's sha256; for a sharded weights set, the sha256 of its files' sha256s in order."""
    digests = [file_sha256(path) for path in paths]
    return digests[0] if len(digests) == 1 else hashlib.sha256(" ".join(digests).encode()).hexdigest()


# ---------------------------------------------------------------------------- the source's contract


def spec_row(cfg: HubPresetCfg) -> dict[str, Any]:
    """What of the row goes into the feature key: the architecture and preprocessing, by content.

    A local folder's path is left out (moving it changes nothing); its
    config.json is hashed instead, as is every named preset's.
    """
    folder = preset_folder(cfg)
    class_name, _ = family_of(folder)
    conv = converter(folder)
    return {
        "source": SOURCE,
        "preset": None if "://" not in cfg.handle and cfg.name.startswith(PREFIX) else cfg.handle,
        "class": class_name,
        "config_sha256": _sha256([folder / "config.json"]),
        "scale": conv["scale"],
        "offset": conv["offset"],
    }


def weights_identity(cfg: HubPresetCfg, weights: str) -> str:
    """`"imagenet"` (the default) names the preset's own weights: their sha256, `preset-sha256:...`."""
    if weights == "none":
        return "none"
    if weights == "imagenet":
        return f"preset-sha256:{_sha256(weights_files(preset_folder(cfg)))}"
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Weights file '{weights}' does not exist. For a KerasHub preset leave `weights` at its default "
            "(the preset's own weights), or pass a weights file of its image tower (a fine-tuned base).",
            field="weights")
    return f"sha256:{_sha256([path])}"


def resolve_size(cfg: HubPresetCfg, size: int | None) -> int:
    """The row's default size, or `size` checked against the family's rule."""
    folder = preset_folder(cfg)
    _, family = family_of(folder)
    arch = architecture(folder)
    native = cfg.default_size or converter(folder)["size"] or arch["size"]
    if size is None:
        return native if family.interpolates else arch["size"]
    if not family.interpolates and size != arch["size"]:
        raise ConfigError(
            f"`size` must be {arch['size']} for {cfg.name}: {family.name} position embeddings are fixed at the "
            f"preset's input size. Received: size={size}. Leave size unset.", field="size")
    if size < arch["patch"] or size % arch["patch"]:
        below = max(arch["patch"], size - size % arch["patch"])
        raise ConfigError(
            f"`size` must be a multiple of the patch size {arch['patch']} for {cfg.name}. Received: size={size}. "
            f"Pass size={below} or {below + arch['patch']}.", field="size")
    return size


def resolve_pooling(cfg: HubPresetCfg, pooling: str, layer: str | None) -> str:
    """`pooling` checked against the family, in its one canonical spelling.

    `"avg"` (the default) is the family's recommended pooling, and
    `cls_last1[+mean]` is `cls[+mean]`, so that one pooling has one key and
    one folder name whichever way it was written.
    """
    folder = preset_folder(cfg)
    _, family = family_of(folder)
    if layer is not None:
        raise ConfigError(f"`layer` is not offered for KerasHub encoders. Received: layer={layer!r}. "
                          "Leave it unset and pick a `pooling`.", field="layer")
    chosen = family.poolings[0] if pooling == "avg" else pooling
    tokens, blocks = split_pooling(chosen)
    if blocks > 1 and tokens in family.poolings:
        available = architecture(folder)["blocks"]
        if not family.block_outputs:
            raise ConfigError(
                f"`pooling` {pooling!r} (the class tokens of the last {blocks} blocks) is offered for DINOv2 and "
                f"DINOv3 encoders; this is a {family.name} encoder. Pass one of "
                f"{', '.join(map(repr, family.poolings))}.", field="pooling")
        if blocks > available:
            raise ConfigError(
                f"`pooling` {pooling!r} asks for the last {blocks} blocks of {cfg.name}, which has {available}. "
                f"Pass cls_last{available} or fewer.", field="pooling")
        return chosen
    if tokens not in family.poolings:
        raise ConfigError(
            f"`pooling` must be one of {', '.join(map(repr, family.poolings))} for a {family.name} encoder "
            f"('avg' picks {family.poolings[0]!r}). Received: pooling={pooling!r}", field="pooling")
    return tokens


def split_pooling(pooling: str) -> tuple[str, int]:
    """`"cls_last4+mean"` -> `("cls+mean", 4)`; a pooling without `_lastN` -> `(pooling, 1)`."""
    match = LAST_BLOCKS_POOLING.fullmatch(pooling)
    if match is None:
        return pooling, 1
    return ("cls+mean" if match[2] else "cls"), int(match[1])


def preprocess_affine(cfg: HubPresetCfg):
    """The converter's preprocessing as `x @ kernel + bias`, as export needs it."""
    import numpy as np

    conv = converter(preset_folder(cfg))
    return np.diag(conv["scale"]).astype(np.float32), np.asarray(conv["offset"], np.float32)


def build_features(keras, cfg: HubPresetCfg, images, *, size: int, weights: str, pooling: str):
    """Preprocessing, the frozen image tower and pooling, applied to uint8 `images`; returns features."""
    import keras_hub  # noqa: F401 - registers the classes the preset's config names

    folder = preset_folder(cfg)
    class_name, family = family_of(folder)
    pooling = resolve_pooling(cfg, pooling, None)
    if weights == "imagenet":
        weights_files(folder)  # a missing or truncated file is refused before Keras reads it
    backbone = _load(keras, folder, size, load_weights=weights == "imagenet")
    pooling, blocks = split_pooling(pooling)
    base = _base(keras, backbone, family, pooling, name=f"{family.name}_base", blocks=blocks)
    if weights not in ("imagenet", "none"):
        base.load_weights(weights)
    conv = converter(folder)
    x = keras.layers.Rescaling(conv["scale"], conv["offset"], dtype="float32", name="preprocess")(images)
    x = base(x)
    if pooling == "embedding":
        return x
    # With `blocks` > 1 the base gives the lower blocks' tokens first, bottom up (DINOv2's order).
    *below, x = x if blocks > 1 else [x]
    prefix = _prefix_tokens(backbone, family)
    parts = []
    if pooling in ("cls", "cls+mean"):
        for i, tokens in enumerate([*below, x]):
            suffix = "" if tokens is x else f"_{i}"
            token = keras.layers.Cropping1D((0, tokens.shape[1] - 1), name=f"cls_token{suffix}")(tokens)
            parts.append(keras.layers.Flatten(name=f"cls{suffix}")(token))
    if pooling in ("mean", "cls+mean"):
        patches = keras.layers.Cropping1D((prefix, 0), name="patch_tokens")(x)
        parts.append(keras.layers.GlobalAveragePooling1D(name="mean")(patches))
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="cls_mean")(parts)


def _load(keras, folder: Path, size: int, *, load_weights: bool):
    import keras_hub

    config = _json(folder, "config.json")["config"]
    if "vision_encoder" in config:  # image-text models: the image tower's input size lives in it
        loaded = keras_hub.models.Backbone.from_preset(str(folder), load_weights=load_weights)
        return loaded
    return keras_hub.models.Backbone.from_preset(str(folder), load_weights=load_weights, image_shape=(size, size, 3))


def _base(keras, backbone, family: Family, pooling: str, *, name: str, blocks: int = 1):
    """The nested model fine-tuning trains: the tower to its tokens, or to its pooled embedding.

    With `blocks` > 1 its outputs are the tokens of the `blocks - 1`
    blocks below the last, bottom up, each through the final LayerNorm as
    DINOv2's linear evaluation does, then the final tokens.
    """
    tower = getattr(backbone, family.tower) if family.tower else backbone
    inputs = tower.inputs[0]
    if pooling != "embedding":
        out = tower.post_layer_norm.output if family.name == "siglip" else tower.outputs[0]
    elif family.name == "clip":
        out = backbone.vision_projection(backbone.vision_pooler(tower.outputs[0]))
    else:
        out = tower.outputs[0]
    if blocks > 1:
        # "stage1" .. "stageL": each block's output before the final norm (beside "stem", the embeddings).
        stages = backbone.pyramid_outputs
        top = sum(1 for key in stages if key.startswith("stage"))
        below = [stages[f"stage{top - i}"] for i in range(blocks - 1, 0, -1)]
        out = [*(backbone.layernorm(tokens) for tokens in below), out]
    return keras.Model(inputs, out, name=name)


def _prefix_tokens(backbone, family: Family) -> int:
    """Class and register tokens ahead of the patch tokens."""
    tower = getattr(backbone, family.tower) if family.tower else backbone
    if family.name == "siglip":
        return 0
    return 1 + int(getattr(tower, "num_register_tokens", 0) or 0)


def trainable_blocks(base, block_class: str) -> list:
    """The base's transformer blocks, bottom to top."""
    blocks = [layer for layer in base._flatten_layers(include_self=False) if type(layer).__name__ == block_class]
    # The walk's order is not the model's: sort by where each block's weights sit in the base.
    position = {id(v): i for i, v in enumerate(base.weights)}
    return sorted(blocks, key=lambda block: min(position[id(v)] for v in block.weights))
