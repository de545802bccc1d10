"""The head stage's options: `TrainConfig` and `CurveConfig`, declared as in `options`.

Both share the fields of `_HeadChoice` (which heads, their parameters and
sweep, the splits, seed and folders); a curve replaces `fraction` by its
`fractions` and `repeats`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..errors import ConfigError
from .options import boolean, folder, integer, number, one_of, option, validate

SWEEP_SELECTS = ("accuracy", "log_loss", "macro_f1")
SWEEP_REFITS = ("train", "train+validation")
DEFAULT_SPLITS = (0.8, 0.1, 0.1)
DEFAULT_FRACTIONS = (0.01, 0.1, 0.5, 1.0)
# Chosen by measurement across heads: docs/train-head.md, "Feature transforms".
DEFAULT_TRANSFORM = "sqrt-l2"


def _check_heads(name: str, value) -> tuple[str, ...]:
    heads = (value,) if isinstance(value, str) else value
    if not isinstance(heads, (tuple, list)) or not heads or not all(isinstance(h, str) and h for h in heads):
        raise ConfigError(
            f"`heads` must be a non-empty list of head names, e.g. ['logreg', 'dense']. Received: heads={value!r}",
            field="heads",
        )
    twice = sorted({h for h in heads if list(heads).count(h) > 1})
    if twice:
        raise ConfigError(f"`heads` names {', '.join(map(repr, twice))} more than once. Received: heads={value!r}",
                          field="heads")
    return tuple(heads)


def _check_params(name: str, value) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ConfigError(
            f"`params` must be a dict of parameter names to values, e.g. {{'C': 0.5, 'dense.epochs': 10}}. "
            f"Received: params={value!r}",
            field="params",
        )
    return dict(value)


@dataclasses.dataclass(frozen=True)
class _HeadChoice:
    """The fields `TrainConfig` and `CurveConfig` share; documented in `TrainConfig`."""

    heads: tuple[str, ...] = option(
        ("logreg",), flag="--head", make="HEAD", check=_check_heads,
        cli={"action": "append", "metavar": "NAME"},
        help="head from `bottleneck list --heads`, or module:Class of a scikit-learn estimator; "
        "repeat to compare several on the same features; 'all' trains every registry head with light "
        "defaults (default logreg)")
    params: dict[str, Any] = option(
        default_factory=dict, flag="--param", make="PARAMS", check=_check_params,
        cli={"action": "append", "metavar": "KEY=VALUE"},
        help="head parameter, e.g. C=0.5 or hidden_units=(512,256); repeatable. With several heads it goes "
        "to every head that accepts it; HEAD.KEY=VALUE (dense.epochs=10) targets one head")
    splits: tuple[float, float, float] = option(
        DEFAULT_SPLITS, flag="--splits", make="SPLITS", check=lambda name, value: _parse_splits(value),
        help="train,validation,test shares when the data has no split folders (default 0.8,0.1,0.1)")
    seed: int = option(0, flag="--seed", make="SEED", check=integer(min=0),
                       help="seed of the fraction subset and of the heads (default 0)")
    runs_dir: str = option("runs", flag="--runs-dir", make="ARGS", check=folder,
                           help="where run folders and the leaderboard go (default runs)")
    cache_dir: str = option("cache", flag="--cache-dir", make="CACHE", check=folder,
                            help="where feature sets are looked up by name (default cache)")
    sweep: bool | dict[str, tuple] | None = option(
        None, flag="--sweep", make="SWEEP", check=lambda name, value: _check_sweep(value),
        cli={"nargs": "?", "const": True, "action": "append", "metavar": "[HEAD.]KEY=V1,V2"},
        help="choose head parameters on the validation split: alone, each head's default grid; KEY=V1,V2,... "
        "searches these values (repeatable, combinations are crossed; HEAD.KEY targets one head). "
        "Put FEATURES before a bare --sweep")
    # Not argparse's choices: a wrong metric gets the config's message and hint.
    select: str = option("accuracy", flag="--select", make="SELECT", check=one_of(SWEEP_SELECTS), flag_choices=False,
                         help="validation metric a sweep picks by: accuracy (default), macro_f1 or log_loss")
    transform: tuple[str, ...] = option(
        (DEFAULT_TRANSFORM,), flag="--transform", make="TRANSFORM", check=lambda name, value: _parse_transforms(value),
        cli={"metavar": "NAME[,NAME...]"},
        help=f"feature transform fitted with each head on its training rows: standard, l2, sqrt-l2 or pca-whiten-N; "
        f"several (comma-separated) are swept on the validation split (default {DEFAULT_TRANSFORM})")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_HeadChoice):
    """Which heads `bottleneck train-head` trains on a feature set, and how.

    Args:
        heads: tuple of head names, each one of `bottleneck list --heads`
            or the import path `"module:Class"` of a scikit-learn estimator.
            Every head is trained into its own run folder. A single str is
            taken as a one-head tuple. Defaults to `("logreg",)`.
        params: dict of head parameters. A plain key such as `"C"` goes to
            every head that accepts it (at least one must); a key
            `"head.key"` such as `"dense.epochs"` goes to that head only.
            Defaults to `{}`.
        fraction: float in `(0, 1]`, the share of the training split to
            train on: a stratified subset drawn with `seed` that keeps at
            least one example of each class. Validation and test are never
            touched. Defaults to `1.0`.
        splits: train, validation and test shares, three floats >= 0 that
            sum to 1 (or the string `"0.8,0.1,0.1"`). They cut the stored
            per-image split keys when the data had no split folders; with
            `train/` and `test/` folders only, validation is carved out of
            `train/` in the ratio `splits[1] : splits[0]`. Validation or
            test may be 0, not both. Defaults to `(0.8, 0.1, 0.1)`.
        seed: int >= 0. Seeds the `fraction` subset and every head that
            takes a `random_state` (unless `params` sets one). Splits do not
            depend on it, so seeds compare on the same test images.
            Defaults to `0`.
        runs_dir: folder receiving the run folders and the leaderboard.
            Defaults to `"runs"`.
        cache_dir: folder searched when the feature set is given by short
            name or left out. Defaults to `"cache"`.
        sweep: `None` (no search), `True` (search each head's default grid,
            `HeadCfg.sweep_grid`) or a dict of parameter names to lists of
            values, keyed like `params` (`{"C": [0.01, 0.1, 1]}` for every
            head that accepts `C`, `{"dense.dropout": [0, 0.5]}` for one
            head; heads that get no key train without a search). Every
            combination is fitted on the training split and scored on the
            validation split, which must not be empty; the test split is
            never seen. Defaults to `None`.
        select: the validation metric that picks the sweep's winner,
            `"accuracy"`, `"macro_f1"` (highest wins) or `"log_loss"`
            (lowest wins). Defaults to `"accuracy"`.
        transform: tuple of feature transform names (or the string
            `"standard,sqrt-l2"`), each one of `"standard"` (the head's own
            scaling only), `"l2"`, `"sqrt-l2"` (signed square root, then
            L2) or `"pca-whiten-N"`; see `heads.transforms`. It is fitted
            with the head on the training rows and stored in it. Several
            are swept on the validation split like a parameter (crossed
            with `sweep`'s grid). Defaults to `("sqrt-l2",)`, chosen by
            measurement (docs/train-head.md, "Feature transforms").
        refit: what the chosen parameters are trained on for the run,
            `"train"` or `"train+validation"` (the run's validation
            metrics are then the sweep's, from before the refit; needs
            `sweep` and a test split). Defaults to `"train"`.
        augmented: train on the clean training rows plus the cached
            augmented views of them (`features` with `augment`) from one
            view set (see `views`); validation and test stay clean.
            Defaults to `False`.
        views: `None` for the latest view set, or the ops of the view set
            `augmented` trains on, as given to `augment_ops` (e.g.
            `"flip,rotation=0.2,zoom=0.2"`); views made with other ops are
            never mixed in. Defaults to `None`.
        time_limit: seconds each scikit-learn head (its sweep included)
            may take; one that runs past it is stopped, recorded with the
            reason and no run folder, and the next head starts. `None` for
            no limit. Defaults to `None`.
    """


    fraction: float = option(
        1.0, flag="--fraction", make="FRACTION",
        check=number(low=0, high=1, open_low=True, e_g="0.1 to train on 10% of the training split"),
        help="train on this stratified, seeded share of the training split (default 1)")
    refit: str = option("train", flag="--refit", make="REFIT", check=one_of(SWEEP_REFITS), flag_choices=False,
                        help="what a sweep's winner is trained on: train (default) or train+validation")
    augmented: bool = option(
        False, flag="--augmented", make="AUGMENTED", switch=True, check=boolean,
        help="also train on the cached augmented views of the training images (features --augment K)")
    views: str | None = option(
        None, flag="--views", make="ARGS", cli={"metavar": "OPS"},
        help="with --augmented: the view set to train on, named by the ops it was made with "
        "(as given to features --augment-ops); default the latest")
    time_limit: float | None = option(
        None, flag="--time-limit", make="ARGS", check=number(low=0, open_low=True, optional=True),
        cli={"metavar": "SECONDS"},
        help="stop a scikit-learn head (and its sweep) after this many seconds and go on to the next")

    def __post_init__(self):
        validate(self)
        if self.refit != "train" and self.sweep is None:
            raise ConfigError(
                f"`refit` chooses what a sweep's winner is trained on, and no `sweep` is set. "
                f"Received: refit={self.refit!r}. Set `sweep`, or leave `refit` at 'train'.",
                field="refit",
            )


def _check_sweep(value) -> bool | dict[str, tuple] | None:
    """`None`, `True` or `{name: tuple of values}`; `False` means no sweep."""
    if value is None or value is False:
        return None
    if value is True:
        return True
    ok = isinstance(value, dict) and value and all(
        isinstance(k, str) and k and isinstance(v, (list, tuple)) and len(v) > 0 for k, v in value.items()
    )
    if not ok:
        raise ConfigError(
            "`sweep` must be True (each head's default grid) or a dict of parameter names to non-empty "
            f"lists of values, e.g. {{'C': [0.01, 0.1, 1], 'dense.dropout': [0.0, 0.5]}}. Received: sweep={value!r}",
            field="sweep",
        )
    return {key: tuple(values) for key, values in value.items()}


def _parse_transforms(value) -> tuple[str, ...]:
    """Names as a tuple; the head stage checks each name (`heads.transforms.check_transforms`)."""
    parts = value.split(",") if isinstance(value, str) else value
    names = tuple(p.strip() if isinstance(p, str) else p for p in parts) if isinstance(parts, (list, tuple)) else ()
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ConfigError(
            "`transform` must be one or more distinct transform names, e.g. sqrt-l2 or standard,sqrt-l2,pca-whiten-256. "
            f"Received: transform={value!r}",
            field="transform",
        )
    return names


def _parse_splits(value) -> tuple[float, float, float]:
    received = f"Received: splits={value!r}"
    parts = value.split(",") if isinstance(value, str) else value
    try:
        shares = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        shares = ()
    if len(shares) != 3 or any(not 0 <= s <= 1 for s in shares) or abs(sum(shares) - 1) > 1e-6:
        raise ConfigError(
            f"`splits` must be three train,validation,test shares >= 0 that sum to 1, e.g. 0.8,0.1,0.1. {received}", field="splits"
        )
    if shares[0] == 0 or shares[1] + shares[2] == 0:
        raise ConfigError(
            "`splits` must give training a share > 0 and leave something to evaluate on "
            f"(validation or test > 0), e.g. 0.8,0.1,0.1 or 0.9,0.1,0. {received}",
            field="splits",
        )
    return shares


@dataclasses.dataclass(frozen=True)
class CurveConfig(_HeadChoice):
    """What `bottleneck curve` measures: heads trained on growing shares of the training split.

    Args:
        heads, params, splits, runs_dir, cache_dir, sweep, select, transform: as in
            `TrainConfig`; `heads=("all",)` trains every
            registry head with its light defaults.
        fractions: tuple of distinct floats in `(0, 1]` (or the string
            `"0.01,0.1,0.5,1"`), the shares of the training split to train
            on, each a stratified subset keeping at least one example per
            class. Stored sorted. Defaults to `(0.01, 0.1, 0.5, 1.0)`.
        repeats: int >= 1, how many subsets are drawn per fraction; repeat
            `r` draws with seed `seed + r` (and seeds the heads with it), so
            the spread shows how much a score owes to the draw. For one
            repeat the subsets are nested (the 1% inside the 10%), and
            every head trains on the same ones. Defaults to `3`.
        seed: int >= 0, the seed of repeat 0. Defaults to `0`.
    """


    # The shared flags' help, as the curve uses them.
    option_help: ClassVar[dict[str, str]] = {
        "heads": "head to measure, repeatable; 'all' for every registry head (default logreg)",
        "params": "head parameter, as for train-head",
        "sweep": "choose each point's parameters on the validation split, as for train-head",
        "seed": "seed of the first repeat's subsets and heads (default 0)",
        "runs_dir": "where the curve folder goes (default runs)",
    }

    fractions: tuple[float, ...] = option(
        DEFAULT_FRACTIONS, flag="--fractions", make="FRACTIONS", check=lambda name, value: _parse_fractions(value),
        help="shares of the training split, e.g. 0.01,0.1,0.5,1 (the default)")
    repeats: int = option(3, flag="--repeats", make="REPEATS", check=integer(min=1),
                          help="subsets drawn per fraction, seeds SEED, SEED+1, ... (default 3)")

    def __post_init__(self):
        validate(self)

    def train_config(self, fraction: float, repeat: int) -> TrainConfig:
        """The `TrainConfig` of one point of the curve: `fraction`, seeded `seed + repeat`."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(_HeadChoice)}
        return TrainConfig(**{**shared, "fraction": fraction, "seed": self.seed + repeat})


def _parse_fractions(value) -> tuple[float, ...]:
    parts = value.split(",") if isinstance(value, str) else value
    try:
        fractions = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        fractions = ()
    if not fractions or any(not 0 < f <= 1 for f in fractions) or len(set(fractions)) != len(fractions):
        raise ConfigError(
            "`fractions` must be distinct shares of the training split in (0, 1], e.g. 0.01,0.1,0.5,1. "
            f"Received: fractions={value!r}",
            field="fractions",
        )
    return tuple(sorted(fractions))
