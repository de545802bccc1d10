"""The `nvjpeg` decoder: JPEGs decoded and resized on the GPU, a batch per call.

`torchvision.io.decode_jpeg(list, device="cuda")` decodes a whole batch with
nvJPEG (the way DALI's `fn.decoders.image(device="mixed")` does), and the
resize to `(size, size)` runs beside it on the GPU as
`torch.nn.functional.interpolate(mode="bilinear", antialias=True)`: the
same triangle filter as Pillow's `resize(BILINEAR)`, in float32, rounded to
whole grey levels once. The CPU only reads each file and its JPEG header
(format, declared size, EXIF orientation) in the decoding threads.

What it changes against the reference decoder (`decode.load_image`, whose
row in `decode.DECODERS` sends it every file `prepare` does not take):

- A JPEG is decoded at full size (nvJPEG has no DCT-scaled decode), where the
  reference asks libjpeg for 1/2, 1/4 or 1/8 scale first (draft mode).
- nvJPEG's inverse DCT is not libjpeg's: pixels differ by a few grey levels.
- Every other file (PNG, WebP, GIF, CMYK JPEGs, files Pillow cannot open)
  goes through the reference decoder, with its checks and error messages;
  a JPEG over the decompression-bomb limit is refused as there.

So its features are not the reference's: the decoder's identity (torchvision
version and the device that decoded, `cuda` or `cpu`) is part of the
feature key. Without a GPU the same calls run on the CPU (torchvision's
libjpeg-turbo), which is how the tests check it; the key then says `cpu`,
so sets made on a GPU are never topped up with CPU pixels.
"""

from __future__ import annotations

import functools
import io
import sys
import warnings
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image

from ..errors import ConfigError

__all__ = ["Jpeg", "decoder_id", "device", "finish", "prepare"]

_DEVICE_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: a phone's JPEG with extra frames after the first
_DEVICE_MODES = frozenset({"RGB", "L"})
_INSTALL = "pip install 'bottleneck-features[nvjpeg]' (or make setup-nvjpeg)"


class Jpeg(NamedTuple):
    """A JPEG file's bytes, waiting for the batch's device decode."""

    data: bytes
    orientation: int  # EXIF orientation, 1 (as stored) to 8


@functools.cache
def _torch():
    """`(torch, torchvision)`, or a ConfigError naming the extra to install."""
    # torch imports Triton (for torch.compile) when it can, and Triton's LLVM crashes the process
    # (SIGSEGV) once TensorFlow's is loaded. Nothing here compiles: torch is told Triton is absent.
    hide_triton = "tensorflow" in sys.modules and "triton" not in sys.modules
    if hide_triton:
        sys.modules["triton"] = None
    try:
        import torch
        import torchvision.io
    except ImportError as e:
        raise ConfigError(
            f"`decoder` nvjpeg needs torch and torchvision, which are not installed ({e}). "
            f"Install them: {_INSTALL}; or use the default decoder, pillow.",
            field="decoder",
        ) from None
    finally:
        if hide_triton:
            del sys.modules["triton"]
    return torch, torchvision


@functools.cache
def device() -> str:
    """`"cuda"` when torch sees a GPU, else `"cpu"`."""
    torch, _ = _torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def decoder_id() -> str:
    """What it does to a JPEG, for the feature key: torchvision's version and the device that decodes."""
    _, torchvision = _torch()
    version = ".".join(torchvision.__version__.split("+")[0].split(".")[:2])
    return f"nvjpeg-torchvision{version}-{device()}-exif-rgb-antialiasbilinear-squash"


def prepare(data: bytes) -> Jpeg | None:
    """A `Jpeg` for the device, or `None` for a file the reference decoder must take (run in threads).

    `None` for anything but an RGB or greyscale JPEG within the
    decompression-bomb limit, and for what Pillow cannot open: the
    reference decoder then refuses it with its own message.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - the reference decoder names what is wrong with it
        return None
    with img:
        width, height = img.size
        limit = Image.MAX_IMAGE_PIXELS
        within = limit is None or max(width, 1) * max(height, 1) <= limit
        if img.format not in _DEVICE_FORMATS or img.mode not in _DEVICE_MODES or not within:
            return None
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    return Jpeg(data, orientation if orientation in range(1, 9) else 1)


def finish(loaded: list, size: int) -> list[tuple[np.ndarray | None, str | None]]:
    """`(uint8 (size, size, 3) image, None)` or `(None, reason)` for each of `loaded`, in order.

    The `Jpeg`s among `loaded` are decoded in one call on the device;
    arrays (files the reference decoder took) pass through.
    """
    jpegs = [i for i, item in enumerate(loaded) if isinstance(item, Jpeg)]
    results: list = [(item, None) for item in loaded]
    if not jpegs:
        return results
    torch, _ = _torch()
    decoded = _decode_on_device([loaded[i].data for i in jpegs])
    resized, where = [], []
    for i, tensor in zip(jpegs, decoded):
        if isinstance(tensor, str):
            results[i] = (None, tensor)
            continue
        resized.append(_resize(_orient(tensor, loaded[i].orientation), size))
        where.append(i)
    if resized:
        pixels = torch.stack(resized).permute(0, 2, 3, 1).cpu().numpy()
        for i, image in zip(where, pixels):
            results[i] = (image, None)
    return results


def _decode_on_device(files: list[bytes]) -> list:
    """CHW uint8 tensors on the device, or a reason for each file that nvJPEG refused."""
    torch, torchvision = _torch()
    tvio = torchvision.io
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoders for TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return tvio.decode_jpeg(tensors, mode=tvio.ImageReadMode.RGB, device=device())
        except RuntimeError:  # one bad file fails the whole batch: find it
            return [_decode_one(tvio, t) for t in tensors]


def _decode_one(tvio, tensor):
    try:
        return tvio.decode_jpeg([tensor], mode=tvio.ImageReadMode.RGB, device=device())[0]
    except RuntimeError as e:
        return f"cannot decode on {device()} (nvjpeg decoder): {str(e).splitlines()[0]}"


def _orient(tensor, orientation: int):
    """`tensor` (C, H, W) turned upright as `ImageOps.exif_transpose` does for EXIF `orientation`."""
    torch, _ = _torch()
    turns = {1: lambda t: t, 2: lambda t: t.flip(-1), 3: lambda t: t.flip(-1, -2), 4: lambda t: t.flip(-2),
             5: lambda t: t.transpose(-1, -2), 6: lambda t: torch.rot90(t, -1, (-2, -1)),
             7: lambda t: t.transpose(-1, -2).flip(-1, -2), 8: lambda t: torch.rot90(t, 1, (-2, -1))}
    return turns[orientation](tensor)


def _resize(tensor, size: int):
    """`tensor` (C, H, W) uint8 squashed to (C, size, size) uint8: antialiased bilinear, rounded once."""
    torch, _ = _torch()
    x = tensor[None].to(torch.float32)
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)
