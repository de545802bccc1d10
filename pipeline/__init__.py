"""bottleneck: cached-feature transfer learning for images.

Run a frozen Keras base once over an image folder (`extract_features`),
keep the features in the store, then train cheap heads on them.
"""

from .backbones import BACKBONES, build_extractor, get_backbone_cfg, list_backbones
from .config import ExtractConfig
from .extract import ExtractResult, extract_features
from .export import ExportResult, export_run
from .predict import EvaluationResult, Prediction, Predictor, RunError, evaluate_run, predict_images
from .store import FeatureSet, FeatureStore, read_feature_set

__all__ = [
    "BACKBONES",
    "ExtractConfig",
    "ExtractResult",
    "FeatureSet",
    "FeatureStore",
    "build_extractor",
    "extract_features",
    "get_backbone_cfg",
    "list_backbones",
    "read_feature_set",
    "EvaluationResult",
    "ExportResult",
    "Prediction",
    "Predictor",
    "RunError",
    "evaluate_run",
    "export_run",
    "predict_images",
]
