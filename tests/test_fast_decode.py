"""Decoding only what the encoder needs: JPEGs at 1/2, 1/4 or 1/8 scale (Pillow's draft).

Real camera-sized JPEGs (1600 x 1200, written from the scikit-image photos), a real
trained encoder; the full decode (the path of encoders saved before, and of every other
format) measured against the draft decode.
"""

import numpy as np
import pytest
from PIL import Image, ImageFile

import imagefiles as files
from lookalike.encoders import EncoderStoreError, load_encoder
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import (
    PREPROCESSING,
    decode_side,
    input_manifest,
    load_decoded,
    load_input,
    to_input,
)
from lookalike.images.decode import MAX_PIXELS_ENV, UnreadableImageError, load_image

CAMERA = (1600, 1200)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "retina", "camera",
          "ihc")


def full_decode(manifest):
    """``manifest`` as an encoder saved before the draft decode (no ``decode``) records it."""
    recipe = {k: v for k, v in manifest["preprocessing"].items() if k != "decode"}
    return dict(manifest, preprocessing=recipe)


def write_camera_jpeg(path, name, size=CAMERA):
    files.photo(name).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def camera_jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("camera")
    return [write_camera_jpeg(str(root / f"{n}.jpg"), n) for n in PHOTOS]


def test_new_encoders_record_the_draft_decode_and_old_ones_decode_in_full(camera_jpegs,
                                                                           copies_encoder):
    assert all(recipe["decode"] == "jpeg-draft" for recipe in PREPROCESSING.values())
    manifest = load_encoder(copies_encoder).manifest
    assert manifest["preprocessing"]["decode"] == "jpeg-draft"  # written with the weights
    assert decode_side(manifest) == 32 and decode_side(manifest, headroom=4) == 128
    old = full_decode(manifest)
    assert decode_side(old) is None
    # an encoder saved before keeps making exactly the vectors its fields hold
    for path in camera_jpegs[:3]:
        assert np.array_equal(load_input(path, old), to_input(load_image(path), old))
    with pytest.raises(EncoderStoreError, match="unknown decode 'magic'"):
        load_input(camera_jpegs[0],
                   dict(manifest, preprocessing=dict(manifest["preprocessing"], decode="magic")))


@pytest.mark.parametrize("size, side, expected", [
    (CAMERA, 32, (200, 150)),     # 1/8, the smallest scale libjpeg has
    (CAMERA, 64, (200, 150)),
    (CAMERA, 224, (400, 300)),    # 1200 // 224 = 5: 1/4, not 1/8 (150 < 224)
    (CAMERA, 600, (800, 600)),    # exactly the side: 1/2
    (CAMERA, 601, CAMERA),        # 1/2 would be 600 < 601: decoded in full
    ((1201, 403), 100, (301, 101)),  # odd sizes round up, never below the side
    ((60, 50), 32, (60, 50)),     # smaller than twice the side: in full
])
def test_the_draft_never_goes_below_the_side(tmp_path, size, side, expected):
    path = write_camera_jpeg(str(tmp_path / "a.jpg"), "chelsea", size)
    img = load_image(path, min_side=side)
    assert img.mode == "RGB" and img.size == expected and min(img.size) >= min(side, *size)


def test_exif_rotation_and_cmyk_through_the_draft(tmp_path):
    img = files.photo("chelsea").convert("RGB").resize((1200, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=90)
    assert load_image(str(tmp_path / "rot.jpg"), min_side=64).size == (100, 150)  # 1/8, turned
    img.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    cmyk = load_image(str(tmp_path / "cmyk.jpg"), min_side=64)
    reference = np.asarray(img.resize(cmyk.size, Image.Resampling.BOX), dtype=float)
    assert cmyk.mode == "RGB" and np.abs(np.asarray(cmyk, dtype=float) - reference).mean() < 20


def test_a_multi_picture_jpeg_is_drafted_too(tmp_path):
    img = files.photo("astronaut").convert("RGB").resize(CAMERA)
    path = str(tmp_path / "phone.jpg")  # a phone's JPEG with a second picture after it
    img.save(path, format="MPO", save_all=True, append_images=[img.resize((800, 600))])
    with Image.open(path) as raw:
        assert raw.format == "MPO"
    drafted = load_image(path, min_side=32)
    assert drafted.size == (200, 150)
    full = load_image(path)
    assert full.size == CAMERA
    small = [np.asarray(im.resize((32, 32), Image.Resampling.BILINEAR), float)
             for im in (drafted, full)]
    assert np.abs(small[0] - small[1]).mean() < 1


def test_other_formats_are_decoded_in_full(tmp_path, copies_encoder):
    manifest = load_encoder(copies_encoder).manifest
    png = str(tmp_path / "a.png")
    files.photo("coffee").convert("RGB").resize(CAMERA).save(png)
    assert load_decoded(png, manifest).size == CAMERA
    assert np.array_equal(load_input(png, manifest), to_input(load_image(png), manifest))


def test_the_pixel_limit_is_the_header_size_not_the_draft(tmp_path, monkeypatch):
    path = write_camera_jpeg(str(tmp_path / "a.jpg"), "rocket")
    monkeypatch.setenv(MAX_PIXELS_ENV, str(1600 * 1200 - 1))  # the 1/8 draft would be 30,000
    with pytest.raises(UnreadableImageError, match="1600 x 1200 pixels exceeds the limit"):
        load_input(path, input_manifest("contrastive", 32))
    monkeypatch.setenv(MAX_PIXELS_ENV, str(1600 * 1200))
    assert load_input(path, input_manifest("contrastive", 32)).shape == (32, 32, 3)


@pytest.mark.parametrize("load_truncated", [False, True])
def test_a_truncated_jpeg_fails_at_every_scale(tmp_path, load_truncated):
    full = write_camera_jpeg(str(tmp_path / "full.jpg"), "astronaut")
    data = open(full, "rb").read()
    cut = str(tmp_path / "cut.jpg")
    with open(cut, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
    try:
        for side in (32, 150, 400):  # 1/8, 1/4, 1/2
            with pytest.raises(UnreadableImageError, match="truncated") as err:
                load_image(cut, min_side=side)
            assert err.value.path == cut
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    assert ImageFile.LOAD_TRUNCATED_IMAGES == old


def test_embeddings_through_the_draft_match_the_full_decode(camera_jpegs, copies_encoder):
    """Cosine >= 0.999 per image between the draft and the full decode (measured: 0.9999).

    Not bit-identical, and it cannot be: libjpeg's reduced scales compute each output
    pixel from the low-frequency DCT coefficients of its block (about a box average)
    where the full decode keeps every pixel for the bilinear resize to average; both
    are low-pass filters far below the encoder's 32 px, so the inputs differ by a
    fraction of a grey level. Why 0.999: the vectors must move less than the mildest
    edit that the duplicate threshold has to absorb anyway; for this encoder a
    quality-25 JPEG re-encode of a demo photo moves it to a median cosine of 0.998
    (a crop to 0.95, a 3-8 degree rotation to 0.98).
    """
    encoder = load_encoder(copies_encoder)
    old = full_decode(encoder.manifest)
    draft = np.stack([load_input(p, encoder.manifest) for p in camera_jpegs])
    full = np.stack([load_input(p, old) for p in camera_jpegs])
    assert not np.array_equal(draft, full)  # the draft path really ran
    pixel_diff = np.abs(draft.astype(float) - full).mean()
    cosine = np.sum(encoder.embed(draft) * encoder.embed(full), axis=1)
    print(f"\ndraft vs full decode at 32 px: mean |pixel difference| {pixel_diff:.2f}, "
          f"cosine min {cosine.min():.4f} mean {cosine.mean():.4f}")
    assert pixel_diff < 3
    assert cosine.min() >= 0.999
    # many files in threads: the same arrays as one at a time, and the same vectors
    assert np.array_equal(load_images(camera_jpegs, encoder.manifest).images, draft)
    emb, ok, failures = encoder.embed_paths(camera_jpegs)
    assert ok == list(range(len(camera_jpegs))) and not failures
    np.testing.assert_allclose(emb, encoder.embed(draft), atol=1e-6)


def test_copies_are_edited_from_a_decode_with_room_for_the_edits(camera_jpegs, copies_encoder):
    from lookalike.curation.synthetic_copies import EDIT_HEADROOM

    manifest = load_encoder(copies_encoder).manifest
    img = load_decoded(camera_jpegs[0], manifest, headroom=EDIT_HEADROOM)
    assert img.size == (200, 150)  # at least 4 x 32 = 128: the 0.4 resize leaves 60 px >= 32
    assert min(img.size) * 0.4 >= int(manifest["image_size"])
