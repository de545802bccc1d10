"""Runtimes: what runs a built extractor over decoded batches.

`keras` runs the model as built, on whatever device the backend has.
`onnx` converts it with Keras' own ONNX export and runs it in ONNX
Runtime on the CPU, where it runs MobileNetV2 about 3x faster than
TensorFlow (docs/performance.md). A conversion is checked against Keras on
a probe batch and refused when they disagree beyond float rounding, so a
runtime changes how fast the numbers come, not the numbers: it is recorded
with the set (its config) but kept out of the feature key, as the device
is. A checked conversion is kept in `<cache>/runtimes/` under the base's
key, so later runs load it without importing Keras or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import _atomic
from ..errors import ConfigError

log = logging.getLogger("bottleneck")

__all__ = ["ROWS", "check_agreement", "prepare", "teach_tf2onnx"]

# Largest |difference| allowed between a runtime's features and Keras', relative to the largest |feature|:
# ONNX Runtime measured 5e-6 on MobileNetV2; a wrong conversion is off by far more.
AGREEMENT = 1e-4
_PROBE_IMAGES = 2


@dataclasses.dataclass(frozen=True)
class Runtime:
    """A row of `ROWS`: how a built Keras extractor becomes what runs the batches."""

    name: str
    # (build the Keras model, where a checked conversion is kept) -> object with `predict_on_batch`, `output_shape`
    prepare: Callable[[Callable[[], Any], Path], Any]
    packages: tuple[str, ...] = ()
    install: str = ""


class OnnxExtractor:
    """An extractor converted to ONNX, run by ONNX Runtime; the Keras model's interface where extraction uses it."""

    replicas = 1  # on the CPU: `backbones.predict_batches` need not ask Keras for its devices

    def __init__(self, session, output_shape: tuple):
        self._session, self.output_shape = session, output_shape
        self._input = session.get_inputs()[0].name

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: images})[0]


def _onnx(build: Callable[[], Any], saved: Path) -> OnnxExtractor:
    return _load_onnx(saved) or _convert_onnx(build(), saved)


def _load_onnx(saved: Path) -> OnnxExtractor | None:
    """The conversion kept at `saved`, or `None` when there is none or it is not the file that was checked."""
    try:
        record = json.loads(saved.with_suffix(".json").read_text(encoding="utf-8"))
        data = saved.read_bytes()
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            log.warning("%s is not the conversion that was checked against Keras; converting again.", saved)
            return None
        output_shape = tuple(record["output_shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return OnnxExtractor(_onnx_session(data), output_shape)


@functools.cache
def teach_tf2onnx() -> None:
    """Adds the tf2onnx row for TensorFlow's `Erfc`, which tf2onnx 1.17 cannot convert.

    The exact GELU of transformer encoders (DINOv2, DINOv3, ViT; SigLIP uses
    the tanh GELU and CLIP the quick GELU) is traced by TensorFlow as `Erfc`;
    `erfc(x) = 1 - erf(x)` in ONNX's own `Erf` (opset 9) is the same function.
    """
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # noqa: F841 - registered by the decorator
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            node.type = "Erf"
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            complement = ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(node.name),
                                                       inputs=[one.output[0], node.output[0]])
            ctx.copy_shape(node.output[0], complement.output[0])
            ctx.set_dtype(complement.output[0], ctx.get_dtype(node.output[0]))


def _convert_onnx(model, saved: Path) -> OnnxExtractor:
    probe = np.random.default_rng(0).integers(0, 256, (_PROBE_IMAGES, *model.input_shape[1:]), dtype=np.uint8)
    expected = np.asarray(model.predict_on_batch(probe))  # Keras exports only a model that has been called
    with tempfile.TemporaryDirectory(prefix="bottleneck-onnx-") as folder:
        path = Path(folder) / "extractor.onnx"
        try:
            teach_tf2onnx()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf2onnx's deprecation warnings name nothing a user can change
                model.export(str(path), format="onnx", verbose=False)
            data = path.read_bytes()
            extractor = OnnxExtractor(_onnx_session(data), tuple(model.output_shape))
            got = extractor.predict_on_batch(probe)
        except Exception as e:  # noqa: BLE001 - the converters raise anything, and the runtime on a bad graph
            raise ConfigError(
                f"runtime onnx: this base could not be converted to ONNX ({type(e).__name__}: {_first_line(e)}). "
                "Run it with --runtime keras (RUNTIME=keras).",
                field="runtime",
            ) from e
    off = check_agreement(expected, got, "onnx")
    saved.parent.mkdir(parents=True, exist_ok=True)
    _atomic.write_bytes(saved, data)
    _atomic.write_json(saved.with_suffix(".json"), {  # last: a conversion without it is never loaded
        "sha256": hashlib.sha256(data).hexdigest(), "output_shape": list(extractor.output_shape),
        "largest_difference_from_keras": off,
        "versions": {name: importlib.metadata.version(name) for name in ("keras", "tf2onnx", "onnxruntime")},
    })
    return extractor


def _onnx_session(data: bytes):
    import onnxruntime

    # From bytes, never a path: a model naming external data files cannot make the runtime read them.
    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


def check_agreement(expected: np.ndarray, got: np.ndarray, runtime: str) -> float:
    """The largest difference of a runtime's features on the probe batch from Keras'; refused beyond `AGREEMENT`."""
    scale = max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
    off = float(np.max(np.abs(np.asarray(got, np.float64) - expected))) if got.shape == expected.shape else np.inf
    if not off <= AGREEMENT * scale:  # also refuses NaN
        raise ConfigError(
            f"runtime {runtime}: the converted base disagrees with Keras on a probe batch (largest difference "
            f"{off:.3g}, allowed {AGREEMENT * scale:.3g}), so its features cannot be trusted. "
            "Run it with --runtime keras (RUNTIME=keras).",
            field="runtime",
        )
    return off


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


ROWS: dict[str, Runtime] = {  # one per name in `config.RUNTIMES`
    row.name: row
    for row in (
        Runtime("keras", lambda build, saved: build()),
        # Keras' ONNX export converts through tf2onnx on the TensorFlow backend.
        Runtime("onnx", _onnx, packages=("tf2onnx", "onnx", "onnxruntime"),
                install="pip install 'bottleneck-features[onnx]'"),
    )
}


def prepare(runtime: str, build: Callable[[], Any], *, cache_dir: str | Path, key: str):
    """What runs a base's forward passes under `runtime` (a key of `ROWS`).

    Args:
        runtime: the runtime's name.
        build: builds the base's Keras model (called only when needed).
        cache_dir: the cache folder; conversions are kept in its `runtimes/` folder.
        key: the base's feature key without its views: names its conversions.
    """
    row = ROWS[runtime]
    missing = [name for name in row.packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"runtime {runtime} needs {', '.join(missing)}: {row.install}, or run with --runtime keras.",
            field="runtime",
        )
    return row.prepare(build, Path(cache_dir) / "runtimes" / f"{runtime}-{key}.{runtime}")
