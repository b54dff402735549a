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

from lookalike.core.errors import IndexSettingsError, InvalidEmbeddingsError  # noqa: F401 (re-exported)
from lookalike.similarity.distance import cosine_distance

# The one choice of search: "exact" (BLAS), "approximate" (faiss IVF),
# "compressed" (faiss IVF over 8-bit codes, re-ranked from vectors on disk) or
# "auto" (approximate from a size that depends on the search, compressed when
# the floats would not fit in memory; see resolve_engine).
ENGINES = ("auto", "exact", "approximate", "compressed")
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

    ``nlist`` defaults to about sqrt(N) lists, its k-means trained on
    :attr:`TRAIN_PER_LIST` sampled points per list (at 1M x 256: 7.6 s to
    build, where 4 * sqrt(N) lists trained on every vector took 211.9 s, at
    the same recall and query time; ``benchmarks/index.py``); ``nprobe`` (how
    many lists a query visits) is tuned at build time until recall@``k``
    against exact search on sampled queries reaches ``recall_target``
    (:meth:`tune`). Least-similar queries, which an
    inverted file cannot answer, fall back to exact search. Adding rows needs no
    retraining; removing rows re-fills the lists from the trained centroids.
    """

    name = "ivf"
    TRAIN_PER_LIST = 64
    TRAIN_ITERATIONS = 20
    _ADD_CHUNK = 65536  # rows per faiss add: a memory-mapped matrix is never read whole

    def __init__(self, matrix, nlist=None, nprobe=None, recall_target=0.99, k=25, seed=51,
                 faiss_index=None, index_mapped=False):
        super().__init__(matrix)
        n, d = self.matrix.shape
        # A saved index read as a memory map of its file (see _writable): read-only.
        self.index_mapped = bool(index_mapped)
        if faiss_index is not None:
            self.index = faiss_index
        else:
            nlist = int(nlist or default_nlist(n))
            self.index = self._new_index(d, nlist)
            self.index.cp.niter = self.TRAIN_ITERATIONS
            rng = np.random.default_rng(seed)
            # Sorted, so that a memory-mapped matrix is read front to back.
            sample = np.sort(rng.choice(n, min(n, self.TRAIN_PER_LIST * nlist), replace=False))
            self.index.train(np.ascontiguousarray(self.matrix[sample], np.float32))
            self._add_to_index(self.matrix)
        self.nprobe = int(nprobe) if nprobe else self.tune(recall_target, k, seed)
        self.index.nprobe = self.nprobe

    def _new_index(self, d, nlist):
        faiss = _faiss()
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)

    def _add_to_index(self, rows):
        for start in range(0, len(rows), self._ADD_CHUNK):
            self.index.add(np.ascontiguousarray(rows[start:start + self._ADD_CHUNK], np.float32))

    def centroids(self):
        """The trained list centres (nlist x d), e.g. for a pair search over the same rows."""
        return self.index.quantizer.reconstruct_n(0, self.index.nlist)

    def tune(self, recall_target, k, seed, num_queries=200):
        """Smallest power-of-two nprobe whose recall@``k`` reaches ``recall_target`` (measured).

        The sampled queries are stored rows, each left out of its own answer
        (a row always finds itself), as a new image's query would be.
        """
        n = self.size
        rng = np.random.default_rng(seed + 1)
        rows = np.sort(rng.choice(n, min(n, num_queries), replace=False))
        queries = np.ascontiguousarray(self.matrix[rows])
        wanted = min(k + 1, n)

        def others(answers):
            return [[i for i in row if i != own][:wanted - 1] for row, own in zip(answers, rows)]

        exact = others(ExactEngine.knn(self, queries, wanted)[0])
        nprobe = 1
        while True:
            found = others(self._search(queries, wanted, nprobe)[0])
            per_query = np.array([len(set(a) & set(b)) / max(len(a), 1)
                                  for a, b in zip(exact, found)])
            recall = float(per_query.mean())
            # The target must hold for the collection, not just these queries:
            # two standard errors below the sample's mean (200 queries gave
            # 0.991 where 400 others gave 0.969 at the same nprobe).
            lower = recall - 2 * per_query.std() / np.sqrt(len(per_query))
            if lower >= recall_target or nprobe >= self.index.nlist:
                self.measured_recall = float(recall)
                return nprobe
            nprobe *= 2

    def _search(self, queries, k, nprobe, keep=None):
        """(row numbers, similarities) of the k most similar in the probed lists (-1: none)."""
        faiss = _faiss()
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        if keep is not None:
            params.sel = faiss.IDSelectorBatch(np.asarray(keep, dtype=np.int64))
        sims, inds = self.index.search(np.ascontiguousarray(queries, np.float32), k, params=params)
        return inds, sims

    def knn(self, queries, k, keep=None, reverse=False):
        if reverse or (keep is not None and len(keep) <= 10 * k):
            return ExactEngine.knn(self, queries, k, keep=keep, reverse=reverse)
        n = self.size if keep is None else len(keep)
        k = min(k if k is not None else n, n)
        inds, sims = self._search(queries, k, self.nprobe, keep)
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
            np.ascontiguousarray(queries, np.float32), float(1.0 - thresh - self._RANGE_MARGIN),
            params=params)
        out_i, out_d = [], []
        for q in range(len(queries)):
            idx = inds[lims[q]:lims[q + 1]]
            d = self._exact_distances(queries[q], idx, sims[lims[q]:lims[q + 1]])
            inside = d <= thresh
            idx, d = idx[inside], d[inside]
            order = np.argsort(d, kind="stable")
            idx, d = idx[order], d[order]
            out_i.append(_to_positions(idx[np.newaxis], keep)[0] if keep is not None else idx)
            out_d.append(d)
        return out_i, out_d

    _RANGE_MARGIN = 0.0  # the flat lists hold the vectors themselves: their products are exact

    def _exact_distances(self, query, rows, sims):
        return cosine_distance(sims)

    def add(self, rows):
        refill = self._writable()
        super().add(rows)
        if refill:
            self._refill()
        else:
            self._add_to_index(rows)

    def replace(self, positions, rows):
        self._writable()
        super().replace(positions, rows)
        self._refill()

    def remove(self, positions):
        self._writable()
        super().remove(positions)
        self._refill()

    def _refill(self):
        self.index.reset()  # keeps the trained centroids
        self._add_to_index(self.matrix)

    def _writable(self):
        """Before an edit: a mapped index (its lists are views of the file, which faiss
        cannot grow: it aborts the process) is replaced by an index of its own on the
        same trained centroids, empty. Returns True when it was (refill it)."""
        if not self.index_mapped:
            return False
        d, nlist = self.matrix.shape[1], self.index.nlist
        index = self._new_index(d, nlist)
        index.quantizer.add(np.ascontiguousarray(self.centroids(), np.float32))
        index.is_trained = True
        index.nprobe = self.nprobe
        self.index, self.index_mapped = index, False
        return True


class CompressedEngine(IVFEngine):
    """Approximate search over 8-bit codes in memory, re-ranked exactly from the float vectors.

    faiss ``IndexIVFScalarQuantizer`` (8 bits per dimension: a quarter of the
    float32 matrix) finds :attr:`RERANK` times k candidates; their float vectors
    are read from ``matrix`` -- a memory map of the index's ``vectors.npy``
    artefact, so the operating system pages in only the rows a query touches --
    and ordered by their exact distances. Distances returned are exact. For
    collections whose float vectors (and a float IVF copy of them) would not fit
    in memory: ``auto`` picks it by :func:`memory_budget`.
    """

    name = "compressed"
    RERANK = 4
    _RANGE_MARGIN = 0.02  # 8-bit codes err by ~1e-3 in a product; re-checked exactly

    def _new_index(self, d, nlist):
        faiss = _faiss()
        return faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist,
                                             faiss.ScalarQuantizer.QT_8bit,
                                             faiss.METRIC_INNER_PRODUCT)

    def _search(self, queries, k, nprobe, keep=None):
        wide = int(min(self.index.ntotal, max(self.RERANK * k, k + 32)))
        candidates, _ = IVFEngine._search(self, queries, wide, nprobe, keep)
        inds = np.full((len(queries), k), -1, np.int64)
        sims = np.full((len(queries), k), -np.inf, np.float32)
        for q, row in enumerate(candidates):
            row = np.unique(row[row >= 0])  # ascending: the memory map is read in order
            exact = self.matrix[row] @ queries[q]
            top = np.argsort(-exact, kind="stable")[:k]
            inds[q, :len(top)], sims[q, :len(top)] = row[top], exact[top]
        return inds, sims

    def _exact_distances(self, query, rows, sims):
        order = np.argsort(rows)
        exact = np.empty(len(rows), np.float32)
        exact[order] = self.matrix[rows[order]] @ query
        return cosine_distance(exact)


def default_nlist(n):
    """About sqrt(N) lists, each with at least 39 vectors (faiss's minimum to train on)."""
    return max(1, min(round(np.sqrt(n)), n // 39 or 1))


def memory_budget():
    """Bytes an index may hold in memory: ``LOOKALIKE_INDEX_MEMORY_MB``, else half of what is free."""
    import os

    setting = os.environ.get("LOOKALIKE_INDEX_MEMORY_MB")
    if setting:
        try:
            return float(setting) * 1e6
        except ValueError:
            raise IndexSettingsError(
                f"LOOKALIKE_INDEX_MEMORY_MB must be a number of megabytes, got {setting!r}") from None
    import psutil

    return psutil.virtual_memory().available / 2


def fits_in_memory(size, dim):
    """Whether the float engines' memory (the matrix and a float IVF copy) fits the budget."""
    return 2 * 4 * size * max(dim, 1) <= memory_budget()


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


def resolve_engine(name, size, approximate_from=AUTO_APPROXIMATE_FROM, dim=None):
    """"exact", "approximate" or "compressed": what the choice ``name`` means for ``size`` vectors.

    ``approximate_from``: where "auto" turns approximate (the k-NN index's by
    default; the pair search has its own). ``dim``: the vectors' dimension;
    with it, "auto" turns compressed when they would not fit in memory
    (:func:`fits_in_memory`).
    """
    name = _SAVED_SPELLINGS.get(check_engine(name), name)
    if name == "auto":
        name = "approximate" if size >= approximate_from else "exact"
        if dim is not None and not fits_in_memory(size, dim):
            name = "compressed"
    return "exact" if size == 0 else name


ENGINE_CLASSES = {"exact": ExactEngine, "approximate": IVFEngine, "compressed": CompressedEngine}


def make_engine(name, matrix, **params):
    """The engine that the choice ``name`` (one of :data:`ENGINES`) means for ``matrix``."""
    used = resolve_engine(name, len(matrix), dim=matrix.shape[1] if matrix.ndim == 2 else None)
    if params.get("faiss_index") is not None:  # a saved index: its own kind, whatever memory says
        used = ("compressed" if isinstance(params["faiss_index"], _faiss().IndexIVFScalarQuantizer)
                else "approximate")
    if used == "exact":
        return ExactEngine(matrix)
    return ENGINE_CLASSES[used](matrix, **params)
