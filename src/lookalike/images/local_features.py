"""Geometric verification: is this the same object or scene, seen again?

Embeddings find edited copies; a photo of the same object from another
viewpoint can land farther away than an unrelated image. Local features and a
geometric check tell them apart: SIFT keypoints on each image (scaled to at
most 512 px), matches kept by Lowe's ratio test (0.75) and only when mutual
(one-to-one), then a RANSAC homography (5 px): the number of matches it
explains, the *inliers* (when they span a fifth of the image both ways: a shared
caption or watermark alone does not count). Measured on real photos: same-object pairs from
another viewpoint 115-305 inliers, unrelated pairs at most 5. SIFT is not
mirror-invariant, so flipped copies get few inliers -- the embedding finds those.

Features are computed once per image, in parallel (OpenCV releases the GIL),
and cached under ``<data dir>/features/<dataset id>/`` keyed by the file's path,
size and modification time, so an edited or replaced file is recomputed.
Unreadable images and images without enough keypoints (flat, tiny) get no
features: they are counted, and their pairs are left to the embedding.
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lookalike.images.result_cache import ResultCache, file_identity, result_key

MAX_SIDE = 512
MAX_KEYPOINTS = 500
# For parallax (another shot): a camera that moved sees most of its 500 strongest
# keypoints on the nearest big textured plane; 2,000 also cover the rest of the scene
# (off-plane matches of two rendered shots of one room 2-11 -> 15-149).
DENSE_KEYPOINTS = 2000
RATIO = 0.75
RANSAC_PX = 5.0
EPIPOLAR_PX = 1.0  # a fundamental matrix's inlier distance (points to epipolar lines)
MIN_KEYPOINTS = 8  # fewer cannot support a homography with any confidence
MIN_SPREAD = 0.2  # inliers must span this share of the image both ways (see _spread)
FEATURELESS = "too few keypoints (flat or tiny image)"
# RANSAC explains a handful of chance matches between unrelated images (at most
# 5 measured on real photos): a verified pair needs clearly more.
MIN_INLIERS_FLOOR = 12
# The chance level of calibrate_inliers: up to 1 in 20 of its "unrelated" pairs
# may be copies after all without moving it.
CHANCE_PERCENTILE = 95
DEFAULT_MIN_INLIERS = 15  # verify=True where the calibration found no local features
# "Another shot" (parallax): floors of its label-free thresholds, and the share of the
# epipolar inliers that must lie off the main plane. Measured with DENSE_KEYPOINTS on
# rendered rooms (lookalike.demo.scenes): two shots of one room 269-616 epipolar
# inliers, 15-272 (5.6-44%) of them off the main plane; rooms that share only a
# backdrop at most 8 off it; unrelated photos no fundamental matrix; edited copies of
# one photo at most 21 off one plane of 1,171 (repetitive grass: 1.8%), 12 of 41
# for a mirrored page (mirrored copies are verified mirrored; see find_pairs).
MIN_SHOT_INLIERS_FLOOR = 20
MIN_PARALLAX_FLOOR = 12
MIN_PARALLAX_SHARE = 0.05
# The agreement check (see agreement): thumbnails' longer side, cells, blur, what a flat
# cell is (grey-level std), what an agreeing cell is, and how much must agree.
THUMB_SIDE = 128
CELL_PX = 12
BLUR_PX = 1.0
FLAT_STD = 4.0
CELL_NCC = 0.5
MIN_CELLS = 6
MIN_AGREEMENT = 0.65
# verify="auto" verifies views up to this size (features ~23 ms per image, each
# candidate pair ~1.3 ms: about 5 minutes per 10,000 images on 2 cores).
VERIFY_UP_TO = 20_000


@dataclass
class Features:
    points: np.ndarray  # (N, 2) float32, in the scaled image's pixels
    descriptors: np.ndarray  # (N, 128) float32
    # The image in grey, longer side THUMB_SIDE, for the agreement check (None: not kept).
    thumb: np.ndarray = None
    thumb_scale: float = 1.0  # thumbnail pixels per point pixel

    def __len__(self):
        return len(self.points)


def _cv2():
    import cv2

    cv2.setNumThreads(1)  # we parallelise over images; nested threads only contend
    return cv2


def gray_array(image, max_side=MAX_SIDE):
    """A PIL image (any mode) -> uint8 grayscale array with its longer side <= ``max_side``."""
    from PIL import Image

    from lookalike.images.decode import to_rgb

    img = to_rgb(image).convert("L")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def extract(image, max_keypoints=MAX_KEYPOINTS, max_side=MAX_SIDE):
    """SIFT features of a PIL image, or None when it has too few keypoints."""
    cv2 = _cv2()
    sift = cv2.SIFT_create(nfeatures=max_keypoints)
    gray = gray_array(image, max_side)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None or len(keypoints) < MIN_KEYPOINTS:
        return None
    points = np.array([k.pt for k in keypoints], np.float32)
    scale = min(1.0, THUMB_SIDE / max(gray.shape))
    thumb = gray if scale == 1.0 else cv2.resize(
        gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
        interpolation=cv2.INTER_AREA)
    return Features(points, descriptors.astype(np.float32), np.ascontiguousarray(thumb),
                    thumb.shape[1] / gray.shape[1])


def extract_file(path, max_keypoints=MAX_KEYPOINTS, mirrored=False):
    """``(features or None, reason or None)`` of an image file; never raises for bad files.

    ``mirrored``: of the image flipped left to right (SIFT is not mirror-invariant).
    """
    from PIL import ImageOps

    from lookalike.images.decode import UnreadableImageError, load_image

    try:
        img = load_image(path, MAX_SIDE)
        features = extract(ImageOps.mirror(img) if mirrored else img, max_keypoints)
    except UnreadableImageError as e:
        return None, e.reason
    if features is None:
        return None, FEATURELESS
    return features, None


def inliers(a, b, ratio=RATIO, ransac_px=RANSAC_PX, matches=None):
    """RANSAC-homography inliers among mutual ratio-test matches of two feature sets; 0 when
    they do not span the pictures or the pictures disagree where they overlap.
    ``matches``: :func:`mutual_matches` of the two, when already in hand."""
    count, homography, matched = match(a, b, ratio, ransac_px, matches)
    if count and agreement(a, b, homography, matched) < MIN_AGREEMENT:
        return 0
    return count


def match(a, b, ratio=RATIO, ransac_px=RANSAC_PX, matches=None):
    """``(inliers, homography from a's points to b's, (a's inlier points, b's))``:
    ``(0, None, None)`` when the inliers do not span a fifth of both pictures."""
    src, dst = mutual_matches(a, b, ratio) if matches is None else matches
    if len(src) < 4:
        return 0, None, None
    cv2 = _cv2()
    homography, mask = cv2.findHomography(src.reshape(-1, 1, 2), dst.reshape(-1, 1, 2),
                                          cv2.RANSAC, ransac_px)
    if mask is None or homography is None:
        return 0, None, None
    held = mask.ravel().astype(bool)
    if not (_spread(src[held], a.points) and _spread(dst[held], b.points)):
        return 0, None, None
    return int(held.sum()), homography, (src[held], dst[held])


def mutual_matches(a, b, ratio=RATIO):
    """``(a's points, b's points)`` of the one-to-one ratio-test matches of two feature
    sets (empty arrays when either is None or too small)."""
    none = (np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    if a is None or b is None or len(a) < 4 or len(b) < 4:
        return none
    cv2 = _cv2()
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    forward = [(m[0].queryIdx, m[0].trainIdx) for m in
               matcher.knnMatch(a.descriptors, b.descriptors, k=2)
               if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if len(forward) < 4:
        return none
    # One-to-one: the way back, for the matched points of b only (unrelated
    # pairs pass the ratio test rarely, so this is a small search).
    targets = sorted({j for _, j in forward})
    back = matcher.knnMatch(b.descriptors[targets], a.descriptors, k=2)
    best_ba = {targets[m[0].queryIdx]: m[0].trainIdx for m in back
               if len(m) == 2 and m[0].distance < ratio * m[1].distance}
    pairs = [(i, j) for i, j in forward if best_ba.get(j) == i]
    if len(pairs) < 4:
        return none
    return a.points[[i for i, _ in pairs]], b.points[[j for _, j in pairs]]


def inliers_and_parallax(a, b):
    """``(inliers, parallax inliers, off-plane)`` of two feature sets, matched once."""
    matches = mutual_matches(a, b)
    return (inliers(a, b, matches=matches),) + parallax(a, b, matches=matches)


def parallax(a, b, ratio=RATIO, matches=None):
    """``(inliers, off_plane)``: the matches of two feature sets that one fundamental
    matrix explains (MAGSAC, :data:`EPIPOLAR_PX`), and how many of them the best
    homography among them (:data:`RANSAC_PX`) does not.

    A homography maps an edited copy, or a flat thing or a turning camera, onto the
    other picture: every match of such a pair lies on it, bar a few at its tolerance.
    A camera that moved through a 3-D scene sees near and far things shift by
    different amounts; one plane (the back wall) holds most matches and the rest lie
    off it, still on their epipolar lines. Matches of a shared backdrop alone lie on
    one plane. Where the plane's matches or the others do not span a fifth of both pictures
    both ways, or the pictures disagree on the plane (:func:`_plane_agreement`: two
    different photos under one caption), there is no parallax to count (0 off it). ``(0, 0)`` when the inliers do not span a fifth of both
    pictures.
    :func:`shows_parallax` judges the two numbers. ``matches``: :func:`mutual_matches`
    of the two, when already in hand.
    """
    src, dst = mutual_matches(a, b, ratio) if matches is None else matches
    if len(src) < 8:
        return 0, 0
    cv2 = _cv2()
    try:
        _, mask = cv2.findFundamentalMat(src.reshape(-1, 1, 2), dst.reshape(-1, 1, 2),
                                         cv2.USAC_MAGSAC, EPIPOLAR_PX, 0.999, 2000)
    except cv2.error:  # degenerate matches (all on a line or one point): no model
        return 0, 0
    if mask is None:
        return 0, 0
    held = mask.ravel().astype(bool)
    if held.sum() < 8 or not (_spread(src[held], a.points) and _spread(dst[held], b.points)):
        return 0, 0
    src, dst = src[held], dst[held]
    homography, plane = cv2.findHomography(src.reshape(-1, 1, 2), dst.reshape(-1, 1, 2),
                                           cv2.RANSAC, RANSAC_PX)
    if plane is None:
        return int(held.sum()), 0
    off = ~plane.ravel().astype(bool)
    # The plane and what lies off it must both span the pictures, and the pictures must
    # agree on the plane: one meme text on two different photos is two flat strips
    # around pictures that disagree, not a scene seen again.
    for part in (~off, off):
        if not (_spread(src[part], a.points) and _spread(dst[part], b.points)):
            return int(held.sum()), 0
    if off.sum() >= MIN_PARALLAX_FLOOR and _plane_agreement(
            a, b, homography, dst[~off]) < MIN_AGREEMENT:
        return int(held.sum()), 0
    return int(held.sum()), int(off.sum())


def _plane_agreement(a, b, homography, on_b):
    """:func:`agreement` of ``a`` warped onto ``b`` by the main plane's ``homography``,
    counted only inside the hull of the plane's matches (``on_b``, b's points): there a
    second shot of one scene shows the same surface; the rest moved with parallax."""
    if a.thumb is None or b.thumb is None:
        return 1.0
    cv2 = _cv2()
    near = np.asarray(on_b, np.float64) * b.thumb_scale
    within = np.zeros(b.thumb.shape, np.uint8)
    cv2.fillConvexPoly(within, cv2.convexHull(near.astype(np.int32)), 1)
    agreeing, counted = _cell_agreement(a.thumb, b.thumb, _thumb_homography(a, b, homography),
                                        near, within.astype(bool))
    return 1.0 if counted < MIN_CELLS else agreeing / counted


def shows_parallax(evidence, min_shot_inliers, min_parallax):
    """Whether :func:`parallax`'s ``(inliers, off_plane)`` (one pair, or an (n, 2) array)
    make another shot of one scene: enough epipolar inliers, and enough of them, also as
    a share (:data:`MIN_PARALLAX_SHARE`), off the main plane."""
    evidence = np.asarray(evidence)
    inliers, off = evidence[..., 0], evidence[..., 1]
    return ((inliers >= min_shot_inliers) & (off >= min_parallax)
            & (off >= MIN_PARALLAX_SHARE * inliers))


def agreement(a, b, homography, matched=None):
    """Share of the pictures' overlap where they agree, once ``a`` is warped onto ``b``.

    Inliers say that some points match; a shared caption, logo or window frame
    around two different photos matches as well as a whole picture does, and
    spans it (measured: 180 verified pairs of different photos under one meme
    caption, ``benchmarks/copies.py``). So the overlap is cut into cells and each
    cell where either picture has texture is compared (blurred grey levels,
    normalised correlation, so contrast, posterising and JPEG do not matter):
    an edited copy agrees almost everywhere (a sticker or a caption on one side
    disagrees in its own cells), two photos in one frame only in the frame's.
    Both ways (a onto b and b onto a), the way with more cells counted: a crop
    fills its own frame but a small part of its original's. 1.0 when either
    side has no thumbnail or the overlap has too few textured cells to judge.
    """
    if a.thumb is None or b.thumb is None or homography is None:
        return 1.0
    to_b = _thumb_homography(a, b, homography)
    try:
        to_a = np.linalg.inv(to_b)
    except np.linalg.LinAlgError:
        return 0.0
    near_a = near_b = None
    if matched is not None:
        near_a, near_b = (np.asarray(m, np.float64) * f.thumb_scale
                          for m, f in zip(matched, (a, b)))
    best = max((_cell_agreement(a.thumb, b.thumb, to_b, near_b),
                _cell_agreement(b.thumb, a.thumb, to_a, near_a)), key=lambda got: got[1])
    agreeing, counted = best
    return 1.0 if counted < MIN_CELLS else agreeing / counted


def _thumb_homography(a, b, homography):
    """``homography`` (between point pixels) between the thumbnails' pixels instead."""
    def scaling(s):
        return np.diag([s, s, 1.0])

    return scaling(b.thumb_scale) @ np.asarray(homography, np.float64) @ scaling(
        1.0 / a.thumb_scale)


def _cell_agreement(source, target, homography, matched=None, within=None):
    """``(agreeing cells, cells counted)`` of ``source`` warped onto ``target``; cells
    holding a point of ``matched`` (target pixels) are not counted, nor cells outside
    ``within`` (a mask of target pixels)."""
    cv2 = _cv2()
    h, w = target.shape
    warped = cv2.warpPerspective(source, homography, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpPerspective(np.full(source.shape, 255, np.uint8), homography, (w, h),
                                 flags=cv2.INTER_NEAREST) == 255
    if within is not None:
        inside &= within
    x = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), BLUR_PX)
    y = cv2.GaussianBlur(target.astype(np.float32), (0, 0), BLUR_PX)
    rows, cols = h // CELL_PX, w // CELL_PX
    if not rows or not cols:
        return 0, 0
    def cells(image):
        return image[:rows * CELL_PX, :cols * CELL_PX].reshape(
            rows, CELL_PX, cols, CELL_PX).swapaxes(1, 2).reshape(rows * cols, -1)

    full = cells(inside).mean(axis=1) >= 0.95  # cells wholly inside the overlap
    if matched is not None and len(matched):
        r = np.clip((matched[:, 1] // CELL_PX).astype(int), 0, None)
        c = np.clip((matched[:, 0] // CELL_PX).astype(int), 0, None)
        keep = (r < rows) & (c < cols)
        full[r[keep] * cols + c[keep]] = False
    cx, cy = cells(x)[full], cells(y)[full]
    sx, sy = cx.std(axis=1), cy.std(axis=1)
    textured = (sx >= FLAT_STD) | (sy >= FLAT_STD)
    both = (sx >= FLAT_STD) & (sy >= FLAT_STD)
    ncc = ((cx - cx.mean(axis=1, keepdims=True)) * (cy - cy.mean(axis=1, keepdims=True))
           ).mean(axis=1) / np.maximum(sx * sy, 1e-6)
    return int((both & (ncc >= CELL_NCC)).sum()), int(textured.sum())


def _spread(matched, points, share=MIN_SPREAD):
    """Whether ``matched`` span ``share`` of the extent of all ``points``, both ways.

    The same caption or watermark on two unrelated pictures matches as a plane
    (measured on the demo: 72 inliers between the text overlays of grass and
    gravel, in a strip 1/14 of the height): it is not the same picture.
    """
    if len(matched) < 4:
        return False
    extent = np.ptp(points, axis=0)
    return bool(np.all(np.ptp(matched, axis=0) >= share * np.maximum(extent, 1e-6)))


# -- the per-dataset cache ---------------------------------------------------------
_CACHE_WHAT = "the local features cache"  # how a write error names what it was writing


def cache_dir(dataset):
    from lookalike.core import fo_adapter
    from lookalike.core.paths import default_data_dir

    return os.path.join(default_data_dir(), "features", fo_adapter.dataset_id(dataset))


# An entry is our own small binary: magic, count, width, the thumbnail's height, width
# and scale, then the float32 points and descriptors and the uint8 thumbnail (count -1:
# featureless). Not .npz: np.load parses each header with ast, and CPython 3.11's AST
# constructor is not thread-safe (gh-106905: "AST constructor recursion depth mismatch"
# when features load in parallel). An entry of an older format reads as damaged, so it
# is recomputed.
_MAGIC = b"LKSIFT2\0"
_HEADER = np.dtype([("count", "<i4"), ("width", "<i4"), ("thumb_h", "<i4"), ("thumb_w", "<i4"),
                    ("thumb_scale", "<f4")])


def _cache_path(directory, path, mirrored=False, suffix=".sift"):
    identity = file_identity(path)  # the same names as before it was shared
    if identity is None:
        return None
    key = hashlib.sha1(f"{identity}|{MAX_SIDE}|{MAX_KEYPOINTS}|{'mirrored' if mirrored else ''}"
                       .encode()).hexdigest()
    return os.path.join(directory, key[:2], key + suffix)


def _encode(features):
    if features is None:
        return _MAGIC + np.array([(-1, 0, 0, 0, 0.0)], _HEADER).tobytes()
    points = np.ascontiguousarray(features.points, "<f4")
    descriptors = np.ascontiguousarray(features.descriptors, "<f4")
    thumb = (np.zeros((0, 0), np.uint8) if features.thumb is None
             else np.ascontiguousarray(features.thumb, np.uint8))
    return (_MAGIC + np.array([(len(points), descriptors.shape[1], *thumb.shape,
                                features.thumb_scale)], _HEADER).tobytes()
            + points.tobytes() + descriptors.tobytes() + thumb.tobytes())


def _decode(data):
    """``(features or None, reason or None)`` of an entry; ValueError when damaged."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _HEADER.itemsize:
        raise ValueError("not a feature entry")
    count, width, th, tw, scale = np.frombuffer(data, _HEADER, 1, len(_MAGIC))[0].tolist()
    if count == -1:
        return None, FEATURELESS
    start = len(_MAGIC) + _HEADER.itemsize
    floats = count * (2 + width)
    if count < 0 or width < 1 or th < 0 or tw < 0 or len(data) != start + 4 * floats + th * tw:
        raise ValueError("a truncated feature entry")
    body = np.frombuffer(data, "<f4", floats, start)
    thumb = (np.frombuffer(data, np.uint8, th * tw, start + 4 * floats).reshape(th, tw).copy()
             if th * tw else None)
    return Features(body[:2 * count].reshape(count, 2).copy(),
                    body[2 * count:].reshape(count, width).copy(), thumb, float(scale)), None


def _cached(directory, path, mirrored=False, required=False, dense=False):
    """``(features or None, reason or None)``, from the cache or computed and cached.

    An entry that cannot be written (a full disk, a read-only folder) is skipped:
    the features are in hand. ``required`` (filling the cache is the job): it
    raises :class:`~lookalike.core.errors.FileWriteError` instead.
    """
    target = _cache_path(directory, path, mirrored, ".dense" if dense else ".sift"
                         ) if directory else None
    if target is not None and os.path.exists(target):
        try:
            with open(target, "rb") as f:
                return _decode(f.read())
        except (OSError, ValueError):
            pass  # a damaged entry: recompute it
    features, reason = extract_file(path, DENSE_KEYPOINTS if dense else MAX_KEYPOINTS,
                                    mirrored=mirrored)
    if target is not None and (features is not None or reason == FEATURELESS):
        _write_entry(target, _encode(features), required)
    return features, reason


def _write_entry(target, data, required=False):
    """Writes a cache entry; one that cannot be written (a full disk, a read-only folder)
    is skipped, unless ``required`` (it raises :class:`~lookalike.core.errors.FileWriteError`)."""
    from lookalike.core import paths
    from lookalike.core.errors import FileWriteError

    try:
        paths.make_folder(os.path.dirname(target), _CACHE_WHAT)
        # Whole or absent: a killed job leaves no half entry (a cache: not fsynced,
        # a damaged entry is recomputed).
        paths.write_file(target, data, _CACHE_WHAT, durable=False)
    except FileWriteError:
        if required:
            raise


def compute_features(paths, directory=None, num_workers=None, progress=None, mirrored=False,
                     cache_required=False, dense=False):
    """Features (or None) for every path, with ``{position: reason}`` for those without.

    ``directory``: the cache (see :func:`cache_dir`); None computes without caching.
    Entries that cannot be written are skipped, unless ``cache_required``.
    ``progress(fraction, label)``; ``mirrored``: of the images flipped left to right;
    ``dense``: :data:`DENSE_KEYPOINTS` keypoints, not :data:`MAX_KEYPOINTS` (for
    :func:`parallax`, cached apart).
    """
    workers = num_workers or max(1, os.cpu_count() or 1)
    out, reasons = [None] * len(paths), {}
    with ThreadPoolExecutor(workers) as pool:
        for n, (features, reason) in enumerate(pool.map(
                lambda p: _cached(directory, p, mirrored, cache_required, dense), paths)):
            out[n] = features
            if reason is not None:
                reasons[n] = reason
            if progress and ((n + 1) % 32 == 0 or n + 1 == len(paths)):
                progress((n + 1) / max(len(paths), 1),
                         f"local features of {n + 1}/{len(paths)} images")
    return out, reasons


def cache_features(samples, progress=None, chunk=64):
    """Computes the local features of every image of ``samples`` into the dataset's cache.

    What ``find_duplicates`` and ``find_leaks`` with verification would compute
    on first use, ahead of time and in slices for many workers
    (:func:`lookalike.embeddings.shards.queue_features`). Entries already cached are kept, so
    a rerun (or a second worker on the same files) only adds what is missing; an
    entry is written whole or not at all. Returns ``{"images", "cached_before"
    (found in the cache), "without": {path: reason}}``. ``chunk``: images between
    two progress reports. ``progress``: ``progress(fraction, label)``.
    """
    from lookalike.core import faults, fo_adapter

    paths = samples.values("filepath")
    directory = cache_dir(fo_adapter.root_dataset(samples))
    without, cached_before = {}, 0
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        entries = [_cache_path(directory, p) for p in part]
        cached_before += sum(1 for e in entries if e and os.path.exists(e))
        _, reasons = compute_features(part, directory, cache_required=True)
        without.update({part[n]: why for n, why in reasons.items()})
        done = start + len(part)
        if progress:
            progress(done / len(paths), f"local features of {done}/{len(paths)} images")
        faults.point("features.after_chunk")
    return {"images": len(paths), "cached_before": cached_before, "without": without}


def verify_pairs(features, i, j, num_workers=None, progress=None, with_parallax=False,
                 saved=None):
    """Inliers of every pair ``(features[i[k]], features[j[k]])`` (a list or a dict);
    ``with_parallax``: ``(inliers, (n, 2) array of parallax)`` from one matching per pair.
    ``saved``: ``(cache directory, {key of features: entry_name})``: pairs matched before
    are read from the results cache, new ones added to it."""
    if not with_parallax:
        return _pairwise(inliers, features, i, j, num_workers, progress, "verified",
                         saved=saved)
    got = _pairwise(inliers_and_parallax, features, i, j, num_workers, progress, "verified",
                    width=3, saved=saved)
    return got[:, 0].copy(), got[:, 1:].copy()


def parallax_pairs(features, i, j, num_workers=None, saved=None):
    """:func:`parallax` of every pair ``(features[i[k]], features[j[k]])``: an (n, 2) array
    of (inliers, off-plane inliers). ``saved``: see :func:`verify_pairs`."""
    return _pairwise(parallax, features, i, j, num_workers, None, "", width=2, saved=saved)


# Every setting that changes what a pair measure returns: part of the name its results
# are saved under (lookalike.images.result_cache), so changing one starts afresh.
MEASURES_VERSION = 1


def _measure_name(measure):
    settings = (MEASURES_VERSION, RATIO, RANSAC_PX, EPIPOLAR_PX, MIN_SPREAD, MIN_AGREEMENT,
                THUMB_SIDE, CELL_PX, BLUR_PX, FLAT_STD, CELL_NCC, MIN_CELLS, MIN_PARALLAX_FLOOR)
    return f"{measure.__name__}-{hashlib.sha1(repr(settings).encode()).hexdigest()[:12]}"


def entry_name(path, mirrored=False, dense=False):
    """What the features cache calls ``path``'s features: the file (path, size, time) and
    the extraction's settings; None when the file cannot be read."""
    target = _cache_path("", path, mirrored, ".dense" if dense else ".sift")
    return None if target is None else os.path.basename(target)


def _pairwise(measure, features, i, j, num_workers, progress, verb, width=None, saved=None):
    workers = num_workers or max(1, os.cpu_count() or 1)
    pairs = [(_plain(a), _plain(b)) for a, b in zip(i, j)]
    out = np.zeros((len(pairs),) if width is None else (len(pairs), width), np.int32)
    todo, results = list(range(len(pairs))), None
    if saved is not None and saved[0] and pairs:
        directory, names = saved
        results = ResultCache(directory, _measure_name(measure), width or 1)
        keys = [result_key(results.name, names[a], names[b])
                if names.get(a) and names.get(b) else None for a, b in pairs]
        found = results.get(keys)
        todo = [n for n, v in enumerate(found) if v is None]
        for n, v in enumerate(found):
            if v is not None:
                out[n] = v if width else v[0]
    done = len(pairs) - len(todo)
    with ThreadPoolExecutor(workers) as pool:
        for n, c in zip(todo, pool.map(lambda n: measure(features[pairs[n][0]],
                                                         features[pairs[n][1]]), todo)):
            out[n] = c
            done += 1
            if progress and (done % 256 == 0 or done == len(pairs)):
                progress(done / max(len(pairs), 1), f"{verb} {done}/{len(pairs)} pairs")
    if results is not None and todo:
        results.add([keys[n] for n in todo], out[todo].reshape(len(todo), -1))
    return out


def verify_mirrored(features, i, j, counts, min_inliers, paths, cache=None):
    """``counts`` (of :func:`verify_pairs`) with each pair below ``min_inliers`` checked once
    more, ``j`` flipped left to right: SIFT does not match a mirrored copy with its
    original. ``paths``: {key of ``features``: file}, for the mirrored features."""
    counts = np.array(counts, copy=True)
    retry = [n for n, (a, b) in enumerate(zip(i, j)) if counts[n] < min_inliers
             and features.get(_plain(a)) is not None and features.get(_plain(b)) is not None]
    if not retry:
        return counts
    flip = sorted({_plain(j[n]) for n in retry})
    got, _ = compute_features([paths[k] for k in flip], cache, mirrored=True)
    both = {**{("plain", _plain(i[n])): features[_plain(i[n])] for n in retry},
            **{("mirrored", k): f for k, f in zip(flip, got)}}
    names = {key: entry_name(paths[key[1]], mirrored=key[0] == "mirrored") for key in both}
    again = verify_pairs(both, [("plain", _plain(i[n])) for n in retry],
                         [("mirrored", _plain(j[n])) for n in retry], saved=(cache, names))
    counts[retry] = np.maximum(counts[retry], again)
    return counts


def _plain(key):
    return key.item() if hasattr(key, "item") else key


def rerank(inlier_counts, min_inliers):
    """Positions of results in their new order: verified first (most inliers first), then
    the others as they were (nearest first); a stable order, so ties keep their ranks."""
    counts = np.asarray(inlier_counts)
    verified = counts >= min_inliers
    return sorted(range(len(counts)), key=lambda n: (not verified[n],
                                                     -counts[n] if verified[n] else 0))


# -- the label-free inlier threshold ------------------------------------------------

@dataclass
class InlierCalibration:
    min_inliers: int
    rule: str  # how it was set, in words
    copy_inliers: list  # each sampled image against its synthetic viewpoint copy
    random_inliers: list  # sampled images against other images' viewpoint copies
    num_featureless: int  # sampled images without enough keypoints
    # "Another shot" (see parallax): the epipolar inliers that make one, and the
    # matches off one plane that show the camera moved through a 3-D scene.
    min_shot_inliers: int = MIN_SHOT_INLIERS_FLOOR
    min_parallax: int = MIN_PARALLAX_FLOOR
    shot_rule: str = ""

    @property
    def copy_recall(self):
        """Share of the viewpoint copies that :attr:`min_inliers` verifies."""
        c = np.asarray(self.copy_inliers)
        return float((c >= self.min_inliers).mean()) if len(c) else float("nan")


def calibrate_inliers(paths, vectors=None, seed=51, others=3, num_workers=None, progress=None):
    """The inlier count that verifies a pair, from synthetic viewpoint copies, label-free.

    Each readable image of ``paths`` is compared with a copy of itself seen from
    another camera position (:func:`lookalike.images.edits.perspective`) and with the
    viewpoint copies of ``others`` other sampled images: unrelated pairs, one
    side warped like the copies. A sample of a dataset with duplicates holds
    some of them (on the demo a random pair is a copy 1 time in 24, with
    hundreds of inliers), so the others are the ones farthest from the image in
    the embedding (``vectors``, unit rows aligned with ``paths``; without them,
    the next ones in ``paths``). Farthest is not always unrelated: a weak
    encoder (the demo autoencoder) puts some copies far from their original,
    and one such pair (43 inliers among 84 pairs of 0) made the threshold 86,
    which verified nothing. So the chance level is the
    :data:`CHANCE_PERCENTILE` th percentile of the unrelated pairs' inliers, not
    their maximum; the threshold is twice it, and at least :data:`MIN_INLIERS_FLOOR`. Returns an
    :class:`InlierCalibration`, or None when fewer than 2 sampled images have
    features (flat or tiny images: verification cannot help there).
    """
    import random

    from lookalike.images.edits import perspective
    from lookalike.images.decode import UnreadableImageError, load_image

    def features_of(n_path):
        n, path = n_path
        try:  # features are found at MAX_SIDE: a camera-size file decodes at a reduced scale
            img = load_image(path, MAX_SIDE)
        except UnreadableImageError:
            return None
        image = extract(img)
        view_img = perspective(img.convert("RGB"), random.Random(seed + n))
        view = extract(view_img)
        if image is None or view is None:
            return None
        # The flat copy's matches off one plane, at the density parallax is judged at.
        return image, view, parallax(extract(img, DENSE_KEYPOINTS),
                                     extract(view_img, DENSE_KEYPOINTS))[1]

    workers = num_workers or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        got = list(pool.map(features_of, enumerate(paths)))
    readable = [n for n, g in enumerate(got) if g is not None]
    pairs = [got[n][:2] for n in readable]
    flat_parallax = [got[n][2] for n in readable]
    if progress:
        progress(0.7, f"local features of {len(paths)} sampled images and their viewpoint copies")
    if len(pairs) < 2:
        return None
    copies = [inliers(a, b) for a, b in pairs]
    m = min(others, len(pairs) - 1)
    if vectors is not None:
        v = np.asarray(vectors, np.float32)[readable]
        sims = v @ v.T
        np.fill_diagonal(sims, np.inf)
        farthest = np.argsort(sims, axis=1, kind="stable")[:, :m]
    else:
        farthest = (np.arange(len(pairs))[:, None] + np.arange(1, m + 1)) % len(pairs)
    unrelated = [(pairs[k][0], pairs[o][1]) for k in range(len(pairs)) for o in farthest[k]]
    # One matching per pair for both relations: (inliers, epipolar inliers, off plane).
    judged = [inliers_and_parallax(a, b) for a, b in unrelated]
    randoms = [j[0] for j in judged]
    chance = int(np.ceil(np.percentile(randoms, CHANCE_PERCENTILE)))
    threshold = max(MIN_INLIERS_FLOOR, 2 * chance)
    result = InlierCalibration(threshold, "", copies, randoms, len(paths) - len(pairs))
    result.rule = (f"twice the {CHANCE_PERCENTILE}th percentile of the inliers of {len(randoms)} "
                   f"unrelated pairs ({chance}; most {max(randoms)}), at least "
                   f"{MIN_INLIERS_FLOOR}; verifies {100 * result.copy_recall:.0f}% of "
                   f"{len(copies)} synthetic viewpoint copies")
    # Another shot: epipolar inliers beyond twice what unrelated pairs reach, and
    # matches off one plane beyond twice what a flat viewpoint copy shows.
    epipolar_chance = int(np.ceil(np.percentile([j[1] for j in judged], CHANCE_PERCENTILE)))
    flat = int(np.ceil(np.percentile(flat_parallax, CHANCE_PERCENTILE)))
    result.min_shot_inliers = max(MIN_SHOT_INLIERS_FLOOR, 2 * epipolar_chance)
    result.min_parallax = max(MIN_PARALLAX_FLOOR, 2 * flat)
    result.shot_rule = (
        f"another shot: at least {result.min_shot_inliers} epipolar inliers (twice the "
        f"{CHANCE_PERCENTILE}th percentile of the unrelated pairs', {epipolar_chance}, at least "
        f"{MIN_SHOT_INLIERS_FLOOR}) of which {result.min_parallax} and "
        f"{100 * MIN_PARALLAX_SHARE:.0f}% off one plane (twice the {CHANCE_PERCENTILE}th "
        f"percentile of the flat viewpoint copies', {flat}, at least {MIN_PARALLAX_FLOOR})")
    if progress:
        progress(1.0, "inlier threshold calibrated")
    return result


def recognises_itself(paths, min_inliers, seed=51, num_workers=None, cache=None):
    """For each image file, whether verification confirms it against an edited copy of
    itself (cropped, shrunk, re-encoded). Where it does not (flat, blurred, repetitive
    or synthetic images), its failing to verify a pair says nothing: such pairs are
    no evidence of different images.

    The edit is drawn from the file's name and ``seed``, so a file gets one answer
    whatever list it comes in; ``cache`` (see :func:`cache_dir`) keeps each file's
    inlier count beside its features, so a later job (calibration, then duplicates)
    does not redo it."""
    workers = num_workers or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        counts = list(pool.map(lambda p: _self_inliers(p, seed, cache), paths))
    return np.array(counts, int) >= min_inliers


def _self_inliers(path, seed, cache):
    """Inliers of ``path`` against its edited copy; -1 when it cannot be read."""
    import random
    import zlib

    from lookalike.images.decode import UnreadableImageError, load_image
    from lookalike.images.edits import edited_copy

    entry = _cache_path(cache, path, suffix=f".self{int(seed)}") if cache else None
    if entry and os.path.exists(entry):
        try:
            with open(entry, "rb") as f:
                return int(np.frombuffer(f.read(), "<i4", 1)[0])
        except (OSError, ValueError, IndexError):
            pass  # a damaged entry: recompute it
    try:
        img = load_image(path, MAX_SIDE).convert("RGB")
    except UnreadableImageError:
        return -1
    rng = random.Random(int(seed) * 1_000_003 + zlib.crc32(os.path.basename(path).encode()))
    copy = edited_copy(edited_copy(img, "crop", rng), "resize", rng)
    count = int(inliers(extract(img), extract(copy)))
    if entry:
        _write_entry(entry, np.array([count], "<i4").tobytes())
    return count


def confirm_pairs(paths, pairs, min_inliers, cache=None, judge=False):
    """``(same, unjudged)``: which ``pairs`` (of keys of ``paths``, {key: file}) verification
    confirms, one side also mirrored (SIFT does not match a flipped copy); with
    ``judge``, also the unconfirmed ones it cannot judge: one of whose images it
    does not confirm even against an edited copy of itself (:func:`recognises_itself`).
    """
    keys = sorted({k for p in pairs for k in p if paths.get(k)})
    got, _ = compute_features([paths[k] for k in keys], cache)
    features = dict(zip(keys, got))
    counts = verify_pairs(features, [x for x, _ in pairs], [y for _, y in pairs],
                          saved=(cache, {k: entry_name(paths[k]) for k in keys}))
    counts = verify_mirrored(features, [x for x, _ in pairs], [y for _, y in pairs], counts,
                             min_inliers, paths, cache)
    same = {p for p, c in zip(pairs, counts) if c >= min_inliers}
    if not judge:
        return same, set()
    doubtful = sorted({k for p in pairs if p not in same for k in p if paths.get(k)})
    judged = dict(zip(doubtful, recognises_itself([paths[k] for k in doubtful], min_inliers,
                                                  cache=cache)))
    unjudged = {p for p in pairs if p not in same
                and not (judged.get(p[0], False) and judged.get(p[1], False))}
    return same, unjudged
