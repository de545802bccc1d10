"""Augmented views: per image deterministic, run batched.

A view is a pure function of (image content, ops, seed, view index), so a
re-run, a resumed run or a run on another machine extracts the same numbers
whatever the batch size or order. Each image's random parameters are drawn
with NumPy from a generator seeded by sha256(image sha256, canonical ops,
seed, view).

Ops come in three kinds (`AugmentOpCfg.kind`):

- `"decoded"`: `crop` cuts a random part of the *decoded* image, before
  its resize to the model's size, so a crop keeps the detail of the file
  (`decode.load_decoded`), and resizes it as the decoder does.
- `"layer"`: a Keras preprocessing layer (`flip`, `rotate`, and the older
  `rotation`, `zoom`, `translation`, `contrast`, `brightness`), handed each
  image's drawn parameters as its transformation, so the pixel work still
  runs on the backend's device in one call per batch and op. The
  transformation dicts follow the layers' own `get_random_transformation`
  (Keras 3); `tests/test_augment.py` checks the keys and shapes against the
  installed Keras, so a Keras that changes them fails a test, not silently.
- `"pixels"`: NumPy arithmetic on the batch (`jitter`).

The default ops are ones a photo survives: a crop of 60-100% of the area,
a horizontal flip, a rotation of at most 10 degrees and a mild colour
jitter. The older ops stay available by name; a view set's folder and key
hold its canonical ops text, so sets made with them keep their keys.

Example:

```python
ops = parse_augment_ops("crop=0.6-1.0,flip,rotate=10deg,jitter=0.1")
views = apply_view(images, digests, ops=ops, seed=0, view=1, decoded=decoded)  # uint8, like images
```
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Any, Callable, Sequence

import numpy as np

from .._keras import import_keras
from ..config import DEFAULT_AUGMENT_OPS
from ..errors import ConfigError
from .decode import resize_squash

__all__ = ["DEFAULT_AUGMENT_OPS", "apply_view", "decoded_size", "format_augment_ops", "needs_decoded",
           "parse_augment_ops"]

_FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
# The aspect ratios of a crop, relative to the image's (as in Inception's and torchvision's random resized crop).
_CROP_RATIOS = (3 / 4, 4 / 3)


def _flip(u, value, size):
    return {"flips": (u[:, 0] < 0.5).reshape(-1, 1, 1, 1)}


def _rotation(u, value, size):
    # RandomRotation's `_compute_affine_matrix` with only an angle, about the image centre.
    angle = np.deg2rad((2 * u[:, 0] - 1) * value * 360.0)
    cos, sin, c = np.cos(angle), np.sin(angle), 0.5 * (size - 1)
    zero = np.zeros_like(angle)
    matrix = [cos, -sin, c - c * cos + c * sin, sin, cos, c - c * sin - c * cos, zero, zero]
    return {"rotation_matrix": np.stack(matrix, axis=1).astype("float32")}


def _rotate(u, degrees, size):
    return _rotation(u, degrees / 360.0, size)


def _zoom(u, value, size):
    zoom = (1 + (2 * u[:, :1] - 1) * value).astype("float32")
    return {"height_zoom": zoom, "width_zoom": zoom}


def _translation(u, value, size):
    return {"translations": ((2 * u[:, :2] - 1) * value * size).astype("float32")}  # (x, y) in pixels


def _contrast(u, value, size):
    return {"contrast_factor": (1 + (2 * u[:, 0] - 1) * value).astype("float32").reshape(-1, 1, 1, 1)}


def _brightness(u, value, size):
    return {"rgb_delta": ((2 * u[:, 0] - 1) * value * 255.0).astype("float32").reshape(-1, 1, 1, 1)}


def _jitter(x: np.ndarray, u: np.ndarray, value: float) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by a factor in [1 - value, 1 + value]."""
    factors = (1 + (2 * u - 1) * value).astype("float32").reshape(-1, 3, 1, 1, 1)
    x = x * factors[:, 0]
    grey = x @ np.array([0.299, 0.587, 0.114], "float32")  # ITU-R 601 luma, (n, h, w)
    mean = grey.mean(axis=(1, 2)).reshape(-1, 1, 1, 1)
    x = (x - mean) * factors[:, 1] + mean
    grey = (x @ np.array([0.299, 0.587, 0.114], "float32"))[..., None]
    return np.clip((x - grey) * factors[:, 2] + grey, 0, 255)


def crop_box(u: np.ndarray, area: tuple[float, float], height: int, width: int) -> tuple[int, int, int, int]:
    """`(top, left, rows, columns)` of a crop from 4 draws: area fraction, log aspect ratio, x, y."""
    fraction = area[0] + u[0] * (area[1] - area[0])
    low, high = np.log(_CROP_RATIOS)
    ratio = math.exp(low + u[1] * (high - low))
    w, h = min(1.0, math.sqrt(fraction * ratio)), min(1.0, math.sqrt(fraction / ratio))
    columns, rows = max(1, round(w * width)), max(1, round(h * height))
    return round(u[3] * (height - rows)), round(u[2] * (width - columns)), rows, columns


def _crop(decoded: np.ndarray, u: np.ndarray, area, size: int) -> np.ndarray:
    top, left, rows, columns = crop_box(u, area, *decoded.shape[:2])
    return resize_squash(np.ascontiguousarray(decoded[top:top + rows, left:left + columns]), size)


# -- values: parsed from and written as text a user reads -------------------------------------------


def _number(low: float, high: float, unit: str = ""):
    """A parser of a number in `(low, high]`, written with `unit` after it."""

    def parse(raw: str) -> float:
        text = raw[: -len(unit)] if unit and raw.endswith(unit) else None if unit else raw
        try:
            value = float(text) if text is not None else math.nan
        except ValueError:
            value = math.nan
        if not low < value <= high:
            raise ValueError(f"a number in ({low:g}, {high:g}]{' followed by ' + repr(unit) if unit else ''}")
        return value

    return parse


def _flip_mode(raw: str) -> str:
    if raw not in _FLIP_MODES:
        raise ValueError(f"one of {', '.join(_FLIP_MODES)}")
    return raw


def _area_range(raw: str) -> tuple[float, float]:
    low, dash, high = raw.partition("-")
    try:
        area = (float(low), float(high) if dash else 1.0)
    except ValueError:
        area = (math.nan, math.nan)
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError("fractions of the image's area LOW-HIGH with 0 < LOW <= HIGH <= 1, e.g. 0.6-1.0")
    return area


@dataclasses.dataclass(frozen=True)
class AugmentOpCfg:
    """One augmentation op: how its value reads and how its parameters are drawn and applied.

    Attributes:
        name: the op's name in `augment_ops`.
        kind: `"decoded"` (works on the decoded image before the resize),
            `"layer"` (a Keras layer) or `"pixels"` (NumPy on the batch).
        draws: uniform numbers drawn per image.
        parse: the value from its text; raises `ValueError` saying what
            is allowed.
        default: the value of the op named without one.
        text: the value's canonical text. Defaults to `str`.
        layer: the `keras.layers` class name (`"layer"` ops).
        layer_args: the layer's keyword arguments from the op's value.
        transformation: `(draws (n, draws), value, size) -> dict`, the
            layer's transformation for n images (`"layer"` ops).
        pixels: `(float32 images, draws, value) -> images` (`"pixels"` ops).
    """

    name: str
    kind: str
    draws: int
    parse: Callable[[str], Any]
    default: Any
    text: Callable[[Any], str] = str
    layer: str | None = None
    layer_args: Callable[[Any], dict[str, Any]] | None = None
    transformation: Callable[[np.ndarray, Any, int], dict[str, np.ndarray]] | None = None
    pixels: Callable[[np.ndarray, np.ndarray, Any], np.ndarray] | None = None


def _layer_op(name, layer, layer_args, draws, transformation, parse, default, text=str):
    return AugmentOpCfg(name, "layer", draws, parse, default, text, layer, layer_args, transformation)


AUGMENT_OPS = {
    op.name: op
    for op in (
        AugmentOpCfg("crop", "decoded", 4, _area_range, (0.6, 1.0), text=lambda v: f"{v[0]}-{v[1]}"),
        _layer_op("flip", "RandomFlip", lambda v: {"mode": v}, 1, _flip, _flip_mode, "horizontal"),
        _layer_op("rotate", "RandomRotation", lambda v: {"factor": v / 360.0}, 1, _rotate,
                  _number(0.0, 180.0, "deg"), 10.0, text=lambda v: f"{v:g}deg"),
        AugmentOpCfg("jitter", "pixels", 3, _number(0.0, 1.0), 0.1, pixels=_jitter),
        # The older ops: values are Keras layer factors (`rotation` is a fraction of a full turn).
        _layer_op("rotation", "RandomRotation", lambda v: {"factor": v}, 1, _rotation, _number(0.0, 0.5), 0.1),
        _layer_op("zoom", "RandomZoom", lambda v: {"height_factor": v}, 1, _zoom, _number(0.0, 0.9), 0.2),
        _layer_op("translation", "RandomTranslation", lambda v: {"height_factor": v, "width_factor": v}, 2,
                  _translation, _number(0.0, 1.0), 0.1),
        _layer_op("contrast", "RandomContrast", lambda v: {"factor": v}, 1, _contrast, _number(0.0, 1.0), 0.1),
        _layer_op("brightness", "RandomBrightness", lambda v: {"factor": v}, 1, _brightness, _number(0.0, 1.0), 0.1),
    )
}


def parse_augment_ops(text: str) -> tuple[tuple[str, Any], ...]:
    """Parses `augment_ops` into `((name, value), ...)`, in the order given.

    Args:
        text: comma-separated ops, each `name` or `name=value`, applied in
            order: `crop` (a random part of `LOW-HIGH` of the image's area,
            aspect 3:4 to 4:3, cut from the decoded image before its resize,
            so it must come first; defaults to `0.6-1.0`), `flip` (value
            `horizontal`, `vertical` or `horizontal_and_vertical`; defaults
            to `horizontal`), `rotate` (at most this many degrees either
            way, e.g. `10deg`, in (0, 180]; defaults to `10deg`), `jitter`
            (brightness, contrast and saturation each scaled by at most
            1 +- this, in (0, 1]; defaults to `0.1`). The older Keras-factor
            ops: `rotation` (fraction of a full turn, in (0, 0.5]), `zoom`
            (in (0, 0.9]), `translation` (fraction of the size, in (0, 1]),
            `contrast` and `brightness` (in (0, 1]). Example:
            `"crop=0.6-1.0,flip=horizontal,rotate=10deg,jitter=0.1"`.

    Returns:
        A tuple of `(name, value)`; `format_augment_ops` gives its canonical text.

    Raises:
        ConfigError: an unknown or repeated op, a value out of range, or
            `crop` after another op (`field="augment_ops"`).
    """
    ops = []
    for item in str(text).split(","):
        name, _, raw = (part.strip() for part in item.partition("="))
        ops.append((name, _parse_value(name, raw, text)))
    names = [name for name, _ in ops]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        _refuse(text, f"names {', '.join(map(repr, twice))} more than once")
    if "crop" in names[1:]:
        _refuse(text, "names crop after another op; crop cuts the decoded image before any other op, so name it first")
    return tuple(ops)


def format_augment_ops(ops: Sequence[tuple[str, Any]]) -> str:
    """The canonical text of parsed ops: every value written out, so equal ops have equal text."""
    return ",".join(f"{name}={AUGMENT_OPS[name].text(value)}" for name, value in ops)


def _parse_value(name: str, raw: str, text: str):
    op = AUGMENT_OPS.get(name)
    if op is None:
        _refuse(text, f"has an unknown op {name!r}; ops are {', '.join(AUGMENT_OPS)}")
    if not raw:
        return op.default
    try:
        return op.parse(raw)
    except ValueError as e:
        _refuse(text, f"gives {name}={raw!r}; {name} must be {e}")


def _refuse(text: str, problem: str):
    raise ConfigError(
        f"`augment_ops` {problem}. Received: augment_ops={text!r}. Pass comma-separated ops such as "
        f"{DEFAULT_AUGMENT_OPS!r} (the default).",
        field="augment_ops",
    )


def needs_decoded(ops) -> bool:
    """Whether `apply_view` needs the decoded images before their resize (the ops crop)."""
    return any(AUGMENT_OPS[name].kind == "decoded" for name, _ in ops)


def decoded_size(ops, size: int) -> int:
    """The size to decode at (`decode.load_decoded`) so that the smallest crop still has `size` pixels a side."""
    smallest = min((value[0] for name, value in ops if name == "crop"), default=1.0)
    return math.ceil(size / math.sqrt(smallest * _CROP_RATIOS[0]))


def view_draws(digests: Sequence[str], *, ops, seed: int, view: int) -> np.ndarray:
    """Uniform draws `(n, total draws of ops)` in [0, 1), each row a function of its image alone."""
    canonical = format_augment_ops(ops)
    width = sum(AUGMENT_OPS[name].draws for name, _ in ops)
    rows = []
    for digest in digests:
        key = hashlib.sha256(f"{digest}\0{canonical}\0{seed}\0{view}".encode()).digest()
        rows.append(np.random.default_rng(int.from_bytes(key[:16], "little")).random(width))
    return np.asarray(rows, dtype="float64").reshape(len(rows), width)


def apply_view(
    images: np.ndarray, digests: Sequence[str], *, ops, seed: int, view: int, decoded: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """Applies view `view` of `ops` to a batch of uint8 images.

    Args:
        images: uint8 array `(n, size, size, 3)`, the decoded and resized images.
        digests: the sha256 of each image's file, in the batch's order.
        ops: parsed ops, from `parse_augment_ops`.
        seed: int >= 0, the augmentation seed.
        view: int >= 1, the view's index.
        decoded: the same images before their resize, uint8 `(h, w, 3)`
            each, from `decode.load_decoded(path, decoded_size(ops, size))`;
            needed when `needs_decoded(ops)`. Defaults to `None`.

    Returns:
        uint8 array shaped like `images` (rounded, as a saved augmented
        image would be, so the extractor takes the same input as for clean images).

    Raises:
        ValueError: the ops crop and `decoded` is missing or of another length.
    """
    draws = view_draws(digests, ops=ops, seed=seed, view=view)
    size = images.shape[1]
    x: Any = images
    start = 0
    for (name, value), layer in zip(ops, _layers(tuple(ops))):
        op = AUGMENT_OPS[name]
        u = draws[:, start:start + op.draws]
        start += op.draws
        if op.kind == "decoded":
            if decoded is None or len(decoded) != len(images):
                raise ValueError(f"`decoded` must hold the {len(images)} images before their resize for op {name!r}.")
            x = np.stack([_crop(d, row, value, size) for d, row in zip(decoded, u)]) if len(images) else images
        elif op.kind == "pixels":
            x = op.pixels(_as_numpy(x), u, value)
        else:
            keras = import_keras()
            tensors = {k: keras.ops.convert_to_tensor(v) for k, v in op.transformation(u, value, size).items()}
            x = layer.transform_images(keras.ops.convert_to_tensor(_as_numpy(x)) if isinstance(x, np.ndarray) else x,
                                       tensors)
    return np.clip(np.round(_as_numpy(x)), 0, 255).astype("uint8")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype("float32", copy=False)
    return import_keras().ops.convert_to_numpy(x).astype("float32", copy=False)


@functools.lru_cache(maxsize=8)
def _layers(ops: tuple[tuple[str, Any], ...]) -> list:
    """One Keras layer per `"layer"` op (`None` for the others)."""
    if not any(AUGMENT_OPS[name].kind == "layer" for name, _ in ops):
        return [None] * len(ops)
    keras = import_keras()
    # float32 whatever the global dtype policy (mixed precision is the extractor's business).
    return [getattr(keras.layers, op.layer)(**op.layer_args(value), dtype="float32") if op.kind == "layer" else None
            for op, value in ((AUGMENT_OPS[name], value) for name, value in ops)]
