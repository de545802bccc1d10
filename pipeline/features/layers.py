"""Keras layers of the extraction model (imported only when a model is built)."""

import importlib

import keras


def preprocess_function(module: str):
    """The `preprocess_input` of `keras.applications.<module>`."""
    return importlib.import_module(f"keras.applications.{module}").preprocess_input


@keras.saving.register_keras_serializable(package="bottleneck")
class Preprocess(keras.layers.Layer):
    """Casts uint8 images to float32 and applies a backbone's `preprocess_input`.

    Running it inside the model keeps the host-to-device copy at one byte
    per pixel and does the arithmetic on the accelerator.

    Args:
        module: submodule of `keras.applications` whose `preprocess_input`
            is applied, e.g. `"vgg16"`.
    """

    def __init__(self, module: str, **kwargs):
        super().__init__(**kwargs)
        self.module = module
        self._fn = preprocess_function(module)

    def call(self, images):
        return self._fn(keras.ops.cast(images, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "module": self.module}
