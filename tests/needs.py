"""What some tests need beyond the package, and the one rule for when it is missing.

A test that needs one of these carries its marker (`@pytest.mark.ray`,
`onnx`, `browser`, `weights`); conftest.py checks the marker before the test
runs. Missing locally: the test is skipped with what to install. Missing
under `CI` (set and not "false" or "0"): the test FAILS, because every need
is installed there (`.ci/run`, `make setup`) and a skip would hide that.
Code that finds out only at run time what it needs calls `require(need)` or
`unavailable(message)` itself, so there is no second rule.

Kept free of package imports: Ray workers import the test modules too.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights"
SIGN_DIGITS = SHARED / "data" / "sign-language-digits"


def on_ci() -> bool:
    """True when the `CI` environment variable is set to anything but "", "0" or "false"."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def unavailable(message: str):
    """The one rule: skip with `message` locally, fail with it on CI."""
    if on_ci():
        pytest.fail(f"{message} (a test that needs it fails, never skips, under CI)", pytrace=False)
    pytest.skip(message)


def _importable(*modules):
    return lambda: all(importlib.util.find_spec(m) is not None for m in modules)


# marker: (whether it is here, what is missing and how to get it)
NEEDS = {
    "ray": (_importable("ray"),
            "the `ray` extra is not installed: pip install 'bottleneck-features[ray]' (make setup installs it)"),
    "onnx": (_importable("tf2onnx", "onnx", "onnxruntime"),
             "the `onnx` extra is not installed: pip install 'bottleneck-features[onnx]' (make setup installs it)"),
    "nvjpeg": (_importable("torch", "torchvision"),
               "the `nvjpeg` extra is not installed: pip install 'bottleneck-features[nvjpeg]' (make setup-nvjpeg)"),
    "browser": (lambda: shutil.which("chromium") is not None,
                "chromium is not installed: apt-get install -y chromium (.ci/run does this before make test)"),
    "weights": (lambda: WEIGHTS.is_dir() and SIGN_DIGITS.is_dir(),
                f"{SHARED} is missing: the ImageNet weights and sign-language-digits photos beside the repository"),
}


def require(need: str):
    """Returns when `need` (a key of NEEDS) is here; otherwise applies the rule."""
    available, missing = NEEDS[need]
    if not available():
        unavailable(missing)


def require_shared(path: Path) -> Path:
    """The file or folder under ../shared; the rule applies when it is absent."""
    if not path.exists():
        unavailable(f"{path} is missing (../shared beside the repo)")
    return path
