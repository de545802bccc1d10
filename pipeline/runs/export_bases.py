"""The image side of an exported model: one branch per base of the run.

`export._build` feeds the uint8 image to `base_branch` once per base
(`source.Base`): resize as the reference decoder does (Pillow's arithmetic,
`export_resize`; a layer with one branch in the traced formats, built-in
operations in `.keras`), the backbone's preprocessing as a fixed `Dense(3)`, the extractor, and the
storage dtype's rounding. A fused run's branches are flattened and joined
by a `Concatenate` before its head, as `store.fused` joined the features.
`reference_features` computes the same numbers the package's own way, for
the export's checks.
"""

from __future__ import annotations

import numpy as np

from .export_resize import pillow_bilinear_resize, pillow_bilinear_resize_ops
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
        x = pillow_bilinear_resize(keras, base.size, name=f"resize{suffix}")(x)
    else:
        x = pillow_bilinear_resize_ops(keras, x, base.size)
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

