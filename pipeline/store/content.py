"""Content hashing: the one SHA-256 file hasher of the product.

Feature sets key rows by the sha256 of each image file, bundles and runs
check their files by it, and weights files are identified by it; all hash
through `file_sha256`, so the rules (flat memory, FIFOs refused) hold alike.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

__all__ = ["file_sha256"]

_HASH_BLOCK = 1 << 20


def file_sha256(path) -> str:
    """Returns the SHA-256 of a file's content as lowercase hex.

    The file is read in 1 MiB blocks, so memory stays flat for any size.

    Args:
        path: str, bytes or `os.PathLike`. The file to hash.

    Returns:
        64 hexadecimal characters.

    Raises:
        OSError: The file cannot be read, or is not a regular file (a FIFO
            named like an image would otherwise block the read forever).
    """
    # O_NONBLOCK lets the open of a FIFO return so fstat() can refuse it;
    # it has no effect on regular files.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fsdecode(path))
        digest = hashlib.sha256()
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
