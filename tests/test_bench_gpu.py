"""bench/gpu.py's verdicts, table, time guard and flags, on synthetic results (no model is built)."""

import shutil
import subprocess
import sys
import time

import pytest

from bench import common, gpu

MODES = ["threads", "processes"]


def ok(ips):
    return {"status": "ok", "ips": ips, "seconds": 1.0}


def failed(error="RuntimeError: boom"):
    return {"status": "failed", "error": error, "seconds": 1.0}


def row(name, size=224, precision="mixed_bfloat16", **cells):
    return {"model": name, "size": size, "precision": precision, "replicas": 1, "cells": cells}


def decode(threads, processes):
    return {"n": 4096, "cells": {"threads": threads, "processes": processes}}


def test_importing_the_bench_leaves_tensorflow_importable():
    # The block belongs to the bench's own process: the test session shares this one.
    assert sys.modules.get("tensorflow", "absent") is not None


@pytest.mark.parametrize("target, best, ratio, result", [
    (8000, 8000.0, 0.1, "pass"),        # the absolute target alone
    (8000, 100.0, 0.75, "pass"),        # the fraction alone
    (8000, 7999.0, 0.74, "fail"),
    (None, 50_000.0, 0.74, "fail"),     # no absolute target: the fraction decides
    (None, 10.0, 0.9, "pass"),
    (8000, None, 0.9, "n/a"),           # no pipeline rate: never a pass
    (8000, 7000.0, None, "n/a"),        # below target and no ratio: not known to fail
    (8000, 9000.0, None, "pass"),
])
def test_verdict(target, best, ratio, result):
    got, why = gpu.verdict(target, best, ratio)
    assert got == result
    assert why


def test_summarize_takes_the_best_pipeline_and_the_fastest_decoder():
    r = row("vgg16", model=ok(12_000.0), pipeline_threads=ok(3_000.0), pipeline_processes=ok(7_000.0))
    s = gpu.summarize(r, decode(ok(2_500.0), ok(9_000.0)))
    assert (s["best"], s["best_mode"], s["fastest_decoder"]) == (7_000.0, "processes", 9_000.0)
    assert s["ceiling"] == 9_000.0  # min(model 12,000, fastest decoder 9,000)
    assert s["ratio"] == pytest.approx(7_000.0 / 9_000.0)
    assert s["result"] == "pass"  # below 8,000 img/s, but 0.78 of the ceiling


def test_summarize_ignores_failed_and_skipped_cells():
    r = row("mobilenet_v2", model=failed(), pipeline_threads=ok(4_000.0),
            pipeline_processes={"status": "skipped", "reason": "time guard"})
    s = gpu.summarize(r, decode(ok(5_000.0), failed()))
    assert s["best"] == 4_000.0 and s["fastest_decoder"] == 5_000.0
    assert s["ceiling"] is None and s["ratio"] is None
    assert s["result"] == "n/a"  # below 10,000 img/s, and the model alone is unknown


def _env(**args):
    return {
        "date": "2026-12-02", "gpu": "NVIDIA H200, 143771 MiB", "cpu": "x86", "cores": 16, "devices": ["cuda:0"], "backend": "jax",
        "versions": {"keras": "3.15.1", "jax": "0.11.2"}, "tensorflow_imported": False, "bench_seconds": 300.0,
        "command": "KERAS_BACKEND=jax python -m bench.gpu",
        "args": {"label": "gpu", "budget": 420.0, "pipe_n": 4096, "batch_size": 64, "workers": 16, "devices": "auto",
                 "model_n": 4096, "seed_n": 400, **args},
    }


def test_render_prints_every_column_verdict_and_failure():
    results = {
        "modes": MODES,
        "decode": {"500x375@224": decode(ok(2_500.0), ok(9_000.0)),
                   "3024x2268@224": {"n": "240 x4", "cells": {"threads": ok(300.0), "processes": failed("OSError: x")}}},
        "rows": [
            row("vgg16", model=ok(12_000.0), pipeline_threads=ok(2_400.0), pipeline_processes=ok(8_100.0),
                seed=ok(150.0)),
            row("mobilenet_v2", model=ok(20_000.0), pipeline_threads=ok(2_000.0), pipeline_processes=ok(5_000.0),
                seed=failed("CellTimeout: stopped after 120 s")),
            row("resnet50", model={"status": "skipped", "reason": "time guard: 3 s of the budget left"}),
        ],
    }
    text = gpu.render(_env(), results)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["model @ size", "precision", "devices", "seed 003 img/s", "pipeline threads img/s",
                      "pipeline processes img/s", "model alone img/s", "decode threads img/s", "decode processes img/s",
                      "pipeline / min(model, decoder)", "target", "result"]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in table[1:4]}
    assert cells["vgg16 @224"][-1] == "**pass**" and cells["vgg16 @224"][5] == "8,100"
    assert cells["mobilenet_v2 @224"][-1] == "**fail**"  # 5,000 < 10,000 and 5,000 / 9,000 < 0.75
    assert cells["mobilenet_v2 @224"][-3] == f"{5_000 / 9_000:.2f}"
    assert cells["mobilenet_v2 @224"][3] == "failed"
    assert cells["resnet50 @224"][6] == "skipped" and cells["resnet50 @224"][-1] == "n/a"
    assert "CellTimeout: stopped after 120 s" in text and "time guard: 3 s of the budget left" in text
    assert "OSError: x" in text and "240 x4" in text


def test_guard_records_a_failure_and_runs_on():
    guard = gpu.Guard(budget=60, cell_limit=60, started=time.perf_counter())
    assert guard.run("decode", "a", lambda: 1 / 0)["status"] == "failed"
    assert guard.run("decode", "b", lambda: {"ips": 5.0}) | {"seconds": 0} == {"status": "ok", "ips": 5.0, "seconds": 0}


def test_guard_skips_what_would_overrun_the_budget():
    guard = gpu.Guard(budget=gpu.FIRST_ESTIMATE_S["model"] - 1, cell_limit=60, started=time.perf_counter())
    cell = guard.run("model", "m", lambda: pytest.fail("a cell past the budget must not start"))
    assert cell["status"] == "skipped" and "time guard" in cell["reason"]


def test_guard_stops_a_cell_past_its_limit():
    guard = gpu.Guard(budget=60, cell_limit=0.2, started=time.perf_counter())

    def forever():
        while True:
            time.sleep(0.01)

    cell = guard.run("decode", "slow", forever)
    assert cell["status"] == "failed" and "CellTimeout" in cell["error"]
    assert cell["seconds"] < 2


def test_steady_rate_leaves_out_the_first_batch_and_the_lookahead():
    marks = [(10.0, 64), (10.5, 128), (11.0, 192), (12.0, 320)]  # 10 s to the first batch: a compile
    assert common.steady_rate(marks) == pytest.approx((320 - 64) / 2.0)
    assert common.steady_rate(marks, after=64) == pytest.approx((320 - 128) / 1.5)
    assert common.steady_rate(marks[:1]) is None
    assert common.steady_rate(marks, after=1000) is None


def test_quick_sets_small_defaults_that_flags_override():
    args = gpu.parse_args(["--quick", "--pipe-n", "80"])
    assert args.pipe_n == 80  # given: kept
    assert (args.model_n, args.budget, args.precisions) == (gpu.QUICK["model_n"], gpu.QUICK["budget"], "float32")
    assert args.specs == [(m, int(s)) for m, _, s in (x.partition("@") for x in gpu.QUICK["models"].split(","))]
    full = gpu.parse_args([])
    assert full.budget < 8 * 60 and full.specs == [("vgg16", 224), ("mobilenet_v2", 224), ("resnet50", 224)]
    # The KerasHub rows: full depth @224 on the GPU, two blocks at a tiny size in the smoke run.
    assert full.hub_specs == [("dinov2_small", 224), ("siglip_base", 224)] and full.hub_layers == 0
    assert args.hub_specs == [("dinov2_small", 28), ("siglip_base", 32)] and args.hub_layers == 2
    assert gpu.parse_args(["--hub-models", ""]).hub_specs == []


@pytest.mark.parametrize("argv", [["--models", "vgg16"], ["--seed-n", "30"], ["--quick", "--seed-n", "100"],
                                  ["--hub-models", "dinov2_tiny@224"], ["--hub-models", "dinov2_small"]])
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        gpu.parse_args(argv)
    assert "Received" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("git") is None or not (common.REPO / ".git").exists(), reason="needs a git checkout")
def test_carried_wheels_are_ignored_by_git():
    # .whl/ holds ~3 MB of wheels for the GPU machine: never committed.
    wheel = ".whl/keras-3.15.1-py3-none-any.whl"
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", wheel], cwd=common.REPO).returncode == 0


@pytest.mark.nvjpeg
@pytest.mark.slow
def test_quick_decode_run_measures_every_decoder_on_the_cpu_without_tensorflow(tmp_path):
    # What a lent GPU runs in full: here each decode-alone cell, nvjpeg included, on the CPU (torch imports with
    # TensorFlow refused, as on the GPU machine, which has none).
    import json
    import os

    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--quick", "--only", "decode", "--out", str(tmp_path),
                           "--workdir", str(tmp_path / "work")], cwd=common.REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [report] = tmp_path.glob("gpu-quick-*.json")
    saved = json.loads(report.read_text())
    assert saved["results"]["modes"] == ["threads", "processes", "nvjpeg"] and saved["results"]["rows"] == []
    assert saved["env"]["tensorflow_imported"] is False
    sets = saved["results"]["decode"]
    assert {name.split("@")[0] for name in sets} == {"500x375", "768x576"}  # the pipeline's JPEGs, phone-sized ones
    for name, measured in sets.items():
        for column in ("threads", "processes", "nvjpeg"):
            cell = measured["cells"][column]
            assert cell["status"] == "ok" and cell["ips"] > 0, (name, column, cell)
    assert "| nvjpeg img/s |" in done.stdout
