"""The registry's rows: one `HeadCfg` per head, with its defaults, sweep grid and measured cost.

The functions that read these rows (`create_head`, `list_heads`,
`get_head_cfg`, parameter planning) live in `registry`; this module is the
table alone, so that adding a head is adding a row here.
"""

from __future__ import annotations

import dataclasses
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC, LinearSVC

from .cost import FitCost
from .dense import DenseClassifier

__all__ = ["HEAD_ALIASES", "HEADS", "HeadCfg"]

@dataclasses.dataclass(frozen=True)
class HeadCfg:
    """One row of `HEADS`.

    Attributes:
        name: str, the registry name.
        factory: callable returning the bare estimator (before scaling and
            parameters are applied).
        default_params: read-only mapping of parameters applied on creation,
            with plain names (see `create_head`).
        description: str, one line for `bottleneck list`.
        needs_scaling: bool, whether `create_head` puts a `StandardScaler`
            before the estimator (as step `"scale"`; the estimator is step
            `"clf"`).
        proba: str, how `predict_proba` is produced: `"native"`,
            `"softmax"` (network output) or `"calibrated"`
            (`CalibratedClassifierCV` on the decision function).
        uses_keras: bool, whether the head needs Keras.
        sweep_grid: read-only mapping of plain parameter names to the
            tuple of values a sweep searches by default (`TrainConfig.sweep
            = True`); every combination is one candidate. Empty for rows
            without a sensible default grid.
        light_params: read-only mapping of plain parameter names to values
            that override `default_params` when the head is trained as one
            of `heads=("all",)`, so that comparing every head costs minutes,
            not hours; empty for heads that are fast as they are. Given
            `params` still win.
    """

    name: str
    factory: Callable[[], Any]
    default_params: Mapping[str, Any]
    description: str
    needs_scaling: bool = False
    proba: str = "native"
    uses_keras: bool = False
    sweep_grid: Mapping[str, tuple] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    light_params: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    cost: FitCost | None = None


def _calibrated(estimator) -> Callable[[], CalibratedClassifierCV]:
    # Probabilities for margin classifiers (SVMs, ridge) come from
    # CalibratedClassifierCV(ensemble=False): sigmoid (Platt) calibration
    # fitted on cross-validated decision values, then the base estimator
    # refitted once on all data. This is what scikit-learn >= 1.9 recommends
    # in place of the deprecated SVC(probability=True) (the same Platt scaling,
    # done inside libsvm, whose predict could disagree with the argmax of its
    # predict_proba), and it serves LinearSVC and RidgeClassifier, which have
    # no probability option, the same way. A softmax of raw margins
    # would be cheaper but uncalibrated (ridge margins live near [-1, 1], so
    # rows come out almost uniform and log loss is meaningless). Here predict
    # is the argmax of predict_proba, so both always agree. Cost: `cv` + 1
    # fits of the base estimator.
    return lambda: CalibratedClassifierCV(estimator(), method="sigmoid", ensemble=False)


def _rows(*rows: HeadCfg) -> dict[str, HeadCfg]:
    return {row.name: row for row in rows}


def _frozen(**params) -> Mapping[str, Any]:
    return types.MappingProxyType(params)


class _RbfMap(Nystroem):
    """Nystroem that maps through every row, quietly, when a set has fewer rows than `n_components`.

    scikit-learn then uses all the rows (the exact kernel, what a small set
    wants) but warns each fit; the default 1,000 components exceed many sets.
    """

    def fit(self, X, y=None):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="n_components > n_samples", category=UserWarning)
            return super().fit(X, y)


def _nystroem_logreg() -> Pipeline:
    # An RBF kernel approximated on `n_components` sampled rows (Nystroem),
    # then a linear model on that map: cost linear in the rows, where an
    # exact kernel SVM is quadratic (and 4 fits with its calibration). The
    # map's seed is fixed: `random_state` reaches the classifier ("clf").
    return Pipeline([("kernel", _RbfMap(kernel="rbf", random_state=0)), ("clf", LogisticRegression())])


def _dense_defaults() -> Mapping[str, Any]:
    # Read from the estimator, so the row shows (and `bottleneck list
    # --heads` prints) its training defaults without a second copy of them.
    defaults = DenseClassifier().get_params()
    shown = ("hidden_units", "dropout", "optimizer", "learning_rate", "epochs", "batch_size", "early_stopping_patience")
    return _frozen(**{name: defaults[name] for name in shown})


# `cost`: bench/heads.py, 3,000 x 1,280 rows, 2 cores shared with other work; every figure stays above
# the quiet machine's (docs/performance.md: 0.03-8.9 s per 1,000 x 1,000), so estimates err long.
HEADS: Mapping[str, HeadCfg] = types.MappingProxyType(
    _rows(
        HeadCfg(
            name="dense",
            factory=DenseClassifier,
            default_params=_dense_defaults(),
            description="Keras Dense(256, relu) -> Dropout(0.5) -> softmax, Adam 1e-3, "
            "early stopping (patience 10, at most 200 epochs).",
            proba="softmax",
            uses_keras=True,
            sweep_grid=_frozen(learning_rate=(1e-4, 1e-3, 1e-2), dropout=(0.0, 0.25, 0.5)),
            # Converges in 20-30 epochs on ImageNet features; 200 is a cap, patience 10 its slack.
            light_params=_frozen(epochs=50, early_stopping_patience=5),
            cost=FitCost(6.0),
        ),
        # Written out rather than derived from `dense`: these are the
        # tutorial's numbers and must not follow changes to the defaults.
        HeadCfg(
            name="dense_small_lr",
            factory=DenseClassifier,
            default_params=_frozen(
                hidden_units=(256,),
                dropout=0.5,
                optimizer="adam",
                learning_rate=1e-4,
                epochs=30,
                batch_size=64,
                early_stopping_patience=None,
            ),
            description="The classic tutorial's dense head: Adam 1e-4 for 30 epochs, "
            "no early stopping (often still improving at the end).",
            proba="softmax",
            uses_keras=True,
            cost=FitCost(6.0),
        ),
        HeadCfg(
            name="logreg",
            factory=LogisticRegression,
            default_params=_frozen(C=1.0, max_iter=1000),
            description="Multinomial logistic regression (lbfgs) on standardised features.",
            needs_scaling=True,
            sweep_grid=_frozen(C=(1e-3, 1e-2, 1e-1, 1.0, 10.0)),
            cost=FitCost(1.1),
        ),
        HeadCfg(
            name="linear_svm",
            factory=_calibrated(LinearSVC),
            # C=1 did not finish in 9 minutes on 1,437 x 1,280 MobileNetV2 rows (slow convergence,
            # 4 fits with calibration); C=0.01 fits them with 0.929 test accuracy (logreg 0.935).
            default_params=_frozen(C=0.01, max_iter=5000, random_state=0, cv=3),
            description="Linear SVM (one-vs-rest), sigmoid-calibrated probabilities.",
            needs_scaling=True,
            proba="calibrated",
            sweep_grid=_frozen(C=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)),
            cost=FitCost(10.0),
        ),
        HeadCfg(
            name="svm_rbf",
            factory=_calibrated(SVC),
            default_params=_frozen(C=1.0, kernel="rbf", gamma="scale", cv=3),
            description="RBF-kernel SVM, sigmoid-calibrated probabilities.",
            needs_scaling=True,
            proba="calibrated",
            sweep_grid=_frozen(C=(0.1, 1.0, 10.0, 100.0), gamma=(1e-5, 1e-4, 1e-3, 1e-2)),
            # Each calibration fold is a full kernel fit, quadratic in the examples: 2 folds, not 3.
            light_params=_frozen(cv=2),
            cost=FitCost(2.5, rows_power=2.0),
        ),
        HeadCfg(
            name="svm_nystroem",
            factory=_nystroem_logreg,
            # gamma None is 1 / n_features: svm_rbf's gamma="scale" on standardised features.
            default_params=_frozen(n_components=1000, gamma=None, C=1.0, max_iter=1000),
            description="RBF kernel approximated on 1,000 sampled rows (Nystroem) + logistic regression: "
            "svm_rbf for tens of thousands of rows.",
            needs_scaling=True,
            sweep_grid=_frozen(C=(0.01, 0.1, 1.0, 10.0), gamma=(1e-4, 1e-3, 1e-2)),
            cost=FitCost(3.0),
        ),
        HeadCfg(
            name="knn",
            factory=KNeighborsClassifier,
            default_params=_frozen(n_neighbors=5),
            description="k-nearest neighbours on standardised features.",
            needs_scaling=True,
            sweep_grid=_frozen(n_neighbors=(1, 3, 5, 9, 15, 25)),
            cost=FitCost(0.1),
        ),
        HeadCfg(
            name="random_forest",
            factory=RandomForestClassifier,
            # Trees grow on every core (threads): the same forest, in half the time on 2 cores.
            default_params=_frozen(n_estimators=200, n_jobs=-1, random_state=0),
            description="Random forest of 200 trees, grown on every core.",
            light_params=_frozen(n_estimators=50),
            cost=FitCost(6.0),
        ),
        HeadCfg(
            name="hist_gb",
            factory=HistGradientBoostingClassifier,
            # scikit-learn's 100 rounds, 10 trees each over 1,280 columns, take minutes on a few thousand rows.
            default_params=_frozen(max_iter=50, random_state=0),
            description="Histogram gradient boosting, 50 rounds (early stopping above 10k samples).",
            # One tree per class per iteration over ~1000 feature columns: minutes at 100 iterations.
            light_params=_frozen(max_iter=30),
            cost=FitCost(9.0),
        ),
        HeadCfg(
            name="ridge",
            factory=_calibrated(RidgeClassifier),
            default_params=_frozen(alpha=1.0, cv=3),
            description="Ridge classifier, sigmoid-calibrated probabilities.",
            needs_scaling=True,
            proba="calibrated",
            sweep_grid=_frozen(alpha=(0.1, 1.0, 10.0, 100.0, 1e3, 1e4)),
            cost=FitCost(2.2),
        ),
    )
)

# Former names, still accepted wherever a head is named.
HEAD_ALIASES: Mapping[str, str] = types.MappingProxyType({"dense_seed003": "dense_small_lr"})
