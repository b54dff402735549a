"""Exact cosine k-NN on a contiguous float32 matrix: one BLAS product plus argpartition.

The stored vectors are L2-normalised once, when the engine is built, and never
touched again: a query's distance to a stored copy of itself is 0 however many
queries came before (fiftyone-brain's sklearn backend mean-centres its array in
place on the first query, so its distances drift).

Distances are cosine distances, ``1 - cos``, in [0, 2]
(:mod:`lookalike.similarity.distance`). The choice of engine is one of
:data:`ENGINES`, the same choice everywhere: ``build_index(engine=)``,
``find_duplicates(engine=)``, the CLI's ``--engine`` and the App's forms.
"""

import numpy as np

from lookalike.errors import IndexSettingsError, InvalidEmbeddingsError  # noqa: F401 (re-exported)
from lookalike.similarity.distance import cosine_distance

# The one choice of search: "exact" (BLAS), "approximate" (faiss IVF) or
# "auto" (approximate from a size that depends on the search; see resolve_engine).
ENGINES = ("auto", "exact", "approximate")
# Above this many vectors "auto" picks the approximate engine (see benchmarks/index.py).
AUTO_APPROXIMATE_FROM = 200_000
# Runs saved before the choice had one spelling may say "ivf" (the engine's
# name): their configs must still load.
_SAVED_SPELLINGS = {"ivf": "approximate"}


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
            # A matrix-vector product, bound by memory bandwidth. Not pinned to one
            # thread: threadpoolctl's context costs 3-6 ms per call once FiftyOne
            # has loaded its libraries, more than the product itself (100k x 128:
            # 1.3 ms on two threads, 3.0 ms on one; see benchmarks/index.py).
            sims = (rows @ queries[0])[np.newaxis, :]
        else:
            sims = queries @ rows.T
        return cosine_distance(sims, out=sims)

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

    # -- updates (in place; rows are addressed by position) ---------------------
    def add(self, rows):
        self.matrix = np.ascontiguousarray(np.concatenate([self._rows(), rows]), np.float32)

    def replace(self, positions, rows):
        self.matrix = self.matrix.copy()
        self.matrix[positions] = rows

    def remove(self, positions):
        self.matrix = np.ascontiguousarray(np.delete(self.matrix, positions, axis=0))

    def _rows(self):
        if self.matrix.size == 0:
            return np.zeros((0, self.matrix.shape[1] if self.matrix.ndim == 2 else 0), np.float32)
        return self.matrix

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


class IVFEngine(ExactEngine):
    """Approximate search with faiss ``IndexIVFFlat`` (inner product on unit vectors).

    ``nlist`` defaults to about 4 * sqrt(N) lists; ``nprobe`` (how many lists a
    query visits) is tuned at build time until recall@``k`` against exact search
    on sampled queries reaches ``recall_target``. Least-similar queries, which an
    inverted file cannot answer, fall back to exact search. Adding rows needs no
    retraining; removing rows re-fills the lists from the trained centroids.
    """

    name = "ivf"

    def __init__(self, matrix, nlist=None, nprobe=None, recall_target=0.98, k=25, seed=51,
                 faiss_index=None):
        super().__init__(matrix)
        faiss = _faiss()
        n, d = self.matrix.shape
        if faiss_index is not None:
            self.index = faiss_index
        else:
            nlist = int(nlist or max(1, min(round(4 * np.sqrt(n)), n // 39 or 1)))
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = self.matrix[rng.choice(n, min(n, 256 * nlist), replace=False)]
            self.index.train(train)
            self.index.add(self.matrix)
        self.nprobe = int(nprobe) if nprobe else self.tune(recall_target, k, seed)
        self.index.nprobe = self.nprobe

    def tune(self, recall_target, k, seed, num_queries=200):
        """Smallest power-of-two nprobe reaching ``recall_target`` at ``k`` (measured)."""
        n = self.size
        rng = np.random.default_rng(seed + 1)
        queries = self.matrix[rng.choice(n, min(n, num_queries), replace=False)]
        exact, _ = ExactEngine.knn(self, queries, k)
        nprobe = 1
        while True:
            self.index.nprobe = nprobe
            _, found = self.index.search(queries, min(k, n))
            recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact, found)])
            if recall >= recall_target or nprobe >= self.index.nlist:
                self.measured_recall = float(recall)
                return nprobe
            nprobe *= 2

    def knn(self, queries, k, keep=None, reverse=False):
        if reverse or (keep is not None and len(keep) <= 10 * k):
            return ExactEngine.knn(self, queries, k, keep=keep, reverse=reverse)
        faiss = _faiss()
        n = self.size if keep is None else len(keep)
        k = min(k if k is not None else n, n)
        params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        if keep is not None:
            params.sel = faiss.IDSelectorBatch(np.asarray(keep, dtype=np.int64))
        sims, inds = self.index.search(np.ascontiguousarray(queries, np.float32), k, params=params)
        if keep is not None:
            inds = _to_positions(inds, keep)
        dists = cosine_distance(sims)
        dists[inds < 0] = np.inf  # fewer than k found in the probed lists
        return inds, dists

    def radius(self, queries, thresh, keep=None, batch=1024):
        faiss = _faiss()
        params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        if keep is not None:
            params.sel = faiss.IDSelectorBatch(np.asarray(keep, dtype=np.int64))
        lims, sims, inds = self.index.range_search(
            np.ascontiguousarray(queries, np.float32), float(1.0 - thresh), params=params)
        out_i, out_d = [], []
        for q in range(len(queries)):
            idx = inds[lims[q]:lims[q + 1]]
            d = cosine_distance(sims[lims[q]:lims[q + 1]])
            order = np.argsort(d, kind="stable")
            idx, d = idx[order], d[order]
            out_i.append(_to_positions(idx[np.newaxis], keep)[0] if keep is not None else idx)
            out_d.append(d)
        return out_i, out_d

    def add(self, rows):
        super().add(rows)
        self.index.add(np.ascontiguousarray(rows, np.float32))

    def replace(self, positions, rows):
        super().replace(positions, rows)
        self._refill()

    def remove(self, positions):
        super().remove(positions)
        self._refill()

    def _refill(self):
        self.index.reset()  # keeps the trained centroids
        self.index.add(self.matrix)


def _to_positions(global_inds, keep):
    """Maps row numbers of the full matrix to positions within ``keep``."""
    keep = np.asarray(keep)
    order = np.argsort(keep)
    pos = np.searchsorted(keep, global_inds, sorter=order)
    pos = np.clip(pos, 0, len(keep) - 1)
    mapped = order[pos]
    return np.where(global_inds < 0, -1, mapped)


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("the approximate engine needs faiss: pip install faiss-cpu") from None
    return faiss


def check_engine(name):
    """``name`` if it is one of :data:`ENGINES`; otherwise :class:`IndexSettingsError`."""
    if name not in ENGINES and name not in _SAVED_SPELLINGS:
        raise IndexSettingsError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    return name


def resolve_engine(name, size, approximate_from=AUTO_APPROXIMATE_FROM):
    """"exact" or "approximate": what the choice ``name`` means for ``size`` vectors.

    ``approximate_from``: where "auto" turns approximate (the k-NN index's by
    default; the pair search has its own).
    """
    name = _SAVED_SPELLINGS.get(check_engine(name), name)
    if name == "auto":
        name = "approximate" if size >= approximate_from else "exact"
    return "exact" if size == 0 else name


def make_engine(name, matrix, **params):
    """The engine that the choice ``name`` (one of :data:`ENGINES`) means for ``matrix``."""
    if resolve_engine(name, len(matrix)) == "exact":
        return ExactEngine(matrix)
    return IVFEngine(matrix, **params)
