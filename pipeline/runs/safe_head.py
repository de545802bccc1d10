"""Heads in bundles, stored so that loading them runs no code from the file.

A pickle (`head.joblib`, `heads.save_head`) runs whatever it says when
loaded, and the sha256 checked before unpickling is read from the same
folder, so it only catches accidents, not an attacker. Run folders get
copied and shared as much as bundles, so both keep their head with
`skops.io` as well (`head.skops`, `write_run_head`, `export_run`), and
that is the file `RunSource` loads: skops rebuilds objects from a tree of
plain values and refuses any type it was not told to trust. The types
trusted here are scikit-learn's own classes (resolved by name to a class
defined in that very module, never a function or an alias), the signed
square root of the `sqrt-l2` transform and `DenseClassifier`, whose network travels as `.keras` bytes that Keras
loads in safe mode (no Python lambdas). Anything else (a custom head
class, say) is refused on load: such a run or bundle keeps only its pickle,
which `RunSource` loads only with `trust=True`.

skops beats a hand-written format here: every registry head (forests,
kd-trees, calibrated wrappers, boosted trees) round-trips exactly, and
its trusted-types check is the audited part a hand-written format would
have to reinvent.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path
from typing import Any

from .. import _atomic
from ..errors import RunError
from ..store.content import file_sha256

__all__ = ["NotPortable", "dump_head", "load_head", "untrusted_types", "write_run_head"]

# The product's own types a head may hold: the dense head, and the signed square root of `--transform sqrt-l2`.
_OWN = ("pipeline.heads.dense.DenseClassifier", "pipeline.heads.transforms.signed_sqrt")
_SKLEARN_NAME = re.compile(r"sklearn(\.[A-Za-z_][A-Za-z0-9_]*)+")


class NotPortable(ValueError):
    """The head holds a type `load_head` would refuse; keep it as a pickle."""


def dump_head(path: Path, estimator, metadata: dict[str, Any]) -> None:
    """Writes `{"estimator", "metadata"}` with skops, atomically.

    Raises:
        NotPortable: the head holds types `load_head` does not trust.
    """
    import skops.io as sio

    data = sio.dumps({"estimator": estimator, "metadata": metadata})
    refused = untrusted_types(sio.get_untrusted_types(data=data))
    if refused:
        raise NotPortable(f"the head holds types a bundle cannot load safely: {', '.join(refused)}")
    with _atomic.replacing(path) as tmp:
        tmp.write_bytes(data)


def write_run_head(path: Path, estimator, metadata: dict[str, Any]) -> str | None:
    """Writes a run folder's `head.skops` beside its pickle; returns its sha256, or `None` when not portable.

    A head skops cannot hold safely gets no file: its run then loads only
    with `trust=True`, which says why.
    """
    try:
        dump_head(path, estimator, metadata)
    except NotPortable:
        return None
    return file_sha256(path)


def load_head(path: Path, *, expected_sha256: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Loads a head written by `dump_head`, refusing any type outside the policy.

    Args:
        path: the `head.skops` file.
        expected_sha256: the sha256 its run recorded, checked against the
            very bytes loaded (a changed or mixed-up file, not an attacker).
            Defaults to `None` (a bundle's manifest checked it already).

    Returns:
        Tuple `(estimator, metadata)`.

    Raises:
        RunError: the file is not a skops file of a head, or holds a type
            that is not trusted (nothing was built from it).
    """
    import skops.io as sio

    data = Path(path).read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise RunError(
            f"Head file '{path}' does not have the sha256 its run recorded ({expected_sha256[:12]}...): it changed "
            "after training, or belongs to another run. Train the head again."
        )
    try:
        found = sio.get_untrusted_types(data=data)
    except Exception as e:  # a damaged or foreign zip: skops raises many kinds
        raise RunError(f"Head file '{path}' is not a skops file ({type(e).__name__}: {e}).") from None
    refused = untrusted_types(found)
    if refused:
        raise RunError(
            f"Refusing to load head file '{path}': it holds types that are not scikit-learn or bottleneck "
            f"heads ({', '.join(refused)}); nothing was built from it. Use a bundle exported by bottleneck."
        )
    try:
        payload = sio.loads(data, trusted=found)
    except Exception as e:
        raise RunError(f"Head file '{path}' could not be loaded ({type(e).__name__}: {e}).") from None
    if not (isinstance(payload, dict) and {"estimator", "metadata"} <= set(payload)):
        raise RunError(f"Head file '{path}' does not hold a head (expected 'estimator' and 'metadata').")
    return payload["estimator"], payload["metadata"]


def untrusted_types(names) -> list[str]:
    """The names among `names` that the policy of the module doc refuses."""
    return sorted(name for name in names if not _trusted(name))


def _trusted(name: str) -> bool:
    if name in _OWN:
        return True
    if not _SKLEARN_NAME.fullmatch(name):
        return False
    module_name, _, attribute = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    cls = getattr(module, attribute, None)
    # A class defined in that very module: no function, no re-exported `os`.
    return isinstance(cls, type) and cls.__module__ == module_name and cls.__qualname__ == attribute
