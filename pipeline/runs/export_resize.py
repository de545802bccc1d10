"""The reference decoder's resize as graph operations, for the traced export formats.

The reference decoder squashes every image with Pillow's
`resize((SIZE, SIZE), BILINEAR)` (`features/decode.py`). The SavedModel and
ONNX exports repeat that arithmetic exactly, so that a model given an image
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
  horizontal one; a pass is skipped when that side is already SIZE.

ONNX has no operator for this, so it is spelled with `einsum` and
elementwise ops every format holds. The `.keras` format keeps the built-in
`Resizing(antialias=True)` + round (a custom layer would need this package
to load): the same filter in float32, within one grey level of this one.
"""

from __future__ import annotations

__all__ = ["pillow_bilinear_resize"]

_PRECISION_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2


def pillow_bilinear_resize(keras, size: int, name: str = "resize"):
    """A Keras layer: float32 `(batch, H, W, C)` whole grey levels -> `(batch, size, size, C)`, as Pillow resizes."""
    ops = keras.ops
    one = float(1 << _PRECISION_BITS)

    def weights(n_in):
        """`(size, n_in)` float64 integer weights of Pillow's bilinear filter."""
        n = ops.cast(n_in, "float64")
        scale = n / size
        filterscale = ops.maximum(scale, 1.0)
        support = filterscale  # the bilinear filter's support is 1, widened when shrinking
        centre = (ops.cast(ops.arange(size), "float64") + 0.5) * scale
        first = ops.maximum(ops.floor(centre - support + 0.5), 0.0)
        stop = ops.minimum(ops.floor(centre + support + 0.5), n)
        source = ops.cast(ops.arange(n_in), "float64")[None, :]
        # C evaluates `(x + xmin - center + 0.5) * ss` left to right, with ss = 1 / filterscale.
        distance = ops.abs(((source - centre[:, None]) + 0.5) * (1.0 / filterscale))
        inside = ops.logical_and(source >= first[:, None], source < stop[:, None])
        taps = ops.where(inside, ops.maximum(1.0 - distance, 0.0), 0.0)
        return ops.floor(0.5 + taps / ops.sum(taps, axis=1, keepdims=True) * one)

    def horizontal(x):
        y = ops.einsum("ow,bhwc->bhoc", weights(ops.shape(x)[2]), x)
        return ops.clip(ops.floor((y + one / 2) / one), 0.0, 255.0)

    def vertical(x):
        y = ops.einsum("oh,bhwc->bowc", weights(ops.shape(x)[1]), x)
        return ops.clip(ops.floor((y + one / 2) / one), 0.0, 255.0)

    def keep_or(resample, axis):
        # Pillow skips a pass whose side is already SIZE; the pass would be the identity anyway
        # (one weight of 2**22 per output), so this only saves the work.
        return lambda x: _choose(ops, ops.shape(x)[axis] == size, lambda: x, lambda: resample(x))

    class PillowBilinearResize(keras.layers.Layer):
        def call(self, x):
            x = ops.cast(x, "float64")
            height, width = ops.shape(x)[1], ops.shape(x)[2]
            vertical_first = _both(ops, height > size, (height - size) > (width - size) * 2)
            by_rows = keep_or(horizontal, 2)
            by_columns = keep_or(vertical, 1)
            out = _choose(ops, vertical_first, lambda: by_rows(by_columns(x)), lambda: by_columns(by_rows(x)))
            # A traced branch loses the static (size, size): say it again, as layers after it (a ViT's
            # position embedding) build from the static shape.
            return ops.reshape(ops.cast(out, "float32"), (-1, size, size, 3))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], size, size, input_shape[3])

    return PillowBilinearResize(dtype="float32", autocast=False, name=name)


def _choose(ops, pred, if_true, if_false):
    """`ops.cond`, or the branch itself where the shapes are known when the graph is traced."""
    if isinstance(pred, bool):
        return if_true() if pred else if_false()
    return ops.cond(pred, if_true, if_false)


def _both(ops, a, b):
    return a and b if isinstance(a, bool) and isinstance(b, bool) else ops.logical_and(a, b)
