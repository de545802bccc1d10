"""Where `decode_batches` decodes: a thread pool, or worker processes that write into shared memory.

Part of a Pillow decode holds the GIL (`bench/run.py` measures how much),
so threads stop scaling at a few cores. Worker processes do not share the
GIL. Pixels never cross a pipe: each task owns a slot of one shared-memory
block, the worker runs the decode function it is given (the reference
decoder's) and copies the image into its slot, returns only the file's
digest or the reason it failed, and the slot is copied out and reused when
the batch is built. Both pools give the same arrays: they run the same
function.

Workers are started with "spawn": the parent has usually loaded a deep
learning framework, whose threads make `fork` unsafe. They ignore SIGINT,
so Ctrl-C reaches the parent alone, which stops them.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import signal
from multiprocessing import shared_memory
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import DECODE_MODES
from ..errors import ConfigError

__all__ = ["chosen_mode", "decoder_pool"]
# On 2 cores threads decode 1.7x faster than processes in steady state (bench
# section "decode"); on a 16-core GPU machine Pillow in processes was measured
# at 2x threads (docs/performance.md). Between, the crossover is unmeasured: the default
# worker count (min(8, cores)) takes processes where the machine has 8 cores.
_PROCESSES_FROM = 8


def chosen_mode(mode: str, workers: int) -> str:
    """`"threads"` or `"processes"` for `mode` (`"auto"` picks by `workers`)."""
    if mode not in DECODE_MODES:
        raise ConfigError(
            f"`decode_mode` must be one of {', '.join(DECODE_MODES)}. Received: decode_mode={mode!r}.",
            field="decode_mode",
        )
    if mode == "auto":
        return "processes" if workers >= _PROCESSES_FROM else "threads"
    return mode


def decoder_pool(mode: str, workers: int, load: Callable, size: int, slots: int):
    """A pool whose `submit(path)` returns a handle; `handle.result()` is `load(path, size)`.

    `load` returns `(uint8 image of shape (size, size, 3) or None, digest,
    reason)`; it must be a module-level function, so processes can import it.
    """
    if chosen_mode(mode, workers) == "processes":
        return _ProcessPool(workers, load, size, slots)
    return _ThreadPool(workers, load, size)


class _ThreadPool:
    def __init__(self, workers: int, load: Callable, size: int):
        self._load, self._size = load, size
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    def submit(self, path: Path):
        return self._pool.submit(self._load, path, self._size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True, cancel_futures=True)


class _ProcessPool:
    def __init__(self, workers: int, load: Callable, size: int, slots: int):
        shape = (slots, size, size, 3)
        self._memory = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
        self._view = np.ndarray(shape, np.uint8, buffer=self._memory.buf)
        self._free = list(range(slots))
        self._load, self._size = load, size
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_attach, initargs=(self._memory.name, shape),
        )

    def submit(self, path: Path) -> _SlotHandle:
        slot = self._free.pop()
        return _SlotHandle(self, slot, self._pool.submit(_decode_into, self._load, slot, path, self._size))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)
        finally:
            del self._view  # the buffer must have no exported views before close
            self._memory.close()
            self._memory.unlink()


class _SlotHandle:
    """A decode in a worker process; `result()` copies the image out of its slot and frees the slot."""

    def __init__(self, pool: _ProcessPool, slot: int, future):
        self._pool, self._slot, self._future = pool, slot, future

    def result(self):
        try:
            digest, reason = self._future.result()
        except concurrent.futures.process.BrokenProcessPool:
            raise RuntimeError(
                "A decoding process died (a decoder crashed on a file, or the system ran out of memory). "
                "Finished work is kept; run again, or decode in threads (`decode_mode` threads)."
            ) from None
        image = None if reason is not None else self._pool._view[self._slot].copy()
        self._pool._free.append(self._slot)
        return image, digest, reason


_SHARED: dict = {}  # in a worker: the attached block and its array view


def _attach(name: str, shape: tuple[int, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    memory = shared_memory.SharedMemory(name=name)
    _SHARED["memory"], _SHARED["view"] = memory, np.ndarray(shape, np.uint8, buffer=memory.buf)


def _decode_into(load: Callable, slot: int, path: Path, size: int) -> tuple[str | None, str | None]:
    image, digest, reason = load(path, size)
    if image is not None:
        _SHARED["view"][slot] = image
    return digest, reason
