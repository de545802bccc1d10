"""Peak RSS of extracting N tiny images from 100 tar shards (docs/data.md, "Memory").

    .venv/bin/python bench/sources_rss.py N [N ...]

For each N, writes N 8x8 PNGs into 100 shards and extracts them in a fresh
process (MobileNetV2 at 32 px, random weights), printing N, seconds and the
child's peak RSS (`ru_maxrss`).
"""

from __future__ import annotations

import io
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARDS = 100
CHILD = """
import sys
from pipeline.config import ExtractConfig
from pipeline.features.extract import extract_features
r = extract_features(config=ExtractConfig(data=sys.argv[1], cache_dir=sys.argv[2], model="mobilenet_v2", size=32,
                                          weights="none", batch_size=64, workers=2))
print(r.counts)
"""


def write_shards(folder: Path, n: int) -> str:
    rng = np.random.default_rng(0)
    per_shard = -(-n // SHARDS)
    for s in range(SHARDS):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(png, format="PNG")
                for ext, data in (("png", png.getvalue()), ("cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(f"{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / "{000..099}.tar")


def main(counts: list[int]) -> None:
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            pattern = write_shards(Path(tmp), n)
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, pattern, str(Path(tmp) / "cache")],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            seconds = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far, MiB
            print(f"{n} images: {seconds:.0f} s, peak RSS {peak:.0f} MiB, {out}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000])
