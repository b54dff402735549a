"""Edits that make a near-duplicate of an image: the demo's planted copies and the
synthetic copies that calibrate a duplicate threshold without labels.

Crop, resize, small rotation, horizontal flip, JPEG re-encode, brightness and
contrast, grayscale and a text overlay (:data:`COPY_EDITS`): what happens to a
picture between being posted, screenshotted, thumbnailed and watermarked. And
``perspective`` (:data:`VIEWPOINT_EDITS`): the same scene from another camera
position, which an embedding often puts farther away; it calibrates geometric
verification, not the embedding's duplicate threshold.
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from lookalike.core.errors import UsageError

COPY_EDITS = (
    "crop",
    "resize",
    "rotate",
    "hflip",
    "jpeg",
    "brightness_contrast",
    "grayscale",
    "text_overlay",
)
VIEWPOINT_EDITS = ("perspective",)
EDITS = COPY_EDITS + VIEWPOINT_EDITS


def _rgb(img):
    from lookalike.images.decode import to_rgb

    return to_rgb(img)


def apply_edit(img, edit, rng):
    """Returns ``(edited image, file extension)`` for one edit kind."""
    img = _rgb(img)
    w, h = img.size
    if edit == "crop":
        fx, fy = rng.uniform(0.05, 0.12), rng.uniform(0.05, 0.12)
        left, top = int(w * fx), int(h * fy)
        right, bottom = w - int(w * rng.uniform(0.05, 0.12)), h - int(h * rng.uniform(0.05, 0.12))
        return img.crop((left, top, right, bottom)), ".png"
    if edit == "resize":
        scale = rng.uniform(0.4, 0.6)
        size = (max(16, int(w * scale)), max(16, int(h * scale)))
        return img.resize(size, Image.Resampling.LANCZOS), ".png"
    if edit == "rotate":
        angle = rng.choice([-1, 1]) * rng.uniform(3, 8)
        fill = tuple(int(c) for c in np.asarray(img).reshape(-1, 3).mean(axis=0))
        return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill), ".png"
    if edit == "perspective":
        return perspective(img, rng), ".png"
    if edit == "hflip":
        return ImageOps.mirror(img), ".png"
    if edit == "jpeg":
        return img, ".jpg"  # the re-encode happens on save (quality 25; see reencode_jpeg)
    if edit == "brightness_contrast":
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(1.15, 1.35))
        return ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 0.85)), ".png"
    if edit == "grayscale":
        return img.convert("L"), ".png"
    if edit == "text_overlay":
        img = img.copy()
        draw = ImageDraw.Draw(img)
        size = max(10, h // 14)
        font = ImageFont.load_default(size=size)
        draw.text(
            (w // 20, h - size * 2),
            "(c) lookalike 2026",
            fill=(255, 255, 255),
            font=font,
            stroke_width=max(1, size // 12),
            stroke_fill=(0, 0, 0),
        )
        return img, ".png"
    raise UsageError(f"unknown edit {edit!r}; choose from {EDITS}")


def perspective(img, rng, strength=(0.08, 0.18)):
    """The same scene from another camera position: a random homography, then a crop,
    a scale and a lighting change.

    Each corner moves inwards by 8-18% of the side (a camera turned and moved),
    the warped picture is cropped to what the camera would still see, scaled
    by 0.6-0.9 and its brightness changed by -15..+15%.
    """
    w, h = img.size
    lo, hi = strength
    # Where the image's corners land: pulled in by a random share of the side.
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    sign = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    moved = [(x + sx * w * rng.uniform(lo, hi) * rng.uniform(0.2, 1.0),
              y + sy * h * rng.uniform(lo, hi) * rng.uniform(0.2, 1.0))
             for (x, y), (sx, sy) in zip(corners, sign)]
    # PIL's perspective transform maps output pixels to input pixels: solve for
    # the 8 coefficients that send each moved corner back to its original.
    a, b = [], []
    for (x, y), (u, v) in zip(moved, corners):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.extend([u, v])
    coeffs = np.linalg.solve(np.array(a, float), np.array(b, float))
    fill = tuple(int(c) for c in np.asarray(img).reshape(-1, 3).mean(axis=0))
    warped = img.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs),
                           resample=Image.Resampling.BILINEAR, fillcolor=fill)
    # Crop to the inner box of the moved corners (what the new camera sees).
    left = int(max(moved[0][0], moved[3][0]))
    right = int(min(moved[1][0], moved[2][0]))
    top = int(max(moved[0][1], moved[1][1]))
    bottom = int(min(moved[2][1], moved[3][1]))
    if right - left > 16 and bottom - top > 16:
        warped = warped.crop((left, top, right, bottom))
    scale = rng.uniform(0.6, 0.9)
    warped = warped.resize((max(16, int(warped.width * scale)), max(16, int(warped.height * scale))),
                           Image.Resampling.LANCZOS)
    return ImageEnhance.Brightness(warped).enhance(rng.uniform(0.85, 1.15))


JPEG_QUALITY = 25


def reencode_jpeg(img, quality=JPEG_QUALITY):
    """``img`` after a JPEG round trip in memory."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def edited_copy(img, edit, rng):
    """The edited image itself (JPEG edits re-encoded in memory), as RGB."""
    out, ext = apply_edit(img, edit, rng)
    if ext == ".jpg":
        return reencode_jpeg(out)
    return out.convert("RGB")
