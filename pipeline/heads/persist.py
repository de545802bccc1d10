"""Saving and loading fitted heads, with their metadata and library versions."""

from __future__ import annotations

import hashlib
import io
import platform
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from .. import _atomic
from .._versions import DISTRIBUTION, package_version
from ..errors import RunError
from ..store.content import file_sha256
from .dense import is_keras_head

__all__ = ["HeadVersionWarning", "load_head", "save_head"]

_FORMAT = "bottleneck-head"
_FORMAT_VERSION = 1


class HeadVersionWarning(UserWarning):
    """A loaded head was saved with other library versions than the running ones."""


def _versions(include_keras: bool) -> dict[str, str]:
    # Read from package metadata, so that recording the Keras version never
    # imports Keras.
    versions = {
        "python": platform.python_version(),
        DISTRIBUTION: package_version(DISTRIBUTION) or "not installed",
        "sklearn": package_version("scikit-learn") or "not installed",
        "numpy": np.__version__,
    }
    if include_keras:
        versions["keras"] = package_version("keras") or "not installed"
    return versions


def save_head(path, estimator, *, metadata: dict) -> str:
    """Save a fitted head with its metadata and library versions.

    Writes `joblib.dump({"estimator", "metadata", "versions", ...})` through
    `_atomic.replacing`, so a crash never leaves a partial file under `path`.

    Args:
        path: str or Path of the file to write (conventionally `.joblib`).
        estimator: the fitted head.
        metadata: dict, JSON-like facts about the head, such as
            `class_names`, `backbone` and `feature_key`.

    Returns:
        The sha256 hex digest of the written file; pass it to `load_head`
        as `expected_sha256`.
    """
    if not isinstance(metadata, dict):
        raise TypeError(f"`metadata` must be a dict. Received: {type(metadata).__name__}.")
    if not callable(getattr(estimator, "predict", None)):
        raise TypeError(f"`estimator` must have a `predict` method. Received: {estimator!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "estimator": estimator,
        "metadata": metadata,
        "versions": _versions(include_keras=is_keras_head(estimator)),
    }
    with _atomic.replacing(path) as tmp:
        with tmp.open("wb") as f:
            joblib.dump(payload, f)
        digest = file_sha256(tmp)
    return digest


def load_head(path, *, expected_sha256: str | None = None) -> tuple[Any, dict]:
    """Load a head written by `save_head`.

    joblib runs code while loading, so only load files you trust. With
    `expected_sha256`, the file's bytes are hashed and compared *before*
    anything is unpickled, and the very bytes that were checked are loaded.

    Args:
        path: str or Path of the file.
        expected_sha256: str or `None`, the hex digest `save_head` returned.
            A mismatch raises `RunError`. Defaults to `None` (no check).

    Returns:
        Tuple `(estimator, metadata)`.

    Warns:
        HeadVersionWarning: when the recorded library versions (Python by
            major.minor) differ from the running ones.
    """
    path = Path(path)
    data = path.read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != str(expected_sha256).strip().lower():
            raise RunError(
                f"Refusing to load head file {str(path)!r}: its sha256 is {actual}, "
                f"expected {expected_sha256}. The file changed since it was saved "
                "(or the wrong file was given); it was not unpickled."
            )
    payload = joblib.load(io.BytesIO(data))
    if not (
        isinstance(payload, dict)
        and payload.get("format") == _FORMAT
        and {"estimator", "metadata", "versions"} <= set(payload)
    ):
        raise RunError(
            f"{str(path)!r} is not a head file written by save_head "
            "(expected a dict with 'estimator', 'metadata' and 'versions')."
        )
    recorded = payload["versions"]
    running = _versions(include_keras="keras" in recorded)
    differ = [
        f"{lib} {recorded[lib]} (running {running[lib]})"
        for lib in recorded
        if lib in running and _comparable(lib, recorded[lib]) != _comparable(lib, running[lib])
    ]
    if differ:
        warnings.warn(
            f"Head file {str(path)!r} was saved with other library versions: "
            f"{', '.join(differ)}. Predictions may differ; refit the head if they do.",
            HeadVersionWarning,
            stacklevel=2,
        )
    return payload["estimator"], payload["metadata"]


def _comparable(lib: str, version: str) -> str:
    # Python patch releases do not change pickles; compare major.minor only.
    return ".".join(version.split(".")[:2]) if lib == "python" else version
