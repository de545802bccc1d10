"""Extraction from an HTTP server with 50 ms per request vs the same images on disk (docs/data.md, "Throughput").

    .venv/bin/python bench/sources.py [IMAGES_PER_CLASS] [ROUNDS]

Copies the first IMAGES_PER_CLASS images of each class of the sign-language
digits, then, ROUNDS times, extracts them from disk and from a server on
127.0.0.1 that sleeps 50 ms before every answer, and prints wall-clock images
per second of each (listing, hashing and extraction included; fresh caches;
same model), the median ratio, the image requests per image and the load average.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.features.extract import extract_features  # noqa: E402
from pipeline.features.sources import open_source  # noqa: E402

DATA = Path("/work/shared/data/sign-language-digits")
SERVER = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "tests")!r})
from servers import serve_folder
requests = []
with serve_folder(sys.argv[1], latency_s=0.05, requests=requests) as (base, _):
    print(base, flush=True)
    for line in sys.stdin:  # one line asks how many image GETs were answered so far
        print(sum(1 for method, path in requests if method == "GET" and path.endswith(".JPG")), flush=True)
"""
MODEL = dict(model="mobilenet_v2", size=96, weights="none", batch_size=32, workers=2)


def _timed(data: str, cache: Path) -> tuple[float, int]:
    started = time.perf_counter()
    result = extract_features(config=ExtractConfig(data=data, cache_dir=str(cache), **MODEL))
    return time.perf_counter() - started, result.counts["extracted"]


def main(per_class: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        for folder in sorted(p for p in DATA.iterdir() if p.is_dir()):
            for image in sorted(folder.iterdir())[:per_class]:
                (root / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, root / folder.name / image.name)
        _timed(str(root), Path(tmp) / "warm")  # Keras and the model built once, outside both timings
        # The server runs in its own process, as a real one would: in this one it would take the GIL from the decoder.
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(root)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        ratios = []
        try:
            base = server.stdout.readline().strip() + "/"
            open_source(base).list()  # fsspec and aiohttp imported once, outside the timings, as Keras is (HEADs only)
            for i in range(rounds):
                local_s, n = _timed(str(root), Path(tmp) / f"local{i}")
                remote_s, m = _timed(base, Path(tmp) / f"remote{i}")
                server.stdin.write("\n")
                server.stdin.flush()
                gets = int(server.stdout.readline())
                ratios.append((m / remote_s) / (n / local_s))
                print(f"round {i + 1}: local {n} images in {local_s:.1f} s = {n / local_s:.0f} img/s; "
                      f"http, 50 ms per request: {m} in {remote_s:.1f} s = {m / remote_s:.0f} img/s "
                      f"({ratios[-1]:.2f}x local); {gets / (m * (i + 1)):.2f} image GETs per image so far", flush=True)
        finally:
            server.terminate()
            server.wait()
        print(f"median {statistics.median(ratios):.2f}x local over {rounds} rounds; "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
