"""The head stage: classifiers trained on cached features.

It imports the store and nothing of the features stage, and never imports
Keras at module level: scikit-learn heads train where Keras is missing.
Writing run folders is not done here but in `pipeline.runs`.
"""

from .apply import aligned_proba, feature_matrix, linear_softmax_weights
from .dense import DenseClassifier, is_keras_head
from .fit import FittedHead, fit_head
from .persist import HeadVersionWarning, load_head, save_head
from .registry import HEADS, HeadCfg, create_head, get_head_cfg, list_heads, parse_param, parse_params, plan_params
from .splits import SPLITS, split_indices, subsample, training_splits

__all__ = [
    "HEADS",
    "SPLITS",
    "DenseClassifier",
    "FittedHead",
    "HeadCfg",
    "HeadVersionWarning",
    "aligned_proba",
    "create_head",
    "feature_matrix",
    "fit_head",
    "get_head_cfg",
    "is_keras_head",
    "linear_softmax_weights",
    "list_heads",
    "load_head",
    "parse_param",
    "parse_params",
    "plan_params",
    "save_head",
    "split_indices",
    "subsample",
    "training_splits",
]
