"""Exact cosine k-NN on a contiguous float32 matrix: one BLAS product plus argpartition.

The stored vectors are L2-normalised once, when the engine is built, and never
touched again: a query's distance to a stored copy of itself is 0 however many
queries came before (fiftyone-brain's sklearn backend mean-centres its array in
place on the first query, so its distances drift).

Distances are cosine distances, ``1 - cos``, in [0, 2].
"""

import numpy as np


class InvalidEmbeddingsError(ValueError):
    """Vectors that cannot be indexed: wrong shape, mixed dimensions, NaN or inf."""


def as_unit_matrix(vectors, what="embeddings"):
    """Stacks vectors into a C-contiguous float32 matrix of unit rows, or raises."""
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2:
        matrix = vectors.astype(np.float32, copy=True)
    else:
        vectors = list(vectors)
        dims = {np.asarray(v).shape for v in vectors}
        if len(dims) > 1:
            raise InvalidEmbeddingsError(
                f"{what} have mixed shapes {sorted(dims)[:5]}: they come from different encoders; "
                "recompute them with one encoder")
        matrix = (np.stack([np.asarray(v, np.float32) for v in vectors]) if vectors
                  else np.zeros((0, 0), np.float32))
    if matrix.ndim != 2:
        raise InvalidEmbeddingsError(f"{what} must be 1-D vectors, got shape {matrix.shape[1:]}")
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise InvalidEmbeddingsError(
            f"{int(bad.sum())} of {len(matrix)} {what} contain NaN or inf (rows {np.flatnonzero(bad)[:5].tolist()})")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    zero = (norms[:, 0] == 0)
    if zero.any():
        raise InvalidEmbeddingsError(
            f"{int(zero.sum())} of {len(matrix)} {what} are all zeros: cosine distance is undefined")
    return np.ascontiguousarray(matrix / norms)


class ExactEngine:
    """Brute-force cosine search; exact, and fast while N x D fits in memory."""

    name = "exact"

    def __init__(self, matrix):
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)

    @property
    def size(self):
        return len(self.matrix)

    @property
    def dim(self):
        return self.matrix.shape[1] if self.matrix.ndim == 2 else 0

    def distances(self, queries, keep=None):
        """(Q, N') cosine distances to the stored rows (``keep`` selects rows)."""
        rows = self.matrix if keep is None else self.matrix[keep]
        if len(queries) == 1:
            # One query is a matrix-vector product bound by memory bandwidth:
            # extra BLAS threads only contend with other processes for it.
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1, user_api="blas"):
                sims = rows @ queries[0]
            sims = sims[np.newaxis, :]
        else:
            sims = queries @ rows.T
        return np.clip(1.0 - sims, 0.0, 2.0, out=sims)

    def knn(self, queries, k, keep=None, reverse=False):
        """Indices (into ``keep`` if given) and distances of the k nearest, nearest first."""
        dists = self.distances(queries, keep)
        n = dists.shape[1]
        k = min(k if k is not None else n, n)
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(int), empty
        order_key = -dists if reverse else dists
        if k < n:
            part = np.argpartition(order_key, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(n), (len(queries), 1))
        part_d = np.take_along_axis(order_key, part, axis=1)
        order = np.argsort(part_d, axis=1, kind="stable")
        inds = np.take_along_axis(part, order, axis=1)
        return inds, np.take_along_axis(dists, inds, axis=1)

    def radius(self, queries, thresh, keep=None, batch=1024):
        """For each query, indices and distances of rows within ``thresh``."""
        out_i, out_d = [], []
        for start in range(0, len(queries), batch):
            dists = self.distances(queries[start:start + batch], keep)
            for row in dists:
                idx = np.flatnonzero(row <= thresh)
                out_i.append(idx)
                out_d.append(row[idx])
        return out_i, out_d
