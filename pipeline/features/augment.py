"""Augmented views: Keras preprocessing layers, per image deterministic, run batched.

A view is a pure function of (image content, ops, seed, view index), so a
re-run, a resumed run or a run on another machine extracts the same numbers
whatever the batch size or order. Keras' layers draw their random
parameters for a whole batch from one seed; here each image's parameters are
drawn with NumPy from a generator seeded by
sha256(image sha256, canonical ops, seed, view), and handed to each layer's
`transform_images` as its transformation, so the pixel work still runs on
the backend's device in one call per batch and op.

The transformation dicts follow the layers' own `get_random_transformation`
(Keras 3); `tests/test_augment.py` checks the keys and shapes against the
installed Keras, so a Keras that changes them fails a test, not silently.

Example:

```python
ops = parse_augment_ops("flip,rotation=0.1")
views = apply_view(images, digests, ops=ops, seed=0, view=1)  # uint8, like images
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

__all__ = ["DEFAULT_AUGMENT_OPS", "apply_view", "format_augment_ops", "parse_augment_ops"]

_FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def _flip(u, value, size):
    return {"flips": (u[:, 0] < 0.5).reshape(-1, 1, 1, 1)}


def _rotation(u, value, size):
    # RandomRotation's `_compute_affine_matrix` with only an angle, about the image centre.
    angle = np.deg2rad((2 * u[:, 0] - 1) * value * 360.0)
    cos, sin, c = np.cos(angle), np.sin(angle), 0.5 * (size - 1)
    zero = np.zeros_like(angle)
    matrix = [cos, -sin, c - c * cos + c * sin, sin, cos, c - c * sin - c * cos, zero, zero]
    return {"rotation_matrix": np.stack(matrix, axis=1).astype("float32")}


def _zoom(u, value, size):
    zoom = (1 + (2 * u[:, :1] - 1) * value).astype("float32")
    return {"height_zoom": zoom, "width_zoom": zoom}


def _translation(u, value, size):
    return {"translations": ((2 * u[:, :2] - 1) * value * size).astype("float32")}  # (x, y) in pixels


def _contrast(u, value, size):
    return {"contrast_factor": (1 + (2 * u[:, 0] - 1) * value).astype("float32").reshape(-1, 1, 1, 1)}


def _brightness(u, value, size):
    return {"rgb_delta": ((2 * u[:, 0] - 1) * value * 255.0).astype("float32").reshape(-1, 1, 1, 1)}


@dataclasses.dataclass(frozen=True)
class AugmentOpCfg:
    """One augmentation op: its Keras layer and how its parameters are drawn.

    Attributes:
        name: the op's name in `augment_ops`.
        layer: the `keras.layers` class name.
        layer_args: builds the layer's keyword arguments from the op's value.
        draws: uniform numbers drawn per image.
        transformation: `(draws (n, draws), value, size) -> dict`, the
            layer's transformation for n images.
        bounds: the open-closed range `(low, high]` of a numeric value;
            `None` for `flip`, whose value is a mode.
        default: the value of the op named without one.
    """

    name: str
    layer: str
    layer_args: Callable[[Any], dict[str, Any]]
    draws: int
    transformation: Callable[[np.ndarray, Any, int], dict[str, np.ndarray]]
    bounds: tuple[float, float] | None
    default: Any


AUGMENT_OPS = {
    op.name: op
    for op in (
        AugmentOpCfg("flip", "RandomFlip", lambda v: {"mode": v}, 1, _flip, None, "horizontal"),
        AugmentOpCfg("rotation", "RandomRotation", lambda v: {"factor": v}, 1, _rotation, (0.0, 0.5), 0.1),
        AugmentOpCfg("zoom", "RandomZoom", lambda v: {"height_factor": v}, 1, _zoom, (0.0, 0.9), 0.2),
        AugmentOpCfg("translation", "RandomTranslation", lambda v: {"height_factor": v, "width_factor": v}, 2,
                     _translation, (0.0, 1.0), 0.1),
        AugmentOpCfg("contrast", "RandomContrast", lambda v: {"factor": v}, 1, _contrast, (0.0, 1.0), 0.1),
        AugmentOpCfg("brightness", "RandomBrightness", lambda v: {"factor": v}, 1, _brightness, (0.0, 1.0), 0.1),
    )
}


def parse_augment_ops(text: str) -> tuple[tuple[str, Any], ...]:
    """Parses `augment_ops` into `((name, value), ...)`, in the order given.

    Args:
        text: comma-separated ops, each `name` or `name=value`, applied in
            order: `flip` (value `horizontal`, `vertical` or
            `horizontal_and_vertical`; defaults to `horizontal`),
            `rotation` (fraction of a full turn, in (0, 0.5]), `zoom`
            (in (0, 0.9]), `translation` (fraction of the size, in (0, 1]),
            `contrast` and `brightness` (in (0, 1]). Example:
            `"flip,rotation=0.1,zoom=0.2"`.

    Returns:
        A tuple of `(name, value)`; `format_augment_ops` gives its canonical text.

    Raises:
        ConfigError: an unknown or repeated op, or a value out of range
            (`field="augment_ops"`).
    """
    ops = []
    for item in str(text).split(","):
        name, _, raw = (part.strip() for part in item.partition("="))
        ops.append((name, _parse_value(name, raw, text)))
    names = [name for name, _ in ops]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        _refuse(text, f"names {', '.join(map(repr, twice))} more than once")
    return tuple(ops)


def format_augment_ops(ops: Sequence[tuple[str, Any]]) -> str:
    """The canonical text of parsed ops: every value written out, so equal ops have equal text."""
    return ",".join(f"{name}={value}" for name, value in ops)


def _parse_value(name: str, raw: str, text: str):
    op = AUGMENT_OPS.get(name)
    if op is None:
        _refuse(text, f"has an unknown op {name!r}; ops are {', '.join(AUGMENT_OPS)}")
    if not raw:
        return op.default
    if op.bounds is None:
        if raw not in _FLIP_MODES:
            _refuse(text, f"gives flip={raw!r}; flip is one of {', '.join(_FLIP_MODES)}")
        return raw
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    low, high = op.bounds
    if not low < value <= high:
        _refuse(text, f"gives {name}={raw!r}; {name} must be a number in ({low:g}, {high:g}]")
    return value


def _refuse(text: str, problem: str):
    raise ConfigError(
        f"`augment_ops` {problem}. Received: augment_ops={text!r}. Pass comma-separated ops such as "
        f"{DEFAULT_AUGMENT_OPS!r} (the default).",
        field="augment_ops",
    )


def view_draws(digests: Sequence[str], *, ops, seed: int, view: int) -> np.ndarray:
    """Uniform draws `(n, total draws of ops)` in [0, 1), each row a function of its image alone."""
    canonical = format_augment_ops(ops)
    width = sum(AUGMENT_OPS[name].draws for name, _ in ops)
    rows = []
    for digest in digests:
        key = hashlib.sha256(f"{digest}\0{canonical}\0{seed}\0{view}".encode()).digest()
        rows.append(np.random.default_rng(int.from_bytes(key[:16], "little")).random(width))
    return np.asarray(rows, dtype="float64").reshape(len(rows), width)


def apply_view(images: np.ndarray, digests: Sequence[str], *, ops, seed: int, view: int) -> np.ndarray:
    """Applies view `view` of `ops` to a batch of uint8 images, on the Keras backend's device.

    Args:
        images: uint8 array `(n, size, size, 3)`.
        digests: the sha256 of each image's file, in the batch's order.
        ops: parsed ops, from `parse_augment_ops`.
        seed: int >= 0, the augmentation seed.
        view: int >= 1, the view's index.

    Returns:
        uint8 array shaped like `images` (rounded, as a saved augmented
        image would be, so the extractor takes the same input as for clean images).
    """
    keras = import_keras()
    draws = view_draws(digests, ops=ops, seed=seed, view=view)
    x = keras.ops.convert_to_tensor(images, dtype="float32")
    start = 0
    for (name, value), layer in zip(ops, _layers(tuple(ops))):
        op = AUGMENT_OPS[name]
        transformation = op.transformation(draws[:, start:start + op.draws], value, images.shape[1])
        start += op.draws
        x = layer.transform_images(x, {k: keras.ops.convert_to_tensor(v) for k, v in transformation.items()})
    out = keras.ops.convert_to_numpy(x)
    return np.clip(np.round(out), 0, 255).astype("uint8")


@functools.lru_cache(maxsize=8)
def _layers(ops: tuple[tuple[str, Any], ...]) -> list:
    keras = import_keras()
    # float32 whatever the global dtype policy (mixed precision is the extractor's business).
    return [getattr(keras.layers, AUGMENT_OPS[name].layer)(**AUGMENT_OPS[name].layer_args(value), dtype="float32")
            for name, value in ops]
