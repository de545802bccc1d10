"""The reference decoder as TensorFlow ops: the SavedModel's `serve_bytes` signature decodes files as `predict` does.

`features/decode.py` decodes a file with Pillow before the resize; a model
fed full-size pixels therefore differs on photos at least twice SIZE (JPEG
draft mode, the box reduce). `decoded_file` repeats each of those steps in
the graph, so that a SavedModel given the file's bytes sees the very pixels
`bottleneck predict` feeds the backbone:

- JPEG: `decode_jpeg(ratio=s, dct_method="INTEGER_ACCURATE")` is the
  libjpeg scaled decode Pillow's `draft("RGB", (SIZE, SIZE))` asks for,
  with `s` chosen as `draft` chooses it (the largest of 8, 4, 2, 1 not
  above `min(W // SIZE, H // SIZE)`); greyscale and CMYK JPEGs convert to
  RGB as Pillow's do (bit for bit, tests/test_export.py).
- PNG: 8 or 16 bits per sample, every colour type, through
  `decode_png(channels=4)` (which expands palettes and tRNS transparency to
  alpha, and keeps the high byte of 16-bit samples, as Pillow opens them)
  and onto white in Pillow's `alpha_composite` integer arithmetic (opaque
  pixels unchanged); 16-bit greyscale scaled with rounding as the
  reference does.
- WebP: `decode_webp`, first frame, alpha onto white the same way.
- EXIF orientation (tag 0x0112 of IFD 0, either byte order) from the JPEG
  APP1 `Exif` segment, the PNG `eXIf` chunk or the WebP `EXIF` chunk,
  else XMP's `tiff:Orientation`, as `ImageOps.exif_transpose` reads them.
- `Image.reduce`: the box filter, in Pillow's fixed point, by
  `min(h, w) // (2 * SIZE)` when that is at least 2.

`write_saved_model` adds two signatures to the pixel signature `serve`:
`serve_bytes` (files -> probabilities) and `decode_bytes` (files -> the
uint8 SIZE x SIZE pixels `preprocess.load_image` returns), which the export's
check compares bit for bit before the SavedModel is published.

Anything else (GIF, BMP, TIFF, PNGs of 1, 2 or 4 bits per sample) would come
out of TensorFlow's decoders with other pixels, so the graph refuses it: a
`tf.debugging` assertion names the kind and points to the pixel signature
`serve` and the shipped `preprocess.py`.
"""

from __future__ import annotations

from .._keras import import_tensorflow
from .export_resize import pillow_bilinear_resize

__all__ = [
    "BYTES_ENDPOINT", "DECODE_ENDPOINT", "REFUSED", "bytes_endpoint", "check_bytes_signature", "check_files",
    "decode_endpoint", "decoded_file", "one_decode_size", "write_saved_model",
]

BYTES_ENDPOINT = "serve_bytes"
DECODE_ENDPOINT = "decode_bytes"

REFUSED = (
    "serve_bytes decodes JPEG, PNG (8 or 16 bits per sample) and WebP files only; "
    "this file is {kind}: decode it with the shipped preprocess.py (load_image(path, SIZE)) and call "
    "the pixel signature `serve`"
)

_JPEG, _PNG, _WEBP, _OTHER = range(4)
_MAX_IFD_ENTRIES = 512


def bytes_endpoint(tf, model, size: int, n_classes: int):
    """`strings (batch,) -> probabilities (batch, n_classes)`: each file decoded in the graph, then `model`."""

    def one(data):
        image = decoded_file(tf, data, size)
        return model(image[None], training=False)[0]

    def serve_bytes(files):
        return tf.map_fn(one, files, fn_output_signature=tf.TensorSpec([n_classes], tf.float32))

    return serve_bytes


def decoded_file(tf, data, size: int):
    """A scalar tf.string (a file's bytes) -> uint8 `(h, w, 3)`: the reference decoder's steps 2-6."""
    raw = tf.io.decode_raw(data, tf.uint8)
    head = tf.concat([raw[:32], tf.zeros([32], tf.uint8)], 0)[:32]
    kind = _kind(tf, head)
    branches = [
        lambda: _jpeg(tf, data, raw, size),
        lambda: _png(tf, data, raw, head),
        lambda: _webp(tf, data, raw),
        lambda: _refused(tf, "not JPEG, PNG or WebP (GIF, BMP, TIFF or another kind)"),
    ]
    image = tf.switch_case(kind, branches)
    return _reduced(tf, image, size)


def _kind(tf, head):
    def starts(signature: bytes, at: int = 0):
        return tf.reduce_all(tf.equal(head[at:at + len(signature)], tf.constant(list(signature), tf.uint8)))

    return tf.case([
        (starts(b"\xff\xd8\xff"), lambda: _JPEG),
        (starts(b"\x89PNG\r\n\x1a\n"), lambda: _PNG),
        (tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8)), lambda: _WEBP),
    ], default=lambda: _OTHER)


def _refused(tf, kind: str):
    check = tf.debugging.Assert(False, [REFUSED.format(kind=kind)])
    with tf.control_dependencies([check]):
        return tf.zeros([1, 1, 3], tf.uint8)


# -- formats ------------------------------------------------------------------


def _jpeg(tf, data, raw, size: int):
    shape = tf.io.extract_jpeg_shape(data)
    # Pillow's draft: the largest of 8, 4, 2, 1 not above min(W // SIZE, H // SIZE).
    scale = tf.minimum(shape[1] // size, shape[0] // size)
    index = tf.reduce_sum(tf.cast(scale >= tf.constant([2, 4, 8], tf.int32), tf.int32))
    image = tf.switch_case(index, [
        lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
        for r in (1, 2, 4, 8)
    ])
    exif = _find(tf, raw, b"\xff\xe1??Exif\x00\x00")
    return _oriented(tf, image, _orientation(tf, raw, tf.where(exif >= 0, exif + 10, -1)))


def _png(tf, data, raw, head):
    depth, colour = tf.cast(head[24], tf.int32), tf.cast(head[25], tf.int32)
    grey = tf.equal(colour, 0)
    # TensorFlow unpacks samples of 1, 2 or 4 bits otherwise than Pillow (greyscale and palette alike).

    def grey16():
        wide = tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint16), tf.int64)
        return tf.tile(tf.cast((wide * 255 + 32767) // 65535, tf.uint8), [1, 1, 3])

    def any8():
        return _on_white(tf, tf.io.decode_png(data, channels=4, dtype=tf.uint8))

    image = tf.case([
        (depth < 8, lambda: _refused(tf, "a PNG of 1, 2 or 4 bits per sample (greyscale or a small palette)")),
        (tf.logical_and(grey, tf.equal(depth, 16)), grey16),
    ], default=any8)
    exif = _find(tf, raw, b"eXIf")
    return _oriented(tf, image, _orientation(tf, raw, tf.where(exif >= 0, exif + 4, -1)))


def _webp(tf, data, raw):
    frame = tf.io.decode_webp(data, channels=0)[0]  # the first frame, RGB or RGBA
    rgba = tf.pad(frame, [[0, 0], [0, 0], [0, 4 - tf.shape(frame)[2]]], constant_values=255)
    exif = _find(tf, raw, b"EXIF")
    return _oriented(tf, _on_white(tf, rgba), _orientation(tf, raw, tf.where(exif >= 0, exif + 8, -1)))


def _on_white(tf, rgba):
    """uint8 RGBA composited onto opaque white in Pillow's `alpha_composite` integer arithmetic -> RGB."""
    x = tf.cast(rgba, tf.int64)
    colour, alpha = x[..., :3], x[..., 3:]
    coverage = alpha * 255 + 255 * (255 - alpha)  # never 0: the background is opaque
    coef1 = alpha * 255 * 255 * 128 // coverage
    total = colour * coef1 + 255 * (255 * 128 - coef1) + (0x80 << 7)
    shift = tf.bitwise.right_shift
    return tf.cast(shift(shift(shift(total, 8) + total, 8), 7), tf.uint8)


# -- EXIF orientation ---------------------------------------------------------


def _find(tf, raw, pattern: bytes):
    """The first index of `pattern` in `raw` (`?` matches any byte), or -1."""
    k = len(pattern)
    m = tf.maximum(tf.size(raw) - k + 1, 0)
    hit = tf.ones([m], tf.bool)
    for i, byte in enumerate(pattern):
        if byte != ord("?"):
            hit = tf.logical_and(hit, tf.equal(raw[i:i + m], byte))
    where = tf.cast(tf.where(hit)[:, 0], tf.int32)
    return tf.cond(tf.size(where) > 0, lambda: where[0], lambda: tf.constant(-1))


def _orientation(tf, raw, tiff):
    """EXIF orientation 1-8 as Pillow reads it: the TIFF block at `tiff` (-1: none), else XMP, else 1."""
    n = tf.size(raw, out_type=tf.int64)
    tiff = tf.cast(tiff, tf.int64)
    padded = tf.cast(tf.concat([raw, tf.zeros([8], tf.uint8)], 0), tf.int64)

    def byte(i):
        return tf.gather(padded, tf.clip_by_value(tf.cast(i, tf.int64), 0, n + 7))

    # Pillow strips one "Exif\0\0" prefix before the TIFF header.
    prefixed = tf.logical_and(tiff >= 0, tf.reduce_all(tf.equal(
        tf.stack([byte(tiff + i) for i in range(6)]), tf.constant(list(b"Exif\x00\x00"), tf.int64))))
    t = tf.where(prefixed, tiff + 6, tiff)
    little = tf.logical_and(tf.equal(byte(t), 73), tf.equal(byte(t + 1), 73))  # "II"
    big = tf.logical_and(tf.equal(byte(t), 77), tf.equal(byte(t + 1), 77))  # "MM"

    def u16(i):
        return tf.where(little, byte(i) + 256 * byte(i + 1), 256 * byte(i) + byte(i + 1))

    def u32(i):
        low, high = u16(i), u16(i + 2)
        return tf.where(little, low + 65536 * high, 65536 * low + high)

    ifd = t + u32(t + 4)
    count = tf.where(tf.logical_or(little, big), tf.minimum(u16(ifd), _MAX_IFD_ENTRIES), 0)
    count = tf.where(tf.logical_and(tiff >= 0, ifd + 2 + 12 * count <= n), count, 0)
    entry = ifd + 2 + 12 * tf.range(count, dtype=tf.int64)
    tags, types = u16(entry), u16(entry + 2)
    values = tf.where(tf.equal(types, 4), u32(entry + 8), u16(entry + 8))
    found = tf.where(tf.equal(tags, 0x0112), values, -1)
    # Pillow keeps the last of repeated tags; -1 when there is none.
    exif = tf.cast(tf.reduce_max(tf.concat([[-1], tf.boolean_mask(found, found >= 0)[-1:]], 0)), tf.int32)
    return tf.cond(exif >= 0, lambda: exif, lambda: _xmp_orientation(tf, raw))


def _xmp_orientation(tf, raw):
    """The digit of XMP's `tiff:Orientation="N` or `tiff:Orientation>N` (Pillow's pattern), else 1."""
    at = _find(tf, raw, b"tiff:Orientation")
    after = tf.cast(tf.concat([raw[tf.maximum(at, 0) + 16:][:3], tf.zeros([3], tf.uint8)], 0), tf.int32)
    quoted = tf.logical_and(tf.equal(after[0], ord("=")), tf.equal(after[1], ord('"')))
    digit = tf.where(quoted, after[2], after[1]) - ord("0")
    ok = tf.logical_and(tf.logical_or(quoted, tf.equal(after[0], ord(">"))), tf.logical_and(digit >= 0, digit <= 9))
    return tf.where(tf.logical_and(at >= 0, ok), digit, 1)


def _oriented(tf, image, orientation):
    """`image` transposed as `ImageOps.exif_transpose` does for `orientation` (1 or unknown: unchanged)."""
    def swap(x):
        return tf.transpose(x, [1, 0, 2])

    branches = [
        lambda: image,
        lambda: image[:, ::-1],  # 2: FLIP_LEFT_RIGHT
        lambda: image[::-1, ::-1],  # 3: ROTATE_180
        lambda: image[::-1],  # 4: FLIP_TOP_BOTTOM
        lambda: swap(image),  # 5: TRANSPOSE
        lambda: swap(image[::-1]),  # 6: ROTATE_270 (clockwise)
        lambda: swap(image[::-1, ::-1]),  # 7: TRANSVERSE
        lambda: swap(image[:, ::-1]),  # 8: ROTATE_90 (counter-clockwise)
    ]
    index = tf.where(tf.logical_and(orientation >= 2, orientation <= 8), orientation - 1, 0)
    return tf.switch_case(index, branches)


# -- Image.reduce -------------------------------------------------------------


def _reduced(tf, image, size: int):
    """`Image.reduce(factor)` when `factor = min(h, w) // (2 * size)` is at least 2, else `image`."""
    shape = tf.shape(image)
    factor = tf.minimum(shape[0], shape[1]) // (2 * size)
    return tf.cond(factor >= 2, lambda: _box(tf, image, factor), lambda: image)


def _box(tf, image, factor):
    """Pillow's box reduce: each output pixel is `((sum + n // 2) * multiplier) >> 24` over its `n` pixels.

    `multiplier = float32(2**32) / float32(256 * n)` truncated, as `division_UINT32` computes it; a block
    cut by the right or bottom edge averages only the pixels it holds.
    """
    shape = tf.shape(image)
    height, width = -(-shape[0] // factor), -(-shape[1] // factor)
    pad = [[0, height * factor - shape[0]], [0, width * factor - shape[1]], [0, 0]]

    def block_sums(x):
        x = tf.pad(x, pad)
        return tf.reduce_sum(tf.reshape(x, [height, factor, width, factor, -1]), axis=[1, 3])

    sums = block_sums(tf.cast(image, tf.int64))
    counts = block_sums(tf.ones_like(image[..., :1], tf.int64))
    multiplier = tf.cast(tf.constant(2.0 ** 32, tf.float32) / tf.cast(256 * counts, tf.float32), tf.int64)
    return tf.cast(tf.bitwise.right_shift((sums + counts // 2) * multiplier, 24), tf.uint8)


def one_decode_size(bases) -> int | None:
    """The size every base decodes files at, or `None` for a fused run whose bases differ.

    JPEG draft mode and the reduce depend on the size, so such a run's bases see different pixels of one
    file: one in-graph decode cannot give them all, and its SavedModel keeps the pixel signature only.
    """
    sizes = {base.size for base in bases}
    return sizes.pop() if len(sizes) == 1 else None


def write_saved_model(keras, model, path, size: int, n_classes: int) -> None:
    """Writes `model` as a SavedModel: the pixel signature `serve` (the default), `serve_bytes` and `decode_bytes`."""
    tf = import_tensorflow("A SavedModel with the `serve_bytes` signature")

    files = [tf.TensorSpec([None], tf.string, name="files")]
    resize = pillow_bilinear_resize(keras, size, name="decode_resize")
    archive = keras.export.ExportArchive()
    archive.track_and_add_endpoint("serve", model, [tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")])
    archive.add_endpoint(BYTES_ENDPOINT, tf.function(bytes_endpoint(tf, model, size, n_classes)), files)
    archive.add_endpoint(DECODE_ENDPOINT, tf.function(decode_endpoint(tf, resize, size)), files)
    archive.write_out(str(path), verbose=False)


def decode_endpoint(tf, resize, size: int):
    """`strings (batch,) -> uint8 (batch, size, size, 3)`: what `preprocess.load_image` returns, for checks."""

    def one(data):
        image = tf.cast(decoded_file(tf, data, size)[None], tf.float32)
        return tf.cast(resize(image)[0], tf.uint8)

    def decode_bytes(files):
        return tf.map_fn(one, files, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))

    return decode_bytes


def check_files(size: int) -> list[bytes]:
    """Encoded files that take every path of the decoder that matters at `size`: draft JPEG, EXIF, alpha, reduce."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def encoded(width, height, mode, fmt, **kwargs):
        # Smooth noise, so that JPEG keeps it and the resize has something to average.
        small = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, len(mode)), dtype=np.uint8)
        image = Image.fromarray(small.squeeze(), mode).resize((width, height), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        return buffer.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        encoded(2 * size + 5, 4 * size + 3, "RGB", "JPEG", quality=90, exif=exif.tobytes()),
        encoded(size - 9, size + 17, "RGB", "JPEG", quality=90),
        encoded(4 * size + 1, 4 * size + 9, "RGBA", "PNG"),
    ]


def check_bytes_signature(path, model, size: int, tolerance: float) -> None:
    """The written SavedModel decodes `check_files` to the shipped decoder's pixels, and `serve_bytes` gives `model`'s numbers.

    Raises `ExportMismatch` otherwise, so that such a SavedModel is never published. The pixels are compared
    bit for bit: on synthetic images a model's probabilities can hide a wrong decode.
    """
    import numpy as np

    from . import preprocess

    tf = import_tensorflow("Checking the `decode_bytes` signature")
    from .export_loading import ExportMismatch

    files = check_files(size)
    pixels = np.stack([preprocess.load_image(data, size) for data in files])
    expected = np.asarray(model.predict_on_batch(pixels), np.float64)
    loaded = tf.saved_model.load(str(path))  # held while it runs: it owns the variables
    decoded = np.asarray(getattr(loaded, DECODE_ENDPOINT)(tf.constant(files)))
    got = np.asarray(getattr(loaded, BYTES_ENDPOINT)(tf.constant(files)), np.float64)
    wrong = int(np.sum(np.any(decoded != pixels, axis=(1, 2, 3))))
    diff = float(np.max(np.abs(got - expected)))
    if wrong or not diff < tolerance:
        raise ExportMismatch(
            f"The written SavedModel's {BYTES_ENDPOINT} signature differs from the shipped decoder + model "
            f"({wrong} of {len(files)} encoded files decoded to other pixels; probabilities off by {diff:.3g}); "
            "nothing was written. Report this with the run folder and the versions of tensorflow and Pillow."
        )
