"""Turn an image file into the uint8 RGB array an exported bottleneck model expects.

This file is shipped beside every export (`.keras`, SavedModel, ONNX) and
inside every bundle. It needs only Pillow and NumPy, no TensorFlow and no
bottleneck, and reproduces the product's reference decoder step by step,
so that `model.predict(load_image(path, SIZE)[None])` gives what
`bottleneck predict` gives on the same file, photos of any size included:

1. JPEG draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding,
   never below SIZE.
2. EXIF orientation applied.
3. To RGB: 16-bit greyscale scaled (not clipped) to 8 bits; alpha and
   palette/colour-key transparency composited onto white; CMYK, greyscale,
   palette and the rest through Pillow's `convert("RGB")`. First frame only.
4. At least 4x SIZE on the short side: shrunk by a whole factor with a box
   filter (`Image.reduce`), keeping at least 2x SIZE.
5. Squashed to SIZE x SIZE with an antialiased bilinear (triangle) filter
   in float32, rounded to the nearest grey level: Keras'
   `Resizing(antialias=True)` + `round`, which is also what the exported
   model does to an image of another size.

Example::

    import json, keras
    from preprocess import load_image
    info = json.load(open("digits.keras.json"))
    model = keras.saving.load_model("digits.keras")
    proba = model.predict(load_image("photo.jpg", info["input"]["size"])[None])
    print(info["class_names"][proba.argmax()])
"""

import io

import numpy as np
from PIL import Image, ImageOps

__all__ = ["load_image"]

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def load_image(path, size):
    """Decodes an image file into a `(size, size, 3)` uint8 RGB array.

    Args:
        path: str or path-like, the image file; or the file's bytes.
        size: int, the model's input size (`input.size` in the JSON beside it).

    Returns:
        `np.ndarray` of dtype uint8 and shape `(size, size, 3)`.
    """
    if isinstance(path, (bytes, bytearray)):
        data = bytes(path)
    else:
        with open(path, "rb") as f:
            data = f.read()
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))  # only JPEG implements it
        img.load()
        rgb = _to_rgb(ImageOps.exif_transpose(img))
    factor = min(rgb.size) // (2 * size)
    if factor >= 2:
        rgb = rgb.reduce(factor)
    return _resize_squash(np.asarray(rgb), size)


def _to_rgb(img):
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _WIDE_GREY_MODES:
        wide = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if img.mode == "F":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


def _resize_squash(image, size):
    height, width, channels = image.shape
    x = image.transpose(1, 0, 2).reshape(width, height * channels).astype(np.float32)
    x = _triangle(x, size)
    x = x.reshape(size, height, channels).transpose(1, 0, 2).reshape(height, size * channels)
    x = _triangle(x, size)
    return np.rint(x.reshape(size, size, channels)).astype(np.uint8)


def _triangle(x, n_out):
    """Rows of `x` resized to `n_out` by the triangle filter, summed tap by tap from the left in float32.

    That order of the sums is the reference decoder's (a sparse matrix
    product), so the result matches it exactly, not just within a grey level.
    """
    n_in = len(x)
    scale = n_in / n_out
    half_width = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    taps = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in) + 0.5 - centres[:, None]) / half_width)
    taps = (taps / taps.sum(axis=1, keepdims=True)).astype(np.float32)
    out = np.zeros((n_out, x.shape[1]), np.float32)
    rows = np.arange(n_out)
    first = np.argmax(taps > 0, axis=1)
    for k in range(int((taps > 0).sum(axis=1).max())):
        column = np.minimum(first + k, n_in - 1)
        weight = np.where(first + k < n_in, taps[rows, column], np.float32(0))
        out += weight[:, None] * x[column]
    return out
