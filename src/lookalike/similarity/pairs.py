"""Pair search: every pair of unit vectors within a cosine distance, and their connected groups.

Vectors in, pairs out: nothing here knows of FiftyOne or of curation. Pairs
come exactly, as tiled matrix products over the upper triangle (each pair
computed once), or for large collections from a faiss IVF range search (see
``benchmarks/curation.py`` for speed and recall against exact). The engine
choice is the one of :data:`lookalike.similarity.engine.ENGINES`; "auto" turns
approximate from :data:`APPROXIMATE_FROM` vectors, earlier than the k-NN
index does, because a pair search costs N^2 where a query costs N.

Pairs are ``(i, j, d)`` arrays with ``i < j``; :func:`groups_from_pairs` joins
them into connected groups (a chain a~b~c is one group, not {a, b} and {c}) and
cuts single pairs that bridge two otherwise separate groups; both
``lookalike.curation.find_duplicates`` and the brain index's own
``find_duplicates`` use it.
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


def groups_from_pairs(n, i, j, split_bridges=True, unbreakable=None):
    """Connected groups (ascending positions, size >= 2) of the graph with edges (i, j).

    ``split_bridges``: a single pair never joins two groups that are otherwise
    apart. Connected components merge whole groups through one chance pair (on
    the demo: the grass copies and the gravel copies, through one grass-gravel
    pair); so an edge whose removal splits its group into two parts of at least
    2 members each (a *bridge*) is cut, the most even split first, until none is
    left. A lone member hanging on one pair stays: that is a copy. ``unbreakable``
    (a boolean mask over the edges, e.g. byte-identical files) marks edges never cut.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return []
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] >= 2)
    order = np.argsort(labels[members], kind="stable")
    members = members[order]
    splits = np.flatnonzero(np.diff(labels[members])) + 1
    groups = [g.tolist() for g in np.split(members, splits)]
    if not split_bridges or not any(len(g) >= 4 for g in groups):
        return groups
    fixed = set()
    if unbreakable is not None:
        fixed = {(int(a), int(b)) for a, b in zip(i[unbreakable], j[unbreakable])}
        fixed |= {(b, a) for a, b in fixed}
    edge_label = labels[i]
    out = []
    for group in groups:
        if len(group) < 4:
            out.append(group)
            continue
        inside = edge_label == labels[group[0]]
        out.extend(_split_at_bridges(group, i[inside].tolist(), j[inside].tolist(), fixed))
    out.sort(key=lambda g: g[0])
    return out


def _split_at_bridges(group, i, j, fixed):
    """``group`` split at its bridges with >= 2 members on both sides (see groups_from_pairs)."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(group)
    graph.add_edges_from(zip(i, j))
    pending, done = [set(group)], []
    while pending:
        part = pending.pop()
        sub = graph.subgraph(part)
        cut = _most_even_bridge(sub, fixed)
        if cut is None:
            done.append(sorted(part))
            continue
        sub = nx.Graph(sub)
        sub.remove_edge(*cut)
        pending.extend(set(c) for c in nx.connected_components(sub))
    return done


def _most_even_bridge(graph, fixed):
    """The bridge of ``graph`` (connected) leaving the most members on its smaller side (>= 2)."""
    import networkx as nx

    n = graph.number_of_nodes()
    if n < 4:
        return None
    root = next(iter(graph))
    parent = nx.dfs_predecessors(graph, root)
    # Every bridge is an edge of any DFS tree; the child's subtree is one side.
    below = dict.fromkeys(graph, 1)
    for node in reversed(list(nx.dfs_preorder_nodes(graph, root))):
        if node in parent:
            below[parent[node]] += below[node]
    best, best_side = None, 1
    for u, v in nx.bridges(graph):
        if (u, v) in fixed:
            continue
        child = v if parent.get(v) == u else u
        side = min(below[child], n - below[child])
        if side > best_side:
            best, best_side = (u, v), side
    return best


def split_at_weak_pairs(groups, i, j, strong, d):
    """Each of ``groups`` split into the parts that its ``strong`` pairs join.

    ``(i, j)`` are all pairs (positions), ``strong`` a boolean mask over them
    (e.g. geometrically verified, or not checkable) and ``d`` their distances.
    A part needs at least 2 members; a member joined to the others by weak
    pairs only (a flipped copy, which local features do not verify) goes with
    its nearest partner (by ``d``) in a part, or through its loose partners
    with theirs. A group whose strong pairs make fewer than 2 parts stays whole.
    """
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    strong, d = np.asarray(strong, bool), np.asarray(d, np.float64)
    if not groups or len(i) == 0:
        return groups
    label = np.full(max(max(g) for g in groups) + 1, -1, np.int64)
    for n, group in enumerate(groups):
        label[group] = n
    li = np.where(i < len(label), label[np.clip(i, 0, len(label) - 1)], -1)
    lj = np.where(j < len(label), label[np.clip(j, 0, len(label) - 1)], -1)
    inside = np.flatnonzero((li == lj) & (li >= 0))
    by_group = np.split(inside[np.argsort(li[inside], kind="stable")],
                        np.flatnonzero(np.diff(np.sort(li[inside]))) + 1)
    edges_of = {int(li[e[0]]): e for e in by_group if len(e)}
    out = []
    for n, group in enumerate(groups):
        e = edges_of.get(n, np.zeros(0, np.int64))
        local = {p: m for m, p in enumerate(group)}
        gi = np.array([local[p] for p in i[e].tolist()], np.int64)
        gj = np.array([local[p] for p in j[e].tolist()], np.int64)
        parts = groups_from_pairs(len(group), gi[strong[e]], gj[strong[e]], split_bridges=False)
        if len(parts) < 2:
            out.append(group)
            continue
        out.extend(sorted(group[m] for m in part)
                   for part in _attach_loose(len(group), parts, gi, gj, d[e]))
    out.sort(key=lambda g: g[0])
    return out


def _attach_loose(n, parts, i, j, d):
    """``parts`` with every other member of ``range(n)`` joined to its nearest partner's part."""
    part_of = {m: k for k, part in enumerate(parts) for m in part}
    order = np.argsort(d, kind="stable")
    changed = True
    while changed:  # a member may reach a part only through another loose one
        changed = False
        for e in order:
            a, b = int(i[e]), int(j[e])
            if (a in part_of) != (b in part_of):
                loose, anchor = (b, a) if a in part_of else (a, b)
                part_of[loose] = part_of[anchor]
                parts[part_of[anchor]].append(loose)
                changed = True
    return parts


def groups_within(vectors, threshold, engine="auto", reuse=None):
    """Connected groups of the rows of ``vectors`` whose pairs lie within ``threshold``."""
    _, i, j, _ = vector_pairs(vectors, threshold, engine, reuse=reuse)
    return groups_from_pairs(len(vectors), i, j)


def _concat(i, j, d):
    if not i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(i).astype(np.int64), np.concatenate(j).astype(np.int64),
            np.concatenate(d).astype(np.float32))
