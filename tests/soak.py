"""Kill-and-resume soak of the features stage, and the harness its tests share.

    make soak                                  # 40 kill points, random seed (printed)
    make soak ARGS="--points 100 --seed 7"     # reproduce or extend a run
    .venv/bin/python tests/soak.py --model resnet50 --images 300

Why a fork server: a kill test needs many short `bottleneck features`
processes, and a fresh one spends 10-20 s importing TensorFlow before it
does anything. `Zygote` imports TensorFlow, Keras and the pipeline once,
in a server process that has run no TensorFlow op (so forking it is
safe), and forks one child per run. A child runs `pipeline.cli.main(argv)`
as `python -m pipeline` does, with stdout and stderr in files, and can be
SIGKILLed or SIGINTed from outside at any moment, or made to stop itself
at a chosen write moment by a fault hook.

Fault hooks wrap h5py and `os` calls in the child only, so they name
moments in the life of the files rather than functions of the store:

    shard_created    a `.tmp-` shard was just created (empty)
    shard_write      a dataset of a `.tmp-` shard was just written
                     (rows half-appended: features written, digests not yet)
    shard_closed     a `.tmp-` shard was closed, complete but not yet renamed
    shard_renamed    a shard was just renamed to its final name
    index_write      the `.tmp-*features.h5` index is half written (with
                     h5py: a dataset of it was written)
    index_closed     the temporary index was closed, not yet renamed
    index_renamed    `features.h5` was just replaced
    shard_deleted    an unreferenced shard was just deleted

Actions, at the n-th occurrence of the event: KILL (SIGKILL: the process
vanishes mid-operation), INT (SIGINT: Ctrl-C right after the operation),
SLEEP:<seconds>, FSIZE:<bytes> (from then on no file may grow past
<bytes>, as when the disk fills up; SIGXFSZ is ignored, so writes fail
with EFBIG instead of killing the process).

After every interruption `Campaign` checks that the feature set is either
absent (`FeatureStoreError`), the previous complete set or the new complete
set, never a partial one, and that every shard under its final name is
whole; after the last run, that the set equals an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# VGG16 at 32 px with random weights: features of a healthy magnitude (mean
# |x| ~ 0.06, images differ by ~20 %), and it builds and traces in ~2 s
# where ResNet50 takes ~13 s on a loaded 2-core machine. Each killed run
# rebuilds the model, so this is what keeps the CI kill tests short.
FAST_MODEL = ["--model", "vgg16", "--size", "32", "--weights", "none"]
SMALL_BATCHES = ["--batch-size", "4", "--shard-size", "8", "--workers", "1"]

EVENTS = (
    "shard_created", "shard_write", "shard_closed", "shard_renamed",
    "index_write", "index_closed", "index_renamed", "shard_deleted",
)
TRIGGERS = ("shards", "tmp_shard", "tmp_index")  # for kills sent from outside


# -- the fork server ------------------------------------------------------------


class Child:
    """One `bottleneck` run forked by a `Zygote`."""

    def __init__(self, zygote: "Zygote", pid: int, name: str, out: Path, err: Path):
        self.zygote, self.pid, self.name = zygote, pid, name
        self.out_path, self.err_path = out, err
        self.status: int | None = None  # exit status, or -signal when killed
        self.maxrss_kb: int | None = None

    def running(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            return False
        return state not in ("Z", "X")

    def send(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 300) -> "Child":
        if self.status is None:
            reply = self.zygote._request({"op": "wait", "pid": self.pid}, timeout, on_timeout=self)
            self.status, self.maxrss_kb = reply["status"], reply["maxrss_kb"]
        return self

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def report(self) -> dict:
        """The `--json` line of a successful run."""
        assert self.status == 0, f"{self.name} exited with {self.status}:\n{self.stderr}"
        return json.loads(self.stdout.strip().splitlines()[-1])

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} status={self.status}>"


class Zygote:
    """Forks `bottleneck` runs from a process that imported TensorFlow once.

    Args:
        workdir: where the children's stdout/stderr files go.
    """

    def __init__(self, workdir: Path, timeout: float = 300):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._count = 0
        self._buffer = b""
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONDONTWRITEBYTECODE": "1"}
        self._errors = open(self.workdir / "zygote.stderr", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve"], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors, bufsize=0,
        )
        self._read(timeout)  # {"ready": true}

    def spawn(self, argv: list[str], *, name: str = "run", fault: dict | None = None,
              fsize: int | None = None, deny: tuple[str, ...] = ()) -> Child:
        """Starts `bottleneck <argv>` in a forked child and returns at once.

        Args:
            fault: `{"event": EVENTS[i], "n": 1, "action": "KILL"}`, or None.
            fsize: a file size limit in bytes from the start (a full disk).
            deny: path suffixes whose opening fails with "Permission denied",
                as for a chmod-000 file (the tests run as root).
        """
        self._count += 1
        stem = self.workdir / f"{self._count:03d}-{name}"
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        reply = self._request({
            "op": "spawn", "argv": [str(a) for a in argv], "stdout": str(out), "stderr": str(err),
            "fault": fault, "fsize": fsize, "deny": list(deny),
        }, 60)
        return Child(self, reply["pid"], name, out, err)

    def run(self, argv: list[str], *, timeout: float = 300, **kwargs) -> Child:
        return self.spawn(argv, **kwargs).wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._errors.close()

    def _request(self, message: dict, timeout: float, on_timeout: Child | None = None) -> dict:
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()
        try:
            return self._read(timeout)
        except TimeoutError:
            if on_timeout is not None:  # unstick the server, then report
                on_timeout.send(signal.SIGKILL)
                self._read(60)
                raise AssertionError(f"{on_timeout.name} ran past {timeout} s and was killed:\n"
                                     f"{on_timeout.stderr[-3000:]}") from None
            raise

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from the fork server in {timeout} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    self._errors.flush()
                    log = (self.workdir / "zygote.stderr").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the fork server died:\n{log}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)


def _serve() -> None:
    """The server side of `Zygote`: one JSON request per stdin line."""
    sys.path.insert(0, str(REPO))
    import h5py  # noqa: F401 - everything a run needs is imported before any fork
    import keras
    import keras.applications  # noqa: F401
    import tensorflow  # noqa: F401

    from pipeline import cli, store  # noqa: F401
    from pipeline.features import decode, discovery, extract  # noqa: F401

    del keras
    children: set[int] = set()
    out = sys.stdout.buffer

    def reply(message):
        out.write((json.dumps(message) + "\n").encode())
        out.flush()

    reply({"ready": True, "pid": os.getpid()})
    while line := sys.stdin.buffer.readline():
        request = json.loads(line)
        if request["op"] == "spawn":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, cli.main)
            children.add(pid)
            reply({"pid": pid})
        elif request["op"] == "wait":
            _, status, usage = os.wait4(request["pid"], 0)
            children.discard(request["pid"])
            reply({"status": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss})
    for pid in children:
        with _ignoring(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with _ignoring(ChildProcessError):
            os.waitpid(pid, 0)


def _child(request: dict, main) -> None:
    """Runs in the forked child; never returns."""
    import resource

    status = 70
    try:
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            new = os.open(path, flags, 0o644)
            os.dup2(new, fd)
            os.close(new)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if request.get("fsize"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], resource.RLIM_INFINITY))
        _install_hooks(request.get("fault"), tuple(request.get("deny") or ()))
        status = main(request["argv"])
    except SystemExit as e:  # argparse
        status = e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 - report anything, then exit
        traceback.print_exc()
    finally:
        with _ignoring(Exception):
            import gc

            gc.collect()  # what a real exit would finalize, e.g. h5py objects that complain
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(int(status))


class _ignoring:
    def __init__(self, *kinds):
        self.kinds = kinds

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, self.kinds)


# -- fault hooks (child side) -----------------------------------------------------


def _install_hooks(fault: dict | None, deny: tuple[str, ...]) -> None:
    import resource

    import h5py

    counts = {e: 0 for e in EVENTS}

    def fire(event: str) -> None:
        counts[event] += 1
        if fault is None or fault["event"] != event or counts[event] != fault.get("n", 1):
            return
        action, _, arg = fault.get("action", "KILL").partition(":")
        if action == "KILL":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never reached: SIGKILL is not deferred
        elif action == "INT":
            os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt at the next bytecode
        elif action == "SLEEP":
            time.sleep(float(arg))
        elif action == "FSIZE":
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), resource.RLIM_INFINITY))

    def kind(filename) -> str | None:
        path = Path(os.fsdecode(filename))
        if path.name.startswith(".tmp-"):
            return "index" if path.name.endswith("features.h5") else "shard" if path.parent.name == "shards" else None
        return None

    writing: set[str] = set()
    file_init, file_close = h5py.File.__init__, h5py.File.close
    group_setitem, dataset_setitem = h5py.Group.__setitem__, h5py.Dataset.__setitem__

    def init(self, name, mode="r", *args, **kwargs):
        file_init(self, name, mode, *args, **kwargs)
        if mode != "r" and kind(self.filename):
            writing.add(self.filename)
            if kind(self.filename) == "shard":
                fire("shard_created")

    def close(self):
        name = self.filename if self.id.valid else None
        file_close(self)
        if name in writing:
            writing.discard(name)
            fire(f"{kind(name)}_closed")

    def set_group_item(self, key, value):
        group_setitem(self, key, value)
        if self.file.filename in writing and kind(self.file.filename) == "index":
            fire("index_write")

    def set_dataset_item(self, key, value):
        dataset_setitem(self, key, value)
        if self.file.filename in writing and kind(self.file.filename) == "shard":
            fire("shard_write")

    h5py.File.__init__, h5py.File.close = init, close
    h5py.Group.__setitem__, h5py.Dataset.__setitem__ = set_group_item, set_dataset_item

    os_replace, os_unlink, os_remove, os_open = os.replace, os.unlink, os.remove, os.open
    os_write, os_close = os.write, os.close
    index_fds: set[int] = set()

    def replace(src, dst, **kwargs):
        os_replace(src, dst, **kwargs)
        src, dst = Path(os.fsdecode(src)), Path(os.fsdecode(dst))
        if dst.name == "features.h5":
            fire("index_renamed")
        elif src.name.startswith(".tmp-") and dst.parent.name == "shards":
            fire("shard_renamed")

    def unlinker(original):
        def unlink(path, **kwargs):
            original(path, **kwargs)
            path = Path(os.fsdecode(path))
            if path.parent.name == "shards" and not path.name.startswith("."):
                fire("shard_deleted")
        return unlink

    def open_(path, flags, *args, **kwargs):
        if deny and isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).endswith(deny):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        fd = os_open(path, flags, *args, **kwargs)
        if flags & os.O_CREAT and isinstance(path, (str, bytes, os.PathLike)) and kind(path) == "index":
            index_fds.add(fd)
        return fd

    def write(fd, data):
        if fd not in index_fds:
            return os_write(fd, data)
        view = memoryview(data)
        done = os_write(fd, view[: len(view) // 2])
        fire("index_write")  # the temporary index is half written
        return done + os_write(fd, view[done:]) if done == len(view) // 2 else done

    def close_(fd):
        os_close(fd)
        if fd in index_fds:
            index_fds.discard(fd)
            fire("index_closed")

    os.replace, os.unlink, os.remove, os.open = replace, unlinker(os_unlink), unlinker(os_remove), open_
    os.write, os.close = write, close_


# -- checks (parent side, h5py only) ----------------------------------------------


@dataclasses.dataclass
class Snapshot:
    """Everything a reader gets from a complete feature set."""

    paths: list[str]
    labels: list[int]
    class_names: list[str]
    features: "object"  # np.ndarray
    skipped: list[tuple[str, str]]
    content_hash: str


def snapshot(set_dir: Path) -> Snapshot:
    """Reads the set as the head stage does; raises FeatureStoreError if there is none."""
    import h5py

    from pipeline.store import decode_path, read_feature_set

    fs = read_feature_set(set_dir)
    with h5py.File(Path(set_dir) / "features.h5", "r") as f:
        skipped = list(zip([decode_path(p) for p in f["skipped/path"][:]], f["skipped/reason"].asstr()[:]))
    return Snapshot(fs.paths, fs.labels.tolist(), fs.class_names, fs.features, skipped, fs.content_hash)


def same_set(a: Snapshot | None, b: Snapshot | None) -> bool:
    import numpy as np

    if a is None or b is None:
        return a is b
    return (a.paths == b.paths and a.labels == b.labels and a.class_names == b.class_names
            and a.skipped == b.skipped and a.features.shape == b.features.shape
            and bool(np.allclose(a.features, b.features, rtol=1e-5, atol=1e-6)))


def assert_same_set(got: Snapshot, expected: Snapshot, what: str) -> None:
    import numpy as np

    assert len(set(got.paths)) == len(got.paths), f"{what}: duplicated images"
    assert got.paths == expected.paths, f"{what}: lost {sorted(set(expected.paths) - set(got.paths))[:5]}, " \
                                        f"unexpected {sorted(set(got.paths) - set(expected.paths))[:5]}"
    assert got.labels == expected.labels and got.class_names == expected.class_names, f"{what}: labels differ"
    assert got.skipped == expected.skipped, f"{what}: skipped lists differ"
    np.testing.assert_allclose(got.features, expected.features, rtol=1e-5, atol=1e-6, err_msg=what)


def assert_shards_whole(set_dir: Path) -> int:
    """Every shard under its final name opens, passes its checksums and has
    one digest and one path per feature row. Returns how many there are."""
    import h5py

    names = sorted(p for p in (Path(set_dir) / "shards").glob("*.h5") if not p.name.startswith("."))
    for path in names:
        try:
            with h5py.File(path, "r") as f:
                n = f["features"].shape[0]
                digests = f["sha256"][:]
                assert n > 0 and len(digests) == n and f["path"].shape[0] == n, \
                    f"{n} feature rows, {len(digests)} digests, {f['path'].shape[0]} paths"
                assert all(len(d) == 64 for d in digests), "rows without a digest"
                f["features"][:]  # fletcher32 checksums
        except (OSError, KeyError, AssertionError) as e:
            raise AssertionError(f"shard '{path}' is published but not whole: {e}") from None
    return len(names)


def located_rows(set_dir: Path) -> int:
    """Distinct images held by whole shards (work that a resume keeps)."""
    import h5py

    digests = set()
    for path in (Path(set_dir) / "shards").glob("*.h5"):
        if not path.name.startswith("."):
            with h5py.File(path, "r") as f:
                digests.update(f["sha256"][:].tolist())
    return len(digests)


def try_snapshot(set_dir: Path) -> Snapshot | None:
    from pipeline.store import FeatureStoreError

    try:
        return snapshot(set_dir)
    except FeatureStoreError:
        return None


# -- kill campaigns ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kill:
    """One interruption: a fault hook `event`, or `async:<trigger>` for a
    signal sent from outside `delay` seconds after the trigger is seen."""

    event: str
    n: int = 1
    signal: str = "KILL"  # or INT
    delay: float = 0.0

    def __str__(self) -> str:
        when = f"+{self.delay * 1000:.0f}ms" if self.event.startswith("async") else ""
        return f"SIG{self.signal} at {self.event} #{self.n}{when}"


@dataclasses.dataclass
class KillPoint:
    kill: Kill
    outcome: str  # "no set yet", "previous set", "new set"
    status: int


class Campaign:
    """Interrupts `features` runs on one data folder, checking after each one.

    Args:
        zygote: the fork server.
        argv: the full `bottleneck features ... --cache-dir C --json` argv.
        set_dir: the feature set folder the runs write.
        target: the uninterrupted run's result for the current data.
        previous: the complete set already in `set_dir`, or None.
    """

    def __init__(self, zygote: Zygote, argv: list[str], set_dir: Path, target: Snapshot,
                 previous: Snapshot | None = None):
        self.zygote, self.argv, self.set_dir = zygote, argv, Path(set_dir)
        self.target, self.previous = target, previous
        self.points: list[KillPoint] = []
        self.missed: list[Kill] = []

    def interrupt(self, kill: Kill) -> KillPoint | None:
        before = located_rows(self.set_dir) if (self.set_dir / "shards").is_dir() else 0
        if kill.event.startswith("async:"):
            child = self.zygote.spawn(self.argv, name=f"async-{kill.signal}")
            self._signal_when(child, kill, before)
        else:
            fault = {"event": kill.event, "n": kill.n, "action": kill.signal}
            child = self.zygote.spawn(self.argv, name=f"{kill.event}-{kill.signal}", fault=fault)
        child.wait()
        if child.status == 0:  # the moment never came: the run completed
            self.missed.append(kill)
            got = snapshot(self.set_dir)
            assert_same_set(got, self.target, f"run meant to stop at {kill} completed")
            self.previous = got
            return None
        if kill.signal == "KILL":
            assert child.status == -signal.SIGKILL, f"{kill}: status {child.status}\n{child.stderr}"
        else:
            assert child.status == 130, f"{kill}: status {child.status}, expected 130\n{child.stderr}"
            lines = [line for line in child.stderr.splitlines() if line.strip() and not line.startswith("Found ")]
            assert len(lines) == 1 and "Interrupted. Finished work is kept" in lines[0] and "again" in lines[0], \
                f"{kill}: Ctrl-C must print one line; stderr was:\n{child.stderr}"
        point = KillPoint(kill, self._check_after(kill, before), child.status)
        self.points.append(point)
        return point

    def finish(self) -> dict:
        """The uninterrupted last run; returns its `--json` report."""
        child = self.zygote.run(self.argv, name="resume")
        report = child.report
        assert_same_set(snapshot(self.set_dir), self.target, "after the last resume")
        counts = report["counts"]
        assert counts["extracted"] + counts["reused"] == len(self.target.paths), counts
        assert counts["skipped"] == len(self.target.skipped), counts
        assert_shards_whole(self.set_dir)
        self.previous = self.target
        return report

    def _check_after(self, kill: Kill, located_before: int) -> str:
        now = try_snapshot(self.set_dir)
        assert_shards_whole(self.set_dir)
        if now is None:
            assert self.previous is None, f"after {kill}, the complete set that was there is unreadable"
            outcome = "no set yet"
        elif same_set(now, self.previous):
            outcome = "previous set"
        else:
            assert same_set(now, self.target), \
                f"after {kill}, readers get a set that is neither the previous nor the new complete one"
            outcome = "new set"
        self.previous = now
        if kill.signal == "INT" and kill.event in ("shard_closed", "shard_renamed"):
            # Ctrl-C after a shard was completed: that shard's rows are kept.
            assert located_rows(self.set_dir) > located_before, f"{kill}: finished work was lost"
        return outcome

    def _signal_when(self, child: Child, kill: Kill, shards_before: int) -> None:
        trigger = kill.event.partition(":")[2]
        shard_dir = self.set_dir / "shards"
        start = len(_final_shards(shard_dir))
        deadline = time.monotonic() + 300
        while child.running() and time.monotonic() < deadline:
            if trigger == "shards":
                seen = len(_final_shards(shard_dir)) >= start + kill.n
            elif trigger == "tmp_shard":
                seen = any(shard_dir.glob(".tmp-*"))
            else:
                seen = any(self.set_dir.glob(".tmp-*features.h5"))
            if seen:
                time.sleep(kill.delay)
                child.send(getattr(signal, f"SIG{kill.signal}"))
                return
            time.sleep(0.002)


def _final_shards(shard_dir: Path) -> list[Path]:
    try:
        return [p for p in shard_dir.iterdir() if p.suffix == ".h5" and not p.name.startswith(".")]
    except OSError:
        return []


def random_kills(rng: random.Random, count: int) -> list[Kill]:
    """`count` interruptions drawn from every event and trigger, for the soak."""
    kills = []
    for _ in range(count):
        sig = rng.choice(["KILL", "KILL", "INT"])
        if rng.random() < 0.4:
            trigger = rng.choice(TRIGGERS)
            kills.append(Kill(f"async:{trigger}", rng.randint(1, 4), sig, rng.uniform(0, 0.3 if trigger == "shards" else 0.02)))
        else:
            event = rng.choice(EVENTS)
            n = rng.randint(1, 12) if event == "shard_write" else 1 if event.startswith("index") else rng.randint(1, 4)
            kills.append(Kill(event, n, sig))
    return kills


# -- data -------------------------------------------------------------------------


def write_images(root: Path, classes: int, per_class: int, start: int = 0, seed: int = 0) -> Path:
    """Tiny 16 px PNGs, `root/class<c>/<i>.png`, content fixed by (seed, c, i)."""
    sys.path.insert(0, str(HERE))
    from imagegen import write_image

    for c in range(classes):
        for i in range(start, start + per_class):
            write_image(Path(root) / f"class{c}" / f"{i:03d}.png", seed=seed + 1000 * c + i, size=16)
    return Path(root)


def add_bad_files(root: Path) -> list[str]:
    """Two files every run must skip (they sort last, after the good ones)."""
    last = sorted(p for p in Path(root).iterdir() if p.is_dir())[-1]
    (last / "zz_empty.png").write_bytes(b"")
    good = next(iter(sorted(last.glob("*.png")))).read_bytes()
    (last / "zz_truncated.png").write_bytes(good[: len(good) // 2])
    return [f"{last.name}/zz_empty.png", f"{last.name}/zz_truncated.png"]


def mutate(root: Path, rng: random.Random, round_: int) -> str:
    """Adds, removes and changes images the way a growing dataset does."""
    classes = sorted(p for p in Path(root).iterdir() if p.is_dir())
    images = sorted(p for c in classes for p in c.glob("[0-9]*.png"))
    removed = images[:8] if round_ % 2 else rng.sample(images, min(5, len(images) // 4))
    for p in removed:
        p.unlink()
    write_images(root, len(classes), 6, start=500 + 10 * round_, seed=round_ * 7919)
    changed = rng.sample(sorted(set(images) - set(removed)), 2)
    sys.path.insert(0, str(HERE))
    from imagegen import write_image

    for p in changed:
        write_image(p, seed=rng.randrange(10**6), size=16)
    return f"removed {len(removed)}, added {6 * len(classes)}, changed {len(changed)}"


# -- damaged files ------------------------------------------------------------------


def damage(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One seeded way of damaging a file: a flipped bit, a cut, a zeroed or garbled run."""
    b = bytearray(data)
    kind = rng.choice(("bit flip", "truncated", "zeroed", "garbled"))
    pos = rng.randrange(len(b))
    if kind == "bit flip":
        b[pos] ^= 1 << rng.randrange(8)
    elif kind == "truncated":
        del b[pos:]
    else:
        n = min(rng.randint(1, 64), len(b) - pos)
        b[pos:pos + n] = bytes(n) if kind == "zeroed" else rng.randbytes(n)
        if b == bytearray(data):
            b[pos] ^= 0xFF
    return bytes(b), f"{kind} at byte {pos}"


def damage_trials(set_dir: Path, what: str, trials: int, seed: int) -> dict[str, int]:
    """Damages `features.h5` (what="index") or its first shard ("shard") in
    `trials` seeded ways; after each, readers must refuse or read the
    unchanged set, and the features stage's scan must not crash.

    Returns outcome counts; an outcome starting with "WRONG" or "CRASH" is a
    bug. A trial that makes HDF5 spin forever ends the process after 20 s.
    """
    import faulthandler

    import numpy as np

    from pipeline.store import FeatureStore, FeatureStoreError

    work = Path(tempfile.mkdtemp(prefix="damage-"))
    try:
        copy = work / Path(set_dir).name
        shutil.copytree(set_dir, copy)
        store = FeatureStore(copy)
        original = snapshot(copy)
        state = store.read_index_state()
        key = state.feature_key
        target = copy / "features.h5" if what == "index" else copy / "shards" / state.shards[0].name
        clean = target.read_bytes()
        rng = random.Random(seed)
        outcomes: dict[str, int] = {}
        for _ in range(trials):
            damaged, how = damage(clean, rng)
            target.write_bytes(damaged)
            faulthandler.dump_traceback_later(20, exit=True)
            try:
                got = snapshot(copy)
                outcome = "read unchanged" if same_set(got, original) and got.features.tobytes() == original.features.tobytes() \
                    else f"WRONG: {how} gave other data"
            except FeatureStoreError:
                outcome = "refused"
            except Exception as e:  # noqa: BLE001
                outcome = f"CRASH: {how}: read raised {type(e).__name__}: {e}"
            try:
                now = store.read_index_state()
                if now is not None and now != state:
                    outcome = f"WRONG: {how} changed the index state"
                if what == "shard":
                    store.scan_shards(key)
                    store.verify_shards(store.shard_names())
            except Exception as e:  # noqa: BLE001
                outcome = f"CRASH: {how}: the features stage raised {type(e).__name__}: {e}"
            faulthandler.cancel_dump_traceback_later()
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        target.write_bytes(clean)
        assert np.array_equal(snapshot(copy).features, original.features)
        return outcomes
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- make soak --------------------------------------------------------------------


def soak(points: int, seed: int, model: list[str], images: int, workdir: Path) -> list[KillPoint]:
    rng = random.Random(seed)
    data = workdir / "data"
    write_images(data, 4, max(1, images // 4))
    add_bad_files(data)
    zygote = Zygote(workdir / "logs")
    done: list[KillPoint] = []
    try:
        round_ = 0
        previous = None
        while len(done) < points:
            ref_cache = workdir / f"ref{round_}"
            reference = zygote.run(["features", data, *model, *SMALL_BATCHES, "--cache-dir", ref_cache, "--json"],
                                   name=f"reference{round_}")
            ref_set = Path(reference.report["path"]).parent
            set_dir = workdir / "cache" / ref_set.name
            target = snapshot(ref_set)
            argv = ["features", data, *model, *SMALL_BATCHES, "--cache-dir", workdir / "cache", "--json"]
            campaign = Campaign(zygote, argv, set_dir, target, previous)
            for kill in random_kills(rng, min(12, points - len(done))):
                point = campaign.interrupt(kill)
                print(f"  {kill}: " + (point.outcome if point else "missed (the run completed)"), flush=True)
                if same_set(campaign.previous, target):
                    break  # the set is complete: later runs would only find it up to date
            campaign.finish()
            done += campaign.points
            print(f"round {round_}: {len(campaign.points)} kill points survived, the set equals the "
                  f"uninterrupted run's ({len(target.paths)} images); {len(done)}/{points} in all", flush=True)
            shutil.rmtree(ref_cache)
            round_ += 1
            previous = target
            print(f"  data: {mutate(data, rng, round_)}", flush=True)
    finally:
        zygote.close()
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=40, help="kill points to survive (default 40)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill schedule (default: random)")
    parser.add_argument("--model", default="vgg16", help="backbone, random weights at 32 px (default vgg16)")
    parser.add_argument("--images", type=int, default=200, help="images in the data folder (default 200)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--damage", nargs=2, metavar=("WHAT", "SET_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=int, default=150, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve()
        return 0
    if args.damage:
        sys.path.insert(0, str(REPO))
        print(json.dumps(damage_trials(Path(args.damage[1]), args.damage[0], args.trials, args.seed or 0)))
        return 0
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    print(f"soak: {args.points} kill points, seed {seed} (rerun with --seed {seed})", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bottleneck-soak-"))
    started = time.monotonic()
    try:
        model = ["--model", args.model, "--size", "32", "--weights", "none"]
        points = soak(args.points, seed, model, args.images, workdir)
    except AssertionError as e:
        print(f"FAILED (seed {seed}; work folder kept: {workdir}): {e}", file=sys.stderr)
        return 1
    by_outcome = {}
    for p in points:
        by_outcome[p.outcome] = by_outcome.get(p.outcome, 0) + 1
    print(f"soak passed: {len(points)} kill points in {time.monotonic() - started:.0f} s; "
          f"readers then saw {by_outcome}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
