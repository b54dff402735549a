"""Pair search: every pair of unit vectors within a cosine distance, and their connected groups.

Vectors in, pairs out: nothing here knows of FiftyOne or of curation. Pairs
come exactly, as tiled matrix products over the upper triangle (each pair
computed once), or for large collections from a faiss IVF range search (see
``benchmarks/curation.py`` for speed and recall against exact). The engine
choice is the one of :data:`lookalike.similarity.engine.ENGINES`; "auto" turns
approximate from :data:`APPROXIMATE_FROM` vectors, earlier than the k-NN
index does, because a pair search costs N^2 where a query costs N.

Pairs are ``(i, j, d)`` arrays with ``i < j``; :func:`groups_from_pairs` joins
them into connected groups (a chain a~b~c is one group, not {a, b} and {c}),
which both ``lookalike.curation.find_duplicates`` and the brain index's own
``find_duplicates`` use.
"""

import numpy as np

from lookalike.progress import report
from lookalike.similarity.distance import cosine_distance, similarity_cutoff
from lookalike.similarity.engine import check_engine, resolve_engine

# From this many vectors "auto" searches pairs with faiss IVF instead of exactly.
APPROXIMATE_FROM = 50_000
_TILE_FLOATS = 1 << 25  # ~128 MB of float32 per tile of the exact search


def exact_pairs(matrix, threshold, progress=None):
    """All ``(i, j, distance)`` with i < j and cosine distance <= ``threshold``, exactly.

    ``progress``: ``progress(fraction, label)``.
    """
    n = len(matrix)
    rows_per_tile = max(1, min(4096, _TILE_FLOATS // max(n, 1)))
    out_i, out_j, out_d = [], [], []
    cutoff = similarity_cutoff(threshold)
    for start in range(0, n, rows_per_tile):
        stop = min(n, start + rows_per_tile)
        # Only columns from ``start`` on: the lower triangle was seen already.
        sims = matrix[start:stop] @ matrix[start:].T
        a, b = np.nonzero(sims >= cutoff)
        i, j = a + start, b + start
        upper = j > i
        i, j = i[upper], j[upper]
        d = cosine_distance(sims[a[upper], b[upper]])
        ok = d <= threshold
        out_i.append(i[ok])
        out_j.append(j[ok])
        out_d.append(d[ok])
        report(progress, stop, n, f"searched {stop}/{n} vectors")
    return _concat(out_i, out_j, out_d)


def pair_search_ivf(matrix, nlist=None, nprobe=4, seed=51):
    """A faiss IVF index built for a pair search: quick to train, few lists probed.

    Near-duplicates are so close that they almost always share the query's
    nearest lists, so the search needs neither the k-NN index's fine partition
    nor its wide probing. About 2 * sqrt(N) lists, k-means on 39 points per list
    for 10 iterations, 4 lists probed: at N = 100k (d = 256) 3 s in all, at 1M
    90 s, every planted pair found (``benchmarks/curation.py``).
    """
    import faiss

    n, d = matrix.shape
    nlist = int(nlist or max(1, min(int(2 * np.sqrt(n)), n // 39 or 1)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    rng = np.random.default_rng(seed)
    index.train(matrix[rng.choice(n, min(n, 39 * nlist), replace=False)])
    index.add(matrix)
    index.nprobe = int(min(nprobe, nlist))
    return index


def approximate_pairs(matrix, threshold, reuse=None, nprobe=4, progress=None, batch=16384):
    """Pairs within ``threshold`` from a faiss IVF range search.

    ``reuse``: an IVFEngine over the same rows, whose faiss index is searched
    instead of building one with :func:`pair_search_ivf`. ``progress``:
    ``progress(fraction, label)``.
    """
    import faiss

    if reuse is not None and getattr(reuse, "index", None) is not None:
        index, nprobe = reuse.index, max(nprobe, reuse.nprobe)
    else:
        index = pair_search_ivf(matrix, nprobe=nprobe)
    params = faiss.SearchParametersIVF(nprobe=int(min(nprobe, index.nlist)))
    out_i, out_j, out_d = [], [], []
    n = len(matrix)
    for start in range(0, n, batch):
        q = np.ascontiguousarray(matrix[start:start + batch], np.float32)
        lims, sims, inds = index.range_search(q, similarity_cutoff(threshold), params=params)
        counts = np.diff(lims).astype(np.int64)
        i = np.repeat(np.arange(start, start + len(q)), counts)
        d = cosine_distance(sims)
        # Each pair once, from its lower row (or from whichever end found it).
        keep = (inds != i) & (d <= threshold)
        a, b = np.minimum(i, inds)[keep], np.maximum(i, inds)[keep]
        out_i.append(a)
        out_j.append(b.astype(np.int64))
        out_d.append(d[keep])
        done = min(start + batch, n)
        report(progress, done, n, f"searched {done}/{n} vectors")
    i, j, d = _concat(out_i, out_j, out_d)
    if len(i):
        _, first = np.unique(i * np.int64(n) + j, return_index=True)
        i, j, d = i[first], j[first], d[first]
    return i, j, d


def vector_pairs(vectors, threshold, engine="auto", reuse=None, progress=None):
    """``(engine used, i, j, d)``: every pair of rows within ``threshold``, i < j.

    ``engine``: one of :data:`~lookalike.similarity.engine.ENGINES`; the engine
    used is "exact" or "approximate". ``reuse``: the run's engine when
    ``vectors`` are all its rows (its faiss index is searched). ``progress``:
    ``progress(fraction, label)``.
    """
    used = resolve_engine(check_engine(engine), len(vectors), approximate_from=APPROXIMATE_FROM)
    if used == "exact":
        i, j, d = exact_pairs(vectors, threshold, progress=progress)
    else:
        i, j, d = approximate_pairs(vectors, threshold, reuse=reuse, progress=progress)
    return used, i, j, d


def groups_from_pairs(n, i, j):
    """Connected groups (ascending positions, size >= 2) of the graph with edges (i, j)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return []
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] >= 2)
    order = np.argsort(labels[members], kind="stable")
    members = members[order]
    splits = np.flatnonzero(np.diff(labels[members])) + 1
    return [g.tolist() for g in np.split(members, splits)]


def groups_within(vectors, threshold, engine="auto", reuse=None):
    """Connected groups of the rows of ``vectors`` whose pairs lie within ``threshold``."""
    _, i, j, _ = vector_pairs(vectors, threshold, engine, reuse=reuse)
    return groups_from_pairs(len(vectors), i, j)


def _concat(i, j, d):
    if not i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(i).astype(np.int64), np.concatenate(j).astype(np.int64),
            np.concatenate(d).astype(np.float32))
