"""The Ray engine of the features stage (`engine="ray"`): extraction spread over a Ray cluster.

The driver plans as the local engine does, under the set's write lock
(`extract._plan`, a `rounds.Plan`). A Ray Data pipeline then decodes the planned items in CPU
tasks with the reference decoder and hands them, `shard_size` at a time, to a
pool of model workers (actors). Each builds the frozen base once and writes
every batch it gets as one complete shard through the store's
`ShardAppender` (a temporary name, renamed when complete), deciding what to
store exactly as the local engine does (`rounds.store_batch`). Workers send
back small rows only (status, digest, shard, row), never features. The driver
records them in its plans, and `extract._finish` writes the index once. A
killed worker or driver loses only the shards being written: the next run
finds every complete one with `scan_shards` and extracts the rest.

The engine reads what the local engine reads, except folders behind URLs:
local folders and manifests, WebDataset tar shards and Parquet image columns
(local or behind a URL). Each planned item travels to the decode tasks as its
locator, pickled: a local file's path, or the source's own reader of a tar
member or Parquet cell (`items.Reader`: a filesystem, a path and a byte range
or row), so a task reads exactly the bytes the local engine decodes, under the
same item id, and the driver never reads an image. Every node must see the
cache folder at the same path and reach the data at the same path or URL
(credentials from its own environment), and have this package and Ray installed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import logging
import os
import pickle
import socket
import time
from typing import Any, NamedTuple, Sequence

import numpy as np

from . import decode, rounds
from .items import ItemRoot
from ..errors import BottleneckError, ConfigError

__all__ = ["check_source", "require_ray", "run_plans"]

_INSTALL = "pip install 'ray[data]>=2.9' (or the `ray` extra: pip install 'bottleneck-features[ray]')"

log = logging.getLogger("bottleneck")

# How long joining a cluster may take before it is refused: Ray itself retries for minutes.
CONNECT_TIMEOUT_S = 10.0
_READS_IN_FLIGHT = 16  # items of a decode task read at once when they are behind a network


def require_ray() -> None:
    """Raises a `ConfigError` naming `engine` when Ray cannot be imported."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            f"`engine` 'ray' needs Ray, which is not installed. Install it with {_INSTALL}, "
            "or use engine='local'.",
            field="engine",
        )


# The sources the engine reads (`sources.SOURCES` rows): those whose items a task can read alone.
# A folder behind a URL would work the same way, but is listed and read by the local engine for now.
READS = ("tar-shards", "parquet-images", "manifest", "folder")


def check_source(source) -> None:
    """Raises a `ConfigError` naming `engine` when the engine does not read `source`'s kind of data."""
    if source.kind.name not in READS:
        raise ConfigError(
            f"`engine` ray reads local folders, manifests, tar shards and Parquet image columns; "
            f"'{source.name}' ({source.kind.name}) is read by the local engine: pass --engine local.",
            field="engine",
        )


def run_plans(plans: Sequence, dataset, progress) -> None:
    """Extracts what `plans` (of one input size) still need on a Ray cluster; fills in each plan.

    Like `extract._run_models`: one round unless a file changed after it
    was hashed, when another file planned with the same content stands in
    for it in the next round.
    """
    config = plans[0].config
    started, done, total = time.perf_counter(), set(), 0
    with _cluster(config), _progress_bars_off():
        while todo := rounds.next_round(plans):
            total += len(todo)
            results = _pipeline(plans, todo, dataset.root, config).iter_batches(batch_size=None, batch_format="numpy")
            for batch in results:
                done |= _record(plans, batch)
                if progress is not None:
                    progress(len(done), total)
    for plan in plans:
        plan.timings["extract_seconds"] = time.perf_counter() - started
        if not plan.feature_shape and plan.located:  # no model was built here: read it off a new shard
            plan.feature_shape = plan.store.shard_feature_shape(next(iter(plan.located.values()))[0])


@contextlib.contextmanager
def _cluster(config):
    """Joins the cluster `config.ray_address` (or RAY_ADDRESS) names, or starts a local one; leaves it as found.

    Ray retries an address where nothing answers for minutes, so a
    HOST:PORT or ray:// address is first tried with a plain TCP connect
    bounded by `CONNECT_TIMEOUT_S`; that and Ray's own refusals ("auto"
    without a cluster, a malformed address) are `ConfigError`s naming it.
    """
    import ray
    import ray.data  # now: its import sets up the loggers quieted below

    verbose = log.isEnabledFor(logging.DEBUG)
    with _ray_logs_shown(verbose):
        if ray.is_initialized():  # the caller's session (a notebook, the tests): keep it
            yield
            return
        address, named = _address(config.ray_address)
        if address not in (None, "auto", "local"):
            _check_reachable(address, named)
        try:
            # Workers' logs (Keras banners, TensorFlow warnings) reach this terminal only when debugging.
            ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=verbose,
                     logging_level=logging.INFO if verbose else logging.ERROR)
        except (ConnectionError, ValueError) as e:  # "auto" without a cluster, a malformed address
            raise ConfigError(f"Cannot join the Ray cluster at {named}: {e}{_FIX}", field="ray_address") from None
        try:
            yield
        finally:
            ray.shutdown()


_FIX = (" Start one with `ray start --head`, pass its address (HOST:PORT, ray://HOST:PORT or 'auto'), "
        "or leave `ray_address` and RAY_ADDRESS unset for a local cluster.")


def _address(configured: str | None) -> tuple[str | None, str]:
    """The address Ray will join (the option, else RAY_ADDRESS, which Ray reads), and how to name it."""
    if configured:
        return configured, repr(configured)
    from_env = os.environ.get("RAY_ADDRESS") or None
    return from_env, f"{from_env!r} (from RAY_ADDRESS)"


def _check_reachable(address: str, named: str) -> None:
    """Refuses, within `CONNECT_TIMEOUT_S`, an address that is malformed or where nothing listens."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise ConfigError(f"`ray_address` {named} is not HOST:PORT, ray://HOST:PORT, 'auto' or 'local'.{_FIX}",
                          field="ray_address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(f"Cannot reach the Ray cluster at {named} within {CONNECT_TIMEOUT_S:g} s ({reason}).{_FIX}",
                          field="ray_address") from None


@contextlib.contextmanager
def _progress_bars_off():
    """Ray Data's own bars off while extracting (the caller shows progress), as found afterwards."""
    import ray.data

    context = ray.data.DataContext.get_current()
    before = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = before


@contextlib.contextmanager
def _ray_logs_shown(verbose: bool):
    """Ray logs each pipeline's plan and progress at INFO on its own handlers; as other libraries', they show when debugging."""
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _pipeline(plans: Sequence, todo: Sequence, root, config):
    """The Ray Data pipeline of one round: items -> decode tasks -> model workers -> result rows."""
    import ray.data

    size = plans[0].spec["size"]
    # Each item with its locator and the digest each plan planned for it ("" where a plan does not need
    # it), joined by commas: the rows carry what the workers need, so no worker is sent the whole plan.
    files = ray.data.from_items([
        {"item": _locator(root, e.relpath), "relpath": os.fsencode(e.relpath),
         "digests": ",".join(plan.digests[e.relpath] if plan.needs(e.relpath) else "" for plan in plans)}
        for e in todo
    ])
    return files.map_batches(
        _decode_batch, fn_kwargs={"size": size}, batch_size=config.batch_size, batch_format="numpy",
    ).map_batches(
        _ModelWorker,
        fn_constructor_kwargs={"plans": [_for_workers(plan) for plan in plans]},
        batch_size=config.shard_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.ray_workers),
        num_gpus=config.gpus_per_worker,
        # The base's threads are not counted, so decoding keeps every CPU Ray knows of and
        # a small cluster never waits forever for a CPU the workers hold.
        num_cpus=0,
    )


def _locator(root, relpath: str) -> bytes:
    """What a task reads an item by, pickled: the local file's path, or the source's reader of the item.

    Pickled by the driver (not left to Ray's object columns), so that a
    batch's column is plain bytes; a pickle ends with its STOP byte, never
    with the NULs numpy's fixed-width bytes would drop.
    """
    if isinstance(root, ItemRoot):  # not `root / relpath`: that starts reading the item here, on the driver
        return pickle.dumps(root.readers[relpath])
    return pickle.dumps(root / relpath)


class _BatchRoot(dict):
    """A worker's `plan.root`: relpath -> the item's path or reader, for the views that read items again."""

    def __truediv__(self, relpath: str):
        return self[relpath]


def _for_workers(plan):
    """A copy of `plan` without its per-item state: a worker is told per batch what to store and where it lives."""
    return dataclasses.replace(
        plan, previous=set(), digests={}, skipped={}, located={}, todo=[], damaged=[], failed={}, changed={}, timings={},
        root=_BatchRoot(),
    )


def _decode_batch(batch: dict[str, np.ndarray], *, size: int) -> dict[str, np.ndarray]:
    """Decodes items with the reference decoder; a failure is a row with its reason, never an error."""
    located = [pickle.loads(item) for item in batch["item"]]  # from this run's driver
    images, digests, reasons = [], [], []
    for image, digest, reason in _load_all(located, size):
        images.append(np.zeros((size, size, 3), np.uint8) if image is None else image)
        digests.append(digest or "")
        reasons.append(reason or "")
    return {
        "item": batch["item"],
        "relpath": batch["relpath"],
        "digests": batch["digests"],
        "image": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        "sha256": np.array(digests, dtype=object),
        "reason": np.array(reasons, dtype=object),
    }


def _load_all(located: list, size: int):
    """`decode._load_or_reason` of each item, in order; items behind a network many at a time.

    One by one, a task would wait out a store's latency per item (50 ms: 20
    items a second); local files are read in turn, as the task holds one CPU.
    """
    if all(isinstance(where, os.PathLike) for where in located):
        return [decode._load_or_reason(where, size) for where in located]
    with concurrent.futures.ThreadPoolExecutor(min(_READS_IN_FLIGHT, len(located))) as pool:
        return list(pool.map(lambda where: decode._load_or_reason(where, size), located))


class _Entry(NamedTuple):
    relpath: str


class _ModelWorker:
    """A Ray actor: builds the plans' bases once, then stores each batch as one shard per plan."""

    def __init__(self, plans: Sequence):
        built: dict[str, Any] = {}
        self._plans, self._error = plans, None
        try:
            self._models = [rounds.build_model(plan, built) for plan in plans]
        except BottleneckError as e:  # sent with the first batch's answer: see `__call__`
            self._error = e

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Ray passes an error on as its text only; a product error (an unknown layer, weights that cannot
        # be had, a full disk) is sent back whole, so that the driver raises it as the local engine would.
        try:
            if self._error is not None:
                raise self._error
            rows = self._store(batch)
        except BottleneckError as e:
            rows = [(-1, "error", b"", "", "", -1, "", pickle.dumps(e))]
        columns = dict(zip(_COLUMNS, zip(*rows))) if rows else dict.fromkeys(_COLUMNS, ())
        return {name: np.array(columns[name], dtype=dtype) for name, dtype in _COLUMNS.items()}

    def _store(self, batch: dict[str, np.ndarray]) -> list[tuple]:
        """Stores one batch as one shard per plan; returns the result rows."""
        entries = [_Entry(os.fsdecode(r)) for r in batch["relpath"]]
        ok = batch["reason"] == ""
        read = {e.relpath: d or None for e, d in zip(entries, batch["sha256"])}
        planned = [str(d).split(",") for d in batch["digests"]]
        decoded = [e for e, good in zip(entries, ok) if good]
        failures = [(e, reason) for e, reason, good in zip(entries, batch["reason"], ok) if not good]
        where = _BatchRoot((e.relpath, pickle.loads(item)) for e, item in zip(entries, batch["item"]))
        rows: list[tuple] = []
        for i, (plan, model) in enumerate(zip(self._plans, self._models)):
            # This batch's files only: a round names each content once, so no earlier batch had them.
            plan.digests = {e.relpath: d[i] for e, d in zip(entries, planned) if d[i]}
            plan.located, plan.failed, plan.changed = {}, {}, {}
            plan.root = where
            rows_in_shard = max(1, len(entries))  # the whole batch in one shard
            with plan.store.shard_appender(plan.key, plan.feature_shape, plan.config.storage_dtype, rows_in_shard) as shard:
                rounds.store_batch(plan, model, shard, decoded, batch["image"][ok], failures, read)
            rows += _result_rows(i, plan)
        return rows


_COLUMNS = {
    "plan": np.int32, "status": str, "relpath": object, "digest": str, "shard": str, "row": np.int64, "reason": str,
    "error": object,  # bytes held as objects: numpy's fixed-width bytes drop trailing NULs
}


def _result_rows(i: int, plan) -> list[tuple]:
    """What `rounds.store_batch` recorded in plan `i` of a worker, as rows for the driver."""
    by_digest = {d: r for r, d in plan.digests.items()}
    return (
        [(i, "stored", os.fsencode(by_digest[d]), d, shard, row, "", b"") for d, (shard, row) in plan.located.items()]
        + [(i, "failed", os.fsencode(by_digest[d]), d, "", -1, why, b"") for d, why in plan.failed.items()]
        + [(i, "changed", os.fsencode(r), "", "", -1, why, b"") for r, why in plan.changed.items()]
    )


def _record(plans: Sequence, batch: dict[str, np.ndarray]) -> set[str]:
    """Records result rows in the driver's plans; returns the files they answer for."""
    files = set()
    for i, status, relpath, digest, shard, row, reason, error in zip(*(batch[name] for name in _COLUMNS)):
        if status == "error":
            raise pickle.loads(error)  # from this run's own workers
        plan, relpath = plans[int(i)], os.fsdecode(relpath)
        files.add(relpath)
        if status == "stored":
            plan.located[digest] = (str(shard), int(row))
        elif status == "failed":
            plan.failed[digest] = str(reason)
        else:
            plan.changed[relpath] = str(reason)
    return files

