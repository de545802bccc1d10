"""`make bench`'s hub section: a KerasHub ViT-S/14 through the pipeline vs the same model alone.

The model is DINOv2-small's shape with random weights (`hub_shapes`),
saved as a local preset and run as `--model hub:<folder>`. Contenders, in
one run, order alternating over repetitions:

- pipeline: `extract_features` on N of the sign-language-digit photos
  (decode, model, HDF5 shards and index), its loop rate and its whole call;
- model alone: the pipeline's own extractor and `predict_batches` on the
  same photos decoded beforehand (the same uint8 arrays the pipeline feeds it).

Their ratio says what the pipeline costs around a transformer encoder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from bench import common, hub_shapes
from bench.common import fmt, fmt_ratio, med, table

SHAPE = "dinov2_small"


def hub_speed(workdir: Path, n: int, size: int, reps: int, precision: str, log) -> dict:
    from pipeline.config import ExtractConfig
    from pipeline.features import backbones, decode
    from pipeline.features.extract import extract_features

    preset = workdir / f"hub-{SHAPE}-{size}"
    if not (preset / "config.json").is_file():
        hub_shapes.save_preset(SHAPE, preset, size)
    model = f"hub:{preset}"
    folder = common.prepare_real(workdir, n)
    paths = common.image_paths(folder)
    config = ExtractConfig(data=str(folder), model=model, size=size, precision=precision,
                           cache_dir=str(workdir / "cache-hub"))
    images = np.stack([decode.load_image(p, size) for p in paths])
    extractor = backbones.build_extractor(backbones.get_backbone_cfg(model), size=size, weights="imagenet",
                                          precision=precision)
    backbones.predict_batches(extractor, images[: config.batch_size], config.batch_size)  # compile, out of the timing
    r: dict[str, list[float]] = {"pipe_loop": [], "pipe_e2e": [], "model_alone": []}

    def run_pipeline():
        shutil.rmtree(config.cache_dir, ignore_errors=True)
        result = extract_features(config=config)
        assert result.counts["extracted"] == n, result.counts
        r["pipe_loop"].append(result.images_per_second)
        r["pipe_e2e"].append(n / result.seconds)
        log(f"  pipeline: {result.images_per_second:.1f} img/s in the loop, {n / result.seconds:.1f} whole call")

    def run_model():
        t = time.perf_counter()
        features = backbones.predict_batches(extractor, images, config.batch_size)
        r["model_alone"].append(n / (time.perf_counter() - t))
        assert len(features) == n
        log(f"  model alone: {r['model_alone'][-1]:.1f} img/s")

    contenders = [run_pipeline, run_model]
    for rep in range(reps):
        log(f"hub: {SHAPE} shape @{size}, {n} photos, repetition {rep + 1}/{reps}")
        k = rep % 2
        for run in contenders[k:] + contenders[:k]:
            run()
    shutil.rmtree(config.cache_dir, ignore_errors=True)
    return {"shape": SHAPE, "size": size, "n": n, "reps": reps, "batch_size": config.batch_size,
            "workers": config.workers, "raw": r,
            "ratio_loop": [p / m for p, m in zip(r["pipe_loop"], r["model_alone"])],
            "ratio_e2e": [p / m for p, m in zip(r["pipe_e2e"], r["model_alone"])]}


def hub_lines(m: dict) -> list[str]:
    r = m["raw"]
    return [
        "## A KerasHub ViT-S/14 through the pipeline vs the model alone",
        "",
        table(["contender", "img/s", "vs model alone"], [
            ["model alone (`predict_batches`, pre-decoded)", fmt(med(r["model_alone"])), "1.00"],
            ["pipeline, in the loop", fmt(med(r["pipe_loop"])), fmt_ratio(m["ratio_loop"])],
            ["pipeline, whole call", fmt(med(r["pipe_e2e"])), fmt_ratio(m["ratio_e2e"])],
        ]),
        "",
        f"- {m['n']} sign-language-digit photos @{m['size']}; the model is KerasHub's `DINOV2Backbone` in "
        f"DINOv2-small's shape (ViT-S/14: 12 blocks, width 384, 6 heads; random weights, saved as a local preset and "
        f"run as `hub:<folder>`), pooling cls+mean; batch {m['batch_size']}, {m['workers']} decode workers; "
        f"{m['reps']} repetitions, order alternating. The whole call adds the model build and the index.",
        "",
    ]
