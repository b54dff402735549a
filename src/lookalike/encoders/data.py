"""Image files as an encoder's input arrays, decoded in parallel, bad files reported.

Each file goes through :func:`~lookalike.encoders.preprocessing.load_input`
with the encoder's manifest (or, for a training run,
:func:`~lookalike.encoders.preprocessing.input_manifest`), which decodes a JPEG
only to the scale the encoder needs when the manifest says so.
Pillow releases the GIL while decoding and resizing, so a thread pool keeps the
model busy. Unreadable or missing files are skipped and returned as
:class:`~lookalike.images.decode.ImageFailure`; they never stop a job.
"""

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lookalike.core import fo_adapter
from lookalike.core import progress as progress_
from lookalike.encoders.preprocessing import load_input
from lookalike.core.errors import EmptyViewError
from lookalike.images.decode import ImageFailure, UnreadableImageError


@dataclass
class LoadedImages:
    images: np.ndarray  # (N, size, size, 3) uint8
    sample_ids: list
    paths: list
    failures: list = field(default_factory=list)  # ImageFailure


def _workers(num_workers):
    return num_workers or min(8, (os.cpu_count() or 1) + 2)


def _decode_one(args):
    path, manifest = args
    try:
        return load_input(path, manifest), None
    except UnreadableImageError as e:
        return None, e.reason


def _empty(manifest):
    size = int(manifest["image_size"])
    return np.zeros((0, size, size, 3), np.uint8)


def load_images(paths, manifest, sample_ids=None, num_workers=None, progress=None):
    """Decodes ``paths`` into one array of the inputs of ``manifest``'s encoder; failures are
    listed, not raised. ``progress(fraction, label)``."""
    sample_ids = list(sample_ids) if sample_ids is not None else [None] * len(paths)
    arrays, ok_ids, ok_paths, failures = [], [], [], []
    with ThreadPoolExecutor(_workers(num_workers)) as pool:
        results = pool.map(_decode_one, [(p, manifest) for p in paths])
        for i, ((arr, error), path, sid) in enumerate(zip(results, paths, sample_ids), 1):
            if error is None:
                arrays.append(arr)
                ok_ids.append(sid)
                ok_paths.append(path)
            else:
                failures.append(ImageFailure(path, error, sid))
            if i % 64 == 0 or i == len(paths):
                progress_.report(progress, i, len(paths), f"loaded {i}/{len(paths)} images")
    images = np.stack(arrays) if arrays else _empty(manifest)
    return LoadedImages(images, ok_ids, ok_paths, failures)


def load_samples_images(samples, manifest, num_workers=None, progress=None):
    """Decodes every image of a FiftyOne view; raises :class:`EmptyViewError` when none is usable."""
    if fo_adapter.exact_count(samples) == 0:
        raise EmptyViewError("the view is empty: there are no samples to train on")
    ids, paths = samples.values(["id", "filepath"])
    loaded = load_images(paths, manifest, ids, num_workers=num_workers, progress=progress)
    if len(loaded.sample_ids) == 0:
        listed = "; ".join(f"{f.path}: {f.reason}" for f in loaded.failures[:5])
        raise EmptyViewError(f"none of the {len(paths)} images could be read ({listed})")
    return loaded


def iter_batches(paths, manifest, batch_size, sample_ids=None, num_workers=None, prefetch=2):
    """Yields ``(indices, images, failures)`` per batch while the next batches decode.

    ``indices`` index into ``paths`` for the images that decoded; ``failures``
    lists an :class:`~lookalike.images.decode.ImageFailure` for each that did not.
    """
    pool = ThreadPoolExecutor(_workers(num_workers))
    try:
        starts = iter(range(0, len(paths), batch_size))
        pending = deque()

        def submit():
            start = next(starts, None)
            if start is not None:
                chunk = list(range(start, min(start + batch_size, len(paths))))
                pending.append((chunk, [pool.submit(_decode_one, (paths[i], manifest))
                                        for i in chunk]))

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
                    failures.append(ImageFailure(paths[i], error,
                                                 None if sample_ids is None else sample_ids[i]))
            images = np.stack(arrays) if arrays else _empty(manifest)
            yield idx, images, failures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
