"""Every registry head's default fit on 3,000 x 1,280 random-but-learnable rows, each capped.

    python -m bench.heads [--rows 3000] [--features 1280] [--cap 20]

Rows are ten Gaussian classes whose means differ in a few hundred of the
features, about as separable as pooled ImageNet features of ten photo
classes. Each head fits its registry defaults in a child process
(`pipeline.heads.workers`) killed at `--cap` seconds, so the whole bench
stays within minutes; the line then says "> cap". Prints one line per head
(seconds, and the seconds per 1,000 rows x 1,000 features that `FitCost`
holds) and a JSON object last.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pipeline.heads import create_head, list_heads
from pipeline.heads.fit import fit_and_score
from pipeline.heads.workers import FitTimeLimit, call_in_child, cores


def learnable_rows(n: int, d: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    means = rng.normal(size=(classes, d)) * (rng.random(d) < 0.25)
    X = (means[y] * 0.6 + rng.normal(size=(n, d))).astype(np.float32)
    return X, y


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--features", type=int, default=1280)
    parser.add_argument("--cap", type=float, default=20.0)
    parser.add_argument("--heads", nargs="*", default=None)
    args = parser.parse_args(argv)
    X, y = learnable_rows(args.rows + 1000, args.features)  # one draw of class means for both
    X, y, held_out, held_y = X[:args.rows], y[:args.rows], X[args.rows:], y[args.rows:]
    results = {}
    print(f"{args.rows} x {args.features} rows, {cores()} cores, cap {args.cap:g} s per head")
    for head in args.heads or list_heads():
        started = time.perf_counter()
        try:
            estimator, (proba,), seconds = call_in_child(
                fit_and_score, create_head(head), X, y, [held_out], 10, time_limit=args.cap
            )
            accuracy = float((proba.argmax(1) == held_y).mean())
        except FitTimeLimit:
            seconds, accuracy = None, None
        unit = None if seconds is None else seconds / (args.rows / 1000) / (args.features / 1000)
        results[head] = {"fit_seconds": seconds, "accuracy": accuracy, "seconds_per_1000x1000": unit,
                         "wall_seconds": time.perf_counter() - started}
        shown = f"> {args.cap:g} s (stopped)" if seconds is None else f"{seconds:7.2f} s  acc {accuracy:.3f}"
        print(f"{head:16} {shown}", flush=True)
    print(json.dumps({"rows": args.rows, "features": args.features, "cores": cores(), "heads": results}))


if __name__ == "__main__":
    main()
