"""The head stage: classifiers trained on cached features.

It imports the store and nothing of the features stage, and never imports
Keras at module level: scikit-learn heads train where Keras is missing.
"""

from .apply import aligned_proba, feature_matrix
from .dense import DenseClassifier
from .persist import HeadVersionWarning, load_head, save_head
from .registry import HEADS, HeadCfg, create_head, get_head_cfg, list_heads, parse_param

__all__ = [
    "HEADS",
    "aligned_proba",
    "feature_matrix",
    "DenseClassifier",
    "HeadCfg",
    "HeadVersionWarning",
    "create_head",
    "get_head_cfg",
    "list_heads",
    "load_head",
    "parse_param",
    "save_head",
]
