"""Decoders and extraction loops on phone-sized photos: the `decoders` section of `make bench`.

    python -m bench.decoders [--n 96] [--reps 3] [--size 224] [--loops]

Two tables, each measured side by side in one process run (order rotating,
medians over reps):

decode  img/s on one core (one thread, no pool), same files: the reference
        decoder (`decode.load_image`: draft, EXIF, RGB, Pillow bilinear),
        Pillow draft + `resize(BILINEAR)` alone, and OpenCV `imdecode` at
        the matching `IMREAD_REDUCED_COLOR_*` + `INTER_AREA` where OpenCV
        is installed.
loops   with `--loops`: img/s of the extraction loop, MobileNetV2 (shared
        ImageNet weights where present), same photos: `extract_features`,
        the plain Keras pipeline a user writes instead
        (`image_dataset_from_directory(...).map(preprocess_input)
        .prefetch()` + `model.predict`), and seed 003's loop; plus the
        seconds of the `features` call outside its loop (imports excluded).

The photos are 400-800 px JPEGs made by `common.prepare_photos` (several
sides, as phones write a few fixed sizes).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common
from bench.common import fmt, table

SIDES = (400, 600, 800)  # long side; 3/4 of it short


def photo_paths(workdir: Path, n: int) -> tuple[Path, list[Path]]:
    """`n` photos in one class-folder tree (a valid data folder), split over `SIDES`."""
    folder = workdir / f"phone-photos-{n}"
    if not folder.is_dir():
        for side in SIDES:
            made = common.prepare_photos(workdir, max(1, n // len(SIDES)), side, os.cpu_count() or 1)
            for path in common.image_paths(made):
                target = folder / path.parent.name / f"{side}-{path.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    return folder, common.image_paths(folder)


def _pillow_bilinear(data: bytes, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def _opencv_area(data: bytes, size: int) -> np.ndarray:
    import cv2
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:  # the header only: the largest libjpeg reduction that stays >= size
        short = min(img.size)
    factor = next((k for k in (8, 4, 2) if short // k >= size), 1)
    flag = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2,
            1: cv2.IMREAD_COLOR}[factor]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    return cv2.cvtColor(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def decoders(paths: list[Path], size: int, reps: int) -> dict:
    """img/s on one thread for each decoder, files read into memory first (the disk is not measured)."""
    from pipeline.features import decode

    datas = [p.read_bytes() for p in paths]
    contenders = {
        "reference (`decode.load_image`)": lambda d: decode.decode_bytes(d, size),
        "Pillow draft + resize(BILINEAR)": lambda d: _pillow_bilinear(d, size),
    }
    if importlib.util.find_spec("cv2"):
        contenders["OpenCV imdecode reduced + INTER_AREA"] = lambda d: _opencv_area(d, size)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            start = time.thread_time()  # CPU time of this thread: one core's work, whatever the load
            for data in datas:
                contenders[name](data)
            rates[name].append(len(datas) / (time.thread_time() - start))
    reference, pillow = rates[names[0]], rates[names[1]]
    return {"n": len(datas), "size": size, "reps": reps, "rates": rates,
            "reference_over_pillow": [r / p for r, p in zip(reference, pillow)],
            "missing": [] if len(names) == 3 else ["OpenCV (not installed: pip install opencv-python-headless)"]}


def keras_loop(folder: Path, size: int, weights: str | None) -> float:
    """img/s of the Keras pipeline a user writes instead, model build excluded."""
    import keras
    import tensorflow as tf

    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, pooling="avg",
                                           weights=weights)
    start = time.perf_counter()
    dataset = keras.utils.image_dataset_from_directory(folder, image_size=(size, size), batch_size=64,
                                                       shuffle=False, verbose=False)
    dataset = dataset.map(lambda x, y: keras.applications.mobilenet_v2.preprocess_input(x))
    features = model.predict(dataset.prefetch(tf.data.AUTOTUNE), verbose=0)
    return len(features) / (time.perf_counter() - start)


def time_loops(folder: Path, paths: list[Path], size: int, reps: int) -> dict:
    from bench import run

    weights = str(common.MOBILENET_V2_WEIGHTS) if common.MOBILENET_V2_WEIGHTS.is_file() else None
    n = len(paths)
    rates: dict[str, list[float]] = {"pipeline": [], "keras": [], "seed": [], "pipeline_onnx": []}
    overhead: list[float] = []
    cache = Path(tempfile.mkdtemp(prefix="bench-loops-"))

    def pipeline():
        result = run._extract(folder, cache, model="mobilenet_v2", size=size, weights=weights or "none",
                              precision="float32")
        rates["pipeline"].append(result.images_per_second)
        with run.common_h5(result.path) as t:
            overhead.append(t["run_seconds"] - t["extract_seconds"] - t["model_build_seconds"])
        shutil.rmtree(cache, ignore_errors=True)

    onnx_cache = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    commands: dict[str, dict] = {}

    def pipeline_onnx():  # a fresh process, as users run it: a kept conversion runs without TensorFlow
        commands["onnx"] = run_command(folder, onnx_cache, weights, size, "onnx")
        rates["pipeline_onnx"].append(commands["onnx"]["images_per_second"])

    def seed():
        base = common.seed003_model("MobileNetV2", size, weights)
        start = time.perf_counter()
        common.seed003_extract(folder, n, base, (size, size))
        rates["seed"].append(n / (time.perf_counter() - start))

    def baseline():
        rates["keras"].append(keras_loop(folder, size, weights))

    contenders = [pipeline, baseline, seed, *([pipeline_onnx] if _onnx_installed() else [])]
    if _onnx_installed():
        run_command(folder, onnx_cache, weights, size, "onnx")  # converts once, outside the timed runs
    for rep in range(reps):
        for contender in contenders[rep % len(contenders):] + contenders[: rep % len(contenders)]:
            contender()
    commands["keras"] = run_command(folder, Path(tempfile.mkdtemp(prefix="bench-keras-")), weights, size, "keras")
    return {"n": n, "size": size, "reps": reps, "rates": rates, "overhead_s": overhead, "commands": commands,
            "weights": "ImageNet (shared file)" if weights else "random"}


def run_command(folder: Path, cache: Path, weights: str | None, size: int, runtime: str) -> dict:
    """The whole `features` command in a fresh process, every image extracted, a kept ONNX conversion reused.

    Returns its loop's img/s, its wall time, the seconds outside the loop
    (imports, planning, hashing, model build) and whether it imported TensorFlow.
    """
    for made in cache.glob("*/"):
        if made.name != "runtimes":
            shutil.rmtree(made)
    argv = common.cli_argv("features", str(folder), "--model", "mobilenet_v2", "--size", str(size), "--weights",
                           weights or "none", "--runtime", runtime, "--cache-dir", str(cache), "--json",
                           through_prelude=True)
    run = common.run_process(argv, probe=True)
    result = run.json_line()
    from bench import run as bench_run

    with bench_run.common_h5(result["path"]) as t:
        extract = t["extract_seconds"]
    return {"images_per_second": result["images_per_second"], "wall_s": run.wall,
            "outside_loop_s": run.wall - extract, "imports_tensorflow": "tensorflow" in run.modules}


def _onnx_installed() -> bool:
    return all(importlib.util.find_spec(name) for name in ("tf2onnx", "onnx", "onnxruntime"))


def measure(workdir: Path, n: int, reps: int, *, size: int = 224, loops: bool = False) -> dict:
    """Both tables' numbers (the loops only with `loops=True`)."""
    folder, paths = photo_paths(workdir, n)
    result = {"decoders": decoders(paths, size, reps)}
    if loops:
        result["loops"] = time_loops(folder, paths, size, reps)
    return result


def lines(result: dict) -> list[str]:
    d = result["decoders"]
    out = [f"## Decoders on phone-sized photos ({d['n']} JPEGs of {', '.join(f'{s}x{s * 3 // 4}' for s in SIDES)}, "
           f"{d['size']} px, one core, median of {d['reps']})", "",
           table(["decoder", "img/s per core", "runs"],
                 [[name, fmt(statistics.median(r)), ", ".join(fmt(x) for x in r)] for name, r in d["rates"].items()]),
           "", f"- Reference / Pillow bilinear: {statistics.median(d['reference_over_pillow']):.2f}x "
           f"({', '.join(f'{x:.2f}' for x in d['reference_over_pillow'])}); CPU time of the decoding thread, "
           "so other processes' load does not count.", *(f"- Not measured: {m}" for m in d["missing"]), ""]
    if "loops" in result:
        lp = result["loops"]
        med = {k: statistics.median(v) for k, v in lp["rates"].items() if v}
        out += [f"## Extraction loop, MobileNetV2 @{lp['size']}, {lp['n']} phone photos, {lp['weights']} weights, "
                f"median of {lp['reps']}", "",
                table(["loop", "img/s", "pipeline / it"],
                      [["`extract_features`", fmt(med["pipeline"]), "1.00"],
                       ["Keras `image_dataset_from_directory` + `predict`", fmt(med["keras"]),
                        f"{med['pipeline'] / med['keras']:.2f}"],
                       ["seed 003 loop", fmt(med["seed"]), f"{med['pipeline'] / med['seed']:.2f}"]]), "",
                f"- `--runtime onnx` (ONNX Runtime, the `features` command in a fresh process): "
                f"{fmt(med['pipeline_onnx'])} img/s, "
                f"{med['pipeline_onnx'] / med['keras']:.2f}x the Keras pipeline and "
                f"{med['pipeline_onnx'] / med['seed']:.2f}x the seed 003 loop." if lp["rates"]["pipeline_onnx"]
                else "- `--runtime onnx` not measured: the onnx extra is not installed.",
                f"- `features` call outside its loop (planning, hashing, writing; imports and model build "
                f"excluded): {statistics.median(lp['overhead_s']):.2f} s for {lp['n']} images.",
                *(f"- The whole `features --runtime {runtime}` command (a fresh process{', conversion kept' if runtime == 'onnx' else ''}): "
                  f"{c['wall_s']:.1f} s, its loop {fmt(c['images_per_second'])} img/s, "
                  f"{c['outside_loop_s']:.1f} s outside the loop (imports, planning, "
                  f"hashing, model build); TensorFlow {'imported' if c['imports_tensorflow'] else 'not imported'}."
                  for runtime, c in lp.get("commands", {}).items()), ""]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decoders", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=96, help="photos (default 96)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--size", type=int, default=224, help="output size (default 224)")
    p.add_argument("--loops", action="store_true", help="also time the extraction loops (minutes on 2 cores)")
    p.add_argument("--workdir", default=None, help="where the photos are made (default a temporary folder)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-decoders-"))
    result = measure(workdir, args.n, args.reps, size=args.size, loops=args.loops)
    print("\n".join(lines(result)))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
