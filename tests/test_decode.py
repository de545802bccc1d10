"""Tests for pipeline.features.decode: the reference decoder."""

import hashlib
import os
import time
import types
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageOps

import badfiles
from imagegen import write_image
from needs import SIGN_DIGITS, unavailable
from pipeline.errors import ConfigError
from pipeline.features.decode import ACCEPTED_FORMATS, DECODER_ID, DecodeError, load_image, resize_squash

SIZE = 24
PHOTOS = SIGN_DIGITS


def _decode(root, relpath, size=SIZE):
    return load_image(os.fsencode(root) + b"/" + os.fsencode(relpath), size)


def _assert_colour(pixels, colour, tol=0):
    diff = np.abs(pixels.astype(int) - np.array(colour)).max()
    assert diff <= tol, f"expected {colour}, got {pixels.reshape(-1, 3)[:3].tolist()}..."


# --- the whole corpus ------------------------------------------------------


# The warning-range bomb makes Pillow warn before load_image() refuses it.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_corpus_outcomes(bad_corpus):
    root, expected = bad_corpus
    assert set(expected.values()) == {"ok", "skip"}
    for relpath, outcome in expected.items():
        if outcome == "ok":
            x = _decode(root, relpath)
            assert x.shape == (SIZE, SIZE, 3), relpath
            assert x.dtype == np.uint8, relpath
            assert x.flags.c_contiguous and x.flags.writeable, relpath
        else:
            with pytest.raises(DecodeError) as info:
                _decode(root, relpath)
            assert badfiles.REASONS[relpath] in str(info.value), relpath
            assert "\n" not in str(info.value)


def test_unreadable_file_reason(bad_corpus, monkeypatch):
    root, expected = bad_corpus
    if expected["c/unreadable.png"] == "ok":
        # Running as root, where chmod 000 does not block reads: make the
        # open fail the way it does for other users.
        def refuse(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(DecodeError, match="^permission denied: cannot read the file$"):
        _decode(root, "c/unreadable.png")


@pytest.mark.parametrize(
    "relpath, message",
    [
        ("a/zero.jpg", "empty file (0 bytes)"),
        ("a/text.jpg", "not an image: the file is text saved with an image extension"),
        (
            "a/page.jpg",
            "not an image: the file is an HTML page saved with an image extension "
            "(a failed download or an error page?)",
        ),
        (
            "a/corrupt_header.jpg",
            "corrupt JPEG header: the file starts like a JPEG but Pillow cannot parse it",
        ),
    ],
)
def test_exact_reasons(bad_corpus, relpath, message):
    root, _ = bad_corpus
    with pytest.raises(DecodeError) as info:
        _decode(root, relpath)
    assert str(info.value) == message


def test_truncated_jpeg_is_an_error_not_grey_padding(bad_corpus):
    root, _ = bad_corpus
    with pytest.raises(DecodeError, match=r"^truncated or corrupt image data: image file is truncated"):
        _decode(root, "a/truncated.jpg")


def test_unidentifiable_binary_gets_the_generic_reason(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DecodeError, match=r"^not an image: Pillow cannot identify the format"):
        load_image(path, SIZE)


def test_svg_is_named(tmp_path):
    path = tmp_path / "logo.png"
    path.write_text('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>')
    with pytest.raises(DecodeError, match="SVG"):
        load_image(path, SIZE)


def test_format_outside_allowlist_is_refused(tmp_path):
    path = tmp_path / "icon.png"
    Image.new("RGB", (16, 16), "red").save(path, "ICO")
    assert "ICO" not in ACCEPTED_FORMATS
    with pytest.raises(DecodeError, match=r"^unsupported format: the file holds ICO data"):
        load_image(path, SIZE)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DecodeError, match="^file not found"):
        load_image(tmp_path / "nope.jpg", SIZE)
    with pytest.raises(DecodeError, match="it is a folder"):
        load_image(tmp_path, SIZE)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_named_like_an_image_does_not_block(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(DecodeError, match="not a regular file"):
        load_image(fifo, SIZE)


# --- colours and geometry --------------------------------------------------


def test_exif_orientation_rotates(bad_corpus):
    # Stored 40x20 with red left, blue right; orientation 6 displays it
    # rotated clockwise: red on top, blue at the bottom.
    root, _ = bad_corpus
    x = _decode(root, "b/exif_rotated.jpg")
    _assert_colour(x[: SIZE // 2 - 2], badfiles.RED, tol=12)
    _assert_colour(x[SIZE // 2 + 2 :], badfiles.BLUE, tol=12)


def test_16bit_png_is_scaled_not_clipped(bad_corpus):
    root, _ = bad_corpus
    with Image.open(root / "b/gray16.png") as img:
        assert img.mode.startswith("I")  # really decoded as 16-bit
    x = _decode(root, "b/gray16.png")
    _assert_colour(x, (64, 64, 64))  # 0x4040 * 255 / 65535 = 64.0


def test_16bit_extremes(tmp_path):
    path = tmp_path / "extremes.png"
    wide = np.zeros((2, 4), np.uint16)
    wide[:, 1], wide[:, 2], wide[:, 3] = 0x8080, 0xFFFF, 257 * 7
    Image.fromarray(wide).save(path)
    x = load_image(path, 4)[:, :, 0]  # 4x2 -> 4x4: columns are not mixed
    assert x[0].tolist() == [0, 128, 255, 7]


def test_palette_transparency_becomes_white(bad_corpus):
    root, _ = bad_corpus
    with Image.open(root / "b/palette_transparent.png") as img:
        assert img.mode == "P" and "transparency" in img.info
    x = load_image(root / "b/palette_transparent.png", 4)
    _assert_colour(x[:, :2], (255, 255, 255))  # not the hidden red
    _assert_colour(x[:, 2:], badfiles.PALETTE_OPAQUE)


@pytest.mark.parametrize(
    "relpath, colour, tol",
    [
        ("b/gray.png", (badfiles.GREY_L,) * 3, 0),
        ("b/cmyk.jpg", badfiles.RED, 8),
        ("b/animated.gif", badfiles.RED, 0),  # first frame, not the green one
        ("b/multipage.tif", badfiles.GREEN, 0),  # first page, not the blue one
        ("b/one_pixel.png", badfiles.ONE_PIXEL, 0),
        ("b/wide.png", badfiles.RED, 0),
        ("b/image.webp", badfiles.RED, 0),
        ("b/image.bmp", badfiles.BLUE, 0),
        ("a/png_named.jpg", badfiles.BLUE, 0),  # content wins over extension
        ("c/rgba.png", (255, 255, 255), 0),  # fully transparent red -> white
        ("c/la.png", (127, 127, 127), 1),  # black at 50% alpha over white
        ("c/mode1.png", (255, 255, 255), 0),
    ],
)
def test_colours(bad_corpus, relpath, colour, tol):
    root, _ = bad_corpus
    _assert_colour(_decode(root, relpath), colour, tol)


def test_squash_ignores_aspect_ratio(tmp_path):
    # 40x10, left half black, right half white: squashed (not cropped or
    # padded) the left half of the output is black, the right half white.
    path = tmp_path / "wide.png"
    img = Image.new("L", (40, 10), 0)
    img.paste(255, (20, 0, 40, 10))
    img.save(path)
    x = load_image(path, 8)
    assert x[:, :3].max() == 0 and x[:, 5:].min() == 255


def test_non_utf8_path(bad_corpus):
    root, expected = bad_corpus
    name = os.fsdecode(badfiles.NON_UTF8_NAME)
    if name not in expected:
        pytest.skip("this filesystem refuses non-UTF-8 names")
    by_str = load_image(root / name, SIZE)
    by_bytes = load_image(os.fsencode(root) + b"/" + badfiles.NON_UTF8_NAME, SIZE)
    np.testing.assert_array_equal(by_str, by_bytes)


def test_size_validation(bad_corpus):
    root, _ = bad_corpus
    with pytest.raises(ConfigError, match=r"`size` must be a positive int. Received: size=0") as bad:
        _decode(root, "b/gray.png", 0)
    assert bad.value.field == "size"
    with pytest.raises(TypeError, match=r"`size` must be an int. Received: size=2.5"):
        _decode(root, "b/gray.png", 2.5)
    with pytest.raises(TypeError):
        _decode(root, "b/gray.png", True)
    assert _decode(root, "b/gray.png", np.int64(5)).shape == (5, 5, 3)


# --- decompression bombs ---------------------------------------------------


@pytest.mark.parametrize("relpath", ["b/bomb.png", "b/bomb_warn.png"])
def test_bomb_is_refused_without_decoding(bad_corpus, relpath):
    root, _ = bad_corpus
    assert (root / relpath).stat().st_size < 200  # tiny file, huge header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        filters_before = list(warnings.filters)
        start = time.perf_counter()
        with pytest.raises(DecodeError, match="^decompression bomb: declared .* 89,478,485 pixel limit"):
            _decode(root, relpath)
        # Allocating and filling 1e8+ pixels would take far longer.
        assert time.perf_counter() - start < 0.2
        assert warnings.filters == filters_before


def test_bomb_warning_turned_error_by_caller_is_still_a_decode_error(bad_corpus):
    root, _ = bad_corpus
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(DecodeError, match="^decompression bomb"):
            _decode(root, "b/bomb_warn.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_limit_follows_pillow_setting(tmp_path, monkeypatch):
    path = tmp_path / "ten.png"
    Image.new("RGB", (10, 10)).save(path)
    assert load_image(path, SIZE).shape == (SIZE, SIZE, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(DecodeError, match="declared 10x10 pixels exceeds the 50 pixel limit"):
        load_image(path, SIZE)


# --- draft mode on real photos ---------------------------------------------


def _big_photo():
    photos = sorted((PHOTOS / "7").glob("*.JPG")) if PHOTOS.is_dir() else []
    big = [p for p in photos if p.stat().st_size > 1_000_000]
    if not big:
        unavailable(f"no large photo in {PHOTOS / '7'}")
    return big[0]


@pytest.mark.slow
def test_draft_decode_close_to_full_decode():
    # Measured on the three 3024x3024 photos: mean |diff| 0.32 at 224 and
    # 0.39 at 299, 99th percentile 3-4 grey levels. Bounds are ~2.5x that,
    # far below what a wrong rotation or filter gives (tens of levels).
    path = _big_photo()
    for size in (224, 299):
        with Image.open(path) as img:
            assert img.size == (3024, 3024)
            full = ImageOps.exif_transpose(img).convert("RGB")
        reference = resize_squash(np.asarray(full), size).astype(int)
        diff = np.abs(load_image(path, size).astype(int) - reference)
        assert diff.mean() < 1.0, diff.mean()
        assert np.percentile(diff, 99) <= 10

    # The photos carry EXIF orientation 6: without the transpose the
    # decode would differ by far more than the bound above.
    unrotated = resize_squash(np.asarray(full.transpose(Image.Transpose.ROTATE_270)), 224).astype(int)
    assert np.abs(load_image(path, 224).astype(int) - unrotated).mean() > 5


def test_draft_reduces_big_photos_before_decoding():
    path = _big_photo()
    with Image.open(path) as img:
        img.draft("RGB", (224, 224))
        assert img.size == (378, 378)  # 3024 / 8, still >= 224


# --- determinism and concurrency -------------------------------------------


def test_decoder_id_names_pillow_and_filter():
    major = Image.__version__.split(".")[0]
    assert DECODER_ID.startswith(f"pillow{major}-")
    assert "bilinear-squash" in DECODER_ID


@pytest.mark.parametrize("height, width", [(100, 100), (378, 378), (450, 600), (600, 450), (90, 170), (31, 700)])
def test_the_reference_resize_is_pillows_bilinear(height, width):
    """The resize runs in Pillow's C code: the same pixels as `Image.resize(BILINEAR)`, any shape."""
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BILINEAR))
    got = resize_squash(image, 224)
    np.testing.assert_array_equal(got, expected)
    assert got.flags.writeable and got.dtype == np.uint8


def test_threads_give_the_same_pixels(bad_corpus):
    root, expected = bad_corpus
    ok = sorted(r for r, o in expected.items() if o == "ok")
    serial = [_decode(root, r) for r in ok]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda r: _decode(root, r), ok * 4))
    for i, x in enumerate(threaded):
        np.testing.assert_array_equal(x, serial[i % len(ok)])


# --- what was decoded is what is hashed ---------------------------------------


def _png_bytes(tmp_path, colour):
    path = tmp_path / f"{colour[0]}.png"
    Image.new("RGB", (8, 8), colour).save(path)
    return path.read_bytes()


def test_load_image_hashes_the_bytes_it_decodes_even_if_the_file_is_rewritten(tmp_path, monkeypatch):
    from pipeline.features import decode

    red, blue = _png_bytes(tmp_path, (255, 0, 0)), _png_bytes(tmp_path, (0, 0, 255))
    path = tmp_path / "img.png"
    path.write_bytes(red)
    real_decode = decode.decode_bytes

    def rewrite_then_decode(*args):
        path.write_bytes(blue)  # in place, same inode: an editor saving over the file
        return real_decode(*args)

    monkeypatch.setattr(decode, "decode_bytes", rewrite_then_decode)
    image, digest = load_image(path, 4, return_digest=True)
    _assert_colour(image, (255, 0, 0))
    assert digest == hashlib.sha256(red).hexdigest()
    monkeypatch.undo()
    assert load_image(path, 4).shape == (4, 4, 3)  # without the flag: the array alone


def test_decode_batches_reports_the_digest_of_every_file_it_read(tmp_path):
    from pipeline.features.decode import decode_batches
    from pipeline.features.discovery import ImageEntry

    red = _png_bytes(tmp_path, (255, 0, 0))
    (tmp_path / "a.png").write_bytes(red)
    (tmp_path / "b.png").write_bytes(red[:20])  # truncated: read, hashed, not decodable
    entries = [ImageEntry(name, 0, "", 0, 0, 0.5) for name in ("a.png", "b.png", "gone.png")]

    batches = list(decode_batches(tmp_path, entries, 4, batch_size=8, workers=2, return_digests=True))
    assert len(batches) == 1
    ok, images, failures, digests = batches[0]
    assert [e.relpath for e in ok] == ["a.png"] and images.shape == (1, 4, 4, 3)
    assert [e.relpath for e, _ in failures] == ["b.png", "gone.png"]
    assert digests == {
        "a.png": hashlib.sha256(red).hexdigest(),
        "b.png": hashlib.sha256(red[:20]).hexdigest(),
        "gone.png": None,
    }
    assert [len(batch) for batch in decode_batches(tmp_path, entries, 4, batch_size=8, workers=2)] == [3]


@pytest.mark.slow
def test_processes_decode_the_same_arrays_digests_and_failures_as_threads(tmp_path):
    """Issue 13: the shared-memory process pool is the thread pool's equal."""
    from pipeline.features.decode import decode_batches

    entries = []
    for i, fmt in enumerate(["PNG", "JPEG", "PNG", "JPEG", "PNG", "JPEG", "PNG"]):
        path = write_image(tmp_path / f"{i}.{fmt.lower()}", seed=i, size=30 + 17 * i, fmt=fmt)
        entries.append(types.SimpleNamespace(relpath=path.name))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    entries.insert(3, types.SimpleNamespace(relpath="bad.png"))

    def run(mode):
        return list(decode_batches(tmp_path, entries, 24, batch_size=3, workers=2, return_digests=True, mode=mode))

    threads, processes = run("threads"), run("processes")
    assert len(threads) == len(processes) == 3
    for (ok_t, img_t, fail_t, dig_t), (ok_p, img_p, fail_p, dig_p) in zip(threads, processes):
        assert [e.relpath for e in ok_t] == [e.relpath for e in ok_p]
        np.testing.assert_array_equal(img_t, img_p)
        assert [(e.relpath, r) for e, r in fail_t] == [(e.relpath, r) for e, r in fail_p]
        assert dig_t == dig_p
    assert any(fail for _, _, fail, _ in processes)  # the bad file is reported, not fatal


@pytest.mark.parametrize("mode, workers, chosen", [("auto", 2, "threads"), ("auto", 7, "threads"),
                                                    ("auto", 8, "processes"), ("threads", 8, "threads"),
                                                    ("processes", 1, "processes")])
def test_auto_decode_mode_takes_processes_from_eight_workers(mode, workers, chosen):
    from pipeline.features.decode_pool import chosen_mode

    assert chosen_mode(mode, workers) == chosen


def test_huge_images_are_reduced_by_a_whole_factor_before_the_resize(tmp_path):
    """A 4x-size PNG is box-reduced first (cheap), then resized: close to resizing the full image."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((300, 400), Image.Resampling.BICUBIC))  # 10x the size below
    Image.fromarray(big).save(tmp_path / "big.png")
    decoded = load_image(tmp_path / "big.png", 30).astype(int)
    direct = resize_squash(big, 30).astype(int)
    assert decoded.shape == (30, 30, 3)
    # Measured 2.4 grey levels on average on this noise-like image (photos are smoother); a misplaced
    # or missing step gives tens.
    assert 0 < np.abs(decoded - direct).mean() < 4


def test_a_file_larger_than_the_bomb_limit_allows_is_refused_unread(tmp_path, monkeypatch):
    """A sparse multi-GB `.jpg` must not be read into memory: its size alone refuses it."""
    from pipeline.features import decode as decode_module

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    limit = decode_module.max_file_bytes()
    assert limit == 1000 * 8 + (1 << 20)
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(limit + 1)  # sparse: costs no disk
    reads = []
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: reads.append(a) or real_fdopen(*a, **k))
    image, digest, reason = decode_module._load_or_reason(huge, 32)
    assert image is None and reason.startswith(f"file too large: {limit + 1} bytes")
    assert reads == []  # refused before the file was opened for reading
