"""Helpers shared by several test modules: running the CLI in-process and
writing small synthetic feature sets (no Keras needed).

Test modules import from here (or from `imagegen`, `badfiles`,
`shardfiles`), never from each other.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from pipeline import cli
from pipeline.config import TrainConfig
from pipeline.store import FeatureStore, IndexRow

KEY = "f" * 64


def run_cli(*argv):
    """`bottleneck ARGV...` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def train_config(tmp_path, **overrides):
    """A `TrainConfig` whose runs and cache folders live under `tmp_path`."""
    return TrainConfig(runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), **overrides)


def make_set(
    root, *, classes=3, per_class=30, dim=8, folder_splits=None, keys=None, seed=0, spread=0.6,
    scale=1.0, offset=0.0, dtype="float32", config=None,
):
    """A complete feature set of Gaussian blobs, one per class, written via FeatureStore.

    Args:
        folder_splits: `None` for the class-per-folder layout, or a function
            of the row number giving "train", "validation" or "test".
        keys: split keys per row; `None` draws them uniformly.
        scale, offset: every feature becomes `feature * scale + offset`
            (`scale=1e-12` mimics random weights).
        dtype: the stored dtype.
        config: the recorded extraction config. Defaults to `{"model": "synthetic"}`.
    """
    rng = np.random.default_rng(seed)
    n = classes * per_class
    labels = np.repeat(np.arange(classes), per_class)
    centres = rng.normal(size=(classes, dim)) * 3
    features = ((centres[labels] + rng.normal(scale=spread, size=(n, dim))) * scale + offset).astype(dtype)
    keys = rng.random(n) if keys is None else np.asarray(keys, dtype=np.float64)
    store = FeatureStore(root)
    digests = [f"{i:064x}" for i in range(n)]
    relpaths = [f"class{labels[i]}/{i:04d}.png" for i in range(n)]
    with store.shard_appender(KEY, (dim,), dtype, shard_rows=n) as shard:
        shard.append(features, digests, relpaths)
    located, _ = store.scan_shards(KEY)
    rows = [
        IndexRow(relpaths[i], int(labels[i]), folder_splits(i) if folder_splits else "", float(keys[i]), 1, 1, digests[i])
        for i in range(n)
    ]
    store.write_index(
        rows, [located[d] for d in digests], [], [f"class{c}" for c in range(classes)],
        feature_shape=(dim,), dtype=dtype,
        attrs={"feature_key": KEY, "backbone": "synthetic", "weights": "none", "config": config or {"model": "synthetic"}},
    )
    return store.index_path


class CodeRunningMarker:
    """Writes a file when rebuilt (unpickled): what a crafted head would do instead of predicting."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))

    def __setstate__(self, state):
        Path(state["path"]).write_text("ran")


def sign_digit_features(root, size: int, per_digit: int = 4):
    """MobileNetV2 features (the shared ImageNet weights) of the first `per_digit` sign-language photos of each digit.

    The photos are copied to `root/data` and extracted into `root/cache`.
    Returns the feature set's path and every photo of each digit, sorted
    (those past `per_digit` are not in the set: new photos to predict).
    """
    import shutil

    from imagegen import SIGN_DIGITS, WEIGHTS, require_shared
    from pipeline.config import ExtractConfig
    from pipeline.features.extract import extract_features

    weights = require_shared(WEIGHTS / "mobilenet_v2_1.0_224_no_top.weights.h5")
    photos = {d: sorted((require_shared(SIGN_DIGITS) / str(d)).glob("*.JPG")) for d in range(10)}
    for digit, files in photos.items():
        (root / "data" / str(digit)).mkdir(parents=True)
        for src in files[:per_digit]:
            shutil.copyfile(src, root / "data" / str(digit) / src.name)
    result = extract_features(config=ExtractConfig(
        data=str(root / "data"), cache_dir=str(root / "cache"), workers=2, model="mobilenet_v2", size=size,
        weights=str(weights), batch_size=16,
    ))
    return result.path, photos
