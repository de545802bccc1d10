"""The KerasHub presets the registry lists, generated from KerasHub's own preset tables.

Regenerate after upgrading keras-hub: `python -m pipeline.features.hub_presets > pipeline/features/hub_presets.py`.
Names, handles and parameter counts are KerasHub's; the default size is
the one in the preset's name (else 224), and the feature width (of the
family's default pooling: DINO `cls+mean` doubles the hidden width) comes
from the size word in its name, as KerasHub's tables do not say it. The
preset's own files are the truth at extraction time.
"""

from __future__ import annotations

import re

# (family, KerasHub module of the table, licence); presets of other models are not listed.
FAMILY_TABLES = (
    ("dinov2", "keras_hub.src.models.dinov2.dinov2_presets", "Apache-2.0"),
    ("dinov3", "keras_hub.src.models.dinov3.dinov3_presets", "DINOv3 License (gated)"),
    ("siglip", "keras_hub.src.models.siglip.siglip_presets", "Apache-2.0"),
    ("clip", "keras_hub.src.models.clip.clip_presets", "MIT"),
    ("vit", "keras_hub.src.models.vit.vit_presets", "Apache-2.0"),
)
# Hidden width by the size word in a preset's name; CLIP's embedding is its projection width.
WIDTHS = {"small": 384, "small_plus": 384, "base": 768, "b_32": 512, "large": 1024, "so400m": 1152,
          "huge": 1280, "h_14": 1024, "huge_plus": 1280, "giant": 1536, "giant_opt": 1536, "g_14": 1024,
          "bigg_14": 1280, "7b": 4096}
CLIP_EMBEDDING = {"base": 512, "large": 768}
SKIPPED = ("medsiglip",)  # licence terms of their own; pass them as hub:kaggle://... if wanted


def _row(family: str, name: str, entry: dict, licence: str):
    words = re.findall(r"small_plus|huge_plus|giant_opt|bigg_14|b_32|h_14|g_14|7b|so400m|small|base|large|huge|giant",
                       name)
    width = WIDTHS[words[0]] if words else None
    if family == "clip" and width is not None:
        width = CLIP_EMBEDDING.get(words[0], width)
    if family in ("dinov2", "dinov3") and width is not None:
        width *= 2  # cls+mean
    size = re.search(r"_(\d{3})(?:_|$)", name)
    size = int(size.group(1)) if size else 224
    return (name, family, entry["kaggle_handle"], entry["metadata"].get("params"), size, width, licence)


def generate() -> str:
    import importlib

    import keras_hub

    rows = []
    for family, module, licence in FAMILY_TABLES:
        for name, entry in importlib.import_module(module).backbone_presets.items():
            if not name.startswith(SKIPPED):
                rows.append(_row(family, name, entry, licence))
    lines = [f"    {row!r}," for row in sorted(rows)]
    return "\n".join([
        f"KERAS_HUB_VERSION = {keras_hub.__version__!r}",
        "# (name, family, handle, params, default size, feature width, licence)",
        "PRESETS = (", *lines, ")",
    ])


if __name__ == "__main__":
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    marker = "\n# ---- generated\n"
    sys.stdout.write(source[: source.index(marker) + len(marker)] + generate() + "\n")

# ---- generated
KERAS_HUB_VERSION = '0.32.0'
# (name, family, handle, params, default size, feature width, licence)
PRESETS = (
    ('clip_vit_b_32_laion2b_s34b_b79k', 'clip', 'kaggle://keras/clip/keras/clip_vit_b_32_laion2b_s34b_b79k/3', 151277363, 224, 512, 'MIT'),
    ('clip_vit_base_patch16', 'clip', 'kaggle://keras/clip/keras/clip_vit_base_patch16/3', 149620934, 224, 512, 'MIT'),
    ('clip_vit_base_patch32', 'clip', 'kaggle://keras/clip/keras/clip_vit_base_patch32/3', 151277363, 224, 512, 'MIT'),
    ('clip_vit_bigg_14_laion2b_39b_b160k', 'clip', 'kaggle://keras/clip/keras/clip_vit_bigg_14_laion2b_39b_b160k/3', 2539567362, 224, 1280, 'MIT'),
    ('clip_vit_g_14_laion2b_s12b_b42k', 'clip', 'kaggle://keras/clip/keras/clip_vit_g_14_laion2b_s12b_b42k/3', 1366678530, 224, 1024, 'MIT'),
    ('clip_vit_h_14_laion2b_s32b_b79k', 'clip', 'kaggle://keras/clip/keras/clip_vit_h_14_laion2b_s32b_b79k/3', 986109698, 224, 1024, 'MIT'),
    ('clip_vit_large_patch14', 'clip', 'kaggle://keras/clip/keras/clip_vit_large_patch14/3', 427616770, 224, 768, 'MIT'),
    ('clip_vit_large_patch14_336', 'clip', 'kaggle://keras/clip/keras/clip_vit_large_patch14_336/3', 427944770, 336, 768, 'MIT'),
    ('dinov2_base', 'dinov2', 'kaggle://keras/dinov2/keras/dinov2_base/1', 87632640, 224, 1536, 'Apache-2.0'),
    ('dinov2_giant', 'dinov2', 'kaggle://keras/dinov2/keras/dinov2_giant/1', 1138585088, 224, 3072, 'Apache-2.0'),
    ('dinov2_large', 'dinov2', 'kaggle://keras/dinov2/keras/dinov2_large/1', 305771520, 224, 2048, 'Apache-2.0'),
    ('dinov2_small', 'dinov2', 'kaggle://keras/dinov2/keras/dinov2_small/1', 22582656, 224, 768, 'Apache-2.0'),
    ('dinov2_with_registers_base', 'dinov2', 'kaggle://keras/dinov2/keras/dinov2_with_registers_base/1', 87635712, 224, 1536, 'Apache-2.0'),
    ('dinov2_with_registers_giant', 'dinov2', 'kaggle://keras/dinov2/keras/dinov2_with_registers_giant/1', 1138591232, 224, 3072, 'Apache-2.0'),
    ('dinov2_with_registers_large', 'dinov2', 'kaggle://keras/dinov2/keras/dinov2_with_registers_large/1', 305775616, 224, 2048, 'Apache-2.0'),
    ('dinov2_with_registers_small', 'dinov2', 'kaggle://keras/dinov2/keras/dinov2_with_registers_small/1', 22584192, 224, 768, 'Apache-2.0'),
    ('dinov3_vit_7b_lvd1689m', 'dinov3', 'kaggle://keras/dinov3/keras/dinov3_vit_7b_lvd1689m/1', 6700000000, 224, 8192, 'DINOv3 License (gated)'),
    ('dinov3_vit_7b_sat493m', 'dinov3', 'kaggle://keras/dinov3/keras/dinov3_vit_7b_sat493m/1', 6700000000, 224, 8192, 'DINOv3 License (gated)'),
    ('dinov3_vit_base_lvd1689m', 'dinov3', 'kaggle://keras/dinov3/keras/dinov3_vit_base_lvd1689m/1', 86000000, 224, 1536, 'DINOv3 License (gated)'),
    ('dinov3_vit_huge_plus_lvd1689m', 'dinov3', 'kaggle://keras/dinov3/keras/dinov3_vit_huge_plus_lvd1689m/1', 840000000, 224, 2560, 'DINOv3 License (gated)'),
    ('dinov3_vit_large_lvd1689m', 'dinov3', 'kaggle://keras/dinov3/keras/dinov3_vit_large_lvd1689m/1', 300000000, 224, 2048, 'DINOv3 License (gated)'),
    ('dinov3_vit_large_sat493m', 'dinov3', 'kaggle://keras/dinov3/keras/dinov3_vit_large_sat493m/1', 300000000, 224, 2048, 'DINOv3 License (gated)'),
    ('dinov3_vit_small_lvd1689m', 'dinov3', 'kaggle://keras/dinov3/keras/dinov3_vit_small_lvd1689m/1', 21600000, 224, 768, 'DINOv3 License (gated)'),
    ('dinov3_vit_small_plus_lvd1689m', 'dinov3', 'kaggle://keras/dinov3/keras/dinov3_vit_small_plus_lvd1689m/1', 29000000, 224, 768, 'DINOv3 License (gated)'),
    ('siglip2_base_patch16_224', 'siglip', 'kaggle://keras/siglip/keras/siglip2_base_patch16_224/1', 375188230, 224, 768, 'Apache-2.0'),
    ('siglip2_base_patch16_256', 'siglip', 'kaggle://keras/siglip/keras/siglip2_base_patch16_256/1', 375234370, 256, 768, 'Apache-2.0'),
    ('siglip2_base_patch16_384', 'siglip', 'kaggle://keras/siglip/keras/siglip2_base_patch16_384/1', 376856194, 384, 768, 'Apache-2.0'),
    ('siglip2_base_patch32_256', 'siglip', 'kaggle://keras/siglip/keras/siglip2_base_patch32_256/1', 376856194, 256, 768, 'Apache-2.0'),
    ('siglip2_giant_opt_patch16_256', 'siglip', 'kaggle://keras/siglip/keras/siglip2_giant_opt_patch16_256/2', 1871394226, 256, 1536, 'Apache-2.0'),
    ('siglip2_giant_opt_patch16_384', 'siglip', 'kaggle://keras/siglip/keras/siglip2_giant_opt_patch16_384/1', 1871886066, 384, 1536, 'Apache-2.0'),
    ('siglip2_large_patch16_256', 'siglip', 'kaggle://keras/siglip/keras/siglip2_large_patch16_256/1', 881527106, 256, 1024, 'Apache-2.0'),
    ('siglip2_large_patch16_384', 'siglip', 'kaggle://keras/siglip/keras/siglip2_large_patch16_384/1', 881855106, 384, 1024, 'Apache-2.0'),
    ('siglip2_large_patch16_512', 'siglip', 'kaggle://keras/siglip/keras/siglip2_large_patch16_512/1', 882314306, 512, 1024, 'Apache-2.0'),
    ('siglip2_so400m_patch14_224', 'siglip', 'kaggle://keras/siglip/keras/siglip2_so400m_patch14_224/1', 1135463922, 224, 1152, 'Apache-2.0'),
    ('siglip2_so400m_patch14_384', 'siglip', 'kaggle://keras/siglip/keras/siglip2_so400m_patch14_384/1', 1136009291, 384, 1152, 'Apache-2.0'),
    ('siglip2_so400m_patch16_256', 'siglip', 'kaggle://keras/siglip/keras/siglip2_so400m_patch16_256/1', 1135671282, 256, 1152, 'Apache-2.0'),
    ('siglip2_so400m_patch16_384', 'siglip', 'kaggle://keras/siglip/keras/siglip2_so400m_patch16_384/1', 1136040242, 384, 1152, 'Apache-2.0'),
    ('siglip2_so400m_patch16_512', 'siglip', 'kaggle://keras/siglip/keras/siglip2_so400m_patch16_512/1', 1136555698, 512, 1152, 'Apache-2.0'),
    ('siglip_base_patch16_224', 'siglip', 'kaggle://keras/siglip/keras/siglip_base_patch16_224/1', 203156230, 224, 768, 'Apache-2.0'),
    ('siglip_base_patch16_256', 'siglip', 'kaggle://keras/siglip/keras/siglip_base_patch16_256/1', 203202370, 256, 768, 'Apache-2.0'),
    ('siglip_base_patch16_256_multilingual', 'siglip', 'kaggle://keras/siglip/keras/siglip_base_patch16_256_multilingual/1', 370626370, 256, 768, 'Apache-2.0'),
    ('siglip_base_patch16_384', 'siglip', 'kaggle://keras/siglip/keras/siglip_base_patch16_384/1', 203448450, 384, 768, 'Apache-2.0'),
    ('siglip_base_patch16_512', 'siglip', 'kaggle://keras/siglip/keras/siglip_base_patch16_512/1', 203792962, 512, 768, 'Apache-2.0'),
    ('siglip_large_patch16_256', 'siglip', 'kaggle://keras/siglip/keras/siglip_large_patch16_256/1', 652151106, 256, 1024, 'Apache-2.0'),
    ('siglip_large_patch16_384', 'siglip', 'kaggle://keras/siglip/keras/siglip_large_patch16_384/1', 652479106, 384, 1024, 'Apache-2.0'),
    ('siglip_so400m_patch14_224', 'siglip', 'kaggle://keras/siglip/keras/siglip_so400m_patch14_224/1', 877360578, 224, 1152, 'Apache-2.0'),
    ('siglip_so400m_patch14_384', 'siglip', 'kaggle://keras/siglip/keras/siglip_so400m_patch14_384/1', 877961291, 384, 1152, 'Apache-2.0'),
    ('siglip_so400m_patch16_256_i18n', 'siglip', 'kaggle://keras/siglip/keras/siglip_so400m_patch16_256_i18n/1', 1128759282, 256, 1152, 'Apache-2.0'),
    ('vit_base_patch16_224_imagenet', 'vit', 'kaggle://keras/vit/keras/vit_base_patch16_224_imagenet/4', 85798656, 224, 768, 'Apache-2.0'),
    ('vit_base_patch16_224_imagenet21k', 'vit', 'kaggle://keras/vit/keras/vit_base_patch16_224_imagenet21k/3', 85798656, 224, 768, 'Apache-2.0'),
    ('vit_base_patch16_384_imagenet', 'vit', 'kaggle://keras/vit/keras/vit_base_patch16_384_imagenet/4', 86090496, 384, 768, 'Apache-2.0'),
    ('vit_base_patch32_224_imagenet21k', 'vit', 'kaggle://keras/vit/keras/vit_base_patch32_224_imagenet21k/3', 87455232, 224, 768, 'Apache-2.0'),
    ('vit_base_patch32_384_imagenet', 'vit', 'kaggle://keras/vit/keras/vit_base_patch32_384_imagenet/3', 87528192, 384, 768, 'Apache-2.0'),
    ('vit_huge_patch14_224_imagenet21k', 'vit', 'kaggle://keras/vit/keras/vit_huge_patch14_224_imagenet21k/3', 630764800, 224, 1280, 'Apache-2.0'),
    ('vit_large_patch16_224_imagenet', 'vit', 'kaggle://keras/vit/keras/vit_large_patch16_224_imagenet/4', 303301632, 224, 1024, 'Apache-2.0'),
    ('vit_large_patch16_224_imagenet21k', 'vit', 'kaggle://keras/vit/keras/vit_large_patch16_224_imagenet21k/3', 303301632, 224, 1024, 'Apache-2.0'),
    ('vit_large_patch16_384_imagenet', 'vit', 'kaggle://keras/vit/keras/vit_large_patch16_384_imagenet/4', 303690752, 384, 1024, 'Apache-2.0'),
    ('vit_large_patch32_224_imagenet21k', 'vit', 'kaggle://keras/vit/keras/vit_large_patch32_224_imagenet21k/3', 305510400, 224, 1024, 'Apache-2.0'),
    ('vit_large_patch32_384_imagenet', 'vit', 'kaggle://keras/vit/keras/vit_large_patch32_384_imagenet/3', 305607680, 384, 1024, 'Apache-2.0'),
)
