"""Importing Keras without TensorFlow's start-up banner on the terminal.

TensorFlow's C++ runtime writes two lines to file descriptor 2 each time
its libraries load (an absl notice and a oneDNN notice), before
`TF_CPP_MIN_LOG_LEVEL` is read, so neither that variable nor Python's
warnings filters can hide them. Keras is imported here, once, with the
descriptor pointed at a temporary file; afterwards every other line is
written back, so nothing but the banner is lost.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile

__all__ = ["import_keras", "import_tensorflow"]

_BANNER = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I0000 [^\n]* oneDNN custom operations are on\."
)


def import_keras():
    """`import keras`, with TensorFlow's start-up banner dropped from stderr."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the rest of TensorFlow's C++ info logging
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            _write_back(captured.read())
    return keras


def import_tensorflow(purpose: str):
    """TensorFlow itself, for what only it can write (`purpose`), and only when it is Keras' backend.

    The pipeline otherwise runs on any Keras backend; this is the one place
    that reaches past Keras, so the refusal on JAX or PyTorch is said once.
    """
    from .errors import ConfigError

    backend = import_keras().backend.backend()
    if backend != "tensorflow":
        raise ConfigError(
            f"{purpose} needs TensorFlow, but Keras runs on {backend!r}. Run it with KERAS_BACKEND=tensorflow.",
            field="format",
        )
    return importlib.import_module("tensorflow")


def _write_back(output: bytes) -> None:
    kept = [line for line in output.splitlines(keepends=True) if not _BANNER.search(line)]
    if kept:
        os.write(2, b"".join(kept))
