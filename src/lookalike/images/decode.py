"""Decoding image files into RGB, whatever their mode, with clear errors.

Every model in lookalike sees 8-bit RGB. Files on disk are more varied: 16-bit
PNGs, palette GIFs with transparency, RGBA, CMYK JPEGs, EXIF-rotated photos,
truncated downloads. :func:`load_image` turns each valid one into RGB and raises
:class:`UnreadableImageError` (with the path and the reason) for the rest;
jobs that skip such files list them as :class:`ImageFailure`.
"""

import contextlib
import os
import stat
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .png .gif .bmp .tif .tiff .webp .ppm .pgm .pbm .pnm .ico".split()
)

# Images over this many pixels are refused from their header, before a pixel is
# decoded: a small file can claim 30000 x 30000 and take gigabytes to decode.
MAX_PIXELS_ENV = "LOOKALIKE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 250_000_000


from lookalike.core.errors import UnreadableImageError, UsageError  # noqa: E402,F401 (re-exported)


@dataclass
class ImageFailure:
    """A file that could not be used as an image, and why: every job lists these, never raises.

    ``sample_id`` is the FiftyOne sample the file belongs to, when there is one.
    """

    path: str
    reason: str
    sample_id: str | None = None


def failure_lines(failures, limit=None):
    """``"  path: reason"`` for each failure (the first ``limit``), then ``"  ... and N more"``."""
    shown = failures if limit is None else failures[:limit]
    lines = [f"  {f.path}: {f.reason}" for f in shown]
    if len(failures) > len(shown):
        lines.append(f"  ... and {len(failures) - len(shown)} more")
    return lines


def has_image_extension(path):
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def max_pixels():
    """The pixel limit: ``$LOOKALIKE_MAX_PIXELS``, else 250,000,000."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{MAX_PIXELS_ENV}={raw!r}: not a positive whole number of pixels")
    return value


# Pillow has its own limit (Image.MAX_IMAGE_PIXELS, about 89 M: a warning above it,
# DecompressionBombError above twice it), checked in open, seek and load. Ours
# replaces it for our decodes, so that the limit is LOOKALIKE_MAX_PIXELS and the
# message names the size: Pillow's check is off only while one of our decodes
# runs (counted, so concurrent decodes never restore it early) and the previous
# value comes back when the last one ends. Setting it once at import would change
# it for every other library in the process for good.
_pillow_limit_lock = threading.Lock()
_pillow_limit_users = 0
_pillow_limit_saved = None


@contextlib.contextmanager
def _our_pixel_limit():
    global _pillow_limit_users, _pillow_limit_saved
    with _pillow_limit_lock:
        if _pillow_limit_users == 0:
            _pillow_limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pillow_limit_users += 1
    try:
        yield
    finally:
        with _pillow_limit_lock:
            _pillow_limit_users -= 1
            if _pillow_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit_saved


def _check_file(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except OSError as e:
        raise UnreadableImageError(path, _os_reason(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImageError(path, "not a regular file")
    if st.st_size == 0:
        raise UnreadableImageError(path, "empty file (0 bytes)")
    return st


def _os_reason(e):
    if isinstance(e, FileNotFoundError):
        return "file not found"  # deleted between our check and Pillow's open
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or str(e) or type(e).__name__


def _check_pixels(path, img, limit):
    w, h = img.size
    if w * h > limit:
        raise UnreadableImageError(
            path, f"{w} x {h} pixels exceeds the limit of {limit} ({MAX_PIXELS_ENV})")


@contextlib.contextmanager
def _decoding(path):
    """Maps everything Pillow and the OS raise for a bad file to :class:`UnreadableImageError`."""
    try:
        with _our_pixel_limit():
            yield
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Only when something else re-enabled Pillow's limit mid-decode.
        raise UnreadableImageError(path, f"refused as a decompression bomb ({e})") from None
    except MemoryError:
        raise UnreadableImageError(path, "not enough memory to decode it") from None
    except OSError as e:
        if e.errno is not None or isinstance(e, FileNotFoundError):
            raise UnreadableImageError(path, _os_reason(e)) from None
        raise UnreadableImageError(path, _decoder_reason(e)) from None
    except (SyntaxError, ValueError, EOFError) as e:
        raise UnreadableImageError(path, _decoder_reason(e)) from None


def _decoder_reason(e):
    reason = str(e) or type(e).__name__
    if "truncated" in reason.lower():
        reason = f"truncated or corrupt image data ({reason})"
    return reason


def image_header_size(path):
    """``(width, height)`` read from the header only; raises :class:`UnreadableImageError`.

    Also for a file over the pixel limit, which is refused: nothing is decoded.
    """
    limit = max_pixels()
    _check_file(path)
    with _decoding(path), Image.open(path) as img:
        _check_pixels(path, img, limit)
        return img.size


# EXIF orientations that turn the picture a quarter turn (transpose, 270, transverse, 90).
_QUARTER_TURNS = frozenset((5, 6, 7, 8))


def displayed_size(img):
    """``(width, height)`` of ``img`` as shown: a JPEG whose EXIF orientation turns it a
    quarter turn has its sides swapped. The same rule as FiftyOne's ``compute_metadata``
    (JPEG only), so our sample metadata and FiftyOne's agree."""
    w, h = getattr(img, "header_size", img.size)  # not a draft's reduced size
    if img.format == "JPEG" and img.getexif().get(0x0112) in _QUARTER_TURNS:
        return h, w
    return w, h


def open_image(path, min_side=None):
    """Opens and fully decodes ``path``; returns the PIL image in its own mode.

    Refused with the reason: a missing, empty or odd file, an image over
    ``LOOKALIKE_MAX_PIXELS`` (from its header, before decoding), a format Pillow
    does not know, truncated or corrupt data. Truncated files fail here even when
    some other library has switched on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``: a
    half-grey image must not become an embedding.

    ``min_side``: the caller only needs both sides at least this long (it resizes
    down to a square of that side). A JPEG is then decoded in the DCT domain at
    the strongest reduction of 1/2, 1/4 or 1/8 whose sides stay at least
    ``min_side``, else in full (Pillow's ``draft``; never smaller, so nothing is
    upsampled from a draft that went too far); every other format in full.
    The checks above are the same: the pixel limit is the header's full size.
    """
    limit = max_pixels()
    _check_file(path)
    with _decoding(path):
        img = Image.open(path)
        try:
            _check_pixels(path, img, limit)
            if getattr(img, "is_animated", False):
                img.seek(0)  # first frame of an animation
                _check_pixels(path, img, limit)
            img.header_size = img.size  # the file's own size, before a draft reduces it
            _reduce(img, min_side)
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                _check_not_truncated(path, img, min_side)
            img.load()
        except BaseException:
            img.close()
            raise
    return img


# JPEG, and MPO: a JPEG with more pictures after the first (phones write them), whose first
# frame is decoded as one.
_DRAFT_FORMATS = ("JPEG", "MPO")


def _reduce(img, min_side):
    """Asks the JPEG decoder for a reduced scale (not yet decoded); a no-op for other formats."""
    if min_side and img.format in _DRAFT_FORMATS:
        img.draft(None, (int(min_side), int(min_side)))


def _check_not_truncated(path, img, min_side):
    # ImageFile.LOAD_TRUNCATED_IMAGES pads missing data silently; decode once
    # more with it off (at the same scale) to detect truncation.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as probe:
            _reduce(probe, min_side)
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


def load_image(path, min_side=None):
    """Decodes ``path`` into an RGB PIL image or raises :class:`UnreadableImageError`.

    ``min_side``: a JPEG may be decoded at a reduced scale, both sides at least
    this long (see :func:`open_image`).
    """
    return to_rgb(open_image(path, min_side))


# Gray levels (0-255) that vary less than this show no structure: a blank or flat image.
FLAT_STD = 2.0


def is_flat(pixels):
    """Whether an image (an array, e.g. the encoder's input) has no structure: its gray
    levels hardly vary. No encoder's distance says anything reliable about such an image
    against a photo: a flat orange lies as near a close-up of an orange disc as its crops."""
    import numpy as np

    a = np.asarray(pixels, dtype=np.float32)
    gray = a.mean(axis=-1) if a.ndim == 3 else a
    return float(gray.std()) < FLAT_STD
