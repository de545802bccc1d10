"""Features stage: run a frozen backbone once over an image folder, into the store.

Entry point: `extract_features(config=...)`. A run with nothing to do answers
from file sizes and mtimes alone and never imports Keras; otherwise it
extracts only the images that no complete shard holds yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import config as config_lib
from .._versions import library_versions
from . import augment, backbones, decode, ray_engine, rounds, sources
from .discovery import ImageEntry
from .identity import feature_set_dir, records_this_folder
from ..errors import ConfigError, DataError
from ..store import FeatureStore, IndexRow, SkippedFile, feature_key, shown_path
from ..store.lookup import view_set_dir
from ..store.splits import duplicates_across_splits, duplicates_note

# Bump whenever the numbers written for the same spec change.
FEATURES_VERSION = 1

log = logging.getLogger("bottleneck")


@dataclasses.dataclass(frozen=True)
class ExtractResult:
    """What one run of the features stage did.

    Attributes:
        path: the feature set's index file, to pass to `train-head`.
        counts: images `extracted` now, `reused` from earlier runs,
            `skipped` (undecodable) and `removed` since the last run; with
            `augment`, also the augmented `views` extracted now.
        seconds: wall time of the whole run.
        images_per_second: extracted rows (images, and augmented views)
            over the time from the start of decoding to the last row written
            (model build excluded); `None` when nothing was extracted.
        skipped: every skipped file with its reason.
        dataset_summary: "Found N images in K classes." and notes.
        feature_shape: shape of one image's features.
        quarantined: damaged shards found and set aside (their images were
            extracted again).
        label_conflicts: files with the same content under different
            classes, one tuple of paths (the first of each class) per
            content: probably labelling mistakes, and they poison training.
        split_duplicates: exact copies (same content) in more than one
            split, one tuple of paths per content: with split folders, by
            folder; otherwise copies whose split keys differ, so the split
            fractions may put them apart. Test scores then read too high.
        worker: `(shard_index, num_shards)` for a worker of a sharded
            extraction, which writes shards only: `path` is then the index
            a plain run writes once every worker is done. `None` otherwise.
    """

    path: Path
    counts: dict[str, int]
    seconds: float
    images_per_second: float | None
    skipped: list[SkippedFile]
    dataset_summary: str
    feature_shape: tuple[int, ...]
    quarantined: list[str]
    label_conflicts: tuple[tuple[str, ...], ...] = ()
    worker: tuple[int, int] | None = None
    split_duplicates: tuple[tuple[str, ...], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            **({"worker": {"shard_index": self.worker[0], "num_shards": self.worker[1], "index_written": False}}
               if self.worker else {}),
            "path": str(self.path),
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "images_per_second": None if self.images_per_second is None else round(self.images_per_second, 2),
            "feature_shape": list(self.feature_shape),
            "dataset_summary": self.dataset_summary,
            "skipped": [{"path": s.relpath, "reason": s.reason} for s in self.skipped],
            "quarantined": self.quarantined,
            "label_conflicts": [list(paths) for paths in self.label_conflicts],
            "split_duplicates": {"count": len(self.split_duplicates),
                                 "examples": [list(paths) for paths in self.split_duplicates[:5]]},
        }


def feature_spec(config: config_lib.ExtractConfig) -> dict[str, Any]:
    """Everything that changes the extracted numbers, and nothing else."""
    cfg = backbones.get_backbone_cfg(config.model)
    # The config's key fields (declared `key=True`) as set, but these four resolved by the backbone's source first.
    resolved = {
        "model": ("backbone", backbones.spec_row(cfg)),
        "weights": ("weights", backbones.weights_identity(config.weights, cfg)),
        "size": ("size", backbones.resolve_size(cfg, config.size)),
        "pooling": ("pooling", backbones.resolve_pooling(cfg, config.pooling, config.layer)),
    }
    return {
        "features_version": FEATURES_VERSION,
        **dict(resolved.get(name, (name, getattr(config, name))) for name in config_lib.key_fields(config)),
        "decoder": decode.decoder_id(config.decoder),
        "keras_major": importlib.metadata.version("keras").split(".")[0],
    }


def extract_features(
    *,
    config: config_lib.ExtractConfig,
    progress: Callable[[int, int], None] | None = None,
) -> ExtractResult:
    """Extracts and caches the features of every image under `config.data`.

    Args:
        config: the resolved `ExtractConfig`.
        progress: called as `progress(done, total)` after each batch of
            newly extracted images. Defaults to `None`.

    Returns:
        An `ExtractResult`.

    Raises:
        DataError: the data folder is missing or holds no decodable images.
        ConfigError: an unknown model or layer, or a size below the
            model's minimum; its `field` names the config field.
        WeightsUnavailableError: the weights cannot be had.
        WriteError: the feature set cannot be written (disk full, ...).
    """
    return extract_many([config], progress=progress)[0]


def extract_many(
    configs: Sequence[config_lib.ExtractConfig],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[ExtractResult]:
    """Extracts several feature sets of one folder in a single pass.

    Backbones that share an input size share one decoding stream, so each
    image is read and decoded once per size however many backbones run.
    The configs must name the same data folder. Its summary ("Found N
    images in K classes.") is logged at INFO as soon as it is listed, before
    any work; contents found under several classes are logged as warnings.

    Args:
        configs: one resolved `ExtractConfig` per feature set.
        progress: as in `extract_features`, counted over all images that
            any of the backbones still needs.

    Returns:
        One `ExtractResult` per config, in order.
    """
    results = _extract_many(configs, progress)
    for paths in sorted({paths for result in results for paths in result.label_conflicts}):
        log.warning("Same image content in %d classes, probably a labelling mistake: %s",
                    len(paths), " and ".join(f"'{shown_path(p)}'" for p in paths))
    for result in results:
        if result.split_duplicates:
            log.warning("%s", duplicates_note(result.split_duplicates, may=True))
    return results


def _extract_many(configs, progress) -> list[ExtractResult]:
    started = time.perf_counter()
    if len({Path(c.data).resolve() for c in configs}) != 1:
        raise ConfigError(
            "`configs` must all name the same `data` folder. Received: data="
            + ", ".join(sorted({c.data for c in configs})) + ". Extract each folder on its own.",
            field="data",
        )
    if any(c.engine == "ray" for c in configs):
        ray_engine.require_ray()  # before anything is written
    clean = [(c, feature_spec(c)) for c in configs]
    source = sources.open_source(configs[0].data)
    if any(c.engine == "ray" for c in configs):
        ray_engine.check_source(source)
    dataset = source.list()
    log.info("%s", dataset.summary())  # now, not after minutes of extraction
    roots = [feature_set_dir(c, spec, feature_key(spec)) for c, spec in clean]
    per_set = [_view_jobs(c, spec, root, dataset) for (c, spec), root in zip(clean, roots)]
    views = [view for jobs_of_set in per_set for view in jobs_of_set]
    jobs = clean + [(c, spec) for c, spec, _, _ in views]
    datasets = [dataset] * len(clean) + [d for _, _, d, _ in views]
    stores = [FeatureStore(root) for root in roots + [root for _, _, _, root in views]]
    # A set taken over from a moved folder is rewritten, to record where its images are now.
    current = [records_this_folder(store, dataset.root, config) for store, (config, _) in zip(stores, jobs)]
    results: list[ExtractResult | None] = [
        _answer_if_up_to_date(store, data, config, feature_key(spec), started) if ok else None
        for store, data, (config, spec), ok in zip(stores, datasets, jobs, current)
    ]
    if all(results):
        return _with_views(results, configs, [len(v) for v in per_set])
    hashed: dict[str, str] = {}  # file sha256s, computed once for all backbones
    with contextlib.ExitStack() as locks:
        plans = []
        # Locks are taken in path order so that two multi-backbone runs can't deadlock.
        for i in sorted((i for i, r in enumerate(results) if r is None), key=lambda i: str(stores[i].root)):
            store, (config, spec) = stores[i], jobs[i]
            locks.enter_context(store.write_lock(shared=config.num_shards > 1, on_wait=lambda holder, root=store.root: log.warning(
                "Waiting for %s to finish writing %s ...", holder, root)))
            current[i] = records_this_folder(store, dataset.root, config)  # again, now that no one else writes
            if current[i]:
                results[i] = _answer_if_up_to_date(store, datasets[i], config, feature_key(spec), started)
            if results[i] is None:
                plans.append((i, _plan(store, source, datasets[i], config, spec, hashed)))
        for size in sorted({plan.spec["size"] for _, plan in plans}):
            group = [plan for _, plan in plans if plan.spec["size"] == size and plan.todo]
            if group:
                (ray_engine.run_plans if group[0].config.engine == "ray" else _run_models)(group, dataset, progress)
        for i, plan in plans:
            results[i] = (_finish(plan, datasets[i], started) if plan.config.num_shards == 1
                          else _worker_result(plan, datasets[i], started))
    return _with_views(results, configs, [len(v) for v in per_set])


def _view_jobs(config, spec, root: Path, dataset) -> list:
    """`(config, spec, dataset, folder)` of each augmented view set of one clean set.

    A view's spec is the clean spec plus its ops, seed and index, so views
    of other ops or seeds never mix. With split folders only `train/`
    images get views: the others are never trained on.
    """
    if not config.augment:
        return []
    ops = augment.format_augment_ops(augment.parse_augment_ops(config.augment_ops))
    entries = tuple(e for e in dataset.entries if e.folder_split in ("", "train"))
    if not entries:
        return []
    trained = dataclasses.replace(dataset, entries=entries)
    return [
        (config, {**spec, "augment": {"ops": ops, "seed": config.augment_seed, "view": view}}, trained,
         view_set_dir(root, ops=ops, seed=config.augment_seed, view=view))
        for view in range(1, config.augment + 1)
    ]


def _with_views(results: list[ExtractResult], configs, n_views: list[int]) -> list[ExtractResult]:
    """The clean sets' results, each counting the views extracted for it (the view results follow them)."""
    views = iter(results[len(configs):])
    merged = []
    for config, result, n in zip(configs, results, n_views):
        mine = [next(views) for _ in range(n)]
        if config.augment:  # only then: the counts of a run without views are unchanged
            counts = {**result.counts, "views": sum(r.counts["extracted"] for r in mine)}
            # The clean set may have been up to date at once; the run lasted until its views were written.
            seconds = max([result.seconds] + [r.seconds for r in mine])
            # Views and clean rows come from one pass, so their rates add up to the pass's rows per second.
            rates = [r.images_per_second for r in [result, *mine] if r.images_per_second]
            result = dataclasses.replace(result, counts=counts, seconds=seconds,
                                         images_per_second=sum(rates) if rates else None)
        merged.append(result)
    return merged


def _answer_if_up_to_date(store: FeatureStore, dataset, config, key: str, started: float) -> ExtractResult | None:
    """The result of a run with nothing to do, or `None` when there is work.

    Cheap first: file sizes and mtimes of the images and the shards, and
    each row's label, split and split key (a manifest edit). Only
    shards whose mtime moved (or all, with `config.verify`) are read to
    check their checksums, so a no-op costs the same at any cache size.
    """
    state = store.read_index_state()
    if state is None or state.feature_key != key or state.class_names != tuple(dataset.class_names):
        return None
    known = state.fingerprints()
    if len(known) != len(dataset.entries) or any(known.get(e.relpath) != (e.size, e.mtime_ns) for e in dataset.entries):
        return None  # compared item by item: no second dict of the listing
    if any(state.files[e.relpath].labelling != (e.label, e.folder_split, e.split_key)
           for e in dataset.entries if e.relpath in state.files):
        return None  # a manifest edit (label, split, group): re-indexed, nothing re-extracted
    if not store.shards_unchanged(state, verify=config.verify):
        return None
    skipped = list(state.skipped.values())
    counts = {"extracted": 0, "reused": len(state.files), "skipped": len(skipped), "removed": 0}
    digest_of = {path: f.sha256 for path, f in state.files.items()}
    conflicts = _label_conflicts(dataset, digest_of)
    return ExtractResult(
        store.index_path, counts, time.perf_counter() - started, None, skipped, _summary(dataset, conflicts),
        state.feature_shape, [], conflicts, split_duplicates=_split_duplicates(dataset, digest_of),
    )


def _plan(store: FeatureStore, source, dataset, config, spec, hashed: dict[str, str]) -> rounds.Plan:
    """Fingerprints the folder and finds the images no complete shard holds.

    `hashed` caches file sha256s by relative path across the plans of one run.
    """
    key = feature_key(spec)
    worker = config.num_shards > 1
    if not worker:  # other workers' shards in progress look like leftovers
        store.clean_temporary()
    state = store.read_index_state()
    known = state.fingerprints() if state else {}
    known_files = state.files if state else {}
    known_skips = state.skipped if state else {}

    located, unreadable = store.scan_shards(key)
    damaged = sorted(set(unreadable) | set(store.verify_shards(sorted({n for n, _ in located.values()}))))
    if damaged:
        log.warning("Damaged shards set aside and re-extracted: %s", ", ".join(damaged))
        if not worker:  # a worker leaves them for the plain run that writes the index
            store.quarantine(damaged)
        located = {d: loc for d, loc in located.items() if loc[0] not in damaged}

    # Items behind a network are read once: hashed by the decoder from the bytes it decodes (`rounds.unread`).
    # Ray and the workers of a sharded run need digests now (to send rows, to pick a worker): read ahead.
    read_once = not source.is_local and config.engine == "local" and not worker
    if not read_once:  # many at a time (a no-op for local files)
        source.hash_ahead([e.relpath for e in dataset.entries
                           if known.get(e.relpath) != (e.size, e.mtime_ns) and e.relpath not in hashed])
    digests: dict[str, str] = {}
    skipped: dict[str, SkippedFile] = {}
    for entry in dataset.entries:
        unchanged = known.get(entry.relpath) == (entry.size, entry.mtime_ns) and entry.size >= 0
        if unchanged and entry.relpath in known_skips:
            skipped[entry.relpath] = known_skips[entry.relpath]
        elif unchanged and entry.relpath in known_files:
            digests[entry.relpath] = known_files[entry.relpath].sha256
        elif read_once and entry.relpath not in hashed:
            digests[entry.relpath] = rounds.unread(entry.relpath)
        else:
            try:
                if entry.relpath not in hashed:
                    hashed[entry.relpath] = source.sha256(entry.relpath)
                digests[entry.relpath] = hashed[entry.relpath]
            except OSError as e:
                # No fingerprint: `chmod` leaves the mtime alone, so a remembered skip would never be retried.
                skipped[entry.relpath] = SkippedFile(entry.relpath, _os_reason(e), -1, -1)

    todo = [e for e in dataset.entries if e.relpath in digests and digests[e.relpath] not in located]
    if worker:
        todo = [e for e in todo if worker_of(digests[e.relpath], config.num_shards) == config.shard_index]
    feature_shape = store.shard_feature_shape(next(iter(located.values()))[0]) if located else ()
    return rounds.Plan(
        store, config, spec, key, set(known), digests, skipped, located, todo, damaged, feature_shape=feature_shape,
        root=dataset.root, stored_before=frozenset(located),
    )


def _finish(plan: rounds.Plan, dataset, started: float) -> ExtractResult:
    """Writes the index of a plan whose images have all been extracted or skipped."""
    skipped = dict(plan.skipped)
    kept, locations = [], []
    for entry in dataset.entries:
        digest = plan.digests.get(entry.relpath)
        if entry.relpath in plan.changed:
            # No fingerprint, so the next run hashes the file again instead of remembering this skip.
            skipped[entry.relpath] = SkippedFile(entry.relpath, plan.changed[entry.relpath], -1, -1)
        elif digest in plan.failed:
            skipped[entry.relpath] = SkippedFile(entry.relpath, plan.failed[digest], entry.size, entry.mtime_ns)
        elif digest is not None:
            kept.append(entry)
            locations.append(plan.located[digest])
    rows = _IndexRows(kept, plan.digests)
    if not rows:
        raise DataError(
            f"None of the {len(dataset.entries)} images under '{dataset.root}' could be decoded; "
            "nothing was written. First reasons: "
            + "; ".join(f"{s.relpath}: {s.reason}" for s in list(skipped.values())[:3])
        )
    skipped_list = [skipped[e.relpath] for e in dataset.entries if e.relpath in skipped]
    # `located` grows only by what this run decoded: a row is new when its content was not stored before.
    n_extracted = sum(1 for r in rows if r.sha256 not in plan.stored_before)
    counts = {
        "extracted": n_extracted,
        "reused": len(rows) - n_extracted,
        "skipped": len(skipped_list),
        "removed": len(plan.previous - {e.relpath for e in dataset.entries}),
    }
    attrs = {
        "feature_key": plan.key,
        "spec": plan.spec,
        "config": config_lib.to_dict(plan.config),
        "backbone": plan.config.model,
        "weights": plan.spec["weights"],
        "decoder": plan.spec["decoder"],
        "data_root": str(dataset.root),
        "backend": _keras_backend(),
        "versions": library_versions(),
        "timings": {**plan.timings, "run_seconds": time.perf_counter() - started},
        "counts": counts,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    plan.store.write_index(
        rows, locations, skipped_list, dataset.class_names,
        feature_shape=plan.feature_shape, dtype=plan.config.storage_dtype, attrs=attrs,
    )
    plan.store.delete_unreferenced_shards([name for name, _ in locations])
    seconds = plan.timings.get("extract_seconds")
    digest_of = {row.relpath: row.sha256 for row in rows}
    conflicts = _label_conflicts(dataset, digest_of)
    return ExtractResult(
        plan.store.index_path, counts, time.perf_counter() - started, n_extracted / seconds if seconds and n_extracted else None,
        skipped_list, _summary(dataset, conflicts), tuple(plan.feature_shape), plan.damaged, conflicts,
        split_duplicates=_split_duplicates(dataset, digest_of),
    )


class _IndexRows(Sequence):
    """The index rows of `entries`, each built when it is read: the index is written while the
    listing, digests and shard rows are all held, so one more object per image would be the peak."""

    def __init__(self, entries: list[ImageEntry], digests: dict[str, str]):
        self._entries, self._digests = entries, digests

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> IndexRow:
        e = self._entries[i]
        return IndexRow(e.relpath, e.label, e.folder_split, e.split_key, e.size, e.mtime_ns, self._digests[e.relpath])


def worker_of(digest: str, num_shards: int) -> int:
    """The worker of a sharded extraction that extracts this content.

    By content hash, not path: copies of one picture go to one worker, so
    no two workers store the same content, and parts stay even whatever
    the folder layout or manifest groups.
    """
    return int(digest[:16], 16) % num_shards


def _worker_result(plan: rounds.Plan, dataset, started: float) -> ExtractResult:
    """What a worker of a sharded extraction did; it writes no index."""
    mine = {plan.digests[e.relpath] for e in plan.todo} & set(plan.located)
    failed = [
        SkippedFile(e.relpath, plan.failed.get(plan.digests[e.relpath]) or plan.changed[e.relpath], e.size, e.mtime_ns)
        for e in plan.todo
        if plan.digests[e.relpath] in plan.failed or e.relpath in plan.changed
    ]
    seconds = plan.timings.get("extract_seconds")
    return ExtractResult(
        plan.store.index_path, {"extracted": len(mine), "reused": 0, "skipped": len(failed), "removed": 0},
        time.perf_counter() - started, len(mine) / seconds if seconds and mine else None, failed,
        dataset.summary(), tuple(plan.feature_shape), plan.damaged,
        worker=(plan.config.shard_index, plan.config.num_shards),
    )


def _run_models(plans: Sequence[rounds.Plan], dataset, progress) -> None:
    """Decodes the images any plan needs once, and streams each model's features into its shards."""
    first = plans[0].config
    with contextlib.ExitStack() as stack:
        if first.runtime == "keras":  # replicas are Keras' data parallelism; other runtimes run on the CPU
            stack.enter_context(backbones.replicas(first.devices))
        built: dict[str, Any] = {}
        models = [rounds.build_model(plan, built) for plan in plans]
        done, total, decoding_started = 0, 0, time.perf_counter()
        shards = [
            stack.enter_context(plan.store.shard_appender(
                plan.key, plan.feature_shape, plan.config.storage_dtype, plan.config.shard_size))
            for plan in plans
        ]
        # One round, unless a file changed after it was hashed: another file planned
        # with the same content then stands in for it in the next round.
        while todo := rounds.next_round(plans):
            total += len(todo)
            for entries, images, failures, digests in decode.decode_batches(
                dataset.root, todo, plans[0].spec["size"], first.batch_size, first.workers, return_digests=True,
                mode=first.decode_mode, decoder=first.decoder,
            ):
                for plan, model, appender in zip(plans, models, shards):
                    rounds.store_batch(plan, model, appender, entries, images, failures, digests)
                done += len(entries) + len(failures)
                if progress is not None:
                    progress(done, total)
    for plan in plans:
        plan.timings["extract_seconds"] = time.perf_counter() - decoding_started


def _label_conflicts(dataset, digest_of: dict[str, str]) -> tuple[tuple[str, ...], ...]:
    """The first path in each class of every content found under several classes."""
    first: dict[str, ImageEntry] = {}  # an entry per content, no dict: copies are rare, images many
    classes_of: dict[str, dict[int, str]] = {}  # only the contents found under two classes
    for entry in dataset.entries:
        digest = digest_of.get(entry.relpath)
        seen = first.setdefault(digest, entry) if digest is not None else entry
        if seen.label != entry.label:
            classes_of.setdefault(digest, {seen.label: seen.relpath}).setdefault(entry.label, entry.relpath)
    return tuple(sorted(tuple(paths.values()) for paths in classes_of.values()))


def _split_duplicates(dataset, digest_of: dict[str, str]) -> tuple[tuple[str, ...], ...]:
    """The paths of each content held in more than one split (by folder, else by split key)."""
    entries = [e for e in dataset.entries if e.relpath in digest_of]
    splits = [e.folder_split if dataset.has_folder_splits else e.split_key for e in entries]
    rows = duplicates_across_splits([digest_of[e.relpath] for e in entries], splits)
    return tuple(tuple(entries[i].relpath for i in group) for group in rows)


def _summary(dataset, conflicts) -> str:
    """The dataset's summary, plus a note on contents found under several classes."""
    if not conflicts:
        return dataset.summary()
    shown = "; ".join(" = ".join(f"'{shown_path(p)}'" for p in paths) for paths in conflicts[:3])
    more = f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
    return (
        f"{dataset.summary()} {len(conflicts)} image content{'s are' if len(conflicts) > 1 else ' is'} "
        f"found under several classes, probably labelling mistakes that poison training: {shown}{more}."
    )


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied: cannot read the file (fix its permissions or remove it)"
    if isinstance(e, FileNotFoundError):
        return "file not found: it was deleted or moved after the folder was listed, or it is a broken symlink"
    return f"cannot read the file: {e.strerror or e}"


def _keras_backend() -> str:
    """The backend Keras will use, without importing Keras."""
    import json

    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return json.loads(config.read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"
