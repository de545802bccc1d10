"""What `export_run` can write: one row per format.

Plain data only, so that the CLI reads its `--format` choices and the
words it prints from here without importing NumPy, scikit-learn or Keras.
`export.py` acts on a row's fields, never on a format's name: a new
format Keras' `model.export` knows is one new row.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

__all__ = ["EXPORT_FORMATS", "FORMATS", "ExportFormat", "format_of_suffix"]


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One row of `FORMATS`.

    Attributes:
        name: the `format` argument and `--format` value.
        title: what was written, in words (`"Keras model"`).
        suffix: `OUT`'s suffix for a model file (`".keras"`); `""` for a
            model written as a folder; `None` for a bundle (any head).
        keras_export: the `format` of Keras' `model.export` that writes it,
            or `None` for `model.save` (the `.keras` file).
        packages: modules it needs beyond Keras, with the pip extra.
        install: the pip command that installs `packages`.
    """

    name: str
    title: str
    suffix: str | None
    keras_export: str | None = None
    packages: tuple[str, ...] = ()
    install: str = ""

    @property
    def is_model(self) -> bool:
        """A single model (dense and linear heads), not a bundle."""
        return self.suffix is not None

    @property
    def traced(self) -> bool:
        """Written by tracing the graph through TensorFlow (`model.export`), so it needs that backend."""
        return self.keras_export is not None


FORMATS: Mapping[str, ExportFormat] = types.MappingProxyType({row.name: row for row in (
    ExportFormat("keras", "Keras model", ".keras"),
    ExportFormat("saved_model", "SavedModel", "", keras_export="tf_saved_model"),
    # tf2onnx converts, onnx checks, onnxruntime runs the file before it is published.
    ExportFormat("onnx", "ONNX model", ".onnx", keras_export="onnx", packages=("tf2onnx", "onnx", "onnxruntime"),
                 install="pip install 'bottleneck-features[onnx]'"),
    ExportFormat("bundle", "bundle", None),
)})

EXPORT_FORMATS = tuple(FORMATS)


def format_of_suffix(suffix: str) -> str | None:
    """The format whose model file ends in `suffix` (`".onnx"` -> `"onnx"`), or `None`."""
    return next((row.name for row in FORMATS.values() if row.suffix and row.suffix == suffix), None)
