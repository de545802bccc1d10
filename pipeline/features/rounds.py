"""The rounds both engines run: what a feature set still needs, and storing a decoded batch.

The driver works out a `Plan` per feature set under its write lock; the
local engine (`extract`) and the Ray engine (`ray_engine`) then run
`next_round` until nothing is left, storing each decoded batch with
`store_batch` and building each base once with `build_model`. Shared here so
that neither engine imports the other.
"""

from __future__ import annotations

import dataclasses
import heapq
import operator
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import config as config_lib
from ..errors import WeightsUnavailableError
from ..store import FeatureStore, SkippedFile, feature_key
from . import augment, backbones, decode, runtimes

__all__ = ["CHANGED", "NOT_FINITE", "Plan", "build_model", "next_round", "store_batch", "unread"]

CHANGED = "changed while it was being extracted; run again"
NOT_FINITE = (
    "the backbone gave NaN or infinite features for this image, so it is not stored (check the weights "
    "and precision; a float16 base can overflow)"
)

_UNREAD = "unread:"  # never a hex digest, so never located, failed or stored


def unread(relpath: str) -> str:
    """The planned digest of an item hashed only when it is decoded, until then.

    Items behind a network are read once: the decoder hashes the bytes it
    decodes, and `store_batch` takes that digest as the planned one. Unique
    per item, so `next_round` claims each such item for decoding.
    """
    return _UNREAD + relpath


@dataclasses.dataclass
class Plan:
    """What one feature set needs, worked out under its write lock."""

    store: FeatureStore
    config: config_lib.ExtractConfig
    spec: dict[str, Any]
    key: str
    previous: set[str]
    digests: dict[str, str]
    skipped: dict[str, SkippedFile]
    located: dict[str, tuple[str, int]]
    todo: list
    damaged: list[str]
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # by digest: the content cannot be decoded
    changed: dict[str, str] = dataclasses.field(default_factory=dict)  # by path: the file is not what was hashed
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    feature_shape: tuple[int, ...] = ()
    # What the entries' relpaths are under (a Path, or a source's `items.ItemRoot`): views that crop read items again.
    root: Any = Path()
    # Contents whose features were stored before this run: an `unread` item may turn out to be one (renamed).
    stored_before: frozenset[str] = frozenset()

    def needs(self, relpath: str) -> bool:
        """Whether decoding this file could still give the plan features it lacks."""
        digest = self.digests.get(relpath)
        return (
            digest is not None and relpath not in self.changed
            and digest not in self.located and digest not in self.failed
        )


def build_model(plan: Plan, built: dict[str, Any]):
    """The plan's extractor; built once per clean spec, as its views run the same model on other pixels."""
    clean_key = feature_key({k: v for k, v in plan.spec.items() if k != "augment"})
    if clean_key in built:
        plan.feature_shape = tuple(int(d) for d in built[clean_key].output_shape[1:])
        return built[clean_key]
    t0 = time.perf_counter()
    model = runtimes.prepare(plan.config.runtime, lambda: _build_keras(plan), cache_dir=plan.config.cache_dir,
                             key=clean_key)
    plan.timings["model_build_seconds"] = time.perf_counter() - t0
    plan.feature_shape = tuple(int(d) for d in model.output_shape[1:])
    built[clean_key] = model
    return model


def _build_keras(plan: Plan):
    cfg = backbones.get_backbone_cfg(plan.config.model)
    model = backbones.build_extractor(
        cfg,
        size=plan.spec["size"],
        weights=plan.config.weights,
        pooling=plan.config.pooling,
        layer=plan.config.layer,
        precision=plan.config.precision,
    )
    if backbones.weights_identity(plan.config.weights, cfg) != plan.spec["weights"]:
        # The features would be stored under the key of the weights hashed before.
        raise WeightsUnavailableError(
            f"Weights file '{plan.config.weights}' changed while it was being loaded; nothing was "
            "extracted with it. Run again once it is written.",
            field="weights",
        )
    return model


def next_round(plans: Sequence[Plan]) -> list:
    """One file, in path order, for each content some plan still needs."""
    claimed, chosen, last = set(), [], None
    # Each plan's todo is in path order (the dataset's): merged, with no copy of the listing.
    for entry in heapq.merge(*(plan.todo for plan in plans), key=_relpath):
        relpath = entry.relpath
        if relpath == last:
            continue
        last = relpath
        claims = {(i, plan.digests[relpath]) for i, plan in enumerate(plans) if plan.needs(relpath)}
        if claims - claimed:
            claimed |= claims
            chosen.append(entry)
    return chosen


_relpath = operator.attrgetter("relpath")


def store_batch(plan: Plan, model, appender, entries, images, failures, digests) -> None:
    """Appends the features a plan needs from one decoded batch.

    A row is stored under its planned digest only if that is the digest of
    the bytes decoded: a file replaced since it was hashed is set aside for
    this run, never stored under the content it no longer has. An item
    planned as `unread` gets the digest of the bytes decoded (an item that
    could not be read keeps the stand-in, and is set aside with its reason).
    """
    for relpath, digest in digests.items():
        if digest is not None and plan.digests.get(relpath, "").startswith(_UNREAD):
            plan.digests[relpath] = digest
    mine, taken = [], set()
    for i, entry in enumerate(entries):
        planned = plan.digests.get(entry.relpath)
        if not plan.needs(entry.relpath) or planned in taken:
            continue
        if digests[entry.relpath] == planned:
            mine.append(i)
            taken.add(planned)
        else:
            plan.changed[entry.relpath] = CHANGED
    for entry, reason in failures:
        if plan.needs(entry.relpath):
            planned = plan.digests[entry.relpath]
            if digests[entry.relpath] == planned:
                plan.failed[planned] = reason  # the same bytes fail alike in every copy
            else:  # unreadable now, or other bytes: this file's problem, not its planned content's
                plan.changed[entry.relpath] = CHANGED if digests[entry.relpath] else reason
    if mine:
        # Most batches are wanted whole: skip the copy fancy indexing makes.
        batch = images if len(mine) == len(entries) else images[mine]
        stored = [plan.digests[entries[i].relpath] for i in mine]
        view = plan.spec.get("augment")
        if view is not None:
            batch, stored, mine = _view_batch(plan, view, batch, stored, mine, entries)
            if not mine:
                return
        features = backbones.predict_batches(model, batch, plan.config.batch_size)
        features, stored, mine = _finite_rows(plan, features, stored, mine)
        if not mine:
            return
        locations = appender.append(
            features, stored, [entries[i].relpath for i in mine]  # the store checks the cast to storage_dtype
        )
        plan.located.update(zip(stored, locations))


def _view_batch(plan: Plan, view: dict[str, Any], batch, stored: list[str], mine: list[int], entries):
    """The view's images of a decoded batch; ops that crop read each file again, to crop before the resize.

    A file whose bytes are no longer those hashed is set aside, as in `store_batch`.
    """
    ops = augment.parse_augment_ops(view["ops"])
    decoded = None
    if augment.needs_decoded(ops):
        size = augment.decoded_size(ops, plan.spec["size"])
        decoded, keep = [], []
        for k, (i, digest) in enumerate(zip(mine, stored)):
            try:
                image, read = decode.load_decoded(plan.root / entries[i].relpath, size)
            except decode.DecodeError:
                read = None
            if read != digest:
                plan.changed[entries[i].relpath] = CHANGED
                continue
            decoded.append(image)
            keep.append(k)
        batch, stored, mine = batch[keep], [stored[k] for k in keep], [mine[k] for k in keep]
    images = augment.apply_view(batch, stored, ops=ops, seed=view["seed"], view=view["view"], decoded=decoded)
    return images, stored, mine


def _finite_rows(plan: Plan, features, stored: list[str], mine: list[int]):
    """Drops rows with a NaN or infinite feature, recording each as failed: never stored, never trained on."""
    finite = np.isfinite(features.reshape(len(features), -1)).all(axis=1)
    if finite.all():
        return features, stored, mine
    for digest in np.asarray(stored)[~finite]:
        plan.failed[str(digest)] = NOT_FINITE
    keep = np.flatnonzero(finite)
    return features[keep], [stored[i] for i in keep], [mine[i] for i in keep]

