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
5. Squashed to SIZE x SIZE with Pillow's `resize(BILINEAR)` (an
   antialiased triangle filter in fixed point), which the SavedModel and
   ONNX exports also repeat exactly on an image of another size. Use the
   Pillow major version the model's JSON names (`input.decoder`): Pillow 13
   changed the order of the two passes for some shapes.

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
    return np.array(rgb.resize((size, size), Image.Resampling.BILINEAR))


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
