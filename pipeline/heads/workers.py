"""Where scikit-learn fits run: child processes the main process can end at once.

A fit inside compiled code (liblinear, libsvm, OpenMP loops) does not see
Python's signal handlers until it returns, which can be many minutes: a
Ctrl-C or SIGTERM would wait for it. So every scikit-learn fit runs in a
child process of its own, and the main process only waits on a pipe, which
a signal interrupts at once; it then kills the child and the interrupt goes
on as usual (the run folder being written is discarded). The child gets its
inputs and returns the fitted estimator by pickle.

Children are forked from a "forkserver" that has already imported NumPy and
scikit-learn, so starting one costs milliseconds, not the seconds of a fresh
interpreter, and no child inherits the threads of the main process (which
makes fork after OpenMP or BLAS threads unsafe). One process per fit, rather
than a pool, lets a time limit end exactly the fit that ran over.

BLAS and OpenMP thread counts are set in every child with `threadpoolctl`
(`threads` of `call_in_child`), so side-by-side fits share the cores instead
of each starting one thread per core; `limit_main_threads` sets them once
for the main process the same way (it scores, scales and trains the Keras
head there, beside the children).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..store.shards import interrupts_deferred

__all__ = ["FitTimeLimit", "call_in_child", "cores", "in_threads", "limit_main_threads"]

log = logging.getLogger("bottleneck")

_PRELOADED = ["numpy", "sklearn", "sklearn.calibration", "sklearn.ensemble", "sklearn.linear_model",
              "sklearn.neighbors", "sklearn.pipeline", "sklearn.svm", "threadpoolctl"]
_WATCH_INTERVAL = 0.5  # seconds between a child's checks that the main process lives

_live: set = set()
_live_lock = threading.Lock()
_stopping = threading.Event()
_context = None
_warm = False
_main_limits = None  # threadpoolctl's limits of this process, once set


class FitTimeLimit(Exception):
    """A fit ran past its time limit and was stopped. `seconds` is the limit."""

    def __init__(self, seconds: float):
        super().__init__(f"stopped at the time limit of {seconds:g} s")
        self.seconds = seconds


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or `taskset` sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def limit_main_threads() -> None:
    """Sets this process's BLAS/OpenMP threads to its cores, once, as every fit child gets them.

    Some BLAS builds size their pools by the machine's CPU count, which a
    container or `taskset` may not grant: the main process would then run
    more spinning threads than it has cores, beside fit children that use
    them. Called before every fit and sweep.
    Later calls change nothing (a caller that wants fewer threads for a
    block still uses `threadpoolctl.threadpool_limits` around it).
    """
    global _main_limits
    if _main_limits is None:
        from threadpoolctl import threadpool_limits

        _main_limits = threadpool_limits(limits=cores())


def call_in_child(fn: Callable[..., Any], /, *args, time_limit: float | None = None, threads: int | None = None):
    """`fn(*args)` in a child process, returned by pickle; a signal to this process ends the child at once.

    Args:
        fn: a module-level function (it is pickled by reference).
        *args: its arguments, pickled to the child.
        time_limit: seconds to wait before the child is killed and
            `FitTimeLimit` raised; `None` waits for as long as it takes.
            Defaults to `None`.
        threads: BLAS/OpenMP threads in the child; `None` for every core.
            Defaults to `None`.

    Returns:
        What `fn` returned.

    Raises:
        FitTimeLimit: `time_limit` ran out.
        Exception: whatever `fn` raised, re-raised here.
        KeyboardInterrupt: this process was interrupted (the child is killed first).
    """
    if _stopping.is_set():
        raise KeyboardInterrupt
    global _warm
    if not _warm:
        # The first child waits for the forkserver to import NumPy and
        # scikit-learn (seconds on a busy machine): a tiny call, which an
        # interrupt can end at once, so that the real one starts promptly.
        _warm = True
        call_in_child(os.getpid)
    receive, send = _ctx().Pipe(duplex=False)
    child = _ctx().Process(target=_child, args=(send, fn, args, threads or cores(), os.getpid()), daemon=True)
    try:
        # An interrupt while the inputs are being written would leave the
        # child reading half a pickle (and printing a traceback): held back
        # for the fraction of a second the write takes.
        with interrupts_deferred():
            child.start()
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        # An estimator class defined in a script's __main__ cannot reach a child: fit it here.
        receive.close()
        send.close()
        log.debug("fitting in this process (%s cannot be sent to a child: %s)", getattr(fn, "__name__", fn), e)
        return fn(*args)
    send.close()  # the child's copy stays open: EOF here means the child died
    with _live_lock:
        _live.add(child)
    try:
        if _stopping.is_set():  # `kill_children` ran while this one started
            raise KeyboardInterrupt
        if not receive.poll(time_limit):
            raise FitTimeLimit(time_limit)
        try:
            ok, value = receive.recv()
        except EOFError:
            child.join()
            raise RuntimeError(
                f"the process fitting the head died (exit status {child.exitcode}; -9 is usually the "
                "system running out of memory)"
            ) from None
    finally:
        with _live_lock:
            _live.discard(child)
        receive.close()
        if child.is_alive():
            child.kill()
        child.join()
    if not ok:
        raise value
    return value


def in_threads(calls: Sequence[Callable[[], Any]], n_jobs: int) -> list[Any]:
    """Runs zero-argument callables `n_jobs` at a time; results in order.

    The callables are expected to wait on `call_in_child`, so threads only
    wait. When the main thread is interrupted (or a call fails), every
    running child is killed and no new one starts before this returns, so
    the interrupt takes effect at once.
    """
    if n_jobs <= 1 or len(calls) <= 1:
        return [call() for call in calls]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="fit")
    futures = [pool.submit(call) for call in calls]
    try:
        return [future.result() for future in futures]
    except BaseException:
        _stopping.set()
        try:
            kill_children()
            pool.shutdown(wait=True, cancel_futures=True)
        finally:
            _stopping.clear()
        raise
    finally:
        pool.shutdown(wait=False)


def kill_children() -> None:
    """Kills every child started by `call_in_child` that is still running."""
    with _live_lock:
        running = list(_live)
    for child in running:
        with contextlib.suppress(Exception):
            child.kill()


def _ctx():
    global _context
    if _context is None:
        _quiet_resource_tracker()
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOADED)
    return _context


def _quiet_resource_tracker() -> None:
    # Children are killed by design (a signal, a time limit), so the locks a fit's thread pool
    # held (joblib, random_forest) are left behind by design too. Python's resource tracker
    # releases them when this process ends, and says so on stderr, after "Interrupted.": it is
    # started here with stderr closed, before the forkserver, which shares it.
    from multiprocessing import resource_tracker

    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        resource_tracker.ensure_running()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _child(send, fn, args, threads: int, parent: int) -> None:
    # Ctrl-C at a terminal reaches the whole process group: the parent decides, and kills this child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    from joblib import parallel_config
    from threadpoolctl import threadpool_limits

    try:
        # A daemon process cannot start joblib's worker processes (joblib would warn and use one
        # core): estimators that ask for `n_jobs` (random_forest) use threads instead. No default
        # `n_jobs` here: a pool is started only where an estimator asks for one.
        with threadpool_limits(limits=threads), parallel_config(backend="threading"):
            result = (True, fn(*args))
    except Exception as e:  # sent back, raised again in the parent
        result = (False, e)
    try:
        send.send(result)
    except Exception as e:  # an exception that does not pickle travels as its text
        send.send((False, RuntimeError(f"{type(result[1]).__name__}: {result[1]}" if not result[0] else str(e))))
    send.close()


def _die_with_parent(parent: int) -> None:
    # A main process killed with SIGKILL cannot kill its children, and the
    # forkserver (this child's parent) lives as long as any child does: a
    # watchdog ends this child once the main process is gone. The fits'
    # compiled loops release the GIL, so it runs alongside them.
    def watch() -> None:
        while True:
            time.sleep(_WATCH_INTERVAL)
            if os.getppid() == 1 or not _alive(parent):
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_seconds(deadline: float | None) -> float | None:
    """Seconds left until a `time.monotonic()` deadline (at least a millisecond), or `None` for none."""
    return None if deadline is None else max(deadline - time.monotonic(), 1e-3)
