"""A Ray address that cannot be joined is a user error, named, within seconds (each case in a fresh process)."""

import os
import sys

import pytest

from imagegen import REPO, make_dataset
from pipeline.cli import ExitStatus

ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")


def _a_ray_cluster_runs_here() -> bool:
    from ray._private.services import find_gcs_addresses

    return bool(find_gcs_addresses())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ray-address") / "data", classes=2, per_class=2)


@pytest.mark.parametrize("address, named", [
    ("127.0.0.1:1", "'127.0.0.1:1' (from RAY_ADDRESS)"),
    ("ray://127.0.0.1:1", "'ray://127.0.0.1:1' (from RAY_ADDRESS)"),
    ("not a url", "'not a url' (from RAY_ADDRESS)"),
    ("auto", "'auto' (from RAY_ADDRESS)"),
])
def test_a_bad_ray_address_is_a_user_error_within_seconds(data, tmp_path, address, named):
    """Ray retries a dead address for minutes; the command must refuse it, naming it, with status 2."""
    import subprocess
    import time

    if address == "auto" and _a_ray_cluster_runs_here():
        pytest.skip("'auto' joins the Ray cluster running on this machine (another test's or process's)")
    # RAY_TMPDIR: no address file a cluster started elsewhere left behind is read.
    env = {**os.environ, "RAY_ADDRESS": address, "RAY_TMPDIR": str(tmp_path / "ray"), "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "features", str(data), "--engine", "ray", "--cache-dir", str(tmp_path / "c"),
         "--model", "resnet50", "--size", "32", "--weights", "none"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == ExitStatus.BAD_INPUT, done.stderr[-2000:]
    assert named in done.stderr and "ray start --head" in done.stderr
    assert time.monotonic() - started < 60  # imports included; the connection itself is bounded by 10 s
    assert not list((tmp_path / "c").glob("*/shards/*.h5"))

