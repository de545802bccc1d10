"""Small real image folders for tests, made with Pillow."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from needs import REPO, SHARED, SIGN_DIGITS, WEIGHTS, require_shared  # noqa: F401 (re-exported)


def write_image(path: Path, seed: int, size: int = 40, fmt: str | None = None) -> Path:
    """A colourful random image whose content depends only on `seed`."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 1, 3))
    noise = rng.integers(-60, 60, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_dataset(root: Path, classes: int = 3, per_class: int = 6, start: int = 0) -> Path:
    """`root/<class>/<i>.png`, images seeded by their index."""
    for c in range(classes):
        for i in range(start, start + per_class):
            write_image(root / f"class{c}" / f"{i:03d}.png", seed=1000 * c + i)
    return root


PYTHON = sys.executable
