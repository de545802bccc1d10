"""The reference decoder's resize as graph operations, for every export format.

The reference decoder squashes every image with Pillow's
`resize((SIZE, SIZE), BILINEAR)` (`features/decode.py`). Every export
(`.keras`, SavedModel, ONNX) repeats that arithmetic exactly, so that a model given an image
of any size sees the pixels `bottleneck predict` feeds the backbone:

- weights: the triangle filter of Pillow's `precompute_coeffs`, widened by
  the shrink factor, computed in float64 from the input's shape inside the
  graph, normalised, then scaled to 22-bit integers
  (`normalize_coeffs_8bpc`);
- each pass: `(2**21 + sum(weight * pixel)) >> 22`, clipped to 0..255; in
  float64 every term is an integer below 2**31, so the sum is exact in any
  order, and so is the shift;
- the pass order of Pillow 13: the vertical pass first when the height
  shrinks by more than twice as many pixels as the width, else the
  horizontal one. Pillow skips a pass whose side is already SIZE; here it
  runs, as the identity (one weight of 2**22 per output).

ONNX has no operator for this, so it is spelled with `einsum` and
elementwise ops every format holds. The pass order is a choice made on the
input's shape: the traced formats take one branch (`ops.cond`); `.keras`,
whose functional graph can hold `keras.ops` calls but no branch, computes
both orders and keeps one with `ops.where` (twice the resize's work, about
0.7 s more per 12 MP photo on CPU), so that it stays built-in operations
only and loads without this package. Exactness needs float64: a `.keras`
file loaded on JAX without `jax_enable_x64` computes in float32, within
one grey level (`computes_in_float64`).
"""

from __future__ import annotations

__all__ = ["computes_in_float64", "pillow_bilinear_resize", "pillow_bilinear_resize_ops"]

_PRECISION_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2
_ONE = float(1 << _PRECISION_BITS)


def computes_in_float64(keras) -> bool:
    """Whether this backend honours float64, which the exact arithmetic needs.

    JAX computes in float32 unless `jax_enable_x64` is set: there the same
    graph is within one grey level of the reference, not exact.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX warns that float64 "is not available"
        probe = keras.ops.zeros((1,), dtype="float64")
    return keras.backend.standardize_dtype(probe.dtype) == "float64"


def pillow_bilinear_resize(keras, size: int, name: str = "resize"):
    """A Keras layer: float32 `(batch, H, W, C)` whole grey levels -> `(batch, size, size, C)`, as Pillow resizes.

    For the traced formats: one pass order is taken by `ops.cond`.
    """
    ops = keras.ops

    class PillowBilinearResize(keras.layers.Layer):
        def call(self, x):
            out = _resample(ops, x, size, lambda pred, first, second: _choose(ops, pred, first, second))
            # A traced branch loses the static (size, size): say it again, as layers after it (a ViT's
            # position embedding) build from the static shape.
            return ops.reshape(out, (-1, size, size, 3))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], size, size, input_shape[3])

    return PillowBilinearResize(dtype="float32", autocast=False, name=name)


def pillow_bilinear_resize_ops(keras, x, size: int):
    """The same resize as `keras.ops` calls on a functional model's tensor `x`, built-in operations only (`.keras`)."""
    ops = keras.ops
    return _resample(ops, x, size, lambda pred, first, second: ops.where(pred, first(), second()))


def _resample(ops, x, size: int, select):
    """Both passes in Pillow's order; `select(pred, if_true, if_false)` picks the order on the input's shape."""
    x = ops.cast(x, "float64")
    # Each side's length as a tensor of ones, a form every format and the functional API can read
    # (`ops.shape` of a functional tensor is `None` where the size is not known until called).
    rows = ops.ones_like(ops.mean(x, axis=(0, 2, 3)))
    columns = ops.ones_like(ops.mean(x, axis=(0, 1, 3)))
    height, width = ops.sum(rows), ops.sum(columns)

    def horizontal(t):
        return _rounded(ops, ops.einsum("ow,bhwc->bhoc", _weights(ops, columns, size), t))

    def vertical(t):
        return _rounded(ops, ops.einsum("oh,bhwc->bowc", _weights(ops, rows, size), t))

    vertical_first = ops.logical_and(height > size, (height - size) > (width - size) * 2)
    out = select(vertical_first, lambda: horizontal(vertical(x)), lambda: vertical(horizontal(x)))
    return ops.cast(out, "float32")


def _weights(ops, ones, size: int):
    """`(size, n)` float64 integer weights of Pillow's bilinear filter for a side of `n` pixels (`ones`)."""
    n = ops.sum(ones)
    source = (ops.cumsum(ones) - 1.0)[None, :]
    scale = n / size
    filterscale = ops.maximum(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1, widened when shrinking
    centre = (ops.cast(ops.arange(size), "float64") + 0.5) * scale
    first = ops.maximum(_floor(ops, centre - support + 0.5), 0.0)
    stop = ops.minimum(_floor(ops, centre + support + 0.5), n)
    # C evaluates `(x + xmin - center + 0.5) * ss` left to right, with ss = 1 / filterscale.
    distance = ops.abs(((source - centre[:, None]) + 0.5) * (1.0 / filterscale))
    inside = ops.logical_and(source >= first[:, None], source < stop[:, None])
    taps = ops.where(inside, ops.maximum(1.0 - distance, 0.0), 0.0)
    return _floor(ops, 0.5 + taps / ops.sum(taps, axis=1, keepdims=True) * _ONE)


def _rounded(ops, sums):
    """A pass's 22-bit fixed-point sums to whole grey levels, as Pillow shifts and clips them."""
    return ops.clip(_floor(ops, (sums + _ONE / 2) / _ONE), 0.0, 255.0)


def _floor(ops, x):
    """`floor` in float64: every value floored here is >= 0, or clamped at 0 after, where truncation is the same.

    `ops.floor` returns float32 on Keras' JAX backend, even with `jax_enable_x64`.
    """
    return ops.cast(ops.cast(x, "int64"), "float64")


def _choose(ops, pred, if_true, if_false):
    """`ops.cond`, or the branch itself where the shapes are known when the graph is traced."""
    if isinstance(pred, bool):
        return if_true() if pred else if_false()
    return ops.cond(pred, if_true, if_false)
