"""Whether one picture is found inside another: crops of images that local features
cannot verify (issue #28).

Geometric verification (:mod:`.local_features`) confirms crops wherever an image
has local features. Flat, blurred, repetitive or synthetic pictures (a chessboard,
a colour chart, a motion-blurred clock, a silhouette) give SIFT nothing to match,
not even against an edited copy of themselves
(:func:`~.local_features.recognises_itself`), and their crops were never found.

This check needs no keypoints: the smaller picture, in each of its 8 quarter turns
and transposes and at scales from :data:`SMALLEST` of the larger one's frame to
all of it, is slid over the larger one's thumbnail (normalised correlation). A crop
keeps its pixels, so a window only counts where its mean and contrast are the
template's too (:data:`MEAN_LEVELS`, :data:`CONTRAST_SHARE`): without that, smooth
gradients of unrelated pictures correlate at 0.95 (measured on ``skimage/data``:
a colour chart inside a photographed page); with it, the best window of any two
different photos there reaches 0.94, while crops of 30-70% of the featureless
photos score 0.95-1.00. Thumbnails only (:data:`THUMB_SIDE`): about 0.1 s a pair.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

THUMB_SIDE = 128  # the larger picture's longer side while searching
COARSE_SIDE = 64  # ... at first: a quarter of the work, and most pairs end there
COARSE_SCORE = 0.85  # what is searched again at full size (crops score 0.9+ at half size)
SMALLEST = 0.4  # the template's smallest size, as a share of the larger frame (30% crops: ~0.55)
NUM_SCALES = 14  # from SMALLEST to 1, 7% apart: within what blurred correlation tolerates
BLUR_PX = 1.0  # both blurred a little: resampling shifts edges by a pixel
SHARES = np.geomspace(SMALLEST, 1.0, NUM_SCALES)
MIN_TEMPLATE_PX = 24  # a smaller template matches anything somewhere
FLAT_STD = 4.0  # a template this flat (grey levels) shows nothing to find
MEAN_LEVELS = 16  # a window's mean grey level within this of the template's
CONTRAST_SHARE = 0.25  # a window's contrast (std) within this share of the template's
MIN_SCORE = 0.96  # correlation that counts as "found inside" (see the module docstring)
SIMILAR_AREA = 1.25  # pictures this close in pixels are searched both ways round


def thumbnail(path, side=THUMB_SIDE):
    """``(grey uint8 array, longer side <= side; the file's pixel count)``, None when
    the file cannot be read."""
    from PIL import Image

    from lookalike.images.decode import UnreadableImageError, load_image
    from lookalike.images.local_features import gray_array

    try:
        img = load_image(path, side)  # a JPEG may decode at a reduced scale: not its size
        with Image.open(path) as f:
            area = f.width * f.height
    except (UnreadableImageError, OSError):
        return None
    return gray_array(img, side), area


def _window_stats(cv2, big, w, h):
    """Mean and std of every ``w`` x ``h`` window of ``big``, shaped like matchTemplate's answer."""
    mean = cv2.boxFilter(big, -1, (w, h), normalize=True, anchor=(0, 0),
                         borderType=cv2.BORDER_CONSTANT)
    square = cv2.boxFilter(big * big, -1, (w, h), normalize=True, anchor=(0, 0),
                           borderType=cv2.BORDER_CONSTANT)
    rows, cols = big.shape[0] - h + 1, big.shape[1] - w + 1
    mean, square = mean[:rows, :cols], square[:rows, :cols]
    return mean, np.sqrt(np.maximum(square - mean * mean, 0.0))


def found_inside(big, small):
    """Best correlation of ``small`` (any orientation and scale) inside ``big``; -1 when
    no window of matching brightness and contrast exists (grey uint8 arrays).

    Searched at half size first (:data:`COARSE_SIDE`); only the orientations and
    scales that come near there (:data:`COARSE_SCORE`) are searched at full size.
    """
    if min(small.shape) < MIN_TEMPLATE_PX or min(big.shape) < MIN_TEMPLATE_PX:
        return -1.0  # a tiny picture (a digit's 8 x 8) matches anything once blown up
    coarse = _search(big, small, COARSE_SIDE)
    near = [at for at, score in coarse.items() if score >= COARSE_SCORE]
    if not near:
        return max(coarse.values(), default=-1.0)
    return max(_search(big, small, THUMB_SIDE, near).values(), default=-1.0)


def _search(big, small, side, only=None):
    """``{(orientation, scale): best correlation}`` of ``small`` inside ``big`` at ``big``'s
    longer side ``side``; ``only``: those orientations and scales (with the scales either
    side of each: the best scale at half size may be one off at full size)."""
    from lookalike.images.local_features import _cv2

    cv2 = _cv2()
    s = side / max(big.shape)
    frame = cv2.resize(big, (max(1, round(big.shape[1] * s)), max(1, round(big.shape[0] * s))),
                       interpolation=cv2.INTER_AREA) if s != 1 else big
    frame = cv2.GaussianBlur(frame.astype(np.float32), (0, 0), BLUR_PX)
    fh, fw = frame.shape
    wanted = None if only is None else {(o, n + d) for o, n in only for d in (-1, 0, 1)}
    min_px = MIN_TEMPLATE_PX * side / THUMB_SIDE
    th, tw = small.shape
    found = {}
    for n, share in enumerate(SHARES):
        # Resizing commutes with quarter turns: resize once per shape (upright or
        # lying), then turn the small result.
        for lying in (False, True):
            orientations = [o for o in range(8) if _lies(o) == lying
                            and (wanted is None or (o, n) in wanted)]
            if not orientations:
                continue
            h, w = (tw, th) if lying else (th, tw)  # the turned template's shape
            k = share * min(fw / w, fh / h)
            w, h = int(round(w * k)), int(round(h * k))
            if min(w, h) < min_px or w > fw or h > fh:
                continue
            size = (h, w) if lying else (w, h)  # cv2's (width, height) of the upright one
            t = cv2.GaussianBlur(cv2.resize(small, size, interpolation=cv2.INTER_AREA)
                                 .astype(np.float32), (0, 0), BLUR_PX)
            t_mean, t_std = float(t.mean()), float(t.std())
            if t_std < FLAT_STD:
                continue
            mean, std = _window_stats(cv2, frame, w, h)
            alike = (np.abs(mean - t_mean) <= MEAN_LEVELS) & (np.abs(std / t_std - 1.0)
                                                              <= CONTRAST_SHARE)
            if not alike.any():
                continue
            for o in orientations:
                score = cv2.matchTemplate(frame, _turn(t, o), cv2.TM_CCOEFF_NORMED)
                found[(o, n)] = float(score[alike].max())
    return found


def _lies(orientation):
    """Whether orientation ``o`` of :func:`_turn` swaps height and width."""
    return (orientation // 2 + orientation % 2) % 2 == 1


def _turn(image, orientation):
    """The ``orientation``-th (0-7) quarter turn or transpose, contiguous."""
    turned = np.rot90(image, orientation // 2)
    return np.ascontiguousarray(turned.T if orientation % 2 else turned)


def pair_scores(paths, pairs, num_workers=None):
    """:func:`found_inside` of each pair ``(a, b)`` of keys of ``paths`` ({key: file}), the
    smaller picture inside the larger (both ways when they are about as large); -1 for a
    pair with an unreadable file. Each file is decoded once."""
    pairs = list(pairs)
    keys = sorted({k for pair in pairs for k in pair})
    workers = num_workers or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        thumbs = dict(zip(keys, pool.map(lambda k: thumbnail(paths[k]), keys)))

        def score(pair):
            a, b = (thumbs[k] for k in pair)
            if a is None or b is None:
                return -1.0
            (ga, area_a), (gb, area_b) = a, b
            if area_a > area_b:
                (ga, area_a), (gb, area_b) = (gb, area_b), (ga, area_a)
            best = found_inside(gb, ga)  # the smaller one inside the larger
            if area_b <= SIMILAR_AREA * area_a:
                best = max(best, found_inside(ga, gb))
            return best

        return np.array(list(pool.map(score, pairs)), np.float64)
