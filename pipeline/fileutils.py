"""Atomic file writes shared by the stages that publish text artifacts."""

import os
import secrets
from pathlib import Path

TMP_PREFIX = ".tmp-"


def replace_text(path: Path, text: str) -> None:
    """Writes `text` to `path` through a synced temporary file and `os.replace`.

    Readers see the old file or the new one, never a half-written one.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    try:
        with tmp.open("w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
