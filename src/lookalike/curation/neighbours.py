"""Leave-one-out nearest neighbours over an index's engine, in memory-bounded batches.

A sample is never its own neighbour (an indexed sample queried against its own
index is at distance 0 from itself), and optionally neither are its exact
duplicates (distance 0), whose matches say nothing about the threshold.
"""

import numpy as np

# Rows per batch so that one (batch x N) float32 distance block stays near 128 MB.
_BLOCK_FLOATS = 1 << 25


def leave_one_out(engine, rows=None, k=1, gallery=None, exclude_exact=False, progress=None):
    """For each of ``rows`` (positions in ``engine.matrix``), its ``k`` nearest *other* rows.

    ``gallery`` (positions) restricts the candidates. Returns ``(inds, dists)``
    of shape (len(rows), k) holding positions in ``engine.matrix``; -1 / inf
    where fewer than ``k`` other candidates exist.
    """
    rows = np.arange(engine.size) if rows is None else np.asarray(rows, dtype=int)
    gallery = None if gallery is None else np.asarray(gallery, dtype=int)
    n_gallery = engine.size if gallery is None else len(gallery)
    spare = 1 + (16 if exclude_exact else 0)
    kk = min(k + spare, n_gallery)
    out_i = np.full((len(rows), k), -1, dtype=np.int64)
    out_d = np.full((len(rows), k), np.inf, dtype=np.float32)
    if kk == 0 or len(rows) == 0:
        return out_i, out_d
    batch = max(1, min(4096, _BLOCK_FLOATS // max(n_gallery, 1)))
    for start in range(0, len(rows), batch):
        q = rows[start:start + batch]
        inds, dists = engine.knn(engine.matrix[q], kk, keep=gallery)
        inds = np.asarray(inds, dtype=np.int64)
        dists = np.asarray(dists, dtype=np.float32)
        if gallery is not None:
            inds = np.where(inds >= 0, gallery[np.clip(inds, 0, None)], -1)
        bad = (inds == q[:, None]) | (inds < 0) | ~np.isfinite(dists)
        if exclude_exact:
            bad |= dists <= 1e-6
        # The first k acceptable candidates of each row, nearest first.
        order = np.argsort(bad, axis=1, kind="stable")[:, :k]
        sel_i = np.take_along_axis(inds, order, axis=1)
        sel_d = np.take_along_axis(dists, order, axis=1)
        sel_bad = np.take_along_axis(bad, order, axis=1)
        sel_i[sel_bad], sel_d[sel_bad] = -1, np.inf
        width = sel_i.shape[1]
        out_i[start:start + len(q), :width] = sel_i
        out_d[start:start + len(q), :width] = sel_d
        if progress:
            progress(min(start + batch, len(rows)), len(rows))
    return out_i, out_d
