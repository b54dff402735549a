"""Images of a FiftyOne view as uint8 arrays, decoded in parallel, bad files reported.

Pillow releases the GIL while decoding and resizing, so a thread pool keeps
the model busy. Unreadable or missing files are skipped and returned with their
paths and reasons; they never stop a job.
"""

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lookalike.images import UnreadableImageError, load_image


from lookalike.errors import EmptyViewError  # noqa: F401 (re-exported)


@dataclass
class ImageFailure:
    sample_id: str
    path: str
    reason: str


@dataclass
class LoadedImages:
    images: np.ndarray  # (N, size, size, 3) uint8
    sample_ids: list
    paths: list
    failures: list = field(default_factory=list)  # ImageFailure


def _workers(num_workers):
    return num_workers or min(8, (os.cpu_count() or 1) + 2)


def resize_rgb(img, size):
    """An RGB PIL image as the encoders see it: ``size`` x ``size`` uint8 (bilinear, aspect not kept)."""
    from PIL import Image

    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode_resized(path, size):
    """RGB uint8 array of ``path`` at ``size`` x ``size`` (:func:`resize_rgb`).

    Raises :class:`UnreadableImageError` (path and reason) for every file that is
    missing, not an image, over the pixel limit, truncated or corrupt.
    """
    return resize_rgb(load_image(path), size)


def _decode_one(args):
    path, size = args
    try:
        return decode_resized(path, size), None
    except UnreadableImageError as e:
        return None, e.reason


def load_images(paths, size, sample_ids=None, num_workers=None, progress=None):
    """Decodes ``paths`` at ``size`` px into one array; failures are listed, not raised."""
    sample_ids = list(sample_ids) if sample_ids is not None else [None] * len(paths)
    arrays, ok_ids, ok_paths, failures = [], [], [], []
    with ThreadPoolExecutor(_workers(num_workers)) as pool:
        results = pool.map(_decode_one, [(p, size) for p in paths])
        for i, ((arr, error), path, sid) in enumerate(zip(results, paths, sample_ids), 1):
            if error is None:
                arrays.append(arr)
                ok_ids.append(sid)
                ok_paths.append(path)
            else:
                failures.append(ImageFailure(sid, path, error))
            if progress is not None and (i % 64 == 0 or i == len(paths)):
                progress(i, len(paths))
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return LoadedImages(images, ok_ids, ok_paths, failures)


def load_view_images(view, size, num_workers=None, progress=None):
    """Decodes every image of a FiftyOne view; raises :class:`EmptyViewError` when none is usable."""
    if len(view) == 0:
        raise EmptyViewError("the view is empty: there are no samples to train on")
    ids, paths = view.values(["id", "filepath"])
    loaded = load_images(paths, size, ids, num_workers=num_workers, progress=progress)
    if len(loaded.sample_ids) == 0:
        listed = "; ".join(f"{f.path}: {f.reason}" for f in loaded.failures[:5])
        raise EmptyViewError(f"none of the {len(paths)} images could be read ({listed})")
    return loaded


def iter_batches(paths, size, batch_size, num_workers=None, prefetch=2):
    """Yields ``(indices, images, failures)`` per batch while the next batches decode.

    ``indices`` index into ``paths`` for the images that decoded; ``failures``
    lists ``(index, reason)`` for those that did not.
    """
    pool = ThreadPoolExecutor(_workers(num_workers))
    try:
        starts = iter(range(0, len(paths), batch_size))
        pending = deque()

        def submit():
            start = next(starts, None)
            if start is not None:
                chunk = list(range(start, min(start + batch_size, len(paths))))
                pending.append((chunk, [pool.submit(_decode_one, (paths[i], size)) for i in chunk]))

        for _ in range(prefetch + 1):
            submit()
        while pending:
            chunk, futures = pending.popleft()
            submit()
            idx, arrays, failures = [], [], []
            for i, fut in zip(chunk, futures):
                arr, error = fut.result()
                if error is None:
                    idx.append(i)
                    arrays.append(arr)
                else:
                    failures.append((i, error))
            images = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
            yield idx, images, failures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
