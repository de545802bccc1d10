"""Shared pieces of the benchmarks: data sets, seed 003's loop, ceilings, subprocesses, tables.

Nothing here imports Keras at module level: `bench.gpu` must be able to block
TensorFlow before Keras is first imported.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import functools
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SIGN_DIGITS = SHARED / "data" / "sign-language-digits"
MOBILENET_V2_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"
PYTHON = sys.executable

# -- data sets -----------------------------------------------------------------


def photo_source(workdir: Path) -> Path:
    """The sign-language digits, or where ../shared is absent, generated stand-ins of their shape.

    The stand-ins are 10 classes of 206 JPEGs of 100x100 px at quality 90
    (smooth random colour fields plus noise, so they cost what photos cost to
    decode); the report says which source was used.
    """
    if SIGN_DIGITS.is_dir():
        return SIGN_DIGITS
    from PIL import Image

    out = workdir / "generated-digits"
    marker = workdir / "generated-digits.ok"
    want = {"classes": 10, "per_class": 206, "version": 1}
    if _done(marker, want):
        return out
    print(f"{SIGN_DIGITS} is absent: generating {10 * 206} stand-in JPEGs in {out}", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(0)
    for c in range(want["classes"]):
        (out / str(c)).mkdir(parents=True)
        for i in range(want["per_class"]):
            field = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
            image = Image.fromarray(field).resize((100, 100), Image.BICUBIC)
            noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-12, 12, (100, 100, 3)), 0, 255)
            Image.fromarray(noisy.astype(np.uint8)).save(out / str(c) / f"{i:04d}.jpg", quality=90)
    marker.write_text(json.dumps(want))
    return out


def real_files(src: Path) -> list[tuple[str, Path]]:
    """Every real JPEG as (class, path), classes interleaved round-robin.

    Classes and files are sorted, then taken one per class in turn, so any
    prefix of the list is balanced across classes and the same for every run.
    """
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [sorted(p for p in (src / c).iterdir() if p.is_file() and not p.name.startswith(".")) for c in classes]
    out = []
    for i in range(max(len(files) for files in per_class)):
        for c, files in zip(classes, per_class):
            if i < len(files):
                out.append((c, files[i]))
    return out


def _done(marker: Path, want: dict) -> bool:
    try:
        return json.loads(marker.read_text()) == want
    except (OSError, ValueError):
        return False


def prepare_real(workdir: Path, n: int) -> Path:
    """`workdir/real-<n>/<class>/*.JPG`: the first `n` real files (copies, reused across runs)."""
    src = photo_source(workdir)
    files = real_files(src)
    if n > len(files):
        raise SystemExit(f"--n {n} is more than the {len(files)} real images in {src}.")
    out = workdir / f"real-{n}"
    marker = workdir / f"real-{n}.ok"
    want = {"n": n, "files": [str(p) for _, p in files[:n]]}
    if not _done(marker, want):
        shutil.rmtree(out, ignore_errors=True)
        for c, p in files[:n]:
            (out / c).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, out / c / p.name)
        marker.write_text(json.dumps(want))
    return out


def prepare_variants(workdir: Path, n: int, factor: int = 10) -> Path:
    """`workdir/variants-<factor*n>/`: the `n` real files plus `(factor-1)*n` re-encoded variants.

    Variant k of a photo is the photo (shrunk to 100x100 if larger, like the
    rest of the set) with one pixel changed and saved as JPEG at quality
    85-94, so every file has its own content hash and costs about what a
    real file of the set costs to hash and decode. Hashes are checked unique.
    """
    from PIL import Image

    total = factor * n
    out = workdir / f"variants-{total}"
    marker = workdir / f"variants-{total}.ok"
    originals = real_files(photo_source(workdir))[:n]
    want = {"n": n, "factor": factor, "version": 1}
    if _done(marker, want):
        return out
    shutil.rmtree(out, ignore_errors=True)
    for c, p in originals:
        (out / c).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, out / c / p.name)
    for i, (c, p) in enumerate(originals):
        with Image.open(p) as im:
            base = im.convert("RGB")
        if max(base.size) > 100:
            base = base.resize((100, 100), Image.Resampling.BILINEAR)
        w, h = base.size
        for k in range(1, factor):
            img = base.copy()
            x, y = (i + 7 * k) % w, (3 * i + k) % h
            r, g, b = img.getpixel((x, y))
            img.putpixel((x, y), ((r + 97 * k) % 256, (g + 31 * k) % 256, b))
            img.save(out / c / f"{p.stem}-v{k}.jpg", quality=85 + k % 10)
    digests = {hashlib.sha256(f.read_bytes()).hexdigest() for f in out.rglob("*") if f.is_file()}
    if len(digests) != total:
        raise RuntimeError(f"{out}: {total} files but only {len(digests)} distinct contents")
    marker.write_text(json.dumps(want))
    return out


def prepare_photos(workdir: Path, n: int, side: int, workers: int) -> Path:
    """`workdir/photos-<n>-<side>/<class>/*.jpg`: `n` photo JPEGs of side x 3/4 side, made in `workers` processes.

    Made from scikit-learn's two sample photos: a random crop, flipped half
    the time, upscaled, with sensor-like noise so the file holds as much
    entropy-coded data as a real one (at 3024 px, 1.5-1.8 MB at quality 90,
    like the three 3024x3024 photos of the shared data). Four classes, so
    the set is a valid data folder. Each photo draws from its own seeded
    generator, so the set is the same whatever the number of workers. A
    phone-sized photo takes about a second to make.
    """
    out = workdir / f"photos-{n}-{side}"
    marker = workdir / f"photos-{n}-{side}.ok"
    want = {"n": n, "side": side, "version": 1}
    if _done(marker, want):
        return out
    shutil.rmtree(out, ignore_errors=True)
    for k in range(min(n, 4)):
        (out / f"class{k}").mkdir(parents=True)
    # spawn: the caller may have loaded JAX, whose threads make fork unsafe.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        list(pool.map(_make_photo, [out] * n, range(n), [side] * n, chunksize=max(1, n // (4 * workers))))
    marker.write_text(json.dumps(want))
    return out


def _make_photo(out: Path, i: int, side: int) -> None:
    from PIL import Image

    photos = _sample_photos()
    rng = np.random.default_rng([1, i])
    photo = photos[i % len(photos)]
    h, w = photo.shape[:2]
    y, x = rng.integers(0, h // 4), rng.integers(0, w // 4)
    crop = photo[y : y + 3 * h // 4, x : x + 3 * w // 4]
    if i % 2:
        crop = crop[:, ::-1]
    big = Image.fromarray(np.ascontiguousarray(crop)).resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
    noise = rng.standard_normal((side * 3 // 4, side, 3), dtype=np.float32) * 6
    noisy = np.clip(np.asarray(big, np.float32) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(out / f"class{i % 4}" / f"photo{i:05d}.jpg", quality=90)


@functools.cache
def _sample_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return load_sample_images().images


def image_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


# -- seed 003's loop -------------------------------------------------------------


def seed003_model(constructor: str, size: int, weights: str | None, **kwargs):
    """`model_base = VGG16(weights=..., include_top=False, input_shape=(size, size, 3))` as in seed 003."""
    import keras

    return getattr(keras.applications, constructor)(
        weights=weights, include_top=False, input_shape=(size, size, 3), **kwargs
    )


def _seed003_flow_from_directory(directory: Path, target_size, batch_size: int, seed: int = 0):
    """What `ImageDataGenerator(rescale=1/255).flow_from_directory(...)` did, in Keras 3.

    `ImageDataGenerator` is gone from Keras 3, so this follows the Keras 2
    `DirectoryIterator` step by step: sorted class folders and files,
    shuffled every epoch (`shuffle=True` was the default), then per batch a
    float32 zero array filled one file at a time in the calling thread with
    `load_img(path, target_size=..., interpolation="nearest")` (Keras 3
    still ships that exact function: whole-file read, full decode, RGB,
    nearest resize), `img_to_array`, and the rescale. The random-transform
    calls of a generator built with nothing but `rescale` were no-ops and
    are left out. Labels are sparse class indices (`class_mode="binary"`
    with ten classes).
    """
    import keras

    exts = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
    classes = sorted(d.name for d in directory.iterdir() if d.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        for root, _, files in sorted(os.walk(directory / name)):
            for f in sorted(files):
                if f.lower().endswith(exts):
                    paths.append(os.path.join(root, f))
                    labels.append(label)
    labels = np.asarray(labels, dtype="float32")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(paths))
        for start in range(0, len(paths), batch_size):
            index = order[start : start + batch_size]
            batch_x = np.zeros((len(index), *target_size, 3), dtype="float32")
            for i, j in enumerate(index):
                img = keras.utils.load_img(paths[j], color_mode="rgb", target_size=target_size, interpolation="nearest")
                x = keras.utils.img_to_array(img, data_format="channels_last", dtype="float32")
                img.close()
                x *= 1 / 255
                batch_x[i] = x
            yield batch_x, labels[index]


def seed003_extract(directory: Path, sample_count: int, model_base, target_size, batch_size: int = 20):
    """Seed 003's `extract_feature`: `model_base.predict(batch)` per batch of 20 into a preallocated array."""
    features = np.zeros(shape=(sample_count, *model_base.output_shape[1:]))
    labels = np.zeros(shape=(sample_count,))
    generator = _seed003_flow_from_directory(directory, target_size, batch_size)
    i = 0
    for x_data_batch, t_data_batch in generator:
        feature_batch = model_base.predict(x_data_batch, verbose=0)
        features[i * batch_size : (i + 1) * batch_size] = feature_batch
        labels[i * batch_size : (i + 1) * batch_size] = t_data_batch
        i += 1
        if i * batch_size >= sample_count:
            break
    return features, labels


# -- ceilings --------------------------------------------------------------------


def decode_ceiling(paths: Sequence[Path], size: int, workers: int) -> float:
    """img/s of `pipeline.features.decode.load_image` over `paths` in a pool of `workers` threads, as extraction runs it."""
    from pipeline.features import decode

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        for _ in pool.map(lambda p: decode.load_image(p, size), paths):
            pass
    return len(paths) / (time.perf_counter() - t)


def pool_decode_rate(paths: Sequence[Path], size: int, workers: int, mode: str) -> float:
    """img/s of `decode_batches` (the extraction's own pool) over `paths` in `workers` threads or processes."""
    import types

    from pipeline.features import decode

    entries = [types.SimpleNamespace(relpath=str(p)) for p in paths]  # absolute: root / relpath is the path
    t = time.perf_counter()
    for _ in decode.decode_batches(Path("/"), entries, size, 32, workers, mode=mode):
        pass
    return len(paths) / (time.perf_counter() - t)


def steady_rate(marks: Sequence[tuple[float, int]], after: int = 0) -> float | None:
    """img/s over `(time, images done)` marks, from the first mark `after` images past the first one to the last.

    The first mark comes after a pool's start and a model's first call
    (its compile); `after` also leaves out the images decoded ahead during
    them, which come out faster than steady state. None when too few marks.
    """
    start = next((m for m in marks if m[1] >= marks[0][1] + after), None) if marks else None
    if start is None or marks[-1][0] <= start[0]:
        return None
    return (marks[-1][1] - start[1]) / (marks[-1][0] - start[0])


def decode_lookahead(batch_size: int, workers: int) -> int:
    """Images `decode_batches` decodes ahead of its consumer (as `pipeline.features.decode` sets it)."""
    return max(2 * batch_size, 4 * workers)


def pool_decode_steady(paths: Sequence[Path], size: int, workers: int, mode: str, batch_size: int,
                       decoder: str = "pillow") -> dict:
    """`pool_decode_rate`, also timed from the first batch on: `{"ips", "whole_ips", "first_batch_s"}`.

    `ips` is the steady rate (None with a single batch); `whole_ips` counts
    the pool's start, which in processes is a second or more of spawning.
    """
    import types

    from pipeline.features import decode

    entries = [types.SimpleNamespace(relpath=str(p)) for p in paths]  # absolute: root / relpath is the path
    t, done, marks = time.perf_counter(), 0, []
    for decoded, _, failures in decode.decode_batches(Path("/"), entries, size, batch_size, workers, mode=mode,
                                                      decoder=decoder):
        if failures:
            raise RuntimeError(f"{len(failures)} files did not decode, e.g. {failures[0][0].relpath}: {failures[0][1]}")
        done += len(decoded)
        marks.append((time.perf_counter(), done))
    return {"ips": steady_rate(marks, decode_lookahead(batch_size, workers)), "whole_ips": done / (marks[-1][0] - t), "first_batch_s": marks[0][0] - t}


def gil_share(paths: Sequence[Path], size: int, seconds: float = 2.0) -> float:
    """Share of a decode's wall time that holds the GIL, measured with a spinning Python thread.

    A pure-Python counter runs beside a thread that decodes `paths` in a
    loop; it can only count while the decoder has released the GIL. One
    minus its rate relative to counting alone is the share the decoder
    holds. Needs a second core free (the spinner must not wait for a CPU).
    """
    import threading

    from pipeline.features import decode

    def spin_rate(work) -> float:
        stop, count = threading.Event(), [0]

        def spin():
            c = 0
            while not stop.is_set():
                c += 1
            count[0] = c

        thread = threading.Thread(target=spin)
        t = time.perf_counter()
        thread.start()
        work()
        stop.set()
        thread.join()
        return count[0] / (time.perf_counter() - t)

    def decode_for(duration: float):
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            for p in paths:
                decode.load_image(p, size)

    alone = spin_rate(lambda: time.sleep(seconds))
    return max(0.0, 1.0 - spin_rate(lambda: decode_for(seconds)) / alone)


def _batch(size: int, batch_size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)


def first_call_seconds(model, size: int, batch_size: int) -> float:
    """Seconds of the first `predict_on_batch` of a fresh model: TensorFlow traces it, JAX compiles it."""
    t = time.perf_counter()
    np.asarray(model.predict_on_batch(_batch(size, batch_size)))
    return time.perf_counter() - t


def model_ceiling(model, size: int, batch_size: int, n_batches: int) -> float:
    """img/s of warm `predict_on_batch` calls on one pre-decoded uint8 batch (median of `n_batches`)."""
    x = _batch(size, batch_size)
    times = []
    for _ in range(n_batches):
        t = time.perf_counter()
        np.asarray(model.predict_on_batch(x))
        times.append(time.perf_counter() - t)
    return batch_size / statistics.median(times)


# -- subprocesses -----------------------------------------------------------------

# Runs `python -m pipeline ARGS` (the same code path: runpy of pipeline.__main__),
# optionally with TensorFlow made unimportable, and at exit writes to
# $BENCH_PROBE_OUT the top-level modules that were imported and the process's
# peak RSS. The peak is VmHWM of /proc/self/status: `ru_maxrss` (from
# `os.wait4` or RUSAGE_CHILDREN) is useless here, because Linux carries the
# high-water mark across exec, so a child of a 1.5 GB bench process reports
# at least 1.5 GB whatever it does.
_CLI_PRELUDE = """
import atexit, json, os, runpy, sys
if os.environ.get("BENCH_BLOCK_TENSORFLOW") == "1":
    sys.modules["tensorflow"] = None
def _probe():
    hwm = None
    try:
        with open("/proc/self/status") as f:
            hwm = next((int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:")), None)
    except OSError:
        pass
    with open(os.environ["BENCH_PROBE_OUT"], "w") as f:
        mods = sorted({m.split(".")[0] for m, v in list(sys.modules.items()) if v is not None})
        json.dump({"modules": mods, "vmhwm_mib": hwm}, f)
if os.environ.get("BENCH_PROBE_OUT"):
    atexit.register(_probe)
sys.argv = ["bottleneck", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""


class ProcessResult:
    """What `run_process` saw; `modules` and `peak_rss_mib` need `probe=True`."""

    def __init__(self, returncode: int, wall: float, stdout: str, stderr: str, probe: dict | None):
        self.returncode = returncode
        self.wall = wall
        self.stdout = stdout
        self.stderr = stderr
        self.modules = None if probe is None else probe["modules"]
        self.peak_rss_mib = None if probe is None else probe["vmhwm_mib"]

    def json_line(self) -> dict:
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        if self.returncode != 0 or not lines:
            raise RuntimeError(f"command failed ({self.returncode}):\n{self.stdout}\n{self.stderr}")
        return json.loads(lines[-1])


def run_process(argv: Sequence[str], *, env: dict | None = None, probe: bool = False) -> ProcessResult:
    """Runs `argv` from the repository root and times it; `probe` reads the prelude's report."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    with tempfile.TemporaryDirectory(prefix="bench-proc-") as tmp:
        out, err, probe_file = Path(tmp, "out"), Path(tmp, "err"), Path(tmp, "probe.json")
        if probe:
            env["BENCH_PROBE_OUT"] = str(probe_file)
        with out.open("w") as fo, err.open("w") as fe:
            t = time.perf_counter()
            code = subprocess.run(list(argv), stdout=fo, stderr=fe, env=env, cwd=REPO).returncode
            wall = time.perf_counter() - t
        report = json.loads(probe_file.read_text()) if probe and probe_file.exists() else None
        if probe and report is None and code == 0:
            raise RuntimeError(f"{argv[:3]}: the probe wrote nothing")
        return ProcessResult(code, wall, out.read_text(), err.read_text(), report)


def cli_argv(*args: str, through_prelude: bool = False) -> list[str]:
    """`python -m pipeline ARGS`, or the same through the module-recording prelude."""
    if through_prelude:
        return [PYTHON, "-c", _CLI_PRELUDE, *args]
    return [PYTHON, "-m", "pipeline", *args]


# -- statistics and tables --------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def fmt_ratio(values: Sequence[float]) -> str:
    """Median ratio with its range over repetitions, e.g. `1.62x (1.55-1.70)`."""
    m = med(values)
    if len(values) == 1:
        return f"{m:.2f}x"
    return f"{m:.2f}x ({min(values):.2f}-{max(values):.2f})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- environment -------------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_model() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(backend: str, precision: str) -> dict:
    versions = {p: _version(p) for p in ("keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "numpy", "pillow", "h5py", "scikit-learn")}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": gpu_model(),
        "backend": backend,
        "precision": precision,
        "python": platform.python_version(),
        "versions": {k: v for k, v in versions.items() if v},
        "load_start": os.getloadavg(),
    }
