"""Outputs the README's commands write into the project folder are ignored by git."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ["predictions.csv", "model.keras", "model.keras.json", "cache/x-mobilenet_v2-224-avg-1/features.h5",
           "runs/leaderboard.csv", "data/digits/0/0000.png", "bench/results/cpu-2026-12-01.md"]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
@pytest.mark.parametrize("path", OUTPUTS)
def test_documented_outputs_are_ignored(path):
    result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    assert result.returncode == 0, f"{path} would show up in git status"
