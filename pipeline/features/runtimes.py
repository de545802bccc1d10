"""Runtimes: what runs a built extractor over decoded batches.

`keras` runs the model as built, on whatever device the backend has.
`onnx` converts it with Keras' own ONNX export and runs it in ONNX
Runtime on the CPU, where it runs MobileNetV2 3-4x faster than TensorFlow
(docs/performance.md). Every run checks the converted model against Keras
on a probe batch and refuses it when they disagree beyond float rounding,
so a runtime changes how fast the numbers come, not the numbers: it is
recorded with the set (its config) but kept out of the feature key, as the
device is.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError

__all__ = ["ROWS", "check_agreement", "prepare"]

# Largest |difference| allowed between a runtime's features and Keras', relative to the largest |feature|:
# ONNX Runtime measured 5e-6 on MobileNetV2; a wrong conversion is off by far more.
AGREEMENT = 1e-4
_PROBE_IMAGES = 2


@dataclasses.dataclass(frozen=True)
class Runtime:
    """A row of `ROWS`: how a built Keras extractor becomes what runs the batches."""

    name: str
    wrap: Callable[[Any], Any]  # built Keras model -> object with `predict_on_batch` and `output_shape`
    packages: tuple[str, ...] = ()
    install: str = ""


class OnnxExtractor:
    """An extractor converted to ONNX, run by ONNX Runtime; the Keras model's interface where extraction uses it."""

    def __init__(self, session, output_shape: tuple):
        self._session, self.output_shape = session, output_shape
        self._input = session.get_inputs()[0].name

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: images})[0]


def _onnx(model) -> OnnxExtractor:
    import onnxruntime

    probe = np.random.default_rng(0).integers(0, 256, (_PROBE_IMAGES, *model.input_shape[1:]), dtype=np.uint8)
    expected = np.asarray(model.predict_on_batch(probe))  # Keras exports only a model that has been called
    with tempfile.TemporaryDirectory(prefix="bottleneck-onnx-") as folder:
        path = Path(folder) / "extractor.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf2onnx's deprecation warnings name nothing a user can change
                model.export(str(path), format="onnx", verbose=False)
            session = onnxruntime.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - the converters raise anything; the fix is the same
            raise ConfigError(
                f"runtime onnx: this base could not be converted to ONNX ({type(e).__name__}: {e}). "
                "Run it with --runtime keras (RUNTIME=keras).",
                field="runtime",
            ) from e
    extractor = OnnxExtractor(session, tuple(model.output_shape))
    check_agreement(expected, extractor.predict_on_batch(probe), "onnx")
    return extractor


def check_agreement(expected: np.ndarray, got: np.ndarray, runtime: str) -> None:
    """Refuses a runtime whose features on the probe batch are not Keras' within `AGREEMENT`."""
    scale = max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
    off = float(np.max(np.abs(np.asarray(got, np.float64) - expected))) if got.shape == expected.shape else np.inf
    if not off <= AGREEMENT * scale:  # also refuses NaN
        raise ConfigError(
            f"runtime {runtime}: the converted base disagrees with Keras on a probe batch (largest difference "
            f"{off:.3g}, allowed {AGREEMENT * scale:.3g}), so its features cannot be trusted. "
            "Run it with --runtime keras (RUNTIME=keras).",
            field="runtime",
        )


ROWS: dict[str, Runtime] = {  # one per name in `config.RUNTIMES`
    row.name: row
    for row in (
        Runtime("keras", lambda model: model),
        # Keras' ONNX export converts through tf2onnx on the TensorFlow backend.
        Runtime("onnx", _onnx, packages=("tf2onnx", "onnx", "onnxruntime"),
                install="pip install 'bottleneck-features[onnx]'"),
    )
}


def prepare(runtime: str, model):
    """What runs `model`'s forward passes under `runtime` (a key of `ROWS`)."""
    row = ROWS[runtime]
    missing = [name for name in row.packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"runtime {runtime} needs {', '.join(missing)}: {row.install}, or run with --runtime keras.",
            field="runtime",
        )
    return row.wrap(model)
