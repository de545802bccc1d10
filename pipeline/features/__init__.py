"""The features stage: image folder -> frozen backbone -> feature set in the store.

It imports the store and nothing of the head stage. Keras is imported only
when a model is really built, so a run with nothing to do never loads it.
"""

from .backbones import BACKBONES, BackboneCfg, build_extractor, get_backbone_cfg, list_backbones
from .extract import FEATURES_VERSION, ExtractResult, extract_features, extract_many, feature_spec
from .identity import feature_set_dir

__all__ = [
    "BACKBONES",
    "FEATURES_VERSION",
    "BackboneCfg",
    "ExtractResult",
    "build_extractor",
    "extract_features",
    "extract_many",
    "feature_set_dir",
    "feature_spec",
    "get_backbone_cfg",
    "list_backbones",
]
