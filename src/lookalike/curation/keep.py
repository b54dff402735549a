"""Which sample of a duplicate group stays, and which files are the same bytes.

The file side of near-duplicate curation, read from the image files alone (no
encoder): a SHA-256 per file pairs byte-identical copies, and a keep policy
(:data:`KEEP_POLICIES`) picks the sample each group keeps, from the image
header's size or from the sharpness of the decoded image. An unreadable file
never wins over a readable one.
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lookalike.core.errors import CurationError

KEEP_POLICIES = ("first", "largest", "sharpest")


def check_keep_policy(keep):
    """``keep`` if it is one of :data:`KEEP_POLICIES`; otherwise :class:`CurationError`."""
    if keep not in KEEP_POLICIES:
        raise CurationError(f"unknown keep policy {keep!r}; choose from {KEEP_POLICIES}")
    return keep


def file_hash(path, chunk=1 << 20):
    """The SHA-256 of the file's bytes (hex), or None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
    except OSError:
        return None  # missing or unreadable: it cannot be a byte-identical copy
    return h.hexdigest()


def hash_pairs(paths, num_workers=8):
    """``(i, j)`` pairs chaining files with identical content, and the hashes."""
    with ThreadPoolExecutor(num_workers) as pool:
        hashes = list(pool.map(file_hash, paths))
    first = {}
    i, j = [], []
    for n, h in enumerate(hashes):
        if h is None:
            continue
        if h in first:
            i.append(first[h])
            j.append(n)
        else:
            first[h] = n
    return np.asarray(i, np.int64), np.asarray(j, np.int64), hashes


def sharpness(path, side=256):
    """Variance of the Laplacian of the grayscale image at ``side`` px (higher = sharper).

    Measured at one common size: at its own resolution a smaller copy would
    look sharper, its edges falling on fewer pixels. An unreadable file (deleted
    since import, over the pixel limit, truncated) scores 0.0, as flat as a
    blank image: never above a readable one, and a group of only unreadable
    files still has its sharpest (the "within 3%" test holds at 0, not at -1).
    """
    from PIL import Image

    from lookalike.images.decode import UnreadableImageError, load_image

    try:
        img = load_image(path).convert("L")
    except UnreadableImageError:
        return 0.0
    import cv2

    a = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
    # OpenCV's 4-neighbour Laplacian, without the border rows it has to invent.
    return float(cv2.Laplacian(a, cv2.CV_32F, ksize=1)[1:-1, 1:-1].var())


def image_size_key(path):
    """(pixels, bytes) of an image file, read from its header; (-1, -1) when unreadable.

    Unreadable includes deleted since import and over the pixel limit: a file
    that cannot be embedded or shown loses.
    """
    from lookalike.images.decode import UnreadableImageError, image_header_size

    try:
        w, h = image_header_size(path)
        return (w * h, os.path.getsize(path))
    except (UnreadableImageError, OSError):
        return (-1, -1)


def choose_kept(group, keep, paths):
    """The position to keep in ``group`` (positions in view order; ties go to the first)."""
    check_keep_policy(keep)
    if keep == "first":
        return min(group)
    if keep == "largest":
        sizes = {p: image_size_key(paths[p]) for p in group}
        return max(sorted(group), key=lambda p: sizes[p])
    # "sharpest": within 3% of the sharpest counts as as sharp; then the largest wins.
    scores = {p: sharpness(paths[p]) for p in group}
    best = max(scores.values())
    sharp = [p for p in sorted(group) if scores[p] >= 0.97 * best]
    sizes = {p: image_size_key(paths[p]) for p in sharp}
    return max(sharp, key=lambda p: sizes[p])
