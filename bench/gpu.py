"""The benchmark suite for a GPU machine: JAX (or PyTorch) backend, mixed_bfloat16, no TensorFlow.

    pip install -e '.[jax]' 'jax[cuda12]'      # no tensorflow on that machine
    KERAS_BACKEND=jax python -m bench.gpu      # or KERAS_BACKEND=torch

Same sections and report as `bench.run` (see docs/performance.md), with GPU
defaults: mixed_bfloat16 for every model (seed 003's loop included, so the
ratios compare the loops, not the precisions), every comparison on the N
images, and the rss runs at the backbone's own input size. Any other
`bench.run` flag can be passed.

TensorFlow is made unimportable here and in every subprocess
(`sys.modules["tensorflow"] = None`), so a TensorFlow import anywhere on the
path fails loudly even on a machine that has it installed; the report's
"TF / Keras / JAX imported" column and `pipeline_modules` in the JSON show
what each subprocess imported. Smoke run on a CPU machine:

    KERAS_BACKEND=jax python -m bench.gpu --n 40 --speed-n 40 --heavy-n 20 --reps 1 --rss-factor 2
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ["BENCH_BLOCK_TENSORFLOW"] = "1"  # read by the subprocess prelude in bench.common
sys.modules["tensorflow"] = None  # type: ignore[assignment]  # import tensorflow -> ImportError

GPU_DEFAULTS = {
    "label": "gpu",
    "precision": "mixed_bfloat16",
    "n": 2000,
    "speed_n": 2000,
    "heavy_n": 2000,
    "rss_size": None,
    "models": "mobilenet_v2@160,vgg16@150,resnet50@224",
}


def main(argv: list[str] | None = None) -> int:
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        raise SystemExit("bench.gpu runs without TensorFlow: set KERAS_BACKEND=jax or KERAS_BACKEND=torch.")
    from bench import run

    code = run.main(argv, defaults=GPU_DEFAULTS)
    leaked = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "tensorflow")
    if leaked:
        raise SystemExit(f"TensorFlow was imported despite the block: {leaked[:5]}")
    return code


if __name__ == "__main__":
    sys.exit(main())
