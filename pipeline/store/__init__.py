"""The feature store: the contract between the features and head stages.

It imports neither stage. The features stage writes feature sets through
`FeatureStore`; the head stage reads them with `read_feature_set`.
"""

from ..errors import FeatureStoreError, StoreBusyError, WriteError
from .feature_store import (
    INDEX_NAME,
    SHARD_DIR,
    FeatureSet,
    FeatureStore,
    IndexRow,
    ShardWriter,
    SkippedFile,
    decode_path,
    encode_path,
    feature_key,
    read_feature_set,
)
from .lookup import resolve_features

__all__ = [
    "INDEX_NAME",
    "SHARD_DIR",
    "FeatureSet",
    "FeatureStore",
    "FeatureStoreError",
    "IndexRow",
    "ShardWriter",
    "SkippedFile",
    "StoreBusyError",
    "WriteError",
    "decode_path",
    "encode_path",
    "feature_key",
    "read_feature_set",
    "resolve_features",
]
