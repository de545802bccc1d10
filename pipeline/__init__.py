"""bottleneck: cached-feature transfer learning for images.

Run a frozen Keras base once over an image folder (`extract_features`),
keep the features in the store, then train cheap heads on them.
"""

from .backbones import BACKBONES, build_extractor, get_backbone_cfg, list_backbones
from .config import ExtractConfig, TrainConfig
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
    "RunResult",
    "TrainConfig",
    "list_runs",
    "train_heads",
]

_TRAIN_NAMES = ("RunResult", "list_runs", "train_heads")


def __getattr__(name):
    # The head stage imports scikit-learn (seconds); load it on first use only.
    if name in _TRAIN_NAMES:
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
