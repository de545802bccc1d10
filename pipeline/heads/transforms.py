"""Feature transforms a head applies before its estimator: `TrainConfig.transform`.

A transform is part of the head, never of the feature set: it is fitted
with the estimator, on the training rows only, pickled inside it, and so
applied the same way wherever the head is (its validation and test
scores, `predict`, `evaluate`, `curve`, a bundle). A scikit-learn head
becomes `Pipeline([("transform", ...), <the head's own steps>])`; the
dense head takes the transform as its `feature_transform` parameter and builds it
into its Keras network as frozen layers (`keras_layers`), so its `.keras`
file and every exported model hold it too.

Heads that standardise their inputs (`HeadCfg.needs_scaling`) keep their
`StandardScaler` after the transform: an L2-normalised row of 1,280 pooled
features has entries near 0.03, far from the scale their default
regularisation (`C=1`) was set for.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer

from ..errors import ConfigError, did_you_mean

__all__ = ["STANDARD", "TRANSFORMS", "check_transforms", "keras_layers", "make_transform", "signed_sqrt",
           "split_transform", "with_transform"]

STANDARD = "standard"
_SIZED = re.compile(r"(?P<name>[a-z0-9-]+?)-(?P<n>[0-9]+)\Z")


def signed_sqrt(X: np.ndarray) -> np.ndarray:
    """`sign(x) * sqrt(|x|)`, element-wise: damps the few large activations that dominate a pooled feature."""
    X = np.asarray(X)
    return np.sign(X) * np.sqrt(np.abs(X))


@dataclasses.dataclass(frozen=True)
class TransformCfg:
    """One row of `TRANSFORMS`.

    Attributes:
        name: the name in `transform`; a `sized` row is written `name-N`.
        steps: `(N or None) -> [(step name, unfitted transformer), ...]`,
            applied in order; `[]` leaves the features as they are.
        description: one line for the docs and error messages.
        sized: whether the name takes a size `N` (`pca-whiten-256`).
    """

    name: str
    steps: Callable[[int | None], list[tuple[str, Any]]]
    description: str
    sized: bool = False


TRANSFORMS: Mapping[str, TransformCfg] = types.MappingProxyType({row.name: row for row in (
    TransformCfg(STANDARD, lambda n: [], "nothing before the head's own standardisation (the heads as they were)"),
    TransformCfg("l2", lambda n: [("l2", Normalizer())], "each row scaled to unit L2 norm"),
    TransformCfg("sqrt-l2", lambda n: [("sqrt", FunctionTransformer(signed_sqrt)), ("l2", Normalizer())],
                 "signed square root of each feature, then unit L2 norm (power normalisation)"),
    # "covariance_eigh": deterministic without a random_state, and 2-3x faster than "full" on
    # 1,454 x 1,280 MobileNetV2 features (one eigendecomposition of the feature covariance).
    TransformCfg("pca-whiten", lambda n: [("pca", PCA(n_components=n, whiten=True, svd_solver="covariance_eigh"))],
                 "projected on the N principal components of the training rows, each scaled to unit variance",
                 sized=True),
)})


def _names() -> str:
    return ", ".join(f"{name}-N" if row.sized else name for name, row in TRANSFORMS.items())


def _parse(text: str) -> tuple[TransformCfg, int | None]:
    if text in TRANSFORMS and not TRANSFORMS[text].sized:
        return TRANSFORMS[text], None
    sized = _SIZED.match(text)
    if sized and sized["name"] in TRANSFORMS and TRANSFORMS[sized["name"]].sized and int(sized["n"]) > 0:
        return TRANSFORMS[sized["name"]], int(sized["n"])
    hint = did_you_mean(text, [n for n, row in TRANSFORMS.items() if not row.sized])
    raise ConfigError(
        f"`transform` must be one of {_names()} (N a number of components > 0, e.g. pca-whiten-256).{hint} "
        f"Received: transform={text!r}.",
        field="transform",
    )


def check_transforms(names: Sequence[str]) -> tuple[str, ...]:
    """`names` once each is a known transform; raises `ConfigError` naming the valid ones otherwise."""
    for name in names:
        _parse(name)
    return tuple(names)


def make_transform(name: str):
    """The unfitted transformer of `name`, or `None` for `standard` (nothing to apply).

    Example:

    ```python
    make_transform("sqrt-l2")  # Pipeline([("sqrt", FunctionTransformer(signed_sqrt)), ("l2", Normalizer())])
    make_transform("pca-whiten-128")  # PCA(n_components=128, whiten=True, svd_solver="covariance_eigh")
    ```
    """
    row, n = _parse(name)
    steps = row.steps(n)
    if not steps:
        return None
    return steps[0][1] if len(steps) == 1 else Pipeline(steps)


def with_transform(estimator, name: str):
    """`estimator` with the transform `name` in front of it (unfitted; `standard` returns it as is).

    The dense head (anything with a `feature_transform` parameter; not
    `transform`, which scikit-learn reads as a transformer's method) takes the name;
    any other estimator becomes `Pipeline([("transform", t), ...its steps])`,
    its own steps kept by name so `linear_softmax_weights` still reads them.
    """
    transformer = make_transform(name)
    if transformer is None:
        return estimator
    if "feature_transform" in estimator.get_params(deep=False):
        return estimator.set_params(feature_transform=name)
    steps = list(estimator.steps) if isinstance(estimator, Pipeline) else [("clf", estimator)]
    return Pipeline([("transform", transformer), *steps])


def split_transform(estimator) -> tuple[Any, Any]:
    """`(fitted transform or None, the rest of the head)` of a head `with_transform` built and fitted."""
    if isinstance(estimator, Pipeline) and estimator.steps[0][0] == "transform":
        return estimator.steps[0][1], estimator[1:]
    return None, estimator


def keras_layers(keras, x, transformer):
    """Applies a fitted `make_transform` result to the Keras tensor `x` with built-in layers and ops.

    The same arithmetic as scikit-learn's, in float32: the signed square
    root as ops, `Normalizer` as `UnitNormalization`, PCA whitening as one
    frozen `Dense` layer. Keras is passed in, so this module never imports it.
    """
    steps = transformer.steps if isinstance(transformer, Pipeline) else [("", transformer)]
    for _, step in steps:
        if isinstance(step, FunctionTransformer) and step.func is signed_sqrt:
            x = keras.ops.multiply(keras.ops.sign(x), keras.ops.sqrt(keras.ops.abs(x)))
        elif isinstance(step, Normalizer) and step.norm == "l2":
            x = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="l2_normalize")(x)
        elif isinstance(step, PCA):
            kernel, bias = _pca_affine(step)
            layer = keras.layers.Dense(len(bias), dtype="float32", trainable=False, name="pca_whiten")
            x = layer(x)
            layer.set_weights([kernel, bias])
        else:
            raise ValueError(f"{type(step).__name__} has no Keras form here")
    return x


def _pca_affine(pca: PCA) -> tuple[np.ndarray, np.ndarray]:
    # PCA.transform with whitening: (x - mean) @ components.T / sqrt(explained_variance).
    kernel = pca.components_.T / np.sqrt(pca.explained_variance_)[None, :]
    bias = -pca.mean_ @ kernel
    return kernel.astype(np.float32), bias.astype(np.float32)
