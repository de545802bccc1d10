"""What the command line shows: option hints, signals, output levels, progress, summaries.

Library errors name config fields (`BottleneckError.field`); here they get
the flag and Make variable that set them. Nothing here runs a stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings

from ..config import Option
from .options import COMMAND_OPTIONS

log = logging.getLogger("bottleneck")
_PRODUCT = "pipeline"  # warnings of classes defined in this package are the product's own


def _hints(options: dict[str, Option]) -> dict[str, tuple[str, str | None]]:
    return {name: (opt.shown(name), opt.make) for name, opt in options.items()}


# The flag and Make variable that set each config field or argument a
# library error names (`BottleneckError.field`), per command.
_OPTIONS = {command: _hints(options) for command, options in COMMAND_OPTIONS.items()}
_OPTIONS["curve"]["fraction"] = _OPTIONS["curve"]["fractions"]  # a point's fraction is one of `fractions`
# predict, evaluate and export read runs through the same code, whose errors may name another one's argument.
_OPTIONS["predict"] = _OPTIONS["evaluate"] = _OPTIONS["export"] = {
    **_OPTIONS["predict"], **_OPTIONS["evaluate"], **_OPTIONS["export"]}
_EXTRACT_OPTIONS = _OPTIONS["features"]

# What an interruption leaves, per command: extraction resumes, a run in
# progress is discarded.
INTERRUPTED = {
    "features": "Finished work is kept; run the same command again to resume.",
    "train-head": "The head in progress was discarded; heads finished before it are kept in their run folders.",
    "curve": "No curve folder was written; run the same command again.",
    "finetune": "Completed epochs are kept; run the same command with --resume to continue.",
}
_STOP_SIGNALS = ("SIGTERM", "SIGHUP")
_SWITCHES = {opt.flag for options in COMMAND_OPTIONS.values() for opt in options.values() if opt.switch}


def option_hint(command: str, field: str | None) -> str:
    """` [set with --size; make features: SIZE=...]` for the option an error is about.

    A field of the features stage named by another command's error (a
    damaged set read by `train-head` asks for `verify`) points at
    `make features`.
    """
    if field in _OPTIONS.get(command, {}):
        flag, variable = _OPTIONS[command][field]
        how = "set with"
    elif field in _EXTRACT_OPTIONS:
        (flag, variable), command, how = _EXTRACT_OPTIONS[field], "features", "extract again with"
    else:
        return ""
    if variable is None:
        return f" [{how} {flag}]"
    value = "" if flag in _SWITCHES else " ..."
    make = f'ARGS="{flag}{value}"' if variable == "ARGS" else f"{variable}={'1' if flag in _SWITCHES else '...'}"
    return f" [{how} {flag}; make {command}: {make}]"


@contextlib.contextmanager
def output_shown(*, quiet: bool, verbose: bool):
    """The product's messages and warnings, one line each; other libraries' only as --verbose asks.

    Libraries log from ERROR and their warnings are hidden: they concern
    their internals (a MobileNetV2 weights file of another width gives a
    hundred Keras warnings before the one error that explains them).
    --verbose adds the product's debug messages, the libraries' warnings and
    logs from INFO (Pillow logs each PNG chunk at DEBUG), and TensorFlow's C++
    log at its default level. Filters and environment are restored on return.
    """
    others = logging.INFO if verbose else logging.ERROR
    handler = logging.StreamHandler()
    handler.addFilter(lambda record: record.name.partition(".")[0] == log.name or record.levelno >= others)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(format="%(message)s", level=level, handlers=[handler], force=True)
    with warnings.catch_warnings(), contextlib.ExitStack() as restore:
        for stream in (sys.stdout, sys.stderr):
            # A file name that is not UTF-8 (a str with surrogates) printed anywhere
            # shows as an escape instead of ending the command with UnicodeEncodeError.
            if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
                restore.callback(stream.reconfigure, errors="strict")
        if verbose:
            warnings.simplefilter("default")  # DeprecationWarnings too, once per place
            if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:  # a level the user set stays
                os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
                restore.callback(os.environ.pop, "TF_CPP_MIN_LOG_LEVEL", None)
        def show(message, category, filename, lineno, file=None, line=None):
            if category.__module__.partition(".")[0] == _PRODUCT:
                log.warning("warning: %s", message)
            elif verbose:  # in full, where `logging.captureWarnings` would put it
                logging.getLogger("py.warnings").warning(
                    "%s", warnings.formatwarning(message, category, filename, lineno, line).rstrip())
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def stop_signals_as_interrupt():
    """SIGTERM and SIGHUP end a command the way Ctrl-C does: finished work kept, one line, status 130.

    They are re-raised as SIGINT, so the store's deferral of Ctrl-C around
    HDF5 writes covers them too.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {name: signal.signal(getattr(signal, name), as_sigint) for name in _STOP_SIGNALS}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def as_sigint(signum, frame) -> None:
    # Calls the SIGINT handler in place, not `raise_signal`: a command started
    # in the background by a shell has SIGINT ignored, and SIGTERM must still end it.
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def print_features_summary(result) -> None:
    from ..store import shown_path

    c = result.counts
    if result.worker is not None:
        index, count = result.worker
        print(f"Worker {index} of 0..{count - 1}: extracted {c['extracted']}, skipped {c['skipped']} into the shards of "
              f"{result.path.parent} in {result.seconds:.1f} s. Once every worker is done, run the same command "
              "without --num-shards and --shard-index: it writes the index (and extracts what a lost worker left).")
        return
    views_now = c.get("views", 0)
    if c["extracted"] == 0 and c["removed"] == 0 and not result.quarantined and views_now:
        # The run's seconds went to the views: say so, not that it took that long to find nothing to do.
        print(f"{c['reused']} images up to date, {c['skipped']} skipped; {views_now} augmented views extracted "
              f"in {result.seconds:.1f} s.")
    elif c["extracted"] == 0 and c["removed"] == 0 and not result.quarantined:
        print(f"Up to date: {c['reused']} images, {c['skipped']} skipped ({result.seconds:.2f} s).")
    else:
        speed = f", {result.images_per_second:.1f} img/s" if result.images_per_second else ""
        print(
            f"Extracted {c['extracted']}, reused {c['reused']}, skipped {c['skipped']}, "
            f"removed {c['removed']} in {result.seconds:.1f} s{speed}."
        )
    if "views" in c and not (c["extracted"] == 0 and views_now):
        print(f"Augmented views extracted: {c['views']}.")
    for skip in result.skipped[:20]:
        print(f"  skipped {shown_path(skip.relpath)}: {skip.reason}")
    if len(result.skipped) > 20:
        print(f"  ... and {len(result.skipped) - 20} more (listed under skipped/ in the file)")
    shape = "x".join(str(d) for d in result.feature_shape)
    print(f"Features ({shape} per image): {result.path}")


def print_curve_summary(rows) -> None:
    """Mean test (else validation) accuracy, and its min-max over repeats, per head and fraction."""
    split = "test" if any(r["test_accuracy"] is not None for r in rows) else "val"
    print(f"{'head':16} {'fraction':>8} {'n_train':>8} {split + ' acc':>9}  min-max")
    for key in dict.fromkeys((r["head"], r["fraction"]) for r in rows):
        point = [r for r in rows if (r["head"], r["fraction"]) == key]
        scores = [r[f"{split}_accuracy"] for r in point]
        n_train = sum(r["n_train"] for r in point) / len(point)
        mean = sum(scores) / len(scores)
        print(f"{key[0]:16} {key[1]:8g} {n_train:8.0f} {mean:9.4f}  {min(scores):.4f}-{max(scores):.4f}")


class ProgressBar:
    """Extraction progress, usable as `progress(done, total)`.

    tqdm on a terminal; elsewhere (CI logs, a notebook running `make`) one
    plain line every `PLAIN_INTERVAL` seconds and at the end, since a
    redrawn bar there is either invisible or a wall of carriage returns.
    """

    PLAIN_INTERVAL = 10.0

    def __init__(self, disable: bool):
        self.disable = disable
        self.bar = None
        self.last_line = time.monotonic()

    def __enter__(self):
        return None if self.disable else self

    def __call__(self, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            now = time.monotonic()
            if done == total or now - self.last_line >= self.PLAIN_INTERVAL:
                print(f"extracting: {done}/{total} images ({done / max(total, 1):.0%})", file=sys.stderr, flush=True)
                self.last_line = now
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="extracting", file=sys.stderr)
        self.bar.total = total  # grows when a file changed mid-run and its content is extracted again
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
