"""Classifier heads that train on cached features.

Every head is a scikit-learn estimator: the registry rows (`rows.HEADS`) build
scikit-learn models (wrapped in a `StandardScaler` pipeline where the
estimator needs scaled inputs), and `DenseClassifier` wraps the small Keras
network of the classic "extract once, train a dense head" recipe in the same
`fit` / `predict` / `predict_proba` contract.

Keras is imported lazily, inside `DenseClassifier`'s methods only, so that
scikit-learn heads never pull Keras (or its backend) in. TensorFlow itself is
never imported here: the dense head runs on any Keras 3 backend.
"""


from __future__ import annotations

import ast
import fnmatch
import importlib
import re
from collections.abc import Mapping
from typing import Any, Sequence

from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import ConfigError, did_you_mean
from .cost import FitCost, format_seconds
from .dense import is_keras_head
from .rows import HEAD_ALIASES, HEADS, HeadCfg

__all__ = [
    "ALL_HEADS",
    "FitCost",
    "HEAD_ALIASES",
    "HEADS",
    "HeadCfg",
    "create_head",
    "estimate_seconds",
    "expand_heads",
    "format_seconds",
    "get_head_cfg",
    "list_heads",
    "parse_param",
    "parse_params",
    "plan_params",
    "uses_keras",
]

_PARAMS_DOC = """params: keyword arguments for the estimator. Plain names (`C`,
            `n_neighbors`) reach the classifier wherever it sits inside the
            head (`C` of the `logreg` row sets `clf__C`; of `svm_rbf`,
            `clf__estimator__C`); a name found at several depths sets the
            deepest (the classifier's) one. scikit-learn's `step__param`
            keys are accepted as well; between two steps equally deep,
            the classifier's (step `clf`). They override the row's
            `default_params`; `None` is passed on as a value (drop unset CLI
            options before calling)."""


# The `heads` entry that stands for every registry row, each with its `light_params`.
ALL_HEADS = "all"


def expand_heads(heads: Sequence[str]) -> list[str]:
    """`heads` with `"all"` replaced by every registry head, cheapest first, each named once.

    "Cheapest" is the row's measured `cost` (a row without one goes last,
    then by name), so a slow head never keeps the fast ones waiting.

    Args:
        heads: head names, as in `TrainConfig.heads`.

    Returns:
        The list of heads to train.

    Example:

    ```python
    expand_heads(["all"])                                   # ["ridge", "logreg", ...]
    expand_heads(["sklearn.neighbors:NearestCentroid", "all"])  # that one, then every row
    ```
    """
    expanded = [name for head in heads for name in (_by_cost(list_heads()) if head == ALL_HEADS else [head])]
    return list(dict.fromkeys(expanded))


def _by_cost(names: Sequence[str]) -> list[str]:
    def key(name: str) -> tuple[float, str]:
        cost = HEADS[name].cost
        return (cost.estimate(1000, 1000) if cost else float("inf"), name)
    return sorted(names, key=key)


def uses_keras(head: str) -> bool:
    """Whether a head (registry name or import path) is the Keras dense head, which trains in this process."""
    return is_keras_head(create_head(head)) if ":" in head else get_head_cfg(head).uses_keras


def estimate_seconds(head: str, n_rows: int, n_features: int) -> float | None:
    """A fit's estimated seconds from the row's measured `cost`; `None` for an import-path head."""
    cost = None if ":" in head else get_head_cfg(head).cost
    return None if cost is None else cost.estimate(n_rows, n_features)


def list_heads(pattern: str = "") -> list[str]:
    """Sorted names of the registry heads, optionally filtered.

    Args:
        pattern: str, an `fnmatch` pattern such as `"*svm*"`; `""` lists
            all heads. Defaults to `""`.

    Returns:
        Sorted list of head names.
    """
    names = sorted(HEADS)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def get_head_cfg(name: str) -> HeadCfg:
    """The `HeadCfg` row of a registry head.

    Args:
        name: str, one of `list_heads()`.

    Returns:
        The frozen `HeadCfg`.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str. Received: {type(name).__name__}.")
    try:
        return HEADS[HEAD_ALIASES.get(name, name)]
    except KeyError:
        hint = did_you_mean(name, HEADS)
        raise ConfigError(
            f"Unknown head {name!r}.{hint} Valid heads: {', '.join(list_heads())}; "
            f"{ALL_HEADS!r} for every one; or an import path 'module:Class' of a scikit-learn estimator.",
            field="heads",
        ) from None


def create_head(name: str, **params):
    """Build an unfitted head by registry name or import path.

    Args:
        name: str, one of `list_heads()`, or the import path of any
            scikit-learn-style estimator class as `"module:Class"` (for
            example `"sklearn.neighbors:NearestCentroid"`); such an
            estimator is used as is (no scaling, no default parameters).
        {params}

    Returns:
        A scikit-learn estimator (a `Pipeline(scale, clf)` for rows with
        `needs_scaling`).

    Example:

    ```python
    head = create_head("logreg", C=0.5)          # sets clf__C
    head = create_head("svm_rbf", C=10, cv=5)    # clf__estimator__C, clf__cv
    head = create_head("dense", hidden_units=(512, 256), epochs=10)
    head = create_head("sklearn.neighbors:NearestCentroid")
    ```
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str. Received: {type(name).__name__}.")
    if ":" in name:
        cls = _import_class(name)
        if not hasattr(cls, "set_params"):
            try:
                return cls(**params)
            except TypeError as err:
                raise ConfigError(f"Cannot build head {name!r} with {params!r}: {err}", field="params") from err
        estimator = cls()
        defaults: Mapping[str, Any] = {}
    else:
        cfg = get_head_cfg(name)
        estimator = cfg.factory()
        if cfg.needs_scaling:
            estimator = Pipeline([("scale", StandardScaler()), ("clf", estimator)])
        defaults = cfg.default_params
    resolved: dict[str, Any] = {}
    for source in (defaults, params):
        for key, value in source.items():
            resolved[_resolve_param(estimator, key, name)] = value
    return estimator.set_params(**resolved) if resolved else estimator


if create_head.__doc__:
    create_head.__doc__ = create_head.__doc__.replace("{params}", _PARAMS_DOC)


def _resolve_param(estimator, key: str, head: str) -> str:
    """Map a plain parameter name to the estimator's `step__param` key."""
    valid = estimator.get_params(deep=True)
    if "__" in key and key in valid:
        return key
    matches = [k for k in valid if k == key or k.endswith("__" + key)]
    if matches:
        depth = max(m.count("__") for m in matches)
        deepest = [m for m in matches if m.count("__") == depth]
        # Equally deep in two steps (a kernel map and the classifier after it): the classifier's.
        if len(deepest) > 1:
            deepest = [m for m in deepest if m.endswith("clf__" + key)] or deepest
        if len(deepest) == 1:
            return deepest[0]
        raise ConfigError(
            f"Parameter {key!r} of head {head!r} is ambiguous: it matches "
            f"{', '.join(deepest)}. Pass one of these full names instead.",
            field="params",
        )
    plain = _plain_params(estimator)
    hint = did_you_mean(key, plain)
    raise ConfigError(
        f"Unknown parameter {key!r} for head {head!r}.{hint} "
        f"Valid parameters: {', '.join(plain)} (scikit-learn's step__param keys "
        "are accepted too).",
        field="params",
    )


def _import_class(path: str) -> type:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            "An import-path head must look like 'module:Class', e.g. "
            f"'sklearn.neighbors:NearestCentroid'. Received: {path!r}.",
            field="heads",
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"Cannot import module {module_name!r} for head {path!r}: {err}", field="heads") from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"Module {module_name!r} has no attribute {attr!r} (head {path!r}).", field="heads"
            ) from None
    if not isinstance(obj, type) or not all(
        callable(getattr(obj, m, None)) for m in ("fit", "predict")
    ):
        raise ConfigError(
            f"Head {path!r} must be a scikit-learn-style estimator class with "
            f"`fit` and `predict` methods. Received: {obj!r}.",
            field="heads",
        )
    return obj


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_param(text: str) -> tuple[str, Any]:
    """Parse one `key=value` head parameter, as the CLI's `--param` gives it.

    The value is read as a Python literal when it is one (`0.5`, `200`,
    `(512, 256)`, `None`, `True`, `'a b'`), and kept as a string otherwise
    (`balanced`, `sqrt`).

    Args:
        text: str of the form `key=value`; the key is a parameter name,
            plain (`C`) or scikit-learn's `step__param` (`clf__C`).

    Returns:
        Tuple `(key, value)`.

    Example:

    ```python
    parse_param("C=0.5")                   # ("C", 0.5)
    parse_param("hidden_units=(512,256)")  # ("hidden_units", (512, 256))
    parse_param("class_weight=balanced")   # ("class_weight", "balanced")
    ```
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str. Received: {type(text).__name__}.")
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(
            "A `params` entry must look like key=value with a parameter name as key, "
            f"e.g. C=0.5. Received: {text!r}.",
            field="params",
        )
    raw = raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = raw
    return key, value


def parse_params(texts: Sequence[str]) -> dict[str, Any]:
    """Parse `key=value` and `head.key=value` strings into `TrainConfig.params`.

    Each text is `key=value` (for every head that accepts `key`) or
    `head.key=value` (for that head only; an import-path head is written in
    full, `sklearn.neighbors:NearestCentroid.shrink_threshold=0.1`). Values
    are read by `parse_param`: Python literals, else strings.

    Args:
        texts: the strings (the CLI's `--param`); a key given twice is refused.

    Returns:
        A dict of keys (`"C"` or `"dense.epochs"`) to values.

    Example:

    ```python
    parse_params(["C=0.5", "dense.hidden_units=(512,256)"])
    # {"C": 0.5, "dense.hidden_units": (512, 256)}
    ```
    """
    params: dict[str, Any] = {}
    for text in texts:
        key, sep, value = str(text).partition("=")
        head, dot, name = key.rpartition(".")
        if not sep or (dot and not head):
            raise ConfigError(
                "A `params` entry must look like key=value or head.key=value, e.g. C=0.5 or "
                f"dense.epochs=10. Received: {text!r}.",
                field="params",
            )
        name, parsed = parse_param(f"{name}={value}")
        key = f"{head}.{name}" if dot else name
        if key in params:
            raise ConfigError(
                f"`params` sets {key!r} twice ({params[key]!r}, then {parsed!r}); set it once. To compare "
                f"values, search them with `sweep`, e.g. {key}={params[key]!r},{parsed!r}.",
                field="params",
            )
        params[key] = parsed
    return params


def plan_params(heads: Sequence[str], params: Mapping[str, Any], seed: int) -> list[tuple[str, dict[str, Any]]]:
    """The parameters each head gets; unknown heads and parameters fail here, before any work.

    Args:
        heads: head names, as in `TrainConfig.heads`; `"all"` stands for
            every registry head (see `expand_heads`), each starting from its
            row's `light_params`.
        params: as in `TrainConfig.params`: a plain key (`"C"`) goes to
            every head that accepts it (at least one must), a key
            `"head.key"` (`"dense.epochs"`) to that head only.
        seed: int given as `random_state` to every head that takes one,
            unless `params` sets it.

    Returns:
        A list of `(head, params)` in `heads` order; `create_head(head,
        **params)` builds each.

    Example:

    ```python
    plan_params(["logreg", "knn"], {"C": 0.5, "knn.n_neighbors": 3}, seed=0)
    # [("logreg", {"C": 0.5, "random_state": 0}), ("knn", {"n_neighbors": 3})]
    ```
    """
    light = ALL_HEADS in heads
    heads = expand_heads(heads)
    fresh = {head: create_head(head) for head in heads}  # unknown heads raise
    targeted: dict[str, dict[str, Any]] = {head: {} for head in heads}
    shared: dict[str, Any] = {}
    for key, value in params.items():
        head, dot, name = key.rpartition(".")
        head = head if head in targeted else HEAD_ALIASES.get(head, head)
        if not dot:
            shared[key] = value
        elif head in targeted:
            targeted[head][name] = value
        else:
            raise ConfigError(
                f"Parameter {key!r} is for head {head!r}, which is not being trained. "
                f"Heads: {', '.join(heads)}. Add {head!r} to `heads`, or fix the prefix.",
                field="params",
            )
    for key in shared:
        if not any(_accepts(est, key) for est in fresh.values()):
            raise ConfigError(_unknown_param_message(key, fresh), field="params")
    plans = []
    for head, est in fresh.items():
        planned = dict(get_head_cfg(head).light_params) if light and head in HEADS else {}
        planned.update({k: v for k, v in shared.items() if _accepts(est, k)})
        planned.update(targeted[head])
        if "random_state" not in planned and _accepts(est, "random_state"):
            planned["random_state"] = seed
        create_head(head, **planned)  # a bad targeted key raises, listing the valid ones
        plans.append((head, planned))
    return plans


def _accepts(estimator, key: str) -> bool:
    get_params = getattr(estimator, "get_params", None)
    if get_params is None:
        return False
    valid = get_params(deep=True)
    return key in valid or any(k.endswith("__" + key) for k in valid)


def _plain_params(estimator) -> list[str]:
    get_params = getattr(estimator, "get_params", None)
    return sorted({k.rsplit("__", 1)[-1] for k in get_params(deep=True)}) if get_params else []


def _unknown_param_message(key: str, fresh: Mapping[str, Any]) -> str:
    every = sorted({p for est in fresh.values() for p in _plain_params(est)})
    hint = did_you_mean(key, every)
    valid = "; ".join(f"{head}: {', '.join(_plain_params(est)) or '(none)'}" for head, est in fresh.items())
    return f"Unknown parameter {key!r}: no head being trained accepts it.{hint} Valid parameters: {valid}."
