"""A corpus of awkward and broken image files, for decoder and discovery tests.

`make_bad_corpus(root)` writes a class-per-folder dataset under `root` and
returns `{relpath: "ok" | "skip"}` for exactly the files discovery should
list: "ok" files must decode, "skip" files must raise `DecodeError`.
`REASONS` gives, for each "skip" file, a fragment its error message must
contain. Files that must *not* be listed are described by the constants
below the function.

Usable from any test: `from badfiles import make_bad_corpus` (pytest puts
`tests/` on `sys.path`).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("a", "b", "c", "empty")
EMPTY_CLASS = "empty"
IGNORED = ("a/readme.txt",)  # listed in Dataset.ignored
NOT_LISTED = ("a/.hidden.png", "a/.cache/inside.png")
SYMLINK_LOOP = "b/nested/up"  # symlink to its own parent folder, b/
NON_UTF8_NAME = b"b/caf\xe9.png"  # Latin-1 e-acute: invalid UTF-8

# Colours the decoder tests check.
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
ONE_PIXEL = (10, 20, 30)
GREY_L = 100
GREY_16 = 0x4040  # 16448: scales to 64; clipping would give 255
PALETTE_OPAQUE = (0, 0, 255)
PALETTE_HIDDEN = (255, 0, 0)  # colour under the transparent index
BOMB_SIDE = 100_000  # past twice the limit: Pillow raises at open
WARN_BOMB_SIDE = 10_000  # 1e8 pixels: past the limit, Pillow only warns

# Fragments the DecodeError message of each "skip" file must contain.
REASONS = {
    "a/truncated.jpg": "truncated or corrupt image data",
    "a/corrupt_header.jpg": "corrupt JPEG header",
    "a/zero.jpg": "empty file (0 bytes)",
    "a/text.jpg": "not an image: the file is text",
    "a/page.jpg": "not an image: the file is an HTML page",
    "b/bomb.png": f"decompression bomb: declared {BOMB_SIDE * BOMB_SIDE:,} pixels",
    "b/bomb_warn.png": f"decompression bomb: declared {WARN_BOMB_SIDE}x{WARN_BOMB_SIDE} pixels",
    "c/broken_link.png": "file not found",
    "c/unreadable.png": "permission denied",
}


def make_bad_corpus(root) -> dict[str, str]:
    """Writes the corpus under `root` (created if needed).

    Args:
        root: str or `os.PathLike`. Folder to write into.

    Returns:
        `{relpath: outcome}` for every file discovery should list, with
        relpaths as `os.fsdecode` gives them. "c/unreadable.png" is "ok"
        when the process can read a chmod-000 file anyway (root), and the
        non-UTF-8 name is left out where the filesystem refuses it.
    """
    root = Path(root)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    out = {}

    def put(relpath, data, outcome):
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
        out[relpath] = outcome

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = _encode(Image.fromarray(noise), "JPEG", quality=90)

    # --- class a: files that are not images, or broken ones -------------
    put("a/truncated.jpg", jpeg[: len(jpeg) * 6 // 10], "skip")
    # Valid SOI, then garbage where the first marker segment should be.
    put("a/corrupt_header.jpg", b"\xff\xd8\xff" + b"\x00\x13garbage" * 40, "skip")
    put("a/zero.jpg", b"", "skip")
    put("a/text.jpg", b"hello, this is not a picture\n" * 10, "skip")
    put(
        "a/page.jpg",
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        b"<body><h1>Not Found</h1></body></html>\n",
        "skip",
    )
    put("a/with space.png", _encode(Image.new("RGB", (8, 8), GREEN), "PNG"), "ok")
    put("a/png_named.jpg", _encode(Image.new("RGB", (8, 8), BLUE), "PNG"), "ok")
    put("a/photo.JPG", jpeg, "ok")  # upper-case extension
    (root / "a/readme.txt").write_text("not an image\n")
    (root / "a/.hidden.png").write_bytes(_encode(Image.new("RGB", (4, 4)), "PNG"))
    (root / "a/.cache").mkdir(exist_ok=True)
    (root / "a/.cache/inside.png").write_bytes(_encode(Image.new("RGB", (4, 4)), "PNG"))

    # --- class b: modes and formats that need care -----------------------
    put("b/gray16.png", _encode(Image.fromarray(np.full((6, 6), GREY_16, np.uint16)), "PNG"), "ok")
    put("b/gray.png", _encode(Image.new("L", (6, 6), GREY_L), "PNG"), "ok")
    put("b/palette_transparent.png", _palette_png(), "ok")
    put("b/cmyk.jpg", _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), "ok")
    put("b/exif_rotated.jpg", _exif_rotated_jpeg(), "ok")
    put("b/animated.gif", _multi_frame("GIF", [RED, GREEN]), "ok")
    put("b/multipage.tif", _multi_frame("TIFF", [GREEN, BLUE]), "ok")
    put("b/one_pixel.png", _encode(Image.new("RGB", (1, 1), ONE_PIXEL), "PNG"), "ok")
    put("b/wide.png", _encode(Image.new("RGB", (10_000, 10), RED), "PNG"), "ok")
    put("b/bomb.png", _bomb_png(BOMB_SIDE), "skip")
    put("b/bomb_warn.png", _bomb_png(WARN_BOMB_SIDE), "skip")
    put("b/image.webp", _encode(Image.new("RGB", (16, 16), RED), "WEBP", lossless=True), "ok")
    put("b/image.bmp", _encode(Image.new("RGB", (16, 16), BLUE), "BMP"), "ok")
    put("b/nested/deeper/deep.png", _encode(Image.new("RGB", (4, 4), GREEN), "PNG"), "ok")
    os.symlink("..", root / SYMLINK_LOOP, target_is_directory=True)
    try:
        with open(os.fsencode(root) + b"/" + NON_UTF8_NAME, "wb") as f:
            f.write(_encode(Image.new("RGB", (4, 4), RED), "PNG"))
        out[os.fsdecode(NON_UTF8_NAME)] = "ok"
    except OSError:
        pass  # e.g. APFS or a UTF-8-only mount refuses such names

    # --- class c: files the OS gets in the way of -------------------------
    put("c/rgba.png", _encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"), "ok")
    put("c/la.png", _encode(Image.new("LA", (4, 4), (0, 128)), "PNG"), "ok")
    put("c/mode1.png", _encode(Image.new("1", (4, 4), 1), "PNG"), "ok")
    os.symlink("does-not-exist.png", root / "c/broken_link.png")
    out["c/broken_link.png"] = "skip"
    put("c/unreadable.png", _encode(Image.new("RGB", (4, 4), RED), "PNG"), "skip")
    os.chmod(root / "c/unreadable.png", 0)
    try:
        with open(root / "c/unreadable.png", "rb"):
            out["c/unreadable.png"] = "ok"  # root ignores file permissions
    except PermissionError:
        pass
    return out


def _encode(image, fmt, **params):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _palette_png():
    """4x4 palette image: left half transparent (index 0), right half blue."""
    image = Image.new("P", (4, 4), 0)
    image.putpalette(list(PALETTE_HIDDEN) + list(PALETTE_OPAQUE) + [0, 0, 0] * 254)
    for y in range(4):
        for x in (2, 3):
            image.putpixel((x, y), 1)
    return _encode(image, "PNG", transparency=0)


def _exif_rotated_jpeg():
    """40 wide x 20 tall, left red / right blue, EXIF orientation 6.

    Orientation 6 means "rotate 90 degrees clockwise to display", so the
    displayed image is 20 wide x 40 tall with red on top, blue below.
    """
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(image, "JPEG", quality=95, exif=exif.tobytes())


def _multi_frame(fmt, colours):
    frames = [Image.new("RGB", (8, 8), c) for c in colours]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:])


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(side):
    """A ~60-byte PNG whose header declares a side x side greyscale image."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )
