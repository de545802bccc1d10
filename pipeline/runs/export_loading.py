"""A written model must load back: the refusal when it does not, and the tf2onnx rows that make more of them load.

A model can build and run here yet write a file its loader rejects: a
layer whose saved config its own constructor refuses, an op the ONNX
runtime lacks. `refused_unless_it_runs` turns that into a `ConfigError`
before anything is published (docs/backbones.md lists the cases).

KerasHub 0.32's `ViTPatchingAndEmbedding` saves `num_patches` and
`num_positions`, which its constructor rejects, so a ViT's `.keras` file
would not load. Both follow from the image and patch sizes it also saves:
`keras_hub_configs_that_load` leaves them out while the file is written.

`register_ops` adds the tf2onnx rows an ONNX export needs
(`features.runtimes.teach_tf2onnx`: the exact GELU of DINOv2, DINOv3 and
ViT) before the first ONNX export, so that importing `export.py` never
imports tf2onnx.
"""

from __future__ import annotations

import contextlib


from ..errors import ConfigError
from ..features import runtimes


class ExportMismatch(RuntimeError):
    """The written file runs but gives other numbers than the built model: a bug to report, not a refusal."""


@contextlib.contextmanager
def refused_unless_it_runs(row):
    """Turns a failure to load or run the file written as `row` into a `ConfigError` naming why."""
    try:
        yield
    except ExportMismatch:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the loader or runtime raises, the file is unusable
        first = " ".join(str(e).split())[:300] or type(e).__name__
        raise ConfigError(
            f"format={row.name!r} cannot be written for this run's backbone: the written {row.title} does not "
            f"load back and run ({type(e).__name__}: {first}). Nothing was written. Pass another format "
            "(docs/backbones.md lists which convert) or format='bundle'.", field="format") from None


@contextlib.contextmanager
def keras_hub_configs_that_load():
    """While a `.keras` file is written, KerasHub layers save configs their constructors accept (see above)."""
    try:
        from keras_hub.src.models.vit.vit_layers import ViTPatchingAndEmbedding
    except ImportError:  # no KerasHub, no KerasHub layer in the model
        yield
        return
    saved = ViTPatchingAndEmbedding.get_config

    def get_config(self):
        config = saved(self)
        for derived in ("num_patches", "num_positions"):
            config.pop(derived, None)
        return config

    ViTPatchingAndEmbedding.get_config = get_config
    try:
        yield
    finally:
        ViTPatchingAndEmbedding.get_config = saved


def register_ops(row) -> None:
    """Adds the tf2onnx handlers of this module's doc when `row` is written through tf2onnx."""
    if row.keras_export == "onnx":
        runtimes.teach_tf2onnx()


