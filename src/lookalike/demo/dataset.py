"""An offline demo dataset of real images with ground truth.

Built only from images that ship inside installed packages, so it needs no
network:

* the photos of ``skimage/data``: most get realistic edited copies (crop,
  resize, small rotation, horizontal flip, JPEG re-encode, brightness/contrast,
  grayscale, text overlay) and a copy from another viewpoint (``perspective``:
  another camera position, cropped, scaled and relit) that are known
  near-duplicates of their original; the stereo pair ``motorcycle_left`` /
  ``motorcycle_right`` is a real other view; a few photos are kept without
  copies, so they match nothing;
* scikit-learn's 1,797 labelled 8x8 digits, saved as small images for
  label-based (metric learning) work.

Ground-truth fields: ``source`` ("photo" | "digit"), ``ground_truth`` (the photo
group or the digit, as a Classification), ``gt_group`` (photos: the original's
name), ``gt_edit`` (photos: "original", an edit kind of :data:`lookalike.images.edits.EDITS`
or "other_view") and
``gt_unique`` (photos: True when the photo has no copy).
"""

import os
import random
import shutil

import numpy as np
from PIL import Image

from lookalike.core import fo_adapter
from lookalike.images.edits import EDITS, JPEG_QUALITY, apply_edit

DEFAULT_DATASET_NAME = "lookalike-demo"

# Photos kept without copies: nothing else in the dataset shows them.
UNIQUE_PHOTOS = ("coffee", "hubble_deep_field", "microaneurysms", "rocket")

# chessboard_GRAY is chessboard_RGB in gray: one of them is enough.
SKIPPED_PHOTOS = ("chessboard_GRAY",)

# Photos that are already near-duplicates of another one in skimage/data (a
# stereo pair): they join that photo's group as "other_view".
OTHER_VIEWS = {"motorcycle_right": "motorcycle_left"}


def skimage_photo_paths():
    """{name: path} of the photos shipped in ``skimage/data``."""
    import skimage

    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    photos = {}
    for fname in sorted(os.listdir(data)):
        name, ext = os.path.splitext(fname)
        if ext.lower() in (".png", ".jpg") and name not in SKIPPED_PHOTOS:
            photos[name] = os.path.join(data, fname)
    if not photos:
        raise RuntimeError(f"no photos found in {data}: is scikit-image installed completely?")
    return photos


def _save(img, path):
    if path.endswith(".jpg"):
        img.save(path, quality=JPEG_QUALITY)
    else:
        img.save(path)


def write_demo_images(data_dir, digits_size=32, max_digits=None, seed=51):
    """Writes the demo images under ``data_dir``; returns one record per image.

    Each record is a dict with ``filepath`` and the ground-truth fields.
    """
    rng = random.Random(seed)
    photos_dir = os.path.join(data_dir, "photos")
    digits_dir = os.path.join(data_dir, "digits")
    for d in (photos_dir, digits_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)  # ours: rebuilt from scratch so no stale file lingers
        os.makedirs(d)

    records = []
    photos = skimage_photo_paths()
    for name, src in photos.items():
        group = OTHER_VIEWS.get(name, name)
        gdir = os.path.join(photos_dir, group)
        os.makedirs(gdir, exist_ok=True)
        dst = os.path.join(gdir, os.path.basename(src))
        shutil.copyfile(src, dst)  # the original file exactly, whatever its mode
        unique = name in UNIQUE_PHOTOS
        edit = "other_view" if name in OTHER_VIEWS else "original"
        records.append(dict(filepath=dst, source="photo", label=group, gt_group=group,
                            gt_edit=edit, gt_unique=unique))
        if unique or name in OTHER_VIEWS:
            continue
        with Image.open(src) as original:
            original.load()
            for edit in EDITS:
                edited, ext = apply_edit(original, edit, rng)
                path = os.path.join(gdir, f"{name}_{edit}{ext}")
                _save(edited, path)
                records.append(dict(filepath=path, source="photo", label=group,
                                    gt_group=group, gt_edit=edit, gt_unique=False))

    from sklearn.datasets import load_digits

    digits = load_digits()  # ships inside scikit-learn: no download
    n = len(digits.images) if max_digits is None else min(max_digits, len(digits.images))
    for i in range(n):
        label = str(int(digits.target[i]))
        pixels = np.round(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        img = Image.fromarray(pixels)
        if digits_size and digits_size != 8:
            img = img.resize((digits_size, digits_size), Image.Resampling.BILINEAR)
        ldir = os.path.join(digits_dir, label)
        os.makedirs(ldir, exist_ok=True)
        path = os.path.join(ldir, f"digit_{i:04d}.png")
        img.save(path)
        records.append(dict(filepath=path, source="digit", label=label, gt_group=None,
                            gt_edit=None, gt_unique=None))
    return records


def build_demo_dataset(name=DEFAULT_DATASET_NAME, data_dir=None, overwrite=True,
                       digits_size=32, max_digits=None, seed=51):
    """Writes the demo images and loads them into a persistent FiftyOne dataset.

    Args:
        name: the dataset name
        data_dir: where the image files go (default: ``<data dir>/demo``, see
            :func:`lookalike.core.paths.default_data_dir`)
        overwrite: replace an existing dataset of that name (else: error)
        digits_size: side in pixels of the saved digit images (8 = as in sklearn)
        max_digits: keep only the first ``max_digits`` digits (tests)
        seed: seed of the random edit parameters

    Returns:
        the :class:`fiftyone.core.dataset.Dataset`
    """
    import fiftyone as fo

    from lookalike.images.folder_import import ImageImportError, _make_sample, probe_images
    from lookalike.core.paths import check_output_folder, default_data_dir

    if fo.dataset_exists(name) and not overwrite:
        raise ImageImportError(f"dataset '{name}' already exists (pass overwrite=True)")
    data_dir = check_output_folder(data_dir or os.path.join(default_data_dir(), "demo"),
                                   "the demo's images")
    records = write_demo_images(data_dir, digits_size=digits_size, max_digits=max_digits,
                                seed=seed)
    probes = probe_images([r["filepath"] for r in records])
    bad = [p for p in probes if p.error]
    if bad:  # our own files: a failure here is a bug, not bad user input
        raise RuntimeError(f"demo images failed to decode: {[(p.path, p.error) for p in bad]}")

    samples = []
    for rec, probe in zip(records, probes):
        sample = _make_sample(probe, data_dir, labels_from_folders=False)
        sample["source"] = rec["source"]
        sample["ground_truth"] = fo.Classification(label=rec["label"])
        sample["gt_group"] = rec["gt_group"]
        sample["gt_edit"] = rec["gt_edit"]
        sample["gt_unique"] = rec["gt_unique"]
        sample.tags.append(rec["source"])
        samples.append(sample)

    tmp = fo.Dataset()
    try:
        tmp.add_samples(samples, progress=False)
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        tmp.name = name
        tmp.persistent = True
        tmp.info["lookalike_demo"] = {
            "data_dir": data_dir,
            "edits": list(EDITS),
            "unique_photos": list(UNIQUE_PHOTOS),
            "seed": seed,
        }
        tmp.save()
    except BaseException:
        tmp.delete()
        raise
    return tmp


def summarize(dataset):
    """Counts of the demo's parts, for printing."""
    from fiftyone import ViewField as F

    photos = dataset.match(F("source") == "photo")
    return {
        "samples": fo_adapter.exact_count(dataset),
        "photos": len(photos),
        "photo_groups_with_copies": len(set(photos.match(F("gt_edit") != "original")
                                            .distinct("gt_group"))),
        "planted_copies": len(photos.match(F("gt_edit") != "original")),
        "unique_photos": len(photos.match(F("gt_unique") == True)),  # noqa: E712
        "digits": len(dataset.match(F("source") == "digit")),
        "digit_classes": len(dataset.match(F("source") == "digit").distinct("ground_truth.label")),
    }
