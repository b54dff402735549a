"""Decoding to RGB: every odd mode converts, every broken file fails with its path and reason."""

import numpy as np
import pytest
from PIL import Image, ImageFile

import imagefiles as files
from lookalike.encoders.preprocessing import input_manifest, load_input, to_input
from lookalike.images.decode import UnreadableImageError, load_image


def test_jpeg_loads_as_rgb(tmp_path):
    img = load_image(files.write_jpeg(str(tmp_path / "a.jpg")))
    assert img.mode == "RGB" and img.size == files.photo("chelsea").size


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    path = files.write_png16(str(tmp_path / "a.png"))
    arr = np.asarray(load_image(path))
    expected = np.asarray(files.photo("camera").convert("L"))
    assert arr.shape == expected.shape + (3,)
    # PIL's own convert("RGB") clips 16-bit values to white; ours matches the 8-bit photo.
    assert np.abs(arr[..., 0].astype(int) - expected).max() <= 1


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.asarray(load_image(files.write_rgba_png(str(tmp_path / "a.png"))))
    h, w, _ = arr.shape
    assert (arr[:, : w // 2 - 1] == 255).all()  # the transparent half
    assert arr[:, w // 2 + 1 :].std() > 10  # the photo half


def test_palette_gif_with_transparency(tmp_path):
    img = load_image(files.write_palette_gif(str(tmp_path / "a.gif")))
    assert img.mode == "RGB" and np.asarray(img).std() > 10


def test_cmyk_jpeg(tmp_path):
    img = load_image(files.write_cmyk_jpeg(str(tmp_path / "a.jpg")))
    reference = np.asarray(files.photo("rocket").convert("RGB"), dtype=float)
    assert img.mode == "RGB"
    assert np.abs(np.asarray(img, dtype=float) - reference).mean() < 20


def test_exif_orientation_is_applied(tmp_path):
    w, h = files.photo("chelsea").size
    assert load_image(files.write_exif_rotated_jpeg(str(tmp_path / "a.jpg"))).size == (h, w)


def test_resize_to_array(tmp_path):
    path = files.write_jpeg(str(tmp_path / "a.jpg"))
    arr = load_input(path, input_manifest("autoencoder", 32))
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    # bilinear, aspect not kept, from the JPEG decoded at 1/8 (451 x 300 -> 57 x 38, both
    # sides still >= 32; tests/test_fast_decode.py checks it against the full decode)
    img = load_image(path, min_side=32)
    assert img.size == (57, 38)
    assert np.array_equal(arr, np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR)))
    assert np.array_equal(to_input(img, input_manifest("metric", 32)), arr)


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg_fails_even_if_pillow_is_told_to_pad(tmp_path, load_truncated):
    path = files.write_truncated_jpeg(str(tmp_path / "cut.jpg"))
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
    try:
        with pytest.raises(UnreadableImageError, match="truncated") as err:
            load_image(path)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    assert err.value.path == path
    assert ImageFile.LOAD_TRUNCATED_IMAGES == old


def test_missing_empty_and_non_image_files(tmp_path):
    with pytest.raises(UnreadableImageError, match="file not found"):
        load_image(str(tmp_path / "nope.jpg"))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="empty file"):
        load_image(str(tmp_path / "empty.png"))
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(UnreadableImageError, match="not a recognised image format"):
        load_image(str(tmp_path / "notes.jpg"))
    with pytest.raises(UnreadableImageError, match="not a regular file"):
        load_image(str(tmp_path))
