"""Decoding image files into RGB, whatever their mode, with clear errors.

Every model in lookalike sees 8-bit RGB. Files on disk are more varied: 16-bit
PNGs, palette GIFs with transparency, RGBA, CMYK JPEGs, EXIF-rotated photos,
truncated downloads. :func:`load_image` turns each valid one into RGB and raises
:class:`UnreadableImageError` (with the path and the reason) for the rest.
"""

import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .png .gif .bmp .tif .tiff .webp .ppm .pgm .pbm .pnm .ico".split()
)

# Refuse decompression bombs outright instead of warning.
_MAX_PIXELS = 250_000_000


from lookalike.errors import UnreadableImageError  # noqa: F401 (re-exported)


def has_image_extension(path):
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def open_image(path):
    """Opens and fully decodes ``path``; returns the PIL image in its own mode.

    Truncated files fail here even when some other library has switched on
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``: a half-grey image must not become an
    embedding.
    """
    if not os.path.exists(path):
        raise UnreadableImageError(path, "file not found")
    if not os.path.isfile(path):
        raise UnreadableImageError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise UnreadableImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > _MAX_PIXELS:
                raise UnreadableImageError(
                    path, f"{img.width}x{img.height} pixels exceeds the limit of {_MAX_PIXELS}"
                )
            if getattr(img, "is_animated", False):
                img.seek(0)  # first frame of an animation
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                _check_not_truncated(path, img)
            img.load()
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not a recognised image format") from None
    except Image.DecompressionBombWarning as e:
        raise UnreadableImageError(path, f"refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e) or type(e).__name__
        if "truncated" in reason.lower():
            reason = f"truncated or corrupt image data ({reason})"
        raise UnreadableImageError(path, reason) from None
    return img


def _check_not_truncated(path, img):
    # ImageFile.LOAD_TRUNCATED_IMAGES pads missing data silently; decode once
    # more with it off to detect truncation.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as probe:
            probe.load()
    except OSError as e:
        raise UnreadableImageError(path, f"truncated or corrupt image data ({e})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = True


def to_rgb(img, background=(255, 255, 255)):
    """Converts a decoded PIL image of any mode to 8-bit RGB.

    * EXIF orientation is applied, so a phone photo is the right way up.
    * 16-bit and 32-bit integer or float images are scaled by their range, not
      clipped (PIL's own ``convert`` turns most 16-bit images white).
    * Transparency (RGBA, LA, palette with a transparent index) is composited on
      ``background``.
    """
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64) * (255.0 / 65535.0)
        return Image.fromarray(np.round(arr).astype(np.uint8)).convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(img))).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _scale_to_uint8(arr):
    arr = arr.astype(np.float64)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo = 0.0 if arr.min() >= 0 else float(arr.min())
    hi = float(arr.max())
    if hi <= 255 and lo >= 0 and hi > 1:
        return arr.astype(np.uint8)  # an 8-bit image stored in a wide mode
    if hi <= 1.0 and lo >= 0:
        return np.round(arr * 255).astype(np.uint8)  # float image in [0, 1]
    if hi <= 65535 and lo >= 0:
        return np.round(arr * (255.0 / 65535.0)).astype(np.uint8)
    span = hi - lo if hi > lo else 1.0
    return np.round((arr - lo) * (255.0 / span)).astype(np.uint8)


def load_image(path):
    """Decodes ``path`` into an RGB PIL image or raises :class:`UnreadableImageError`."""
    return to_rgb(open_image(path))


def load_rgb_array(path, size=None):
    """Decodes ``path`` into a ``(H, W, 3)`` uint8 array, resized to ``size`` if given."""
    img = load_image(path)
    if size is not None:
        if isinstance(size, int):
            size = (size, size)
        img = img.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
