"""Index artefacts on disk: the unit vectors and their sample ids, next to the brain run.

A new process (the App server, a worker) maps ``vectors.npy`` instead of reading
and decoding every embedding from MongoDB. ``meta.json`` records the field's
sample count and newest ``last_modified_at`` when the artefacts were written;
when either differs now, the artefacts are stale and the caller rebuilds from
the field, so a cache is never silently wrong.

Location: ``<data dir>/indexes/<dataset id>/<brain key>/`` (see
:func:`lookalike.paths.default_data_dir`).
"""

import json
import logging
import os
import shutil

import numpy as np

from lookalike.paths import default_data_dir

logger = logging.getLogger(__name__)


def directory(dataset, brain_key):
    return os.path.join(default_data_dir(), "indexes", str(dataset._doc.id), brain_key)


def _field_state(dataset, field):
    view = dataset.exists(field)
    count, newest = view.aggregate([_count(), _max("last_modified_at")])
    return {"count": int(count), "newest": newest.isoformat() if newest else None}


def _count():
    import fiftyone as fo

    return fo.Count()


def _max(path):
    import fiftyone as fo

    return fo.Max(path)


def save(dataset, brain_key, field, matrix, sample_ids):
    path = directory(dataset, brain_key)
    os.makedirs(path, exist_ok=True)
    tmp_v, tmp_i = os.path.join(path, "vectors.tmp.npy"), os.path.join(path, "ids.tmp.npy")
    np.save(tmp_v, np.ascontiguousarray(matrix, np.float32))
    np.save(tmp_i, np.asarray(sample_ids, dtype="U24"))
    meta = dict(field=field, dim=int(matrix.shape[1]) if matrix.ndim == 2 else 0,
                size=int(len(sample_ids)), **_field_state(dataset, field))
    os.replace(tmp_v, os.path.join(path, "vectors.npy"))
    os.replace(tmp_i, os.path.join(path, "ids.npy"))
    with open(os.path.join(path, "meta.json.tmp"), "w") as f:
        json.dump(meta, f)
    os.replace(os.path.join(path, "meta.json.tmp"), os.path.join(path, "meta.json"))


def load(dataset, brain_key, field):
    """``(matrix, sample_ids)`` from disk, or None when missing or stale."""
    path = directory(dataset, brain_key)
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        if meta.get("field") != field:
            return None
        if {k: meta.get(k) for k in ("count", "newest")} != _field_state(dataset, field):
            logger.info("index artefacts of '%s' are stale: rebuilding from '%s'", brain_key, field)
            return None
        matrix = np.load(os.path.join(path, "vectors.npy"), allow_pickle=False)
        ids = np.load(os.path.join(path, "ids.npy"), allow_pickle=False)
    except (OSError, ValueError):
        return None
    if len(ids) != meta["size"] or matrix.shape != (meta["size"], meta["dim"]):
        return None
    return matrix, ids


def remove(dataset, brain_key):
    shutil.rmtree(directory(dataset, brain_key), ignore_errors=True)
