"""The embedded default dataset: scikit-learn's 8x8 digits as PNG folders.

It ships inside scikit-learn, so `make features` works with no download and
no data of one's own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError

__all__ = ["DIGITS_IMAGES", "write_digits"]

DIGITS_IMAGES = 1797
"""Number of images `write_digits()` writes (all of `load_digits()`)."""

_SIDE = 32
_MARKER = ".complete"  # hidden, so discovery never lists it
_MARKER_CONTENT = {
    "dataset": "sklearn-digits",
    "images": DIGITS_IMAGES,
    "side": _SIDE,
    "version": 1,
}


def write_digits(out_dir) -> Path:
    """Writes scikit-learn's digits as a class-per-folder PNG dataset.

    The 1797 images of `sklearn.datasets.load_digits()` (8x8, values 0..16,
    ink high) are scaled to 0..255, enlarged to 32x32 with nearest
    neighbour (so every pixel stays a crisp block), and saved as 8-bit
    greyscale PNGs at `out_dir/<digit>/<index:04d>.png`, `index` being the
    position in `load_digits()`.

    Writing is atomic: the files go into a hidden temporary folder beside
    `out_dir` (`.<name>.partial-*`), which is renamed to `out_dir` only once
    complete, with a hidden `.complete` marker inside. An interruption
    (Ctrl-C included) removes the temporary folder, so a half-written
    dataset never appears under `out_dir`; a temporary folder left by a
    killed process is never mistaken for the dataset. If `out_dir` already
    holds a complete copy it is returned untouched.

    Args:
        out_dir: str or `os.PathLike`. Folder to create. Its parent folders
            are created as needed. It must not exist, be empty, or hold a
            complete copy written earlier.

    Returns:
        `Path(out_dir)`.

    Raises:
        ConfigError: `out_dir` exists and is not an empty folder nor a
            complete copy (it is never deleted or overwritten).

    Example:

    >>> root = write_digits("data/digits")  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']
    """
    out = Path(out_dir)
    if _is_complete(out):
        return out
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ConfigError(
            f"`out_dir` '{out}' already exists and is not a complete digits "
            f"dataset (no valid '{_MARKER}' marker inside). Delete it or pass "
            "another folder.",
            field="out_dir",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write_images(tmp)
        try:
            # POSIX rename replaces an empty folder, so an empty `out_dir`
            # (e.g. a mount point prepared by the user) is fine.
            os.replace(tmp, out)
        except OSError:
            # Another process may have finished the same job first.
            if not _is_complete(out):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_images(folder):
    # Imported here: scikit-learn is heavy and only this function needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    scale = _SIDE // pixels.shape[1]
    for digit in np.unique(digits.target):
        (folder / str(digit)).mkdir()
    for index, (image, digit) in enumerate(zip(pixels, digits.target)):
        big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        Image.fromarray(big).save(folder / str(digit) / f"{index:04d}.png")
    (folder / _MARKER).write_text(json.dumps(_MARKER_CONTENT, sort_keys=True))


def _is_complete(out):
    try:
        return json.loads((out / _MARKER).read_text()) == _MARKER_CONTENT
    except (OSError, ValueError):
        return False
