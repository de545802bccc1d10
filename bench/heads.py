"""Every registry head's default fit on 3,000 x 1,280 rows, each capped; and a sweep on augmented-scale rows.

    python -m bench.heads [--rows 3000] [--features 1280] [--cap 20] [--from-set SET]
    python -m bench.heads --sweep svm_rbf --rows 15000 [--from-set SET]

Rows are ten Gaussian classes whose means differ in a few hundred of the
features, about as separable as pooled ImageNet features of ten photo
classes; or, with `--from-set`, the rows of a cached feature set (real
backbone features) drawn again with a little noise until there are `--rows`
of them, so the spectrum is the backbone's. Each head fits its registry
defaults in a child process (`pipeline.heads.workers`) killed at `--cap`
seconds, so the whole bench stays within minutes; the line then says
"> cap". Prints one line per head (seconds, and the seconds per 1,000 rows x
1,000 features that `FitCost` holds) and a JSON object last.

`--sweep HEAD` times `sweep_head` with the head's default grid on `--rows`
training rows (the shape of `train-head --head HEAD --sweep --augmented` on
3,000 photos with 4 views each): it either chooses on a subsample within the
sweep budget and then fits the winner on every row, or is refused up front.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from pipeline.errors import ConfigError
from pipeline.heads import create_head, get_head_cfg, list_heads
from pipeline.heads.fit import fit_and_score
from pipeline.heads.sweep import sweep_head
from pipeline.heads.sweep_budget import SWEEP_BUDGET
from pipeline.heads.workers import FitTimeLimit, call_in_child, cores


def learnable_rows(n: int, d: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    means = rng.normal(size=(classes, d)) * (rng.random(d) < 0.25)
    X = (means[y] * 0.6 + rng.normal(size=(n, d))).astype(np.float32)
    return X, y


def rows_like(features: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` rows drawn from real ones with noise of a fifth of each feature's spread (like augmented views)."""
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(labels), size=n)
    noise = rng.normal(size=(n, features.shape[1])) * (0.2 * features.std(axis=0))
    return np.maximum(features[picked] + noise, 0).astype(np.float32), labels[picked]


def _rows(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training rows and 1,000 held-out rows (one draw of class means, or of real rows, for both)."""
    if args.from_set:
        from pipeline.store import read_feature_set

        fs = read_feature_set(args.from_set)
        held = np.arange(len(fs.labels)) % 5 == 0  # real rows the training draw never sees
        X, y = rows_like(fs.features[~held], fs.labels[~held], args.rows)
        return X, y, fs.features[held], fs.labels[held]
    X, y = learnable_rows(args.rows + 1000, args.features)
    return X[:args.rows], y[:args.rows], X[args.rows:], y[args.rows:]


def _fits(args, X, y, held_out, held_y) -> dict:
    results = {}
    for head in args.heads or list_heads():
        started = time.perf_counter()
        try:
            estimator, (proba,), seconds = call_in_child(
                fit_and_score, create_head(head), X, y, [held_out], 10, time_limit=args.cap
            )
            accuracy = float((proba.argmax(1) == held_y).mean())
        except FitTimeLimit:
            seconds, accuracy = None, None
        unit = None if seconds is None else seconds / (len(y) / 1000) / (X.shape[1] / 1000)
        results[head] = {"fit_seconds": seconds, "accuracy": accuracy, "seconds_per_1000x1000": unit,
                         "wall_seconds": time.perf_counter() - started}
        shown = f"> {args.cap:g} s (stopped)" if seconds is None else f"{seconds:7.2f} s  acc {accuracy:.3f}"
        print(f"{head:16} {shown}  (load {os.getloadavg()[0]:.1f})", flush=True)
    return results


def _sweep(args, X, y, held_out, held_y) -> dict:
    """The default grid chosen on a validation tenth, then the winner fitted on every training row."""
    head = args.sweep
    val = np.arange(len(y)) % 10 == 0
    started = time.perf_counter()
    try:
        result = sweep_head(head, {}, get_head_cfg(head).sweep_grid, train=(X[~val], y[~val]),
                            validation=(X[val], y[val]), class_names=[str(c) for c in range(10)])
    except ConfigError as e:
        print(f"{head} sweep on {len(y):,} rows refused after {time.perf_counter() - started:.1f} s: {e}")
        return {"head": head, "refused": str(e), "seconds": time.perf_counter() - started}
    swept = time.perf_counter() - started
    _, (proba,), final = call_in_child(fit_and_score, create_head(head, **result.params), X[~val], y[~val],
                                       [held_out], 10)
    accuracy = float((proba.argmax(1) == held_y).mean())
    total = time.perf_counter() - started
    print(f"{head} sweep on {len(y):,} rows: candidates on {result.chosen_on_rows or int((~val).sum()):,} rows "
          f"{swept:.1f} s, final fit {final:.1f} s, total {total:.1f} s, held-out acc {accuracy:.3f} "
          f"(load {os.getloadavg()[0]:.1f})")
    return {"head": head, "chosen": result.candidates[result.chosen]["params"], "chosen_on_rows": result.chosen_on_rows,
            "sweep_seconds": swept, "final_fit_seconds": final, "total_seconds": total, "accuracy": accuracy}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--features", type=int, default=1280)
    parser.add_argument("--cap", type=float, default=20.0)
    parser.add_argument("--heads", nargs="*", default=None)
    parser.add_argument("--from-set", default=None, help="draw the rows from this cached feature set's")
    parser.add_argument("--sweep", default=None, metavar="HEAD", help="time this head's default-grid sweep instead")
    args = parser.parse_args(argv)
    X, y, held_out, held_y = _rows(args)
    source = args.from_set or "synthetic"
    print(f"{len(y)} x {X.shape[1]} rows ({source}), {cores()} cores, load {os.getloadavg()[0]:.1f}, "
          + (f"sweep budget {SWEEP_BUDGET:g} s" if args.sweep else f"cap {args.cap:g} s per head"))
    report = {"rows": len(y), "features": X.shape[1], "source": source, "cores": cores(),
              "load_at_start": os.getloadavg()[0]}
    if args.sweep:
        report["sweep"] = _sweep(args, X, y, held_out, held_y)
    else:
        report["heads"] = _fits(args, X, y, held_out, held_y)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
