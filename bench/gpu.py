"""The GPU benchmark in one command: one table, under 8 minutes, no TensorFlow (JAX backend).

    bash bench/gpu_run.sh                      # on the GPU machine (installs the carried wheels, then runs this)
    make bench-gpu                             # the same through make
    KERAS_BACKEND=jax python -m bench.gpu      # when Keras is already importable
    KERAS_BACKEND=jax python -m bench.gpu --quick   # CPU smoke run: tiny counts and sizes, a few minutes

For VGG16, MobileNetV2 and ResNet50 @224, in mixed_bfloat16 and float32,
one row each: seed 003's loop, the pipeline (`extract_features`) with each
decode column (the reference decoder in each `ExtractConfig.decode_mode`,
threads and processes, then `decoder` nvjpeg: JPEGs decoded and resized on
the GPU by torchvision, which the GPU machine has; `workers` = the
machine's cores, `devices` = "auto"), the model alone, decoding alone in
each column, and the pipeline's ratio to min(model alone, fastest decoder
alone), all measured in this one run. `--only decode` runs the decode-alone
cells alone (CI runs them with `--quick` on the CPU, nvjpeg included).
Each row is checked against the GPU targets: end to end >= 8,000 img/s
(VGG16) and >= 10,000 img/s (MobileNetV2), or >= 0.75 of that minimum
(every model). Decoding alone is also measured on phone-sized photos
(3024x2268), which the pipeline cells do not use.

KerasHub encoders get the same rows (model alone, pipeline per decode
mode; no seed 003 cell, which has none): DINOv2-small and SigLIP-base
shapes (`bench/hub_shapes.py`, `--hub-models`), random weights, each
written as a local preset in the work folder and run as `hub:<folder>`.

Images are generated here (`common.prepare_photos`): 500x375 JPEGs for the
pipeline, seed and decode cells, a few hundred 3024x2268 ones for decoding
alone. Every rate is steady state: from the first finished batch to the
last, so a compile (the first call of a JAX model) or a process pool's
start is left out of every column alike; the JSON also keeps the
product's own `images_per_second` and the whole call (which gain from
JAX's persistent compilation cache, on in the bench's work folder so that
each step compiles once: they are not a cold run's).

A one-shot run: each cell's failure is recorded in the table and the rest
goes on; the bench keeps its own clock and skips the cells that would not
finish within `--budget` (the table says which), and a cell running past
`--cell-limit` is stopped and recorded. The JSON is rewritten after each
cell, the table is written and printed at the end (Ctrl-C included), under
`--out` (default bench/results/; the wrapper passes $OUT when it is set).

The GPU machine has Python 3.12, JAX, h5py, scikit-learn and Pillow but no
package registry and no Keras: carry Keras, its two small dependencies and
KerasHub (pure Python; the machine has regex, sentencepiece, tokenizers and
huggingface_hub, and KerasHub imports kagglehub only if present) as wheels
in `.whl/` (ignored by git, about 4 MB), fetched here with

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0 \\
        keras-hub==0.32.0

`bench/gpu_run.sh` installs them into /tmp/site and runs this module with
KERAS_BACKEND=jax and PYTHONUNBUFFERED=1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.abc
import importlib.machinery
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import common, hub_shapes
from bench.common import fmt, table

TARGETS = {("vgg16", 224): 8000, ("mobilenet_v2", 224): 10000}
TARGET_FRACTION = 0.75
PIPELINE_SET = "500x375"
PHONE_REPEAT = 4
# Seconds a kind of cell is expected to take before one has run (compiles
# included): what the time guard assumes until it has measured one.
FIRST_ESTIMATE_S = {"decode": 10, "model": 25, "pipeline": 35, "seed": 20, "preset": 15}
PHOTO_S = 1.5  # making one 3024x2268 photo on one core
# bfloat16 runs emulated on most CPUs (VGG16 @32: 6 img/s here), so the smoke run is float32 alone;
# its budget leaves room for writing the two KerasHub presets (about a minute on 2 cores).
QUICK = {"models": "mobilenet_v2@32", "precisions": "float32", "pipe_n": 64, "model_n": 64, "seed_n": 20,
         "phone_n": 16, "phone_side": 768, "batch_size": 16, "label": "gpu-quick",
         "hub_models": "dinov2_small@28,siglip_base@32", "hub_layers": 2, "budget": 240}


def decode_modes() -> list[str]:
    """The decode columns: the reference decoder in each of the product's decode modes ("auto" left out:
    it picks one of the others), then each other decoder (`decoder` option, e.g. nvjpeg, in threads)."""
    from pipeline.config import DECODE_MODES, DECODERS

    return [m for m in DECODE_MODES if m != "auto"] + [d for d in DECODERS if d != "pillow"]


def decoder_and_mode(column: str) -> tuple[str, str]:
    """The product's `(decoder, decode_mode)` of a decode column."""
    from pipeline.config import DECODERS

    return (column, "threads") if column in DECODERS else ("pillow", column)


def _log(message: str) -> None:
    print(f"[bench.gpu {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the verdict: pure functions over the results ---------------------------------------------


def _ips(cell: dict | None) -> float | None:
    return cell.get("ips") if cell and cell.get("status") == "ok" else None


def summarize(row: dict, decode: dict) -> dict:
    """Best pipeline, fastest decoder, the ceiling min(model, decoder), their ratio and the verdict of one row.

    `row`: {"model", "size", "cells": {"model", "pipeline_<mode>", ...}};
    `decode`: {"n", "cells": {mode: cell}} of decoding alone on the
    pipeline's images at the row's size. A number that was not measured stays None, and a
    verdict that needs it is "n/a", never a pass or a fail.
    """
    pipes = {k.removeprefix("pipeline_"): _ips(c) for k, c in row["cells"].items() if k.startswith("pipeline_")}
    pipes = {k: v for k, v in pipes.items() if v is not None}
    decoders = {k: _ips(c) for k, c in decode.get("cells", {}).items() if _ips(c) is not None}
    best_mode = max(pipes, key=pipes.get) if pipes else None
    best = pipes.get(best_mode)
    fastest = max(decoders.values()) if decoders else None
    model = _ips(row["cells"].get("model"))
    ceiling = min(model, fastest) if model is not None and fastest is not None else None
    ratio = best / ceiling if best is not None and ceiling else None
    result, why = verdict(TARGETS.get((row["model"], row["size"])), best, ratio)
    return {"best": best, "best_mode": best_mode, "fastest_decoder": fastest, "ceiling": ceiling, "ratio": ratio,
            "result": result, "why": why}


def verdict(target: float | None, best: float | None, ratio: float | None) -> tuple[str, str]:
    """("pass" | "fail" | "n/a", why): best pipeline img/s >= `target` OR ratio >= TARGET_FRACTION."""
    if best is None:
        return "n/a", "no pipeline rate"
    if target is not None and best >= target:
        return "pass", f"{best:,.0f} >= {target:,} img/s"
    if ratio is not None and ratio >= TARGET_FRACTION:
        return "pass", f"{ratio:.2f} >= {TARGET_FRACTION} of min(model, decoder)"
    if ratio is None:
        missing = "below target and " if target is not None else ""
        return "n/a", f"{missing}no ratio (model or decoder alone not measured)"
    absolute = f"{best:,.0f} < {target:,} img/s and " if target is not None else ""
    return "fail", f"{absolute}{ratio:.2f} < {TARGET_FRACTION} of min(model, decoder)"


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return "-"
    if cell["status"] == "ok":
        return fmt(cell.get("ips"), 0)
    return cell["status"]


def render(env: dict, results: dict) -> str:
    """The markdown report: the main table, decoding alone, what failed or was skipped, and the setup."""
    modes = results["modes"]
    rows, notes = [], []
    for row in results["rows"]:
        decode = results["decode"].get(f"{PIPELINE_SET}@{row['size']}", {})
        s = summarize(row, decode)
        target = TARGETS.get((row["model"], row["size"]))
        rows.append([
            f"{row['model']} @{row['size']}", row["precision"], row.get("replicas") or "-",
            _cell_text(row["cells"].get("seed")),
            *(_cell_text(row["cells"].get(f"pipeline_{m}")) for m in modes),
            _cell_text(row["cells"].get("model")),
            *(_cell_text(decode.get("cells", {}).get(m)) for m in modes),
            "-" if s["ratio"] is None else f"{s['ratio']:.2f}",
            (f">= {target:,} or " if target else "") + f">= {TARGET_FRACTION}x",
            f"**{s['result']}**" if s["result"] != "n/a" else "n/a",
        ])
        notes += _failure_notes(f"{row['model']} @{row['size']} {row['precision']}", row["cells"])
    header = ["model @ size", "precision", "devices", "seed 003 img/s",
              *(f"pipeline {m} img/s" for m in modes), "model alone img/s",
              *(f"decode {m} img/s" for m in modes), "pipeline / min(model, decoder)", "target", "result"]
    drows = []
    for key, decode in results["decode"].items():
        image, _, size = key.partition("@")
        drows.append([image, decode["n"], size, *(_cell_text(decode["cells"].get(m)) for m in modes)])
        notes += _failure_notes(f"decode {key}", decode["cells"])
    a = env["args"]
    lines = [
        f"# GPU benchmark ({a['label']}), {env['date']}",
        "",
        f"- Machine: {env['gpu'] or 'no GPU'}; {env['cpu']}, {env['cores']} cores; JAX devices: {env.get('devices')}.",
        f"- Keras {env['versions'].get('keras')} on {env['backend']}, JAX {env['versions'].get('jax')}; "
        f"TensorFlow imported: {'yes' if env.get('tensorflow_imported') else 'no'}. "
        f"Wall time {env.get('bench_seconds', 0):.0f} s of a {a['budget']:.0f} s budget.",
        "",
        table(header, rows),
        "",
        f"- img/s are steady state (first finished batch to last). Pipeline: `extract_features` on {a['pipe_n']} "
        f"JPEGs of {PIPELINE_SET}, random weights, batch {a['batch_size']}, {a['workers']} workers, "
        f"devices={a['devices']!r} (the *devices* column: replicas used). Model alone: the pipeline's model and "
        f"`predict_batches` on {a['model_n']} pre-decoded uint8 images. Decode: `decode_batches` alone on the "
        f"pipeline's images. Seed 003: its loop on {a['seed_n']} of them (warm).",
        f"- Result: **pass** when the best pipeline reaches the target img/s (VGG16 8,000, MobileNetV2 10,000 @224) "
        f"or {TARGET_FRACTION} of min(model alone, fastest decoder alone); n/a when a number it needs is missing.",
        "",
        "## Decoding alone",
        "",
        table(["JPEG", "images", "size", *(f"{m} img/s" for m in modes)], drows),
        "",
    ]
    if results.get("error"):
        notes.insert(0, f"- The run stopped early: {results['error']}")
    if notes:
        lines += ["## Failed or skipped", "", *notes, ""]
    lines += ["## Reproduce", "", "```sh", env["command"], "```", ""]
    return "\n".join(lines)


def _failure_notes(where: str, cells: dict) -> list[str]:
    return [f"- {where}, {name}: {cell['status']}: {cell.get('error') or cell.get('reason')}"
            for name, cell in cells.items() if cell.get("status") != "ok"]


# -- running cells under the time guard -------------------------------------------------------


class CellTimeout(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raises CellTimeout in the main thread after `seconds` (at the next Python bytecode: a compile finishes first)."""
    def expire(signum, frame):
        raise CellTimeout(f"stopped after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Guard:
    """The bench's own clock: a cell starts only if the longest cell of its kind so far would still fit."""

    def __init__(self, budget: float, cell_limit: float, started: float):
        self.budget, self.cell_limit, self.started = budget, cell_limit, started
        self.longest: dict[str, float] = {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def run(self, kind: str, what: str, fn, estimate: float | None = None) -> dict:
        estimate = self.longest.get(kind, FIRST_ESTIMATE_S[kind] if estimate is None else estimate)
        if self.left() < estimate:
            _log(f"{what}: skipped, {self.left():.0f} s left of the budget, ~{estimate:.0f} s needed")
            return {"status": "skipped", "reason": f"time guard: {max(self.left(), 0):.0f} s of the budget left, "
                                                   f"~{estimate:.0f} s needed"}
        t = time.perf_counter()
        try:
            with _deadline(min(self.left(), self.cell_limit)):
                cell = {"status": "ok", **fn()}
        except Exception as e:  # noqa: BLE001 - one cell's failure is a table entry; the rest runs on
            cell = {"status": "failed", "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        cell["seconds"] = time.perf_counter() - t
        self.longest[kind] = max(self.longest.get(kind, 0.0), cell["seconds"])
        rate = f"{fmt(cell['ips'], 0)} img/s, " if cell.get("ips") is not None else ""
        _log(f"{what}: {cell['status']}, {rate}{cell['seconds']:.1f} s"
             + (f" ({cell['error']})" if "error" in cell else ""))
        return cell


# -- the cells ----------------------------------------------------------------------------------


def decode_cell(paths, size: int, workers: int, column: str, batch_size: int) -> dict:
    decoder, mode = decoder_and_mode(column)
    return common.pool_decode_steady(paths, size, workers, mode, batch_size, decoder=decoder)


def model_cell(model: str, size: int, precision: str, devices, batch_size: int, images) -> dict:
    """The pipeline's extractor alone on pre-decoded images, through `predict_batches` as the pipeline runs it."""
    from pipeline.features import backbones

    with backbones.replicas(devices) as replicas:
        extractor = backbones.build_extractor(backbones.get_backbone_cfg(model), size=size, weights="none",
                                              precision=precision)
        t = time.perf_counter()
        backbones.predict_batches(extractor, images[:batch_size], batch_size)
        first = time.perf_counter() - t
        t = time.perf_counter()
        backbones.predict_batches(extractor, images, batch_size)
        return {"ips": len(images) / (time.perf_counter() - t), "first_call_s": first, "replicas": replicas}


def pipeline_cell(folder: Path, cache: Path, n: int, *, model: str, size: int, precision: str, mode: str,
                  workers: int, batch_size: int, devices) -> dict:
    from pipeline.config import ExtractConfig
    from pipeline.features.extract import extract_features

    shutil.rmtree(cache, ignore_errors=True)
    decoder, mode = decoder_and_mode(mode)
    config = ExtractConfig(data=str(folder), model=model, size=size, weights="none", precision=precision,
                           cache_dir=str(cache), decode_mode=mode, decoder=decoder, workers=workers,
                           batch_size=batch_size, devices=devices)
    marks: list[tuple[float, int]] = []
    try:
        result = extract_features(config=config, progress=lambda done, total: marks.append((time.perf_counter(), done)))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if result.counts["extracted"] != n:
        raise RuntimeError(f"extracted {result.counts} of {n} images")
    return {"ips": common.steady_rate(marks, common.decode_lookahead(batch_size, workers)), "loop_ips": result.images_per_second, "whole_ips": n / result.seconds,
            "call_s": result.seconds}


def seed_cell(folder: Path, n: int, model: str, size: int, precision: str) -> dict:
    from bench.run import _dtype_policy
    from pipeline.features import backbones

    cfg = backbones.get_backbone_cfg(model)
    with _dtype_policy(precision):
        base = common.seed003_model(cfg.constructor, size, None, **cfg.kwargs)
        common.seed003_extract(folder, 20, base, (size, size))  # its first predict compiles: out of the timing
        t = time.perf_counter()
        features, _ = common.seed003_extract(folder, n, base, (size, size))
    if features.shape[0] != n:
        raise RuntimeError(f"seed loop returned {features.shape[0]} rows for {n} images")
    return {"ips": n / (time.perf_counter() - t)}


def hub_rows(args, workdir: Path) -> list[tuple]:
    """(row name, size, `hub:<folder>`, make) of each `--hub-models` shape; `make()` writes its preset (random weights)."""
    rows = []
    for shape, size in args.hub_specs:
        folder = workdir / f"hub-{shape}-{size}-{args.hub_layers or 'full'}"

        def make(shape=shape, size=size, folder=folder) -> dict:
            if not (folder / "config.json").is_file():
                hub_shapes.save_preset(shape, folder, size, layers=args.hub_layers or None)
            return {}

        depth = f", {args.hub_layers} blocks" if args.hub_layers else ""
        rows.append((f"{shape} (KerasHub{depth})", size, f"hub:{folder}", make))
    return rows


# -- the run -------------------------------------------------------------------------------------


def run_all(args, workdir: Path, results: dict, save) -> None:
    """Fills `results` cell by cell, in the order of what matters most should the budget run out."""
    import numpy as np

    import jax

    # Every model here is compiled three or four times (model alone, each decode mode, the seed loop):
    # JAX's persistent cache compiles each step once, so the budget goes to measuring. Steady rates,
    # which start after the first call, are the same either way.
    try:
        jax.config.update("jax_compilation_cache_dir", str(workdir / "jax-cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except Exception as e:  # noqa: BLE001 - a JAX without these options: slower, still measured
        _log(f"no persistent compilation cache ({type(e).__name__}: {e}): every cell compiles its own step")
    guard = Guard(args.budget, args.cell_limit, args.started)
    modes = results["modes"]
    folder = common.prepare_photos(workdir, args.pipe_n, 500, args.workers)
    paths = common.image_paths(folder)
    specs = [(model, size, model, None) for model, size in args.specs] + hub_rows(args, workdir)
    for size in sorted({spec[1] for spec in specs}):
        cells = results["decode"].setdefault(f"{PIPELINE_SET}@{size}", {"n": len(paths), "cells": {}})["cells"]
        for mode in modes:
            cells[mode] = guard.run("decode", f"decode {mode} {PIPELINE_SET} @{size}",
                                    lambda: decode_cell(paths, size, args.workers, mode, args.batch_size))
            save()
    images, ready = {}, set()
    for precision in args.precisions.split(",") if args.only == "all" else ():
        for model, size, reference, make in specs:
            row = {"model": model, "size": size, "precision": precision, "cells": {}}
            results["rows"].append(row)
            what = f"{model} @{size} {precision}"
            made = {"status": "ok"} if make is None or reference in ready else guard.run("preset", f"{what}: its preset", make)
            if made["status"] != "ok":  # the row's cells say why they were not measured
                row["cells"] = {name: made for name in ("model", *(f"pipeline_{m}" for m in modes))}
                continue
            ready.add(reference)
            if size not in images:
                images[size] = np.random.default_rng(0).integers(0, 256, (args.model_n, size, size, 3), dtype=np.uint8)
            row["cells"]["model"] = guard.run("model", f"{what}: model alone", lambda: model_cell(
                reference, size, precision, args.devices, args.batch_size, images[size]))
            row["replicas"] = row["cells"]["model"].get("replicas")
            save()
            for mode in modes:
                row["cells"][f"pipeline_{mode}"] = guard.run("pipeline", f"{what}: pipeline {mode}", lambda: pipeline_cell(
                    folder, workdir / "cache", len(paths), model=reference, size=size, precision=precision, mode=mode,
                    workers=args.workers, batch_size=args.batch_size, devices=args.devices))
                save()
            if make is None:  # seed 003 knows keras.applications only
                row["cells"]["seed"] = guard.run("seed", f"{what}: seed 003", lambda: seed_cell(
                    folder, args.seed_n, model, size, precision))
                save()
    phone = guard.run("photos", f"{args.phone_n} photos of {args.phone_side} px", lambda: {
        "folder": str(common.prepare_photos(workdir, args.phone_n, args.phone_side, args.workers))},
        estimate=5 + PHOTO_S * args.phone_n * (args.phone_side / 3024) ** 2 / args.workers)
    key = f"{args.phone_side}x{args.phone_side * 3 // 4}@{specs[0][1]}"
    # Draft mode decodes a phone photo at 1/8 scale for 224 px: each is decoded PHONE_REPEAT times, so
    # the cell lasts long enough to time; making more photos would cost a second each.
    cells = results["decode"].setdefault(key, {"n": f"{args.phone_n} x{PHONE_REPEAT}", "cells": {}})["cells"]
    for mode in modes:
        if phone["status"] != "ok":
            cells[mode] = {"status": phone["status"], "reason": "the photos were not made"}
            continue
        phone_paths = common.image_paths(Path(phone["folder"])) * PHONE_REPEAT
        cells[mode] = guard.run("decode", f"decode {mode} {key}",
                                lambda: decode_cell(phone_paths, specs[0][1], args.workers, mode, args.batch_size))
        save()


def build_parser() -> argparse.ArgumentParser:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run: models @32 (KerasHub shapes of 2 blocks) in float32, a few dozen images, 240 s budget")
    p.add_argument("--models", default="vgg16@224,mobilenet_v2@224,resnet50@224", help="model@size, comma separated")
    p.add_argument("--hub-models", default="dinov2_small@224,siglip_base@224",
                   help="KerasHub shapes of bench/hub_shapes.py (random weights), shape@size, comma separated; '' for none")
    p.add_argument("--hub-layers", type=int, default=0, help="blocks of each KerasHub shape (default 0: its own depth)")
    p.add_argument("--precisions", default="mixed_bfloat16,float32", help="dtype policies, in the order run")
    p.add_argument("--pipe-n", type=int, default=4096, help="500x375 JPEGs of the pipeline and decode cells")
    p.add_argument("--model-n", type=int, default=4096, help="pre-decoded images of each model-alone cell")
    p.add_argument("--seed-n", type=int, default=400, help="images of each seed 003 cell (a multiple of 20)")
    p.add_argument("--phone-n", type=int, default=240, help="phone-sized JPEGs of the decode-alone cells")
    p.add_argument("--phone-side", type=int, default=3024, help="their width (height 3/4 of it)")
    p.add_argument("--batch-size", type=int, default=64, help="the pipeline's and the model's batch (product default 64)")
    p.add_argument("--workers", type=int, default=cores, help=f"decode threads or processes (default: the cores, {cores})")
    p.add_argument("--devices", default="auto", help="the product's `devices` (default auto)")
    p.add_argument("--budget", type=float, default=420, help="seconds for the whole run; later cells are skipped")
    p.add_argument("--cell-limit", type=float, default=120, help="seconds one cell may run before it is stopped")
    p.add_argument("--only", choices=("all", "decode"), default="all",
                   help="decode: the decode-alone cells only, no model (default all)")
    p.add_argument("--workdir", default=None, help="generated images, kept for the next run (default: a temp folder)")
    p.add_argument("--out", default=str(common.REPO / "bench" / "results"), help="report folder (default bench/results)")
    p.add_argument("--label", default="gpu", help="report name prefix (default gpu)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, with --quick's values for every flag not given on the command line."""
    parser = build_parser()
    quick = parser.parse_args(argv).quick
    if quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    args.specs = []
    for spec in args.models.split(","):
        model, _, size = spec.strip().partition("@")
        if not size.isdigit():
            parser.error(f"--models: each entry is model@size, e.g. vgg16@224. Received: {spec.strip()!r}")
        args.specs.append((model, int(size)))
    args.hub_specs = []
    for spec in filter(None, (s.strip() for s in args.hub_models.split(","))):
        shape, _, size = spec.partition("@")
        if shape not in hub_shapes.SHAPES or not size.isdigit():
            parser.error(f"--hub-models: each entry is shape@size with a shape of {', '.join(hub_shapes.SHAPES)}, "
                         f"e.g. dinov2_small@224. Received: {spec!r}")
        args.hub_specs.append((shape, int(size)))
    if args.seed_n % 20 or args.seed_n > args.pipe_n:
        parser.error(f"--seed-n must be a multiple of 20 (seed 003's batch) and at most --pipe-n. Received: {args.seed_n}")
    return args


class _NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Refuses to import TensorFlow without listing it in `sys.modules`.

    A `None` entry there would do the refusing too, but Keras' data layers
    (`Rescaling`, which KerasHub encoders preprocess with) take any entry
    for TensorFlow being loaded, and then import it. Looking it up
    (`importlib.util.find_spec`, as torch does on import) finds a spec with
    no origin, which reads as "not a file to trace"; importing it raises.
    """

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ImportError(f"bench.gpu runs without TensorFlow; something imported {spec.name!r}.")

    def exec_module(self, module):  # never reached: create_module raises
        raise ImportError(module.__name__)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    args.started = started
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        raise SystemExit("bench.gpu runs without TensorFlow: set KERAS_BACKEND=jax.")
    sys.meta_path.insert(0, _NoTensorFlow())  # import tensorflow -> ImportError, loudly
    try:
        import keras
    except ImportError as e:
        raise SystemExit(f"Keras is not importable ({e}): carry its wheels in .whl/ and run bench/gpu_run.sh; "
                         "the pip download command is in bench/gpu.py's docstring.") from None
    import jax

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.label}-{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d-%H%M')}"
    env = common.environment(keras.backend.backend(), args.precisions)
    env["devices"] = [str(d) for d in jax.devices()]
    env["args"] = {k: v for k, v in vars(args).items() if k != "started"}
    env["command"] = "KERAS_BACKEND=jax python -m bench.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {"modes": decode_modes(), "decode": {}, "rows": []}

    def save():
        env["bench_seconds"] = time.perf_counter() - started
        _write(stem.with_suffix(".json"), json.dumps({"env": env, "results": results}, indent=1, default=str))

    _log(f"{env['gpu'] or 'no GPU'}, {env['cores']} cores, Keras {keras.__version__} on {env['backend']}, "
         f"JAX devices {env['devices']}; budget {args.budget:.0f} s")
    code = 0
    try:
        if args.workdir:
            Path(args.workdir).mkdir(parents=True, exist_ok=True)
            run_all(args, Path(args.workdir), results, save)
        else:
            with tempfile.TemporaryDirectory(prefix="bottleneck-bench-gpu-") as workdir:
                run_all(args, Path(workdir), results, save)
    except KeyboardInterrupt:
        _log("interrupted: the table holds what was measured")
        code = 130
    except Exception as e:  # noqa: BLE001 - outside any cell (making the images): still print what there is
        results["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
        _log(f"stopped: {results['error']}")
        code = 1
    env["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" and v is not None for m, v in sys.modules.items())
    save()
    report = render(env, results)
    _write(stem.with_suffix(".md"), report)
    print(report, flush=True)
    _log(f"written {stem.with_suffix('.md')} and .json ({env['bench_seconds']:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
