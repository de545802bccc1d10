"""Subcommands that use a trained run: predict, evaluate, export, finetune."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ExitStatus
from ..runs.export_formats import FORMATS
from .parsing import add_command, flag_values

__all__ = ["add_finetune_parser", "add_predict_parsers"]


def add_predict_parsers(sub) -> None:
    add_command(sub, "predict", _cmd_predict, help="predict the class of new images with a trained run")
    add_command(sub, "evaluate", _cmd_evaluate, help="measure a trained run on new labelled data (a folder, manifest, URL, tar shards or Parquet)")
    add_command(sub, "export", _cmd_export,
                help="export a run: one model (dense and linear heads) or a self-contained bundle")


def _cmd_predict(args) -> int:
    from ..runs.predict import check_output_file, check_output_folder, predict_images, write_predictions_csv
    from ..store import shown_path

    # Before minutes of extraction, not after.
    check_output_folder(Path(args.output).parent)
    check_output_file(args.output, overwrite=args.force)
    predictions = predict_images(args.run, args.images, top_k=args.top_k, weights=args.weights, trust=args.trust,
                                 tta=args.tta)
    path = write_predictions_csv(predictions, args.output, overwrite=args.force)
    failed = sum(p.error is not None for p in predictions)
    if not args.quiet:
        shown = predictions[:20]
        width = min(60, max(len("path"), *(len(shown_path(p.path)) for p in shown)))
        print(f"{'path':{width}}  {'class':12} {'prob':>6}  top-{args.top_k}")
        for p in shown:
            name = shown_path(p.path)
            name = name if len(name) <= width else "..." + name[-(width - 3):]
            if p.error is not None:
                print(f"{name:{width}}  error: {p.error}")
            else:
                top = ", ".join(f"{c} {q:.2f}" for c, q in p.top_k)
                print(f"{name:{width}}  {p.predicted_class:12} {p.probability:6.3f}  {top}")
        if len(predictions) > len(shown):
            print(f"... and {len(predictions) - len(shown)} more")
        errors = f", {failed} could not be read" if failed else ""
        noun = "prediction" if len(predictions) == 1 else "predictions"
        n = args.tta - 1
        views = f", probabilities averaged over each image and {n} view{'s' * (n > 1)} of it" if n else ""
        print(f"Wrote {len(predictions)} {noun} to {path}{errors}{views}.")
    elif not args.json:
        print(path)
    if args.json:
        print(json.dumps({"output": str(path), "predictions": [p.to_json() for p in predictions]}))
    return ExitStatus.OK


def _cmd_evaluate(args) -> int:
    from ..runs.evaluate import evaluate_run
    from ..store import shown_path

    result = evaluate_run(
        args.run, args.data, weights=args.weights, output=args.output, cache_dir=args.cache_dir, trust=args.trust,
        tta=args.tta,
    )
    if not args.quiet:
        # The dataset's summary was logged when the folder was listed, before extraction.
        macro_f1 = result.metrics.get("macro_f1")
        f1 = "" if macro_f1 is None else f", macro F1 {macro_f1:.4f}"
        cached = f"{result.extracted} images extracted now" if result.extracted else "features all from the cache"
        print(f"Accuracy {result.accuracy:.4f}{f1} on {result.n_images} images ({cached}).")
        if result.tta:
            t = result.tta
            print(f"  averaged over each image and {t['views'] - 1} view{'s' * (t['views'] > 2)} ({t['ops']}, seed {t['seed']}): "
                  f"{t['cached']} view rows from the cache, {t['computed']} computed")
        for name, paths in result.unknown_classes.items():
            print(f"  unknown class {name!r}: {len(paths)} images left out")
        if result.missing_classes:
            print(f"  classes of the run without images here: {', '.join(result.missing_classes)}")
        for path, reason in result.skipped[:20]:
            print(f"  skipped {shown_path(path)}: {reason}")
        print(f"Metrics and confusion matrix: {result.out_dir}")
    elif not args.json:
        print(result.out_dir)
    if args.json:
        print(json.dumps(result.to_json()))
    return ExitStatus.OK


def _cmd_export(args) -> int:
    from ..runs.export import export_run

    result = export_run(
        args.run, args.out, format=args.format, weights=args.weights, include_weights=not args.no_weights,
        overwrite=args.force, trust=args.trust,
    )
    if not args.quiet:
        what = FORMATS[result.format].title
        check = "" if result.max_abs_diff is None else f" (checked against the run: max difference {result.max_abs_diff:.2g})"
        print(f"Exported {what}: {result.path}{check}")
    elif not args.json:
        print(result.path)
    if args.json:
        print(json.dumps(result.to_json()))
    return ExitStatus.OK


# -- finetune -----------------------------------------------------------------


def add_finetune_parser(sub) -> None:
    add_command(sub, "finetune", _cmd_finetune,
                     help="fine-tune the top of the base of a dense head run, end to end, into a new run")


def _cmd_finetune(args) -> int:
    from .. import config as config_lib
    from ..runs.finetune import finetune_run

    table = config_lib.load_toml(args.config).get("finetune", {})
    config = config_lib.resolve(config_lib.FinetuneConfig, table, **flag_values(args, config_lib.FinetuneConfig))
    result = finetune_run(args.run, config=config)
    if not args.quiet:
        shown = {k: "-" if v is None else f"{v:.4f}" for k, v in result.to_json().items() if k.endswith("accuracy")}
        print(f"Fine-tuned {len(result.unfrozen)} layers for {result.epochs_run} epochs (best {result.best_epoch}): "
              f"val acc {shown['val_accuracy']}, test acc {shown['test_accuracy']}.")
        print(f"Run: {result.run_dir}")
    elif not args.json:
        print(result.run_dir)
    if args.json:
        print(json.dumps(result.to_json()))
    return ExitStatus.OK
