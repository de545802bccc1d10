"""CPU benchmark suite of the features and head stages: `make bench` (see docs/performance.md).

    python -m bench.run [--n 2000] [--speed-n 320] [--heavy-n 64] [--reps 3] ...

Sections, each measured side by side in one process run (figures are
ratios of runs made back to back, order alternating, medians over reps):

speed  seed 003's `extract_feature` loop vs `extract_features`, per model;
       model-alone and decode-alone ceilings.
multi  several backbones in one pass (`extract_many`, one decode per image)
       vs each backbone alone, on phone-sized JPEGs where decoding is the wall.
head   seconds to train the `logreg` head on cached features vs seconds to
       extract those features (N images, MobileNetV2 224, avg: 1280-d).
noop   `python -m pipeline features ...` re-run on the unchanged N-image
       set: counts, heavy modules imported, wall time.
rss    peak RSS of `python -m pipeline features` on N vs 10N images.
decode decode alone in threads vs worker processes on 500x375 and phone-sized
       JPEGs, the share of a decode that holds the GIL, and the projection
       of both to 8, 16 and 32 cores.
decoders  the reference decoder vs Pillow bilinear vs OpenCV per core, and the
       extraction loop vs the plain Keras pipeline and seed 003 (bench/decoders.py).
ray    the Ray engine (`--engine ray`) with 1 and 2 model workers on a local
       Ray cluster vs the local engine, on the same small JPEGs.
hub    a KerasHub ViT-S/14 (DINOv2-small's shape, random weights) through the
       pipeline vs the same model alone on the same decoded photos (bench/hub.py).

Prints a markdown report and writes it to `bench/results/<label>-<date>.md`
(with the raw numbers in `.json` beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import common, decoders
from bench import hub as bench_hub
from bench.common import fmt, fmt_ratio, med, table

SECTIONS = ("speed", "multi", "head", "noop", "rss", "decode", "decoders", "ray", "hub")
PROJECTED_CORES = (8, 16, 32)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _weights(model: str) -> str:
    """The real MobileNetV2 weights where the model has them here, random weights otherwise."""
    if model == "mobilenet_v2" and common.MOBILENET_V2_WEIGHTS.is_file():
        return str(common.MOBILENET_V2_WEIGHTS)
    return "none"


def _weights_label(weights: str) -> str:
    return "ImageNet (shared file)" if weights != "none" else "random"


@contextlib.contextmanager
def _dtype_policy(name: str):
    import keras

    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def _release() -> None:
    gc.collect()


def _extract(folder: Path, cache: Path, *, model: str, size: int, weights: str, precision: str, **options):
    from pipeline.config import ExtractConfig
    from pipeline.features.extract import extract_features

    shutil.rmtree(cache, ignore_errors=True)
    config = ExtractConfig(
        data=str(folder), model=model, size=size, weights=weights, precision=precision, cache_dir=str(cache), **options
    )
    return extract_features(config=config)


# -- warm-up -----------------------------------------------------------------------


def warm_up(workdir: Path, precision: str) -> None:
    """First use of the backend, h5py and the thread pools, out of every timed run."""
    from pipeline.features import backbones

    folder = common.prepare_real(workdir, 20)
    with _dtype_policy(precision):
        base = common.seed003_model("MobileNetV2", 32, None)
        common.seed003_extract(folder, 20, base, (32, 32))
    _extract(folder, workdir / "cache-warmup", model="mobilenet_v2", size=32, weights="none", precision=precision)
    model = backbones.build_extractor(backbones.get_backbone_cfg("mobilenet_v2"), size=32, weights="none", precision=precision)
    common.first_call_seconds(model, 32, 8)
    shutil.rmtree(workdir / "cache-warmup", ignore_errors=True)
    _release()


# -- speed (issue 5) ------------------------------------------------------------------


def speed(workdir: Path, model: str, size: int, n: int, reps: int, precision: str, alt_batch: int | None = None) -> dict:
    """Seed 003's loop vs `extract_features` on the same `n` images; ceilings.

    With `alt_batch`, `extract_features(batch_size=alt_batch)` runs as a third
    contender, in the same rotation.
    """
    from pipeline.features import backbones
    from pipeline.config import ExtractConfig

    cfg = backbones.get_backbone_cfg(model)
    weights = _weights(model)
    folder = common.prepare_real(workdir, n)
    paths = common.image_paths(folder)
    workers = ExtractConfig(data=str(folder), model=model).workers
    batch = ExtractConfig(data=str(folder), model=model).batch_size
    cache = workdir / "cache-speed"
    r: dict[str, list] = {
        k: []
        for k in ("seed_e2e", "seed_loop", "pipe_e2e", "pipe_loop", "model_ceiling", "decode_ceiling", "pipe_overhead_s",
                  "alt_loop", "alt_e2e")
    }
    first_call = None

    def run_seed():
        with _dtype_policy(precision):
            t0 = time.perf_counter()
            base = common.seed003_model(cfg.constructor, size, None if weights == "none" else weights, **cfg.kwargs)
            t1 = time.perf_counter()
            features, _ = common.seed003_extract(folder, n, base, (size, size))
            t2 = time.perf_counter()
        assert features.shape[0] == n
        r["seed_e2e"].append(n / (t2 - t0))
        r["seed_loop"].append(n / (t2 - t1))
        _log(f"  seed 003 loop: {n / (t2 - t1):.1f} img/s in the loop, {n / (t2 - t0):.1f} img/s with the model build")
        del base
        _release()

    def run_pipeline():
        result = _extract(folder, cache, model=model, size=size, weights=weights, precision=precision)
        assert result.counts["extracted"] == n, result.counts
        r["pipe_e2e"].append(n / result.seconds)
        r["pipe_loop"].append(result.images_per_second)
        with common_h5(result.path) as timings:
            r["pipe_overhead_s"].append(timings["run_seconds"] - timings["extract_seconds"] - timings["model_build_seconds"])
        _log(f"  pipeline: {result.images_per_second:.1f} img/s in the loop, {n / result.seconds:.1f} img/s whole call")
        shutil.rmtree(cache, ignore_errors=True)
        _release()

    def run_alt():
        result = _extract(folder, cache, model=model, size=size, weights=weights, precision=precision, batch_size=alt_batch)
        assert result.counts["extracted"] == n, result.counts
        r["alt_e2e"].append(n / result.seconds)
        r["alt_loop"].append(result.images_per_second)
        _log(f"  pipeline, batch {alt_batch}: {result.images_per_second:.1f} img/s in the loop")
        shutil.rmtree(cache, ignore_errors=True)
        _release()

    contenders = [run_seed, run_pipeline] + ([run_alt] if alt_batch else [])
    n_batches = max(1, min(3, n // (2 * batch)))
    ceiling_model = None
    for rep in range(reps):
        _log(f"{model} @{size}, {n} images, repetition {rep + 1}/{reps}")
        k = rep % len(contenders)  # rotate which contender runs first
        for run in contenders[k:] + contenders[:k]:
            run()
        if ceiling_model is None:
            ceiling_model = backbones.build_extractor(cfg, size=size, weights=weights, precision=precision)
            first_call = common.first_call_seconds(ceiling_model, size, batch)
        r["model_ceiling"].append(common.model_ceiling(ceiling_model, size, batch, n_batches))
        if rep == 0:  # the first call's cost beyond one warm batch: tracing / compiling
            first_call -= batch / r["model_ceiling"][0]
        r["decode_ceiling"].append(common.decode_ceiling(paths, size, workers))
        _log(f"  ceilings: model {r['model_ceiling'][-1]:.1f} img/s, decode {r['decode_ceiling'][-1]:.1f} img/s")
    del ceiling_model
    _release()

    ratio_loop = [p / s for p, s in zip(r["pipe_loop"], r["seed_loop"])]
    alt = {
        "batch_size": alt_batch,
        "vs_seed": [a / s for a, s in zip(r["alt_loop"], r["seed_loop"])],
        "vs_default": [a / p for a, p in zip(r["alt_loop"], r["pipe_loop"])],
    } if alt_batch else None
    ratio_e2e = [p / s for p, s in zip(r["pipe_e2e"], r["seed_e2e"])]
    fraction = [p / min(m, d) for p, m, d in zip(r["pipe_loop"], r["model_ceiling"], r["decode_ceiling"])]
    serial = [p * (1 / m + 1 / d) for p, m, d in zip(r["pipe_loop"], r["model_ceiling"], r["decode_ceiling"])]
    return {
        "model": model, "size": size, "n": n, "weights": _weights_label(weights), "workers": workers,
        "batch_size": batch, "reps": reps, "raw": r, "ratio_loop": ratio_loop, "ratio_e2e": ratio_e2e,
        "fraction_of_ceiling": fraction, "fraction_of_serial_bound": serial, "first_call_s": first_call,
        "alt": alt,
    }


@contextlib.contextmanager
def common_h5(index_path):
    """The `timings` attribute of a feature set's index."""
    import h5py

    with h5py.File(index_path, "r") as f:
        yield json.loads(f.attrs["timings"])


# -- several backbones in one pass (issue 5) ------------------------------------------


def multi(workdir: Path, models: list[str], size: int, n: int, reps: int, precision: str) -> dict:
    """One `extract_many` pass over `models` vs each model alone, on `n` phone-sized JPEGs.

    The photos are large and the models small, so decoding is the wall: the
    case where sharing one decode per image across backbones matters.
    """
    from pipeline.config import ExtractConfig
    from pipeline.features.extract import extract_many

    folder = common.prepare_photos(workdir, n, 3024, os.cpu_count() or 1)
    file_mb = [p.stat().st_size / 1e6 for p in common.image_paths(folder)]
    cache = workdir / "cache-multi"
    workers = ExtractConfig(data=str(folder), model=models[0]).workers
    loop_s: dict[str, list[float]] = {m: [] for m in [*models, "pass"]}

    def single(model):
        def run():
            result = _extract(folder, cache, model=model, size=size, weights="none", precision=precision)
            assert result.counts["extracted"] == n, result.counts
            loop_s[model].append(n / result.images_per_second)
            _log(f"  {model} alone: {result.images_per_second:.1f} img/s in the loop")
            shutil.rmtree(cache, ignore_errors=True)
        return run

    def together():
        shutil.rmtree(cache, ignore_errors=True)
        configs = [ExtractConfig(data=str(folder), model=m, size=size, weights="none", precision=precision,
                                 cache_dir=str(cache)) for m in models]
        results = extract_many(configs)
        assert all(r.counts["extracted"] == n for r in results), [r.counts for r in results]
        loop_s["pass"].append(n / results[0].images_per_second)
        _log(f"  {len(models)} backbones in one pass: {results[0].images_per_second:.1f} img/s in the loop")
        shutil.rmtree(cache, ignore_errors=True)

    contenders = [single(m) for m in models] + [together]
    decode_ceiling = []
    for rep in range(reps):
        _log(f"multi: {', '.join(models)} @{size}, {n} photos, repetition {rep + 1}/{reps}")
        k = rep % len(contenders)
        for run in contenders[k:] + contenders[:k]:
            run()
            _release()
        decode_ceiling.append(common.decode_ceiling(common.image_paths(folder), size, workers))
        _log(f"  decode alone: {decode_ceiling[-1]:.1f} img/s")
    slowest = [max(loop_s[m][i] for m in models) for i in range(reps)]
    summed = [sum(loop_s[m][i] for m in models) for i in range(reps)]
    return {
        "models": models, "size": size, "n": n, "reps": reps, "workers": workers, "loop_seconds": loop_s,
        "file_mb": (min(file_mb), max(file_mb)),
        "decode_ceiling": decode_ceiling, "vs_slowest": [p / s for p, s in zip(loop_s["pass"], slowest)],
        "vs_sum": [p / s for p, s in zip(loop_s["pass"], summed)],
    }


# -- head vs extraction (issue 3) ------------------------------------------------------


def _make_logreg():
    try:
        from pipeline.heads import create_head
    except ImportError:
        create_head = None
    if create_head is not None:
        return create_head("logreg"), 'pipeline.heads.create_head("logreg")'
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), "sklearn StandardScaler + LogisticRegression(max_iter=1000) (pipeline.heads not found)"


def head(workdir: Path, n: int, size: int, precision: str, reps: int) -> dict:
    """Train `logreg` on cached features vs extract them; leaves the cache for `noop`."""
    from pipeline.store import read_feature_set

    folder = common.prepare_real(workdir, n)
    cache = workdir / "cache-head"
    weights = _weights("mobilenet_v2")
    fits: list[float] = []
    described = None
    _make_logreg()[0].fit([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.2, 0.1]], [0, 1, 0, 1])  # imports, BLAS threads

    def train(path):
        nonlocal described
        t = time.perf_counter()
        fs = read_feature_set(path)
        estimator, described = _make_logreg()
        estimator.fit(fs.features, fs.labels)
        fits.append(time.perf_counter() - t)
        _log(f"  logreg head: read + fit {fits[-1]:.2f} s")
        return fs

    _log(f"head: extracting {n} images with mobilenet_v2 @{size}")
    result = _extract(folder, cache, model="mobilenet_v2", size=size, weights=weights, precision=precision)
    _log(f"  extraction {result.seconds:.1f} s ({result.images_per_second:.1f} img/s in the loop)")
    fs = train(result.path)
    for _ in range(reps - 1):
        train(result.path)
    with common_h5(result.path) as timings:
        loop = timings["extract_seconds"]
    # Sanity: held-out accuracy of the same head on these features (not timed).
    test = fs.split_keys >= 0.8
    estimator, _ = _make_logreg()
    estimator.fit(fs.features[~test], fs.labels[~test])
    accuracy = float((estimator.predict(fs.features[test]) == fs.labels[test]).mean())
    return {
        "n": len(fs.labels), "dim": int(fs.features.shape[1]), "size": size, "head": described,
        "weights": _weights_label(weights), "fit_seconds": fits, "extract_seconds": result.seconds,
        "extract_loop_seconds": loop, "ratio_whole": result.seconds / med(fits), "ratio_loop": loop / med(fits),
        "heldout_accuracy": accuracy, "heldout_n": int(test.sum()),
        "cli_args": ["features", str(folder), "--model", "mobilenet_v2", "--size", str(size), "--weights", weights,
                     "--precision", precision, "--cache-dir", str(cache)],
    }


# -- no-op re-run (issue 2) ---------------------------------------------------------------


def noop(cli_args: list[str], n: int, reps: int) -> dict:
    """Re-runs the unchanged `features` command; compares with importing Keras."""
    args = [*cli_args, "--json", "--quiet"]
    checked = common.run_process(common.cli_argv(*args, through_prelude=True), probe=True)
    counts = checked.json_line()["counts"]
    heavy = [m for m in ("tensorflow", "keras", "jax", "torch") if m in checked.modules]
    walls, keras_walls = [], []
    import_keras = [common.PYTHON, "-c", "import keras"]
    for i in range(reps):
        _log(f"no-op re-run {i + 1}/{reps}")
        p = common.run_process(common.cli_argv(*args))
        assert p.json_line()["counts"]["extracted"] == 0
        walls.append(p.wall)
        if i < max(1, reps // 2 + 1):
            keras_walls.append(common.run_process(import_keras).wall)
    return {
        "n": n, "counts": counts, "heavy_modules": heavy, "walls": walls, "import_keras_walls": keras_walls,
        "command": "python -m pipeline " + " ".join(args),
    }


# -- peak RSS (issue 5) ----------------------------------------------------------------------


def rss(workdir: Path, n: int, factor: int, size: int | None, precision: str) -> dict:
    """Peak RSS of `python -m pipeline features` on n and factor*n images (fresh caches)."""
    from pipeline.features import backbones

    size = size or backbones.get_backbone_cfg("mobilenet_v2").default_size
    small = common.prepare_real(workdir, n)
    _log(f"rss: preparing {factor * n} images (cached across runs)")
    large = common.prepare_variants(workdir, n, factor)
    weights = _weights("mobilenet_v2")
    runs = []
    for folder, count in ((small, n), (large, factor * n), (small, n)):
        cache = workdir / "cache-rss"
        shutil.rmtree(cache, ignore_errors=True)
        _log(f"rss: {count} images @{size}")
        p = common.run_process(
            common.cli_argv("features", str(folder), "--model", "mobilenet_v2", "--size", str(size), "--weights", weights,
                            "--precision", precision, "--cache-dir", str(cache), "--json", "--quiet", through_prelude=True),
            probe=True,
        )
        out = p.json_line()
        assert out["counts"]["extracted"] == count, out["counts"]
        runs.append({"images": count, "max_rss_mib": p.peak_rss_mib, "wall": p.wall, "ips": out["images_per_second"],
                     "heavy_modules": [m for m in ("tensorflow", "keras", "jax", "torch") if m in p.modules]})
        _log(f"  peak RSS {p.peak_rss_mib:.0f} MiB, {p.wall:.1f} s")
        shutil.rmtree(cache, ignore_errors=True)
    base = med([r["max_rss_mib"] for r in runs if r["images"] == n])
    return {"n": n, "factor": factor, "size": size, "runs": runs, "ratio": runs[1]["max_rss_mib"] / base}


# -- report -----------------------------------------------------------------------------------


def decode_scaling(workdir: Path, n: int, reps: int, size: int = 224) -> dict:
    """Decode alone: 1 thread, every core in threads, every core in processes; GIL share; projections.

    The projection's model: a thread pool is bounded by the GIL-held share
    f of a decode (the held parts run one at a time), so N threads give
    `serial * min(N, 1 / f)`; processes share nothing, so N give
    `serial * N * e`, e being the process pool's efficiency measured here
    (its rate over `cores * serial`: start-up and copying out of shared
    memory included). Both assume the cores are free and the disk keeps up.
    """
    cores = os.cpu_count() or 1
    out = {"cores": cores, "size": size, "sets": []}
    for side, count in ((500, 4 * n), (3024, n)):
        paths = common.image_paths(common.prepare_photos(workdir, count, side, os.cpu_count() or 1))
        _log(f"decode: {count} JPEGs of {side}x{side * 3 // 4}")
        raw: dict[str, list[float]] = {"serial": [], "threads": [], "processes": [], "gil_share": [], "startup_s": []}
        for rep in range(reps):
            modes = ("threads", "processes") if rep % 2 == 0 else ("processes", "threads")
            raw["serial"].append(common.pool_decode_rate(paths, size, 1, "threads"))
            for mode in modes:
                raw[mode].append(common.pool_decode_rate(paths, size, cores, mode))
            raw["startup_s"].append(1 / common.pool_decode_rate(paths[:1], size, cores, "processes"))
            raw["gil_share"].append(common.gil_share(paths[:8], size))
        serial, share = med(raw["serial"]), med(raw["gil_share"])
        # Steady state: a pool starts once per extraction, so its start-up is left out of the projection.
        busy = count / med(raw["processes"]) - med(raw["startup_s"])
        efficiency = count / max(busy, 1e-9) / (cores * serial)
        projected = {
            c: {"threads": serial * min(c, 1 / max(share, 1e-3)), "processes": serial * c * efficiency}
            for c in PROJECTED_CORES
        }
        out["sets"].append({"image": f"{side}x{side * 3 // 4}", "n": count, "raw": raw,
                            "efficiency": efficiency, "projected": projected})
    return out


def _decode_lines(m: dict) -> list[str]:
    rows = []
    for s in m["sets"]:
        raw = s["raw"]
        rows.append([
            s["image"], s["n"], fmt(med(raw["serial"])), fmt(med(raw["threads"])), fmt(med(raw["processes"])),
            f"{med(raw['gil_share']):.2f}", fmt(med(raw["startup_s"]), 2), f"{s['efficiency']:.2f}",
            *(f"{fmt(s['projected'][c]['threads'], 0)} / {fmt(s['projected'][c]['processes'], 0)}"
              for c in PROJECTED_CORES),
        ])
    return [
        f"## Decoding past the GIL: threads vs processes (issue 13), {m['cores']} cores, {m['size']} px",
        "",
        table(["JPEG", "n", "1 thread img/s", f"{m['cores']} threads", f"{m['cores']} processes",
               "GIL share", "pool start s", "process eff.", *(f"{c} cores: threads / processes" for c in PROJECTED_CORES)], rows),
        "",
        "- Measured: `decode_batches` (the extraction's own pool, reference decoder) over generated photos. "
        "GIL share: a pure-Python counter beside a decoding thread counts only while the decoder has released "
        "the GIL; one minus its rate relative to counting alone.",
        "- Projected (model in `bench/run.py` `decode_scaling`): threads `1-thread rate x min(N, 1 / GIL share)`, "
        "processes `1-thread rate x N x process efficiency`, the efficiency measured here in steady state (the "
        "process pool's rate with its start-up, measured on one image, taken out: a pool starts once per "
        "extraction); free cores and a disk that keeps up assumed.",
        "",
    ]


# -- the Ray engine (issue 13) ---------------------------------------------------------

RAY_CONTENDERS = {"local": {}, "ray, 1 worker": {"engine": "ray", "ray_workers": 1},
                  "ray, 2 workers": {"engine": "ray", "ray_workers": 2}}
RAY_SHARD_SIZE = 64  # several shards, so that two model workers have batches to share


def ray_scaling(workdir: Path, n: int, size: int, reps: int, precision: str) -> dict:
    """The Ray engine with 1 and 2 model workers vs the local engine, on the same `n` photos.

    One local Ray cluster serves every Ray run (its start is not timed); each
    run starts its own model workers, whose start (framework import, model
    build) is in the whole call, as the local engine's model build is.
    """
    import ray

    folder = common.prepare_real(workdir, n)
    cache = workdir / "cache-ray"
    per_s: dict[str, list[float]] = {name: [] for name in RAY_CONTENDERS}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        for rep in range(reps):
            _log(f"ray: mobilenet_v2 @{size}, {n} photos, repetition {rep + 1}/{reps}")
            names = list(RAY_CONTENDERS)
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                result = _extract(folder, cache, model="mobilenet_v2", size=size, weights="none", precision=precision,
                                  shard_size=RAY_SHARD_SIZE, **RAY_CONTENDERS[name])
                assert result.counts["extracted"] == n, result.counts
                per_s[name].append(n / result.seconds)
                _log(f"  {name}: {per_s[name][-1]:.1f} img/s whole call")
                shutil.rmtree(cache, ignore_errors=True)
                _release()
    finally:
        ray.shutdown()
    return {
        "n": n, "size": size, "reps": reps, "cores": os.cpu_count(), "ray": ray.__version__, "per_s": per_s,
        "vs_local": {name: [r / l for r, l in zip(per_s[name], per_s["local"])] for name in RAY_CONTENDERS},
        "two_vs_one": [b / a for a, b in zip(per_s["ray, 1 worker"], per_s["ray, 2 workers"])],
    }


def _ray_lines(m: dict) -> list[str]:
    return [
        "## The Ray engine on one machine (issue 13)",
        "",
        table(
            ["engine", "img/s (whole call)", "vs local"],
            [[name, fmt(med(m["per_s"][name])), fmt_ratio(m["vs_local"][name])] for name in RAY_CONTENDERS],
        ),
        "",
        f"- {m['n']} photos, mobilenet_v2 @{m['size']}, random weights, shards of {RAY_SHARD_SIZE}; Ray {m['ray']} "
        f"local cluster of {m['cores']} CPUs started once (not timed). 2 workers / 1 worker: "
        f"{fmt_ratio(m['two_vs_one'])}.",
        "- Whole call: planning, decoding in Ray tasks, model workers started (framework import and model build, "
        "per run) and the index written; the local engine's whole call includes its model build. A Ray run's fixed "
        "cost (new worker processes importing the framework, the pipeline's start) dominates at a few hundred images, "
        "and on one machine the model workers share the cores the decoding uses: the engine pays off across machines "
        "and on large sets, not here.",
        "",
    ]


def render(env: dict, args, results: dict, commands: list[str]) -> str:
    v = env["versions"]
    tf = v.get("tensorflow") or v.get("tensorflow-cpu")
    lines = [
        f"# Benchmark ({args.label}), {env['date']}",
        "",
        f"- Machine: {env['cpu']}, {env['cores']} cores" + (f", GPU {env['gpu']}" if env.get("gpu") else ", no GPU")
        + f"; load average {env['load_start'][0]:.1f} at start, {env['load_end'][0]:.1f} at end (shared machine).",
        f"- Keras {v.get('keras')} on {env['backend']}" + (f" (TensorFlow {tf})" if tf and env["backend"] == "tensorflow" else "")
        + (f", JAX {v['jax']}" if env["backend"] == "jax" and v.get("jax") else "")
        + f"; precision {env['precision']}; Python {env['python']}, NumPy {v.get('numpy')}, Pillow {v.get('pillow')}, "
        f"h5py {v.get('h5py')}, scikit-learn {v.get('scikit-learn')}.",
        *([f"- TensorFlow imported by the bench process: {'yes' if env['tensorflow_imported'] else 'no'}; "
           "by the CLI subprocesses: see the module columns below."] if env["backend"] != "tensorflow" else []),
        ("- Images: real sign-language-digits JPEGs (100x100, three 3024x3024 in class 7), the first N of the "
         if env["real_photos"] else
         f"- Images: generated 100x100 JPEG stand-ins ({common.SIGN_DIGITS} was absent), the first N of the ")
        + "class-interleaved sorted list. Wall time of the whole bench: "
        f"{env['bench_seconds'] / 60:.1f} min.",
        "- Every ratio compares runs made back to back in this one run (order alternating); "
        "`median (min-max)` over repetitions. Absolute img/s are medians of this run on a shared machine, for scale only.",
        "",
    ]
    if "speed" in results:
        rows, crows = [], []
        for s in results["speed"]:
            raw = s["raw"]
            label = f"{s['model']} @{s['size']} ({s['weights']})"
            rows.append([
                label, s["n"], fmt(med(raw["seed_loop"])), fmt(med(raw["pipe_loop"])), fmt_ratio(s["ratio_loop"]),
                fmt(med(raw["seed_e2e"])), fmt(med(raw["pipe_e2e"])), fmt_ratio(s["ratio_e2e"]),
            ])
            crows.append([
                label, fmt(med(raw["pipe_loop"])), fmt(med(raw["model_ceiling"])), fmt(med(raw["decode_ceiling"])),
                fmt_ratio(s["fraction_of_ceiling"]), fmt_ratio(s["fraction_of_serial_bound"]),
                fmt(s["first_call_s"], 1), fmt(med(raw["pipe_overhead_s"]), 2),
            ])
        s0 = results["speed"][0]
        lines += [
            "## Extraction speed: seed 003's loop vs `extract_features` (issue 5)",
            "",
            table(
                ["model @ size", "images", "seed loop img/s", "pipeline img/s", "pipeline / seed",
                 "seed img/s incl. build", "pipeline img/s whole call", "pipeline / seed (whole)"],
                rows,
            ),
            "",
            "- *Seed loop*: seed 003's `extract_feature` reimplemented for Keras 3 (its `ImageDataGenerator` is gone): "
            "sequential `keras.utils.load_img(target_size, interpolation=\"nearest\")` + `img_to_array` + rescale 1/255 "
            "into a float32 batch of 20, `model.predict(batch, verbose=0)` per batch into a preallocated array. "
            "Loop img/s excludes building the model; *incl. build* adds it.",
            f"- *Pipeline*: `extract_features` with its defaults (batch {s0['batch_size']}, {s0['workers']} decode threads), "
            "fresh cache folder each repetition; loop img/s is its own `images_per_second` (start of decoding to last row "
            "written); *whole call* is images over the entire call (discovery, hashing, model build, index write).",
            "",
            table(
                ["model @ size", "pipeline img/s", "model alone img/s", "decode alone img/s",
                 "pipeline / min(ceilings)", "pipeline / serial bound", "first call extra s", "pipeline overhead s"],
                crows,
            ),
            "",
            f"- *Model alone*: `predict_on_batch` of the pipeline's model (uint8 in, preprocessing inside) on one "
            f"pre-decoded batch of {s0['batch_size']}, warm. *Decode alone*: `pipeline.features.decode.load_image` over the same "
            f"files in a pool of {s0['workers']} threads. Both run on the same cores, so the pipeline cannot reach "
            "min(ceilings) when each alone fills the machine: the *serial bound* 1/(1/model + 1/decode) is what "
            "running them one after the other gives. *First call extra*: what the first `predict_on_batch` of a fresh model "
            "costs beyond a warm one (trace or compile): every extraction run, seed loop included, pays it inside "
            "its loop time; the warm ceiling does not.",
            "- *Pipeline overhead*: seconds of the call outside model build and the extraction loop "
            "(discovery, sha256 of every file, index write).",
            "",
        ]
        alts = [s for s in results["speed"] if s["alt"]]
        if alts:
            b = alts[0]["alt"]["batch_size"]
            lines += [
                f"### `extract_features` with batch {b} instead of the default {s0['batch_size']}",
                "",
                table(
                    ["model @ size", f"pipeline b{s0['batch_size']} img/s", f"pipeline b{b} img/s",
                     f"b{b} / b{s0['batch_size']}", f"b{b} / seed"],
                    [[f"{s['model']} @{s['size']}", fmt(med(s["raw"]["pipe_loop"])), fmt(med(s["raw"]["alt_loop"])),
                      fmt_ratio(s["alt"]["vs_default"]), fmt_ratio(s["alt"]["vs_seed"])] for s in alts],
                ),
                "",
                f"- Same images and rotation as above (`--alt-batch-size {b}`); loop img/s.",
                "",
            ]
    if "multi" in results:
        u = results["multi"]
        secs = u["loop_seconds"]
        lines += [
            "## Several backbones in one pass (issue 5)",
            "",
            table(
                ["backbones @ size", "photos", *[f"{m} alone s" for m in u["models"]], "one pass s",
                 "pass / slowest alone", "pass / sum alone", "decode alone img/s"],
                [[f"{len(u['models'])} @{u['size']}", u["n"], *[fmt(med(secs[m]), 2) for m in u["models"]],
                  fmt(med(secs["pass"]), 2), fmt_ratio(u["vs_slowest"]), fmt_ratio(u["vs_sum"]),
                  fmt(med(u["decode_ceiling"]))]],
            ),
            "",
            f"- Photos: {u['n']} JPEGs of 3024x2268 px ({u['file_mb'][0]:.1f}-{u['file_mb'][1]:.1f} MB, made from "
            "scikit-learn's sample photos with noise), "
            "so decoding is the wall; random weights. Seconds are each run's extraction loop (start of decoding to "
            f"last row written). *One pass*: `extract_many` with one config per backbone: each photo decoded once, "
            f"in {u['workers']} threads, and fed to every backbone. Target: one pass <= 1.3x the slowest backbone alone.",
            "",
        ]
    if "head" in results:
        h = results["head"]
        lines += [
            "## Training a head on cached features vs extracting them (issue 3)",
            "",
            table(
                ["images", "features", "logreg: read + fit s", "extraction s (whole call)", "extraction loop s",
                 "extraction / head", "extraction loop / head"],
                [[h["n"], f"mobilenet_v2 @{h['size']} avg, {h['dim']}-d", fmt(med(h["fit_seconds"]), 2),
                  fmt(h["extract_seconds"]), fmt(h["extract_loop_seconds"]), f"{h['ratio_whole']:.0f}x",
                  f"{h['ratio_loop']:.0f}x"]],
            ),
            "",
            f"- Head: {h['head']}, fitted on all {h['n']} rows after `read_feature_set`; median of {len(h['fit_seconds'])}, "
            f"run right after the extraction. Weights: {h['weights']}; held-out accuracy of the same head "
            f"(split_key >= 0.8, {h['heldout_n']} images): {h['heldout_accuracy']:.3f}.",
            "",
        ]
    if "noop" in results:
        o = results["noop"]
        c = o["counts"]
        lines += [
            "## Re-running unchanged (issue 2)",
            "",
            table(
                ["images", "extracted / reused", "TF / Keras / JAX imported", "wall s (whole command)",
                 "`python -c \"import keras\"` s", "re-run / import keras"],
                [[o["n"], f"{c['extracted']} / {c['reused']}",
                  "none" if not o["heavy_modules"] else ", ".join(o["heavy_modules"]),
                  f"{med(o['walls']):.2f} ({min(o['walls']):.2f}-{max(o['walls']):.2f})",
                  f"{med(o['import_keras_walls']):.2f}", f"{med(o['walls']) / med(o['import_keras_walls']):.2f}x"]],
            ),
            "",
            f"- Command: `{o['command']}` on the feature set the head section built; wall time of the whole process "
            f"(interpreter start included), {len(o['walls'])} runs; imported modules checked in `sys.modules` at exit "
            "in a separate run of the same code path.",
            "",
        ]
    if "rss" in results:
        m = results["rss"]
        rows = [[r["images"], f"{r['max_rss_mib']:.0f}", fmt(r["wall"]), fmt(r["ips"]), ", ".join(r["heavy_modules"])]
                for r in m["runs"]]
        lines += [
            f"## Peak memory on N vs {m['factor']}N images (issue 5)",
            "",
            table(["images", "peak RSS MiB", "wall s", "loop img/s", "TF / Keras / JAX / torch imported"], rows),
            "",
            f"- {m['factor']}N / N peak RSS: **{m['ratio']:.3f}x** (N runs before and after, median). "
            f"`python -m pipeline features --model mobilenet_v2 --size {m['size']}` in a subprocess, fresh cache each "
            "run; peak RSS is the child's VmHWM read from /proc/self/status at exit (`ru_maxrss` from `wait4` or "
            "RUSAGE_CHILDREN would report the bench process's own peak: Linux carries it across exec).",
            f"- Input size {m['size']} px" + (
                f" keeps {m['factor'] * m['n']:,} images within minutes on this machine; the stored feature rows "
                "(1280 float32) are the same at any input size." if m["size"] < 224 else "."
            ),
            "- The extra images are the N real ones re-encoded with one pixel changed (distinct sha256 each).",
            "",
        ]
    if "decode" in results:
        lines += _decode_lines(results["decode"])
    if "decoders" in results:
        lines += decoders.lines(results["decoders"])
    if "ray" in results:
        lines += _ray_lines(results["ray"])
    if "hub" in results:
        lines += bench_hub.hub_lines(results["hub"])
    lines += ["## Reproduce", "", "```sh", *commands, "```", ""]
    return "\n".join(lines)


def build_parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="images for head, noop and rss (default 2000)")
    p.add_argument("--speed-n", type=int, default=960, help="images for the MobileNetV2 speed comparison (default 960)")
    p.add_argument("--heavy-n", type=int, default=320, help="images for the second model's speed comparison (default 320)")
    p.add_argument("--models", default="mobilenet_v2@160,vgg16@150",
                   help="speed comparisons, model@size, comma separated; the first uses --speed-n, the rest --heavy-n")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each speed comparison (default 3)")
    p.add_argument("--alt-batch-size", type=int, default=None,
                   help="also time extract_features with this batch size in the speed section (default: off)")
    p.add_argument("--multi-models", default="mobilenet_v3_small,mobilenet_025,mobilenet_v2_035",
                   help="backbones of the one-pass comparison, comma separated")
    p.add_argument("--multi-size", type=int, default=96, help="input size of the one-pass comparison (default 96)")
    p.add_argument("--multi-n", type=int, default=288, help="photos of the one-pass comparison (default 288)")
    p.add_argument("--head-size", type=int, default=224, help="input size of the head section's features (default 224)")
    p.add_argument("--rss-size", type=int, default=32, help="input size of the rss runs; 0: the backbone's (default 32)")
    p.add_argument("--rss-factor", type=int, default=10, help="the large rss run has this many times N images (default 10)")
    p.add_argument("--decode-n", type=int, default=48,
                   help="phone-sized JPEGs of the decode section; 4x as many 500x375 ones (default 48)")
    p.add_argument("--decoders-n", type=int, default=96, help="phone photos of the decoders section (default 96)")
    p.add_argument("--ray-n", type=int, default=320, help="photos of the Ray engine comparison (default 320)")
    p.add_argument("--ray-size", type=int, default=96, help="input size of the Ray engine comparison (default 96)")
    p.add_argument("--hub-n", type=int, default=64, help="photos of the KerasHub ViT-S/14 comparison (default 64)")
    p.add_argument("--hub-size", type=int, default=224, help="input size of the KerasHub comparison (default 224)")
    p.add_argument("--precision", default="float32", help="dtype policy for every model (default float32)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma separated subset of {','.join(SECTIONS)}")
    p.add_argument("--workdir", default=None,
                   help="data sets and caches, kept and reused across runs "
                   "(default: a temporary folder, removed at the end)")
    p.add_argument("--out", default=str(common.REPO / "bench" / "results"), help="report folder (default bench/results)")
    p.add_argument("--label", default="cpu", help="report name prefix (default cpu)")
    if defaults:
        p.set_defaults(**defaults)
    return p


def main(argv: list[str] | None = None, *, defaults: dict | None = None) -> int:
    started = time.perf_counter()
    args = build_parser(defaults).parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; valid: {', '.join(SECTIONS)}")
    if "ray" in sections and importlib.util.find_spec("ray") is None:  # said now, not after the other sections
        raise SystemExit("--sections: ray needs Ray: pip install 'ray[data]>=2.9' (make setup installs it), "
                         "or leave ray out of --sections")
    if "noop" in sections and "head" not in sections:
        sections.insert(sections.index("noop"), "head")  # noop re-runs the head section's command
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="bottleneck-bench-") as workdir:
            return _run(args, sections, Path(workdir), argv, started)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    return _run(args, sections, Path(args.workdir), argv, started)


def _run(args, sections, workdir: Path, argv, started: float) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras

    env = common.environment(keras.backend.backend(), args.precision)
    _log(f"{env['cpu']}, {env['cores']} cores, Keras {keras.__version__} on {env['backend']}, {args.precision}")
    results: dict = {}
    warm_up(workdir, args.precision)
    if "speed" in sections:
        results["speed"] = []
        for i, spec in enumerate(args.models.split(",")):
            model, _, size = spec.strip().partition("@")
            n = args.speed_n if i == 0 else args.heavy_n
            results["speed"].append(speed(workdir, model, int(size), n, args.reps, args.precision, args.alt_batch_size))
    if "multi" in sections:
        models = [m.strip() for m in args.multi_models.split(",")]
        results["multi"] = multi(workdir, models, args.multi_size, args.multi_n, args.reps, args.precision)
    if "head" in sections:
        results["head"] = head(workdir, args.n, args.head_size, args.precision, args.reps)
    if "noop" in sections:
        results["noop"] = noop(results["head"]["cli_args"], args.n, max(5, args.reps))
    if "rss" in sections:
        results["rss"] = rss(workdir, args.n, args.rss_factor, args.rss_size, args.precision)
    if "decode" in sections:
        results["decode"] = decode_scaling(workdir, args.decode_n, args.reps)
    if "decoders" in sections:
        results["decoders"] = decoders.measure(workdir, args.decoders_n, args.reps, loops=True)
    if "ray" in sections:
        results["ray"] = ray_scaling(workdir, args.ray_n, args.ray_size, args.reps, args.precision)
    if "hub" in sections:
        results["hub"] = bench_hub.hub_speed(workdir, args.hub_n, args.hub_size, min(args.reps, 2), args.precision, _log)
    env["load_end"] = os.getloadavg()
    env["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" and v is not None for m, v in sys.modules.items())
    env["bench_seconds"] = time.perf_counter() - started
    env["real_photos"] = common.SIGN_DIGITS.is_dir()

    invoked = " ".join(sys.argv[1:] if argv is None else argv)
    if args.label == "gpu":
        commands = [f"KERAS_BACKEND={env['backend']} python -m bench.gpu {invoked}".rstrip()]
    else:
        commands = [f"make bench BENCH_ARGS='{invoked}'", f"# same as: .venv/bin/python -m bench.run {invoked}".rstrip()]
    report = render(env, args, results, commands)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.label}-{env['date']}"
    stem.with_suffix(".md").write_text(report)
    stem.with_suffix(".json").write_text(json.dumps({"env": env, "args": vars(args), "results": results}, indent=1, default=str))
    print(report)
    _log(f"written {stem.with_suffix('.md')} ({env['bench_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
