"""Tests for pipeline.heads.metrics: metrics dicts and plot Figures."""

import json
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from pipeline.heads.metrics import TOP_K, classification_metrics, plot_confusion_matrix, plot_history

NAMES = ["cat", "dog", "fox"]
Y_TRUE = [0, 0, 1, 1, 2, 2]
PROBA = [
    [0.8, 0.1, 0.1],  # cat -> cat
    [0.3, 0.6, 0.1],  # cat -> dog
    [0.2, 0.7, 0.1],  # dog -> dog
    [0.1, 0.8, 0.1],  # dog -> dog
    [0.1, 0.2, 0.7],  # fox -> fox
    [0.5, 0.25, 0.25],  # fox -> cat
]


def test_metrics_match_hand_computed_values():
    m = classification_metrics(Y_TRUE, PROBA, NAMES)
    assert m["n_samples"] == 6 and m["n_classes"] == 3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # precision = correct / predicted, recall = correct / true
    expected = {
        "cat": (1 / 2, 1 / 2, 1 / 2),
        "dog": (2 / 3, 1.0, 0.8),
        "fox": (1.0, 1 / 2, 2 / 3),
    }
    for name, (precision, recall, f1) in expected.items():
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == 2
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    p_true = [0.8, 0.3, 0.7, 0.8, 0.7, 0.25]
    assert m["log_loss"] == pytest.approx(-sum(map(math.log, p_true)) / 6)
    assert "top_5_accuracy" not in m


def test_metrics_are_json_serialisable():
    m = classification_metrics(np.array(Y_TRUE), np.array(PROBA, dtype=np.float32), NAMES)
    assert json.loads(json.dumps(m)) == m
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss"):
        assert type(m[key]) is float
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


def test_log_loss_with_classes_missing_from_y_true():
    names = ["a", "b", "c", "d"]
    proba = [[0.7, 0.1, 0.1, 0.1], [0.2, 0.4, 0.3, 0.1]]
    m = classification_metrics([0, 1], proba, names)  # c and d never occur
    assert m["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2)
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx(1.0)  # over the classes present


@pytest.mark.parametrize("n_classes, present", [(2, False), (5, False), (6, True), (12, True)])
def test_top_k_only_above_k_classes(n_classes, present):
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(n_classes), size=20)
    m = classification_metrics(rng.integers(0, n_classes, 20), proba, [f"c{i}" for i in range(n_classes)])
    assert (f"top_{TOP_K}_accuracy" in m) is present


def test_top_k_hand_computed():
    names = [f"c{i}" for i in range(6)]
    proba = [
        [0.0, 0.2, 0.2, 0.2, 0.2, 0.2],  # true 0 ranked last: miss
        [0.05, 0.05, 0.05, 0.05, 0.05, 0.75],  # true 5 ranked first: hit
    ]
    assert classification_metrics([0, 5], proba, names)["top_5_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "y_true, proba, names, error, match",
    [
        ([0, 1], [[0.5, 0.5]], ["a", "b"], ValueError, r"shape \(n_samples, n_classes\) = \(2, 2\)"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b", "c"], ValueError, r"= \(2, 3\)"),
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], ValueError, r"class indices in \[0, 1\].*\[3\]"),
        ([0, 1], [[0.9, 0.9], [0.5, 0.5]], ["a", "b"], ValueError, "row 0 sums to 1.8"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "a"], ValueError, "duplicates"),
        ([0], [[1.0]], ["a"], ValueError, "at least 2 classes"),
        (["a", "b"], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], TypeError, "integer class indices"),
        ([[0, 1]], [[0.5, 0.5]], ["a", "b"], ValueError, "must be 1-D"),
        ([], np.zeros((0, 2)), ["a", "b"], ValueError, "at least one sample"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], "ab", TypeError, "sequence of str"),
    ],
)
def test_metrics_validate_inputs(y_true, proba, names, error, match):
    with pytest.raises(error, match=match):
        classification_metrics(y_true, proba, names)


def test_plot_confusion_matrix(tmp_path):
    cm = classification_metrics(Y_TRUE, PROBA, NAMES)["confusion_matrix"]
    fig = plot_confusion_matrix(cm, NAMES)
    assert isinstance(fig, Figure)
    ax, colorbar = fig.axes
    assert ax.get_title() == "Confusion matrix"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Predicted label", "True label")
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert [t.get_text() for t in ax.texts] == ["1", "1", "0", "0", "2", "0", "1", "0", "1"]
    fig.savefig(tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_confusion_matrix_normalized_and_large():
    fig = plot_confusion_matrix([[1, 3], [0, 0]], ["a", "b"], normalize=True, title="Recall")
    ax = fig.axes[0]
    assert ax.get_title() == "Recall"
    assert [t.get_text() for t in ax.texts] == ["0.25", "0.75", "0.00", "0.00"]
    many = [f"c{i}" for i in range(40)]
    assert fig_texts(plot_confusion_matrix(np.eye(40, dtype=int), many)) == 0  # too many to annotate
    with pytest.raises(ValueError, match=r"= \(3, 3\)"):
        plot_confusion_matrix([[1, 0], [0, 1]], NAMES)
    with pytest.raises(ValueError, match="non-negative"):
        plot_confusion_matrix([[1, -1], [0, 1]], ["a", "b"])


def fig_texts(fig):
    return len(fig.axes[0].texts)


def test_plot_history_train_and_validation(tmp_path):
    history = {
        "loss": [1.0, 0.6, 0.4],
        "accuracy": [0.5, 0.7, 0.8],
        "val_loss": [1.1, 0.8, 0.7],
        "val_accuracy": [0.4, 0.6, 0.7],
    }
    fig = plot_history(history)
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["Accuracy", "Loss"]
    for ax, key in zip(fig.axes, ["accuracy", "loss"]):
        train, val = ax.get_lines()
        assert (train.get_label(), val.get_label()) == ("train", "validation")
        assert list(train.get_xdata()) == [1, 2, 3]
        assert list(train.get_ydata()) == history[key]
        assert list(val.get_ydata()) == history[f"val_{key}"]
        assert ax.get_xlabel() == "Epoch"
    fig.savefig(tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 0


def test_plot_history_without_validation_or_accuracy():
    fig = plot_history({"loss": [1.0, 0.5], "accuracy": [0.5, 0.9]})
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1]
    fig = plot_history({"loss": [1.0, 0.5]})
    assert [ax.get_title() for ax in fig.axes] == ["Loss"]


@pytest.mark.parametrize(
    "history, error, match",
    [
        ({}, ValueError, "'accuracy' and/or 'loss'.*Received keys: \\[\\]"),
        ({"loss": [1.0, 0.5], "val_loss": [1.0]}, ValueError, r"one value per epoch.*\(2\). Received 1"),
        ({"loss": []}, ValueError, "non-empty"),
        ({"loss": ["high"]}, TypeError, "list of numbers"),
        ([1.0, 0.5], TypeError, "mapping of per-epoch lists"),
    ],
)
def test_plot_history_validates(history, error, match):
    with pytest.raises(error, match=match):
        plot_history(history)


# -- evaluate_run on a run's own test split --------------------------------------


@pytest.mark.slow
def test_evaluate_on_the_runs_own_test_split_extracts_nothing_and_says_whose_split(tmp_path, caplog):
    import logging

    from imagegen import write_image
    from pipeline.config import ExtractConfig, TrainConfig
    from pipeline.features.extract import extract_features
    from pipeline.runs.evaluate import evaluate_run
    from pipeline.runs.train import train_heads

    data = tmp_path / "data"
    for split, count in (("train", 6), ("test", 3)):
        for c in range(3):
            for i in range(count):
                write_image(data / split / f"class{c}" / f"{i}.png", seed=100 * c + 10 * len(split) + i)
    result = extract_features(config=ExtractConfig(
        data=str(data), cache_dir=str(tmp_path / "cache"), model="resnet50", size=32, weights="none", batch_size=8))
    (run,) = train_heads(result.path, config=TrainConfig(
        heads=("logreg",), runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache")))

    with caplog.at_level(logging.INFO, logger="bottleneck"):
        evaluation = evaluate_run(run.run_dir, data / "test")

    assert evaluation.extracted == 0 and evaluation.n_images == 9
    assert {k: evaluation.overlap[k] for k in ("train", "validation", "test")} == {"train": 0, "validation": 0, "test": 9}
    assert "9 images of" in caplog.text and "run's own test split" in caplog.text
    assert "no independent test" not in caplog.text
    again = evaluate_run(run.run_dir, data / "test")  # the copied rows are a cache like any other
    assert again.extracted == 0 and again.accuracy == evaluation.accuracy
