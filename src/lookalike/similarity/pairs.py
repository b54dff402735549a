"""Pair search: every pair of unit vectors within a cosine distance, and their connected groups.

Vectors in, pairs out: nothing here knows of FiftyOne or of curation. Pairs
come exactly, as tiled matrix products over the upper triangle (each pair
computed once), or for large collections from a list join over k-means lists
(:func:`approximate_pairs`; see ``benchmarks/curation.py`` for speed and
recall against exact). The engine choice is the one of
:data:`lookalike.similarity.engine.ENGINES` ("approximate" and "compressed"
both mean the list join, whose distances are exact); "auto" turns
approximate from :data:`APPROXIMATE_FROM` vectors, earlier than the k-NN
index does, because a pair search costs N^2 where a query costs N.

Pairs are ``(i, j, d)`` arrays with ``i < j``; :func:`groups_from_pairs` joins
them into connected groups (a chain a~b~c is one group, not {a, b} and {c}) and
cuts single pairs that bridge two otherwise separate groups; both
``lookalike.curation.find_duplicates`` and the brain index's own
``find_duplicates`` use it.
"""

import numpy as np

from lookalike.core.progress import report
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


def list_centres(matrix, nlist=None, seed=51, iterations=10):
    """About sqrt(N) spherical k-means centres (nlist x d), trained on 39 sampled points each."""
    import faiss

    n, d = matrix.shape
    nlist = int(nlist or max(1, min(int(np.sqrt(n)), n // 39 or 1)))
    kmeans = faiss.Kmeans(d, nlist, niter=iterations, spherical=True, seed=seed)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, 39 * nlist), replace=False))
    kmeans.train(np.ascontiguousarray(matrix[sample], np.float32))
    return kmeans.centroids


def approximate_pairs(matrix, threshold, reuse=None, probes=2, progress=None, chunk=65536):
    """Pairs within ``threshold`` by a list join: every vector against its nearest lists.

    Each vector goes to the list of its nearest centre and looks for partners
    in its ``probes`` nearest lists, all by matrix products: one product of the
    vectors with the centres, then, per list, the vectors probing it against its
    members. A pair is found when either end's list is among the other's
    nearest; near-duplicates (cosine distance ~0.01) almost always share their
    nearest list. Distances are exact. At 1M x 256 this took 24.6 s where a
    faiss IVF range search (4 of 2 * sqrt(N) lists) took 143.9 s in the same
    run, every planted pair found by both (``benchmarks/curation.py``).

    ``reuse``: an IVF engine over the same rows, whose trained centres are used
    instead of training new ones. ``progress``: ``progress(fraction, label)``.
    """
    n = len(matrix)
    if n < 2:
        return _concat([], [], [])
    centres = reuse.centroids() if hasattr(reuse, "centroids") else list_centres(matrix)
    probes = int(min(probes, len(centres)))
    nearest = np.empty((n, probes), np.int32)  # column 0: the vector's own list
    for start in range(0, n, chunk):
        sims = np.ascontiguousarray(matrix[start:start + chunk], np.float32) @ centres.T
        rows = np.arange(len(sims))
        for p in range(probes):  # a few argmax passes: far cheaper than argpartition
            best = sims.argmax(axis=1)
            nearest[start:start + chunk, p] = best
            sims[rows, best] = -np.inf
        report(progress, min(start + chunk, n), 5 * n, "assigned vectors to lists")
    members, member_bounds = _grouped(nearest[:, 0], len(centres))
    probers, prober_bounds = _grouped(nearest.ravel(), len(centres))
    probers //= probes  # flat position -> row
    cutoff = similarity_cutoff(threshold)
    out_i, out_j, out_d = [], [], []
    for lst in range(len(centres)):
        mem = members[member_bounds[lst]:member_bounds[lst + 1]]
        if len(mem) == 0:
            continue
        mem_vectors = np.asarray(matrix[mem], np.float32)
        all_probers = probers[prober_bounds[lst]:prober_bounds[lst + 1]]
        step = max(1, _TILE_FLOATS // len(mem))  # a skewed list in tiles, not one huge product
        for start in range(0, len(all_probers), step):
            prb = all_probers[start:start + step]
            sims = np.asarray(matrix[prb], np.float32) @ mem_vectors.T
            a, b = np.nonzero(sims >= cutoff)
            i, j = prb[a], mem[b]
            d = cosine_distance(sims[a, b])
            ok = (i != j) & (d <= threshold)
            out_i.append(np.minimum(i, j)[ok])
            out_j.append(np.maximum(i, j)[ok])
            out_d.append(d[ok])
        report(progress, n + 4 * n * (lst + 1) // len(centres), 5 * n,
               f"searched list {lst + 1}/{len(centres)}")
    i, j, d = _concat(out_i, out_j, out_d)
    if len(i):  # a pair sharing two probed lists is found twice
        _, first = np.unique(i * np.int64(n) + j, return_index=True)
        i, j, d = i[first], j[first], d[first]
    return i, j, d


def _grouped(labels, count):
    """Positions sorted by label, and where each label's run starts (count + 1 bounds)."""
    order = np.argsort(labels, kind="stable")
    return order.astype(np.int64), np.searchsorted(labels[order], np.arange(count + 1))


def vector_pairs(vectors, threshold, engine="auto", reuse=None, progress=None):
    """``(engine used, i, j, d)``: every pair of rows within ``threshold``, i < j.

    ``engine``: one of :data:`~lookalike.similarity.engine.ENGINES`; the engine
    used is "exact" or "approximate" ("compressed" searches as "approximate"). ``reuse``: the run's engine when
    ``vectors`` are all its rows (its faiss index is searched). ``progress``:
    ``progress(fraction, label)``.
    """
    used = resolve_engine(check_engine(engine), len(vectors), approximate_from=APPROXIMATE_FROM)
    used = "exact" if used == "exact" else "approximate"
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
