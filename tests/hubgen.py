"""Tiny random KerasHub models of each family, saved as local presets (offline, seconds).

Built with KerasHub's own classes and written with `save_to_preset`, so
the product reads them exactly as it reads a downloaded preset.
"""

from pathlib import Path

SIZE = 28
FAMILIES = ("dinov2", "dinov3", "siglip", "clip", "vit")
IMAGENET = dict(scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
                offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def tiny(family: str, seed: int = 0):
    """A tiny random model of `family` and its image converter."""
    import keras
    import keras_hub

    m, layers = keras_hub.models, keras_hub.layers
    keras.utils.set_random_seed(seed)
    shape, common = (SIZE, SIZE, 3), dict(patch_size=14, num_layers=2, num_heads=2)
    if family == "dinov2":
        model = m.DINOV2Backbone(**common, hidden_dim=16, intermediate_dim=32, image_shape=shape,
                                 position_embedding_shape=(56, 56, 3), num_register_tokens=2)
        return model, layers.DINOV2ImageConverter(image_size=(SIZE, SIZE), **IMAGENET)
    if family == "dinov3":
        model = m.DINOV3Backbone(**common, hidden_dim=16, intermediate_dim=32, image_shape=shape)
        return model, layers.DINOV3ImageConverter(image_size=(SIZE, SIZE), **IMAGENET)
    if family == "vit":
        model = m.ViTBackbone(image_shape=shape, **common, hidden_dim=16, mlp_dim=32)
        return model, layers.ViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)
    text = dict(vocabulary_size=32, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
                intermediate_dim=32, max_sequence_length=8)
    if family == "siglip":
        vision = m.SigLIPVisionEncoder(**common, hidden_dim=16, intermediate_dim=32, image_shape=shape)
        model = m.SigLIPBackbone(vision, m.SigLIPTextEncoder(**text))
        return model, layers.SigLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)
    vision = m.CLIPVisionEncoder(**common, hidden_dim=16, intermediate_dim=32, image_shape=shape)
    model = m.CLIPBackbone(vision, m.CLIPTextEncoder(**text), projection_dim=12)
    return model, layers.CLIPImageConverter(image_size=(SIZE, SIZE), **IMAGENET)


def save_preset(folder: Path, family: str, seed: int = 0) -> Path:
    """`tiny(family, seed)` written as a preset folder; returns the folder."""
    model, converter = tiny(family, seed)
    model.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder
