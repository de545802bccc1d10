"""Extraction from an HTTP server with 50 ms per request vs the same images on disk (docs/data.md, "Throughput").

    .venv/bin/python bench/sources.py [IMAGES_PER_CLASS]

Copies the first IMAGES_PER_CLASS images of each class of the sign-language
digits, extracts them from disk and then from a server on 127.0.0.1 that
sleeps 50 ms before every answer, and prints wall-clock images per second of
each (listing, hashing and extraction included; fresh caches; same model).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.features.extract import extract_features  # noqa: E402

DATA = Path("/work/shared/data/sign-language-digits")
SERVER = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "tests")!r})
from servers import serve_folder
with serve_folder(sys.argv[1], latency_s=0.05) as (base, _):
    print(base, flush=True)
    time.sleep(3600)
"""
MODEL = dict(model="mobilenet_v2", size=96, weights="none", batch_size=32, workers=2)


def _timed(data: str, cache: Path) -> tuple[float, int]:
    started = time.perf_counter()
    result = extract_features(config=ExtractConfig(data=data, cache_dir=str(cache), **MODEL))
    return time.perf_counter() - started, result.counts["extracted"]


def main(per_class: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        for folder in sorted(p for p in DATA.iterdir() if p.is_dir()):
            for image in sorted(folder.iterdir())[:per_class]:
                (root / folder.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, root / folder.name / image.name)
        _timed(str(root), Path(tmp) / "warm")  # Keras and the model built once, outside both timings
        local_s, n = _timed(str(root), Path(tmp) / "local")
        # The server runs in its own process, as a real one would: in this one it would take the GIL from the decoder.
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(root)], stdout=subprocess.PIPE, text=True)
        try:
            remote_s, m = _timed(server.stdout.readline().strip() + "/", Path(tmp) / "remote")
        finally:
            server.terminate()
            server.wait()
        print(f"local: {n} images in {local_s:.1f} s = {n / local_s:.0f} img/s")
        print(f"http, 50 ms per request: {m} images in {remote_s:.1f} s = {m / remote_s:.0f} img/s "
              f"({(m / remote_s) / (n / local_s):.2f}x local)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
