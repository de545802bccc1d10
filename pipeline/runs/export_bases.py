"""The image side of an exported model: one branch per base of the run.

`export._build` feeds the uint8 image to `base_branch` once per base
(`source.Base`): resize as the reference decoder does, whole grey levels,
the backbone's preprocessing as a fixed `Dense(3)`, the extractor, and the
storage dtype's rounding. A fused run's branches are flattened and joined
by a `Concatenate` before its head, as `store.fused` joined the features.
`reference_features` computes the same numbers the package's own way, for
the export's checks.
"""

from __future__ import annotations

import numpy as np

from .predict import Predictor

__all__ = ["base_branch", "reference_features"]


def reference_features(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """The run's features of uint8 `images`, by the reference resize and each base's extractor."""
    from ..features.decode import resize_squash

    blocks = []
    for index, base in enumerate(predictor.bases):
        decoded = np.stack([resize_squash(image, base.size) for image in images])
        block = np.asarray(predictor.extractor(index).predict_on_batch(decoded))
        blocks.append(block.astype(base.config.storage_dtype).astype(np.float32))
    return blocks[0] if len(blocks) == 1 else np.concatenate([b.reshape(len(b), -1) for b in blocks], axis=1)


def base_branch(keras, predictor: Predictor, index: int, x, *, traced: bool, suffix: str):
    """float32 images -> the `index`-th base's features: its resize, preprocessing, extractor and storage dtype."""
    from ..features import backbones

    base = predictor.bases[index]
    cfg = backbones.get_backbone_cfg(base.config.model)
    kernel, bias = backbones.preprocess_affine(cfg)
    extractor = predictor.extractor(index)
    if traced:
        x = triangle_resize(keras, base.size, name=f"resize{suffix}")(x)
    else:
        x = keras.layers.Resizing(base.size, base.size, interpolation="bilinear", antialias=True, dtype="float32",
                                  name=f"resize{suffix}")(x)
    x = keras.ops.round(x)  # the decoder hands the backbone whole grey levels
    preprocess = keras.layers.Dense(3, dtype="float32", trainable=False, name=f"preprocess_{_layer_name(cfg)}{suffix}")
    x = preprocess(x)
    preprocess.set_weights([kernel, bias])
    # The extractor past its own preprocessing layer (the one every source names "preprocess").
    x = keras.Model(extractor.get_layer("preprocess").output, extractor.output, name=f"extractor{suffix}")(x)
    if base.config.storage_dtype == "float16":
        # The head was trained on float16-stored features: round the same way.
        x = keras.layers.Activation("linear", dtype="float16", name=f"storage_float16{suffix}")(x)
        x = keras.layers.Activation("linear", dtype="float32", name=f"features_float32{suffix}")(x)
    return x


def _layer_name(cfg) -> str:
    return getattr(cfg, "module", None) or "preset"


def triangle_resize(keras, size: int, name: str = "resize"):
    """`Resizing(antialias=True)`'s arithmetic as two matrix products, for the traced formats.

    ONNX has no operator for TensorFlow's `ScaleAndTranslate`, which
    `Resizing(antialias=True)` becomes; the triangle weights of
    `decode.resize_squash`, built from the input's shape inside the graph,
    are plain ops every format holds. A custom layer needs this package to
    load, so `.keras` keeps the built-in layer.
    """
    ops = keras.ops

    def weights(n_in):
        scale = ops.cast(n_in, "float32") / size
        centres = (ops.cast(ops.arange(size), "float32") + 0.5) * scale
        source = ops.cast(ops.arange(n_in), "float32") + 0.5
        taps = ops.maximum(0.0, 1.0 - ops.abs(source[None, :] - centres[:, None]) / ops.maximum(scale, 1.0))
        return taps / ops.sum(taps, axis=1, keepdims=True)

    class TriangleResize(keras.layers.Layer):
        def call(self, x):
            shape = ops.shape(x)
            x = ops.einsum("ow,bhwc->bhoc", weights(shape[2]), x)
            return ops.einsum("oh,bhwc->bowc", weights(shape[1]), x)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], size, size, input_shape[3])

    return TriangleResize(dtype="float32", autocast=False, name=name)
