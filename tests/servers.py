"""Real servers on 127.0.0.1 for the source tests: a static HTTP server with injected latency and failures, and moto's S3.

`serve_folder` serves a folder as Python's `http.server` does (index pages
that fsspec lists), plus what object stores offer and it lacks: an ETag
(size and mtime of the file) and byte ranges. `latency_s` delays every
request; `fail_every` answers every n-th request with a 503.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
import time
import urllib.request
from pathlib import Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # connections kept open, as object stores keep them
    latency_s = 0.0
    fail_every = 0
    counter = None  # itertools-like shared counter: [lock, n]
    failures = None
    requests = None

    def log_message(self, *args):  # quiet: pytest shows stderr of failing tests
        pass

    def _injected_failure(self) -> bool:
        self.requests.append((self.command, self.path))
        time.sleep(self.latency_s)
        if not self.fail_every:
            return False
        with self.counter[0]:
            self.counter[1] += 1
            fail = self.counter[1] % self.fail_every == 0
        if fail:
            self.failures.append(self.path)
            self.send_error(503, "injected failure")
        return fail

    def do_HEAD(self):
        if not self._injected_failure():
            super().do_HEAD()

    def do_GET(self):
        if self._injected_failure():
            return
        path = Path(self.translate_path(self.path))
        ranged = self.headers.get("Range", "")
        if not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        status = 200
        if ranged.startswith("bytes="):
            first, _, last = ranged[6:].partition("-")
            start, end = int(first or 0), min(int(last) + 1 if last else len(data), len(data))
            data, status = data[start:end], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(data)

    def end_headers(self):
        path = Path(self.translate_path(self.path))
        if path.is_file():
            st = path.stat()
            self.send_header("ETag", f'"{st.st_size}-{st.st_mtime_ns}"')
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256  # socketserver's 5 would drop the connections of many reads in flight


@contextlib.contextmanager
def serve_folder(folder: Path, *, latency_s: float = 0.0, fail_every: int = 0, requests: list | None = None):
    """Serves `folder` on 127.0.0.1; yields `(base URL, list of failed request paths)`.

    `requests`, when given, receives `(method, path)` of every request.
    """
    failures: list[str] = []
    handler = type("Handler", (_Handler,), {
        "latency_s": latency_s, "fail_every": fail_every, "counter": [threading.Lock(), 0], "failures": failures,
        "requests": [] if requests is None else requests,
    })
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", failures
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(monkeypatch):
    """moto's S3 server on 127.0.0.1 (as s3fs's tests run it); yields an s3fs filesystem, credentials in env."""
    from moto.server import ThreadedMotoServer
    import fsspec.config
    import s3fs

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto keeps its buckets per process, not per server: each use starts from an empty S3.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield s3fs.S3FileSystem(endpoint_url=endpoint)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def upload(fs, local: Path, url: str) -> None:
    """Copies every file under `local` to `url` (keeping relative paths)."""
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{url}/{path.relative_to(local).as_posix()}", path.read_bytes())


# A tiny random model: the source tests compare where bytes come from, not what a backbone sees.
TINY_MODEL = dict(model="resnet50", size=32, weights="none", batch_size=4, workers=2)


def extract_tiny(data, cache):
    """`features` of `data` (a folder, URL or pattern) into `cache` with `TINY_MODEL`."""
    from pipeline.config import ExtractConfig
    from pipeline.features.extract import extract_features

    return extract_features(config=ExtractConfig(data=str(data), cache_dir=str(cache), **TINY_MODEL))


def rows_by_content(result):
    """(class name, feature bytes) of every row, sorted: ids differ between sources, content does not."""
    from pipeline.store import read_feature_set

    fs = read_feature_set(result.path)
    return sorted((fs.class_names[label], f.tobytes()) for label, f in zip(fs.labels, fs.features))
