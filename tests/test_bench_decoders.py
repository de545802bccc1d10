"""The `decoders` bench section measures every decoder on the same files and renders its table."""

import numpy as np
from PIL import Image

from bench import decoders


def test_decoders_section_times_each_decoder_on_the_same_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, side in enumerate((400, 600)):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    result = decoders.decoders(paths, 64, reps=2)
    names = list(result["rates"])
    assert names[:2] == ["reference (`decode.load_image`)", "Pillow draft + resize(BILINEAR)"]
    assert all(len(rates) == 2 and min(rates) > 0 for rates in result["rates"].values())
    assert len(result["reference_over_pillow"]) == 2 and result["n"] == 2
    text = "\n".join(decoders.lines({"decoders": result}))
    assert "Reference / Pillow bilinear" in text and all(name in text for name in names)


def test_opencv_row_decodes_at_the_smallest_reduction_that_keeps_the_size(tmp_path):
    import cv2  # noqa: F401  (the bench extra, which `make setup` installs: fail here, not inside the row)
    rows, cols = np.mgrid[0:300, 0:400]
    image = np.stack([cols * 255 // 399, rows * 255 // 299, np.full_like(rows, 30)], -1).astype(np.uint8)
    path = tmp_path / "x.jpg"
    Image.fromarray(image).save(path, quality=95)
    out = decoders._opencv_area(path.read_bytes(), 64)
    assert out.shape == (64, 64, 3)
    # RGB order, not OpenCV's BGR: close to Pillow's own resize of the same file.
    pillow = decoders._pillow_bilinear(path.read_bytes(), 64).astype(int)
    assert np.abs(out.astype(int) - pillow).mean() < 3 < np.abs(out[..., ::-1].astype(int) - pillow).mean()
