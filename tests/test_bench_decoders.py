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


def test_loops_table_states_each_loop_against_the_keras_pipeline():
    result = {"decoders": {"n": 2, "size": 64, "reps": 1, "rates": {}, "reference_over_pillow": [1.0],
                           "missing": []},
              "loops": {"n": 600, "size": 224, "reps": 1, "weights": "random", "overhead_s": [0.1],
                        "rates": {"pipeline": [55.0], "keras": [50.0], "seed": [44.0], "pipeline_onnx": [150.0]}}}
    text = "\n".join(decoders.lines(result))
    assert "| Keras `image_dataset_from_directory` + `predict` | 50.0 | 1.10 |" in text
    assert ("`--runtime onnx` (ONNX Runtime, the `features` command in a fresh process): 150.0 img/s, "
            "3.00x the Keras pipeline and 3.41x the seed 003 loop") in text
    result["loops"]["rates"]["pipeline_onnx"] = []
    assert "`--runtime onnx` not measured" in "\n".join(decoders.lines(result))
