"""Accuracy levers on real photos: augmented views, label fraction, head sweep (issue 11).

    python -m bench.levers [--workdir /tmp/measure11] [--size 224]

On the sign-language digits (2,062 JPEGs, 10 class folders) with MobileNetV2
and the shared ImageNet weights, through the product's own commands:

1. `features` from an empty cache (the clean extraction), then the same
   command with `--augment 4` (default ops), which extracts only the views:
   the cost of K=4 views against the clean extraction.
2. `train-head --head logreg --head dense` at `--fraction` 0.1 and 1.0,
   without and with `--augmented`, without and with `--sweep` (each head's
   default grid): 16 runs, default splits 0.8,0.1,0.1, seed 0.

Prints one markdown table: validation and test accuracy, the final fit's
seconds, the sweep's seconds (every candidate's fit) and the parameters a
sweep chose. The workdir's cache and runs are removed first, so every run
starts from an empty cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench import common
from bench.common import fmt, table

HEADS = ("logreg", "dense")
FRACTIONS = (0.1, 1.0)
VIEWS = 4


def _log(message: str) -> None:
    print(f"[levers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cli(*args: str) -> tuple[dict, float]:
    """Runs `python -m pipeline ARGS --json`; its JSON line and wall seconds."""
    result = common.run_process(common.cli_argv(*args, "--json"))
    return result.json_line(), result.wall


def extract(workdir: Path, size: int) -> dict:
    """Clean extraction from an empty cache, then the K views added to the same set."""
    base = ["features", str(common.SIGN_DIGITS), "--model", "mobilenet_v2", "--size", str(size),
            "--weights", str(common.MOBILENET_V2_WEIGHTS), "--name", "sign", "--cache-dir", str(workdir / "cache")]
    _log(f"clean extraction at {size} px")
    clean, clean_wall = _cli(*base)
    _log(f"  {clean['seconds']:.1f} s in the loop, {clean_wall:.1f} s wall, counts {clean['counts']}")
    _log(f"--augment {VIEWS}")
    views, views_wall = _cli(*base, "--augment", str(VIEWS))
    _log(f"  {views['seconds']:.1f} s in the loop, {views_wall:.1f} s wall, counts {views['counts']}")
    return {"path": clean["path"], "clean": clean, "clean_wall": clean_wall, "views": views, "views_wall": views_wall}


def train(workdir: Path, features: str, fraction: float, augmented: bool, sweep: bool) -> list[dict]:
    """One `train-head` call for both heads; each run's scores, sizes and sweep record."""
    args = ["train-head", features, *(a for h in HEADS for a in ("--head", h)), "--fraction", str(fraction),
            "--runs-dir", str(workdir / "runs"), "--cache-dir", str(workdir / "cache")]
    args += ["--augmented"] * augmented + ["--sweep"] * sweep
    _log(f"train-head fraction={fraction} augmented={augmented} sweep={sweep}")
    out, wall = _cli(*args)
    rows = []
    for run in out["runs"]:
        metrics = json.loads((Path(run["run_dir"]) / "metrics.json").read_text())
        record = metrics.get("sweep")
        rows.append({**run, "fraction": fraction, "augmented": augmented, "sweep": record, "call_wall": wall})
        _log(f"  {run['head']}: val {run['val_accuracy']:.4f} test {run['test_accuracy']:.4f} "
             f"fit {run['fit_seconds']:.1f} s, train rows {run['sizes']['train']}")
    return rows


def _acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render(env: dict, args, extracted: dict, rows: list[dict]) -> str:
    clean, views = extracted["clean"], extracted["views"]
    lines = [
        f"# Accuracy levers, sign-language digits, MobileNetV2 ImageNet @ {args.size} px ({env['date']})",
        "",
        f"{env['cpu']}, {env['cores']} cores (shared), load average {env['load_start'][0]:.2f} at the start, "
        f"{env['load_end'][0]:.2f} at the end; {extracted['clean']['dataset_summary']}",
        "",
        table(
            ["extraction", "images", "seconds", "wall s", "images/s"],
            [
                ["clean", clean["counts"]["extracted"], fmt(clean["seconds"]), fmt(extracted["clean_wall"]),
                 fmt(clean["counts"]["extracted"] / clean["seconds"])],
                [f"--augment {VIEWS} (views only)", views["counts"]["views"], fmt(views["seconds"]),
                 fmt(extracted["views_wall"]), fmt(views["counts"]["views"] / views["seconds"])],
            ],
        ),
        "",
        f"K={VIEWS} views cost {views['seconds'] / clean['seconds']:.2f}x the clean extraction "
        f"({extracted['views_wall'] / extracted['clean_wall']:.2f}x in wall time).",
        "",
        table(
            ["head", "fraction", "augmented", "sweep", "train rows", "val acc", "test acc", "fit s", "sweep s",
             "chosen"],
            [
                [r["head"], f"{r['fraction']:g}", "yes" if r["augmented"] else "no", "grid" if r["sweep"] else "no",
                 r["sizes"]["train"], _acc(r["val_accuracy"]), _acc(r["test_accuracy"]), fmt(r["fit_seconds"]),
                 fmt(sum(c["fit_seconds"] for c in r["sweep"]["candidates"])) if r["sweep"] else "-",
                 ", ".join(f"{k}={v:g}" for k, v in r["sweep"]["chosen"].items()) if r["sweep"] else "-"]
                for r in rows
            ],
        ),
        "",
        f"Validation {rows[0]['sizes']['validation']} and test {rows[0]['sizes']['test']} images: "
        f"one test image is {100 / rows[0]['sizes']['test']:.2f} points. "
        "`seconds`: the command's own (JSON `seconds`); `fit s`: the run's final fit; "
        "`sweep s`: the candidates' fits summed (logreg's run in parallel).",
        "",
        f"    python -m bench.levers --workdir {args.workdir} --size {args.size}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/measure11",
                   help="scratch folder; its cache/ and runs/ are removed first (default /tmp/measure11)")
    p.add_argument("--size", type=int, default=224, help="input size in pixels (default 224, the backbone's)")
    args = p.parse_args(argv)
    for needed in (common.SIGN_DIGITS, common.MOBILENET_V2_WEIGHTS):
        if not needed.exists():
            raise SystemExit(f"{needed} is absent: these numbers are only meaningful on the real photos and weights.")
    workdir = Path(args.workdir)
    for folder in ("cache", "runs"):
        shutil.rmtree(workdir / folder, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env = {"date": datetime.date.today().isoformat(), "cpu": common.cpu_model(), "cores": os.cpu_count(),
           "load_start": os.getloadavg()}
    extracted = extract(workdir, args.size)
    rows = [
        row
        for fraction in FRACTIONS
        for augmented in (False, True)
        for sweep in (False, True)
        for row in train(workdir, extracted["path"], fraction, augmented, sweep)
    ]
    env["load_end"] = os.getloadavg()
    report = render(env, args, extracted, rows)
    (workdir / "levers.md").write_text(report)
    (workdir / "levers.json").write_text(json.dumps({"env": env, "extracted": extracted, "rows": rows}, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
