"""KerasHub encoders of a published preset's shape, with random weights, saved as local presets.

The bench measures speed, which depends on the shape alone, so it never
downloads weights: each shape is built with KerasHub's own classes and
written with `save_to_preset`, then run as `--model hub:<folder>` like any
preset. `layers` shrinks the depth for a smoke run on a CPU.
"""

from __future__ import annotations

from pathlib import Path

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# name -> (family, the published preset it copies, its shape)
SHAPES = {
    # ViT-S/14: DINOv2's small backbone (21M parameters), also the ViT-S/14 of `make bench`.
    "dinov2_small": ("dinov2", "dinov2_small",
                     dict(patch_size=14, num_layers=12, hidden_dim=384, num_heads=6, intermediate_dim=1536)),
    # SigLIP's base vision tower, patch 16 (86M parameters); its text tower is tiny here and never run.
    "siglip_base": ("siglip", "siglip_base_patch16_224",
                    dict(patch_size=16, num_layers=12, hidden_dim=768, num_heads=12, intermediate_dim=3072)),
}


def save_preset(name: str, folder: Path, size: int, layers: int | None = None, seed: int = 0) -> Path:
    """The shape `name` at input size `size` (its depth `layers` when given), written as a preset in `folder`."""
    import keras
    import keras_hub

    family, _, shape = SHAPES[name]
    shape = {**shape, **({"num_layers": layers} if layers else {})}
    keras.utils.set_random_seed(seed)
    m, converters = keras_hub.models, keras_hub.layers
    if family == "dinov2":
        model = m.DINOV2Backbone(**shape, image_shape=(size, size, 3))
        scale = [1 / (255 * s) for s in IMAGENET_STD]
        converter = converters.DINOV2ImageConverter(image_size=(size, size), scale=scale,
                                                    offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    else:
        text = m.SigLIPTextEncoder(vocabulary_size=32, embedding_dim=shape["hidden_dim"], hidden_dim=shape["hidden_dim"],
                                   num_layers=1, num_heads=shape["num_heads"], intermediate_dim=64,
                                   max_sequence_length=8)
        model = m.SigLIPBackbone(m.SigLIPVisionEncoder(**shape, image_shape=(size, size, 3)), text)
        converter = converters.SigLIPImageConverter(image_size=(size, size), scale=1 / 127.5, offset=-1.0)
    model.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder
