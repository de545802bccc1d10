"""bottleneck: cached-feature transfer learning for images.

Run a frozen Keras base once over an image folder (`extract_features`),
keep the features in the store, then train cheap heads on them
(`train_heads`). Every name is imported on first use, so `import pipeline`
is cheap and loads neither stage until one is asked for.
"""

import importlib

_EXPORTS = {
    "BACKBONES": "features",
    "build_extractor": "features",
    "extract_features": "features",
    "extract_many": "features",
    "ExtractResult": "features",
    "get_backbone_cfg": "features",
    "list_backbones": "features",
    "ExtractConfig": "config",
    "TrainConfig": "config",
    "CurveConfig": "config",
    "FinetuneConfig": "config",
    "BottleneckError": "errors",
    "ExitStatus": "errors",
    "FeatureSet": "store",
    "FeatureStore": "store",
    "read_feature_set": "store",
    "create_head": "heads",
    "list_heads": "heads",
    "load_head": "heads",
    "RunResult": "runs.train",
    "list_runs": "runs.leaderboard",
    "rebuild_leaderboard": "runs.leaderboard",
    "train_heads": "runs.train",
    "CurveResult": "runs.curve",
    "run_curve": "runs.curve",
    "Prediction": "runs.predict",
    "Predictor": "runs.predict",
    "EvaluationResult": "runs.evaluate",
    "RunError": "errors",
    "evaluate_run": "runs.evaluate",
    "predict_images": "runs.predict",
    "ExportResult": "runs.export",
    "export_run": "runs.export",
    "FinetuneResult": "runs.finetune",
    "finetune_run": "runs.finetune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return __all__
