"""Decode one image file into the uint8 RGB array every backbone is fed.

`load_image()` is the reference decoder of the product: features cached on
disk were computed from exactly what it returns, so anything that changes
its output must also change `DECODER_ID` (it is part of the feature key).

The steps, in order:

1. Open with Pillow and check the declared size against Pillow's
   decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) *before* any
   pixel is decoded.
2. JPEG draft mode: `img.draft("RGB", (size, size))` lets libjpeg scale
   by 1/2, 1/4 or 1/8 while decoding, never below `size`, so a 3024x3024
   phone photo decodes as 378x378 for `size=224` (about 10x faster, and
   within a few grey levels of a full decode, see the tests).
3. Full load inside the error handler, so truncated data is an error
   (`ImageFile.LOAD_TRUNCATED_IMAGES` is never set).
4. EXIF orientation is applied (`ImageOps.exif_transpose`).
5. Conversion to RGB: 16-bit greyscale is scaled to 8 bits (not clipped,
   which is what `Image.convert` does); images with an alpha channel or
   palette/colour-key transparency are composited onto white; every other
   mode goes through `Image.convert("RGB")`. Only the first frame of an
   animated GIF or a multi-page TIFF is used.
6. An image at least 4x `size` on its short side is first shrunk by
   `Image.reduce` (a box filter, by the whole factor that keeps it at
   least 2x `size`), so that the next step stays cheap for huge PNGs.
7. Resize to `(size, size)`, ignoring the aspect ratio ("squash", the
   default of keras `image_dataset_from_directory`), with Pillow's
   `resize(BILINEAR)`: an antialiased bilinear (triangle) filter widened by
   the shrink factor so that every source pixel counts, in Pillow's fixed
   point (22-bit weights, rounded to whole grey levels after each pass; the
   pass order is Pillow's). It runs in C at Pillow's own speed; exported
   models repeat that integer arithmetic exactly (`runs/export_resize.py`),
   and the `preprocess.py` shipped beside them calls the same Pillow resize.
   Until this decoder, the product resized with a float32 triangle filter in
   NumPy (Keras' `Resizing(antialias=True)` + round): 2-3x the cost of the
   decode itself, see docs/performance.md.

Steps 2 and 6 only act on images at least twice `size`: for those, an
exported model given the full-size image sees slightly different pixels
(measured in docs/predict.md).
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
import re
import stat
import struct
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError
from .decode_pool import decoder_pool

__all__ = ["ACCEPTED_FORMATS", "DECODERS", "DECODER_ID", "DecodeError", "decode_batches", "decode_bytes", "decoder_id",
           "load_decoded", "load_image", "resize_squash"]

DECODER_ID = (
    f"pillow{PIL.__version__.split('.')[0]}"
    "-draft-exif-rgb16scaled-alphawhite-reduce4x-bilinear-squash"
)
"""Names the decoder and every choice that changes its output.

It goes into the feature cache key: bump the suffix whenever `load_image()`
returns different pixels for the same file. The Pillow major version is in
it because resampling and libjpeg builds change between releases (Pillow 13
chose a new pass order for images shrunk much more in height than in width).
"""



class Decoder(NamedTuple):
    """A row of `DECODERS`: how `decode_batches` turns files into a batch of pixels."""

    identity: Callable[[], str]
    """Its part of the feature key."""
    load: Callable
    """`(path, size) -> (pixels, or what `finish` takes; sha256; reason)`, run in the decoding pool."""
    finish: Callable | None
    """`(loaded, size) -> [(image, reason)]`: the batch's last step, in the thread that reads the batches."""
    processes: bool
    """Whether `load` may run in worker processes (it returns finished uint8 images)."""


def _nvjpeg():
    from . import decode_nvjpeg  # torch is optional and takes seconds to import: only when chosen

    return decode_nvjpeg


def _prepare_on_device(data: bytes, size: int):
    """A JPEG the device decodes with its batch (`decode_nvjpeg.Jpeg`), or any other file decoded here."""
    jpeg = _nvjpeg().prepare(data)
    return jpeg if jpeg is not None else decode_bytes(data, size)


ACCEPTED_FORMATS = frozenset(
    {"BMP", "DIB", "GIF", "JPEG", "MPO", "PNG", "TIFF", "WEBP"}
)
"""Pillow format names `load_image()` decodes.

They match the file extensions discovery accepts. Other formats Pillow can
identify (PSD, EPS, ICO, ...) are refused before any pixel is decoded: some
plugins call external programs (EPS runs Ghostscript), and a file whose
content does not match its extension is more likely a mistake than data.
MPO is how Pillow names the multi-picture JPEGs many cameras write.
"""

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Pillow's own `convert("RGB")` clips these to 255 instead of scaling them.
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_WHITE = (255, 255, 255, 255)

# Start-of-file signatures, used only to explain a file Pillow cannot open.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_MAX_BYTES_PER_PIXEL = 8
_HEADER_SLACK = 1 << 20
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

# Pillow plugins report corrupt data through many exception types, not only
# OSError: a bad header can fail in `struct.unpack` or an index lookup.
_CORRUPT_DATA_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
)

# Opening a FIFO that is named like an image would block forever; with
# O_NONBLOCK the open returns and fstat() below refuses it. O_NONBLOCK has
# no effect on regular files.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class DecodeError(ValueError):
    """An image file cannot be decoded.

    The message is a short reason meant for a person ("empty file (0
    bytes)", "truncated or corrupt image data: ..."), without the path:
    callers that skip the file prefix it with the path they know.
    """


def load_image(path, size, *, return_digest=False):
    """Decodes an image file into a square uint8 RGB array.

    This is the reference decoder of the product; see the module docstring
    for every step. The file is read once, into memory, and decoded from
    those bytes, so the digest returned with `return_digest=True` is the
    digest of exactly what was decoded, even if the file is replaced
    meanwhile. It keeps no state between calls, so it is safe to call from
    threads and from worker processes.

    Args:
        path: str, bytes or `os.PathLike`. The image file. Bytes paths are
            passed to the OS unchanged, so file names that are not valid
            UTF-8 work (as do `str` paths made with `os.fsdecode`).
        size: int. Height and width of the output, in pixels; must be
            positive. The image is resized to `(size, size)` ignoring its
            aspect ratio.
        return_digest: bool. Whether to also return the SHA-256 (lowercase
            hex) of the bytes that were decoded. Defaults to `False`.

    Returns:
        A new, writable `np.ndarray` of dtype `uint8` and shape
        `(size, size, 3)`, channels in RGB order, values in 0..255; with
        `return_digest=True`, a tuple `(array, sha256)`.

    Raises:
        DecodeError: The file is missing, unreadable, empty, not an image,
            of a format outside `ACCEPTED_FORMATS`, truncated, corrupt, or
            declares more pixels than `PIL.Image.MAX_IMAGE_PIXELS`.
        TypeError: `size` is not an int.
        ConfigError: `size` is not positive.

    Example:

    >>> x = load_image("data/cat/1.jpg", 224)  # doctest: +SKIP
    >>> x.shape, x.dtype  # doctest: +SKIP
    ((224, 224, 3), dtype('uint8'))
    """
    size = _check_size(size)
    data = _read_file(path)
    image = decode_bytes(data, size)
    return (image, hashlib.sha256(data).hexdigest()) if return_digest else image


def decode_batches(
    root: Path,
    entries: Sequence,
    size: int,
    batch_size: int,
    workers: int,
    *,
    return_digests: bool = False,
    mode: str = "threads",
    decoder: str = "pillow",
) -> Iterator:
    """Decodes `root / entry.relpath` for each entry, yielding batches in order.

    `root` is a folder, or the item root of a data source that is not local
    files (`sources.ItemRoot`: `root / relpath` is then the item's reader).

    Yields `(decoded entries, uint8 images of shape (n, size, size, 3),
    [(entry, reason)] of the files that failed)` per `batch_size` entries.
    A file that cannot be decoded never ends the run: it is reported with
    its reason.

    With `return_digests=True` each batch also carries `{relpath: sha256}`
    for all its entries, decoded or failed: the SHA-256 of the bytes read
    (the very bytes decoded), or `None` when the file could not be read.
    Callers that key results by content use it, not a hash taken earlier:
    the file may have been replaced in between.

    Decoding runs in `workers` threads or processes (`mode`: `"threads"`,
    `"processes"` or `"auto"`, see `decode_pool`), which give the same
    arrays, at most a few batches ahead of the model, so memory stays flat
    however many images. `decoder` names a row of `DECODERS`: `"pillow"`,
    the reference, or `"nvjpeg"`, which reads files in threads and decodes
    each batch's JPEGs on the GPU (`decode_nvjpeg`).
    """
    size = _check_size(size)
    row = DECODERS[decoder]
    lookahead = max(2 * batch_size, 4 * workers)
    with decoder_pool(mode if row.processes else "threads", workers, row.load, size, slots=lookahead) as pool:
        pending: deque = deque()
        queued = iter(entries)
        for entry in itertools.islice(queued, lookahead):
            pending.append((entry, pool.submit(root / entry.relpath)))
        while pending:
            taken, digests = [], {}
            while pending and len(taken) < batch_size:
                entry, handle = pending.popleft()
                loaded, digest, reason = handle.result()
                digests[entry.relpath] = digest
                taken.append((entry, loaded, reason))
                nxt = next(queued, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(root / nxt.relpath)))
            ok, images, failures = _finished(taken, row.finish, size)
            stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
            yield (ok, stacked, failures, digests) if return_digests else (ok, stacked, failures)


def _finished(taken: list, finish, size: int) -> tuple[list, list, list]:
    """`(entries decoded, their images, [(entry, reason)])` of a batch's `(entry, loaded, reason)`."""
    loaded = [(entry, item) for entry, item, reason in taken if reason is None]
    done = finish([item for _, item in loaded], size) if finish else [(item, None) for _, item in loaded]
    reasons = iter(done)
    ok, images, failures = [], [], []
    for entry, item, reason in taken:
        if reason is None:
            item, reason = next(reasons)
        if reason is None:
            ok.append(entry)
            images.append(item)
        else:
            failures.append((entry, reason))
    return ok, images, failures


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(
            f"`size` must be an int. Received: size={size!r} of type "
            f"{type(size).__name__}."
        )
    if size < 1:
        raise ConfigError(f"`size` must be a positive int. Received: size={size}.", field="size")
    return int(size)


def _read_file(path) -> bytes:
    """The whole content of an image file: the one read the decoder makes.

    `path` is a local path, or an item reader of a data source (`sources`:
    an object, URL or tar member) whose `read_bytes(limit)` returns at most
    `limit` bytes and raises `OSError` when the item cannot be read.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        return _read_item(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise DecodeError(
            "file not found: it was deleted or moved after indexing, or it is "
            "a broken symlink"
        ) from None
    except PermissionError:
        raise DecodeError("permission denied: cannot read the file") from None
    except OSError as e:
        raise DecodeError(f"cannot open the file: {e.strerror or e}") from None

    try:
        # Checked before fdopen, which refuses a folder with its own error.
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise DecodeError("not a file: it is a folder")
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError("not a regular file (a pipe, socket or device)")
        limit = max_file_bytes()
        if st.st_size > limit:
            raise DecodeError(_too_large(st.st_size, limit))
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            data = f.read(limit + 1)  # a file grown since fstat is still read no further
        except OSError as e:
            raise DecodeError(f"cannot read the file: {e.strerror or e}") from None
    if len(data) > limit:
        raise DecodeError(_too_large(len(data), limit))
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return data


def _read_item(reader) -> bytes:
    limit = max_file_bytes()
    try:
        data = reader.read_bytes(limit + 1)  # never more than the limit allows, however large the object
    except OSError as e:
        raise DecodeError(f"cannot read: {e}") from None
    if len(data) > limit:
        raise DecodeError(_too_large(len(data), limit))
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return data


def max_file_bytes() -> int:
    """The largest image file read: what the decompression-bomb limit allows, uncompressed.

    `PIL.Image.MAX_IMAGE_PIXELS` pixels at 8 bytes each (16-bit RGBA, the
    widest mode decoded) plus 1 MiB of headers and metadata: no image the
    decoder would accept is larger, so a bigger file (a 2 GB sparse `.jpg`)
    is refused before a byte of it is read.
    """
    pixels = Image.MAX_IMAGE_PIXELS
    return (pixels * _MAX_BYTES_PER_PIXEL if pixels else 1 << 62) + _HEADER_SLACK


def _too_large(n_bytes: int, limit: int) -> str:
    return (
        f"file too large: {n_bytes} bytes, more than any image within the decompression-bomb limit "
        f"holds ({limit} bytes for PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS})"
    )


def _load_or_reason(path: Path, size: int, decode=None):
    """`(decode(bytes, size), sha256 of the bytes read, None)`, or `(None, sha256 or None, reason)`.

    `decode` defaults to `decode_bytes`, the reference decoder.
    """
    try:
        data = _read_file(path)
    except DecodeError as e:
        return None, None, str(e)
    digest = hashlib.sha256(data).hexdigest()
    try:
        return (decode or decode_bytes)(data, size), digest, None
    except DecodeError as e:
        return None, digest, str(e)
    except Exception as e:  # noqa: BLE001 - one bad file must never end the run
        return None, digest, f"cannot decode ({type(e).__name__}: {e})"


# Rows named by `config.DECODERS` (the `decoder` option).
DECODERS = {
    "pillow": Decoder(lambda: DECODER_ID, _load_or_reason, None, processes=True),
    "nvjpeg": Decoder(lambda: f"{_nvjpeg().decoder_id()}+{DECODER_ID}", functools.partial(_load_or_reason, decode=_prepare_on_device),
                      lambda loaded, size: _nvjpeg().finish(loaded, size), processes=False),
}


def decoder_id(decoder: str = "pillow") -> str:
    """What the feature key records of `decoder`: `DECODER_ID` for the reference decoder."""
    return DECODERS[decoder].identity()


def load_decoded(path, size) -> tuple[np.ndarray, str]:
    """`(image, sha256 of the bytes read)`: the file after steps 1-6, before the resize to `size`.

    For augmented views that crop the decoded image (`augment`), so a crop
    keeps the detail the resize would lose. The image is uint8 `(h, w, 3)`,
    at least `size` on its short side when the file is (JPEG draft mode and
    the box shrink stop there).
    """
    size = _check_size(size)
    data = _read_file(path)
    return _decoded(data, size, np.asarray), hashlib.sha256(data).hexdigest()


def decode_bytes(data: bytes, size: int) -> np.ndarray:
    """`load_image` on a file's bytes already read."""
    return _decoded(data, size, lambda img: _resized(img, size))


def _decoded(data: bytes, size, finish) -> np.ndarray:
    """`finish` applied to the decoded RGB image of `data` before the resize to `size` (steps 1-6).

    `finish` runs while the file's image is open: closing it frees the
    pixels of every image that shares them.
    """
    limit = Image.MAX_IMAGE_PIXELS
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError(_explain_unidentified(data[:1024])) from None
    except Image.DecompressionBombError as e:
        raise DecodeError(_bomb_message(e, None, limit)) from None
    except Image.DecompressionBombWarning as e:
        # Only reached when the caller's warning filters turn it into an
        # exception; the explicit check below covers the default filters.
        raise DecodeError(_bomb_message(e, None, limit)) from None
    except _CORRUPT_DATA_ERRORS as e:
        raise DecodeError(f"corrupt image header: {_pillow_message(e)}") from None

    with img:
        if img.format not in ACCEPTED_FORMATS:
            raise DecodeError(
                f"unsupported format: the file holds {img.format} data, which "
                f"is not one of {', '.join(sorted(ACCEPTED_FORMATS))}; "
                "convert it to PNG or JPEG"
            )
        width, height = img.size
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that, and the
        # warning cannot be made an error here without changing the global
        # warning filters (`warnings.catch_warnings` is not thread-safe), so
        # check the declared size ourselves before decoding any pixel.
        if limit is not None and max(width, 1) * max(height, 1) > limit:
            raise DecodeError(_bomb_message(None, (width, height), limit))
        try:
            # Only JPEG implements draft(); for other formats it is a no-op.
            img.draft("RGB", (size, size))
            img.load()
            img = ImageOps.exif_transpose(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DecodeError(_bomb_message(e, None, limit)) from None
        except MemoryError:
            raise DecodeError(
                f"out of memory decoding a {width}x{height} image"
            ) from None
        except _CORRUPT_DATA_ERRORS as e:
            raise DecodeError(
                f"truncated or corrupt image data: {_pillow_message(e)}"
            ) from None

        try:
            rgb = _to_rgb(img)
        except (ValueError, OSError) as e:
            raise DecodeError(
                f"unsupported colour mode {img.mode!r}: {_pillow_message(e)}"
            ) from None
        return finish(_reduced(rgb, size))


def resize_squash(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes a uint8 `(H, W, 3)` image to `(size, size, 3)` as the reference decoder does.

    Pillow's `resize((size, size), BILINEAR)`: each output pixel is the
    average of the source pixels under a triangle centred on it (half-pixel
    centres), of half-width one output pixel when shrinking and one source
    pixel when enlarging, its weights normalised where it crosses the
    border; one axis after the other in Pillow's 22-bit fixed point, rounded
    to whole grey levels after each pass. `runs/export_resize.py` is the
    same arithmetic as graph operations (`tests/test_export.py` compares
    them on every pass order).
    """
    return _resized(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)), size)


def _resized(img, size: int) -> np.ndarray:
    """The RGB image `img` squashed to `(size, size, 3)`, as a new writable array."""
    return np.array(img.resize((size, size), Image.Resampling.BILINEAR))


def _reduced(img, size: int):
    """`img` shrunk by a whole factor when its short side is at least 4x `size` (box filter)."""
    factor = min(img.size) // (2 * size)
    return img.reduce(factor) if factor >= 2 else img


def _to_rgb(img):
    """Converts a loaded image of any mode to RGB; see the module docstring."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _WIDE_GREY_MODES:
        # 65535 must map to 255 and 0x8080 to 128: scale with rounding.
        # Mode "I" is how some Pillow versions open 16-bit PNG/PGM, so it
        # is read as 16-bit too; values outside 0..65535 are clipped.
        wide = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # Transparent pixels often hold arbitrary colours (black, or the
        # palette entry of the transparent index); show them as a viewer on
        # a white page would.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "F":
        # Pillow has no direct F -> RGB path; via L it rounds and clips.
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


def _explain_unidentified(head):
    """Returns the most specific reason for a file Pillow cannot identify from its first bytes."""
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return (
                f"corrupt {name} header: the file starts like a {name} but "
                "Pillow cannot parse it"
            )
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return (
            "corrupt WEBP header: the file starts like a WEBP but Pillow "
            "cannot parse it"
        )
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text:
        return (
            "not an image: the file is an HTML page saved with an image "
            "extension (a failed download or an error page?)"
        )
    if b"<svg" in text:
        return (
            "not a raster image: the file is SVG (vector graphics), which "
            "Pillow cannot read; convert it to PNG"
        )
    if _looks_like_text(head):
        return "not an image: the file is text saved with an image extension"
    return (
        "not an image: Pillow cannot identify the format (is it an HTML "
        "page or text saved with an image extension?)"
    )


def _looks_like_text(head):
    if not head or b"\x00" in head:
        return False
    decoded = head.decode("utf-8", errors="replace")
    # A multi-byte character cut by the 1024-byte read gives one U+FFFD.
    if decoded.count("\ufffd") > 1:
        return False
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in decoded)
    return printable >= 0.95 * len(decoded)


def _bomb_message(error, declared_size, limit):
    if declared_size is not None:
        declared = f"{declared_size[0]}x{declared_size[1]}"
    else:
        match = _BOMB_PIXELS.search(str(error))
        declared = f"{int(match.group(1)):,}" if match else "too many"
    limit_text = f"{limit:,}" if limit is not None else "configured"
    return (
        f"decompression bomb: declared {declared} pixels exceeds the "
        f"{limit_text} pixel limit (if the image is genuine, raise "
        "PIL.Image.MAX_IMAGE_PIXELS)"
    )


def _pillow_message(error):
    message = str(error).strip()
    return message or type(error).__name__
