"""Index artefacts on disk: the unit vectors and their sample ids, next to the brain run.

A new process (the App server, a worker) loads ``vectors.npy`` instead of
reading and decoding every embedding from MongoDB. ``meta.json`` records which
samples held a vector (their count and smallest and largest id) and the encoder
version that wrote the field (see :mod:`lookalike.embeddings`); when any of
these differs now, the artefacts are stale and the index is rebuilt from the
field. Lookalike's own writes refresh the artefacts at once. Edits made
outside lookalike that keep all three (vectors overwritten in place, one
sample's vector swapped for another's) are not detected: call
``index.reload()`` after such edits.

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


def field_state(dataset, field):
    # Which samples hold a vector -- their count and id range, one server-side
    # aggregation instead of reading 100k ids (0.5 s) -- and which encoder wrote
    # them. Not last_modified_at: writing any other field (the distance field of
    # "sort by similarity", a tag) would make every cache look stale.
    import fiftyone as fo

    from lookalike.embeddings import field_record

    count, first, last = dataset.exists(field).aggregate(
        [fo.Count(), fo.Min("_id"), fo.Max("_id")])
    record = field_record(dataset, field) or {}
    return {"count": int(count), "ids": [str(first), str(last)], "version": record.get("version")}


def save(dataset, brain_key, field, matrix, sample_ids, engine=None):
    path = directory(dataset, brain_key)
    os.makedirs(path, exist_ok=True)
    tmp_v, tmp_i = os.path.join(path, "vectors.tmp.npy"), os.path.join(path, "ids.tmp.npy")
    np.save(tmp_v, np.ascontiguousarray(matrix, np.float32))
    np.save(tmp_i, np.asarray(sample_ids, dtype="U24"))
    meta = dict(field=field, dim=int(matrix.shape[1]) if matrix.ndim == 2 else 0,
                size=int(len(sample_ids)), **field_state(dataset, field))
    os.replace(tmp_v, os.path.join(path, "vectors.npy"))
    os.replace(tmp_i, os.path.join(path, "ids.npy"))
    with open(os.path.join(path, "meta.json.tmp"), "w") as f:
        json.dump(meta, f)
    os.replace(os.path.join(path, "meta.json.tmp"), os.path.join(path, "meta.json"))
    faiss_path = os.path.join(path, "ivf.faiss")
    if engine is not None and getattr(engine, "index", None) is not None:
        import faiss

        faiss.write_index(engine.index, faiss_path + ".tmp")
        os.replace(faiss_path + ".tmp", faiss_path)
        with open(os.path.join(path, "ivf.json"), "w") as f:
            json.dump({"nprobe": engine.nprobe, "ntotal": int(engine.index.ntotal)}, f)
    elif os.path.exists(faiss_path):
        os.remove(faiss_path)


def load(dataset, brain_key, field):
    """``(matrix, sample_ids)`` from disk, or None when missing or stale."""
    path = directory(dataset, brain_key)
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        if meta.get("field") != field:
            return None
        if {k: meta.get(k) for k in ("count", "ids", "version")} != field_state(dataset, field):
            logger.info("index artefacts of '%s' are stale: rebuilding from '%s'", brain_key, field)
            return None
        matrix = np.load(os.path.join(path, "vectors.npy"), allow_pickle=False)
        ids = np.load(os.path.join(path, "ids.npy"), allow_pickle=False)
    except (OSError, ValueError):
        return None
    if len(ids) != meta["size"] or matrix.shape != (meta["size"], meta["dim"]):
        return None
    return matrix, ids


def load_faiss(dataset, brain_key, size):
    """``(faiss index, nprobe)`` saved with fresh artefacts of ``size`` rows, or None."""
    path = directory(dataset, brain_key)
    try:
        with open(os.path.join(path, "ivf.json")) as f:
            meta = json.load(f)
        if meta["ntotal"] != size or not os.path.exists(os.path.join(path, "ivf.faiss")):
            return None
        import faiss

        return faiss.read_index(os.path.join(path, "ivf.faiss")), int(meta["nprobe"])
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


def remove(dataset, brain_key):
    shutil.rmtree(directory(dataset, brain_key), ignore_errors=True)
