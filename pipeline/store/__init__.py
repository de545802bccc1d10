"""The feature store: the contract between the features and head stages.

It imports neither stage. The features stage writes feature sets through
`FeatureStore` (shards with `FeatureStore.shard_appender`, then the index);
the head stage reads them with `read_feature_set`.
"""

from ..errors import FeatureStoreError, StoreBusyError, WriteError
from .feature_set import FeatureSet, FeatureStore, read_feature_set
from .index import (
    INDEX_NAME,
    SHARD_DIR,
    FileRecord,
    IndexRow,
    IndexState,
    ShardRecord,
    SkippedFile,
    decode_path,
    encode_path,
    feature_key,
)
from .lookup import list_feature_sets, resolve_features
from .shards import ShardAppender, ShardWriter, shown_path

__all__ = [
    "INDEX_NAME",
    "SHARD_DIR",
    "FeatureSet",
    "FeatureStore",
    "FeatureStoreError",
    "FileRecord",
    "IndexRow",
    "IndexState",
    "ShardAppender",
    "ShardRecord",
    "ShardWriter",
    "SkippedFile",
    "StoreBusyError",
    "WriteError",
    "decode_path",
    "encode_path",
    "feature_key",
    "list_feature_sets",
    "read_feature_set",
    "resolve_features",
    "shown_path",
]
