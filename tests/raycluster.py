"""A local Ray cluster for the Ray engine tests, and the worker hook that stops model workers on request."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from imagegen import REPO

# Read by `stop_after_first_shard` in every Ray worker: while this file exists, model workers fail.
STOP_FLAG = "BOTTLENECK_TEST_STOP_FLAG"


def stop_after_first_shard():
    """Ray worker setup hook: a model worker raises at its second batch while the flag file exists."""
    from pipeline.features import backbones

    real, calls = backbones.predict_batches, []

    def predict_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1 and Path(os.environ[STOP_FLAG]).exists():
            raise RuntimeError("model worker stopped by the test")
        return real(*args, **kwargs)

    backbones.predict_batches = predict_then_stop


@contextlib.contextmanager
def local_cluster(folder: Path, env_vars: dict | None = None):
    """Ray on 2 CPUs with `env_vars` in every worker; yields the flag file of `stop_after_first_shard`."""
    import ray

    flag = folder / "stop"
    path = os.pathsep.join([str(REPO), str(Path(__file__).parent)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": path, STOP_FLAG: str(flag), **(env_vars or {})},
                          "worker_process_setup_hook": "raycluster.stop_after_first_shard"})
    try:
        yield flag
    finally:
        ray.shutdown()
