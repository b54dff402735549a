"""Near-duplicate groups: every pair within a distance threshold, joined into connected groups.

Pairs come from the run's vectors: exactly, as tiled matrix products over the
upper triangle (each pair computed once), or for large collections from a faiss
IVF range search (see ``benchmarks/curation.py`` for speed and recall against
exact). Byte-identical files (same SHA-256) are paired too, without any encoder.
Each group keeps one sample (``keep``: first, largest or sharpest); the others
get a tag, and deleting them is a separate, explicit step with a dry run first.

Writes never mix two runs: each run holds the lease ``curation:duplicates`` of
the dataset, writes its groups under a run id (field ``dup_run``) and publishes
that id in one atomic update (see :mod:`lookalike.curation.runs`); readers
trust only samples of the published run.

Deletion re-derives the groups from the samples that exist at delete time (the
published run's ``dup_group`` of each, not the tags alone). A group's kept
sample is its member without the tag; the tagged members of a group whose kept
sample still exists are deleted, so the last member of a group never goes. When
groups lost their kept sample (deleted in the App, or concurrently) nothing is
deleted and the count is reported; tags that no published group explains are
never acted on. One function (:func:`deletion_plan`) computes what goes: the dry
run reports it, the real run journals it (:mod:`lookalike.curation.journal`)
and then deletes it.
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lookalike import faults, fo_adapter, leases
from lookalike.curation import runs
from lookalike.curation.errors import CurationError
from lookalike.errors import DeletionRefusedError

KEEP_POLICIES = ("first", "largest", "sharpest")
METHODS = ("auto", "exact", "approximate")
# From this many vectors "auto" searches pairs with faiss IVF instead of exactly.
APPROXIMATE_FROM = 50_000
_TILE_FLOATS = 1 << 25  # ~128 MB of float32 per tile of the exact search


@dataclass
class DuplicateReport:
    threshold: float
    method: str
    keep: str
    groups: list  # lists of sample ids, the kept one first
    num_pairs: int = 0
    num_exact_pairs: int = 0
    num_searched: int = 0
    files: dict = field(default_factory=dict)  # sample id -> filepath, for printing

    @property
    def num_groups(self):
        return len(self.groups)

    @property
    def num_duplicates(self):
        """Samples that are not kept (tagged)."""
        return sum(len(g) - 1 for g in self.groups)

    def summary(self):
        return dict(threshold=self.threshold, method=self.method, keep=self.keep,
                    num_groups=self.num_groups, num_duplicates=self.num_duplicates,
                    num_pairs=self.num_pairs, num_exact_pairs=self.num_exact_pairs,
                    num_searched=self.num_searched)


def exact_pairs(matrix, threshold, progress=None):
    """All ``(i, j, distance)`` with i < j and cosine distance <= ``threshold``, exactly."""
    n = len(matrix)
    rows_per_tile = max(1, min(4096, _TILE_FLOATS // max(n, 1)))
    out_i, out_j, out_d = [], [], []
    min_sim = 1.0 - threshold
    for start in range(0, n, rows_per_tile):
        stop = min(n, start + rows_per_tile)
        # Only columns from ``start`` on: the lower triangle was seen already.
        sims = matrix[start:stop] @ matrix[start:].T
        a, b = np.nonzero(sims >= min_sim - 1e-6)
        i, j = a + start, b + start
        upper = j > i
        i, j = i[upper], j[upper]
        d = np.clip(1.0 - sims[a[upper], b[upper]], 0.0, 2.0)
        ok = d <= threshold
        out_i.append(i[ok])
        out_j.append(j[ok])
        out_d.append(d[ok])
        if progress:
            progress(stop, n)
    return _concat(out_i, out_j, out_d)


def duplicate_ivf(matrix, nlist=None, nprobe=4, seed=51):
    """A faiss IVF index built for a near-duplicate search: quick to train, few lists probed.

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


def approximate_pairs(matrix, threshold, engine=None, nprobe=4, progress=None, batch=16384):
    """Pairs within ``threshold`` from a faiss IVF range search.

    ``engine``: an IVFEngine over the same rows to reuse; otherwise an index is
    built with :func:`duplicate_ivf`.
    """
    import faiss

    if engine is not None and getattr(engine, "index", None) is not None:
        index, nprobe = engine.index, max(nprobe, engine.nprobe)
    else:
        index = duplicate_ivf(matrix, nprobe=nprobe)
    params = faiss.SearchParametersIVF(nprobe=int(min(nprobe, index.nlist)))
    out_i, out_j, out_d = [], [], []
    n = len(matrix)
    for start in range(0, n, batch):
        q = np.ascontiguousarray(matrix[start:start + batch], np.float32)
        lims, sims, inds = index.range_search(q, float(1.0 - threshold - 1e-6), params=params)
        counts = np.diff(lims).astype(np.int64)
        i = np.repeat(np.arange(start, start + len(q)), counts)
        d = np.clip(1.0 - sims, 0.0, 2.0)
        # Each pair once, from its lower row (or from whichever end found it).
        keep = (inds != i) & (d <= threshold)
        a, b = np.minimum(i, inds)[keep], np.maximum(i, inds)[keep]
        out_i.append(a)
        out_j.append(b.astype(np.int64))
        out_d.append(d[keep])
        if progress:
            progress(min(start + batch, n), n)
    i, j, d = _concat(out_i, out_j, out_d)
    if len(i):
        _, first = np.unique(i * np.int64(n) + j, return_index=True)
        i, j, d = i[first], j[first], d[first]
    return i, j, d


def vector_pairs(vectors, threshold, method="auto", engine=None, progress=None):
    """``(method used, i, j, d)``: every pair of rows within ``threshold``, i < j.

    The one pair search of :func:`find_duplicates` and of the brain index's own
    ``find_duplicates`` (``LookalikeSimilarityIndex``). ``engine``: the run's
    engine when ``vectors`` are all its rows (its faiss index is reused).
    """
    used = method if method != "auto" else (
        "approximate" if len(vectors) >= APPROXIMATE_FROM else "exact")
    if used == "exact":
        i, j, d = exact_pairs(vectors, threshold, progress=progress)
    else:
        i, j, d = approximate_pairs(vectors, threshold, engine=engine, progress=progress)
    return used, i, j, d


def _concat(i, j, d):
    if not i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(i).astype(np.int64), np.concatenate(j).astype(np.int64),
            np.concatenate(d).astype(np.float32))


def groups_from_pairs(n, i, j):
    """Connected groups (lists of positions, size >= 2) of the graph with edges (i, j)."""
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


def file_hash(path, chunk=1 << 20):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
    except OSError:
        return None  # missing or unreadable: it cannot be a byte-identical copy
    return h.hexdigest()


def hash_pairs(paths, num_workers=8):
    """``(i, j)`` pairs chaining files with identical content, and the hashes."""
    with ThreadPoolExecutor(num_workers) as pool:
        hashes = list(pool.map(file_hash, paths))
    first = {}
    i, j = [], []
    for n, h in enumerate(hashes):
        if h is None:
            continue
        if h in first:
            i.append(first[h])
            j.append(n)
        else:
            first[h] = n
    return np.asarray(i, np.int64), np.asarray(j, np.int64), hashes


def sharpness(path, side=256):
    """Variance of the Laplacian of the grayscale image at ``side`` px (higher = sharper).

    Measured at one common size: at its own resolution a smaller copy would
    look sharper, its edges falling on fewer pixels. An unreadable file (deleted
    since import, over the pixel limit, truncated) scores 0.0, as flat as a
    blank image: never above a readable one, and a group of only unreadable
    files still has its sharpest (the "within 3%" test holds at 0, not at -1).
    """
    from PIL import Image

    from lookalike.images import UnreadableImageError, load_image

    try:
        img = load_image(path).convert("L")
    except UnreadableImageError:
        return 0.0
    a = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
    lap = (a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4 * a[1:-1, 1:-1])
    return float(lap.var())


def image_size_key(path):
    """(pixels, bytes) of an image file, read from its header; (-1, -1) when unreadable.

    Unreadable includes deleted since import and over the pixel limit: a file
    that cannot be embedded or shown loses.
    """
    from lookalike.images import UnreadableImageError, image_header_size

    try:
        w, h = image_header_size(path)
        return (w * h, os.path.getsize(path))
    except (UnreadableImageError, OSError):
        return (-1, -1)


def choose_kept(group, keep, paths):
    """The position to keep in ``group`` (positions in view order; ties go to the first)."""
    if keep == "first":
        return min(group)
    if keep == "largest":
        sizes = {p: image_size_key(paths[p]) for p in group}
        return max(sorted(group), key=lambda p: sizes[p])
    if keep == "sharpest":
        # Within 3% of the sharpest counts as as sharp: then the largest wins.
        scores = {p: sharpness(paths[p]) for p in group}
        best = max(scores.values())
        sharp = [p for p in sorted(group) if scores[p] >= 0.97 * best]
        sizes = {p: image_size_key(paths[p]) for p in sharp}
        return max(sharp, key=lambda p: sizes[p])
    raise CurationError(f"unknown keep policy {keep!r}; choose from {KEEP_POLICIES}")


DEFAULT_TAG = "duplicate"
GROUP_FIELD = "dup_group"
DISTANCE_FIELD = "dup_distance"
RUN_FIELD = "dup_run"  # the run that wrote a sample's group; only the published one counts
KIND = "duplicates"
DELETE_BATCH = 10_000  # samples per delete; a kill between batches is undone from the journal


def find_duplicates(samples, brain_key=None, threshold=None, keep="first", method="auto",
                    tag=DEFAULT_TAG, exact_files=True, progress=None):
    """Finds near-duplicate groups in ``samples``; writes ``dup_group``, ``dup_distance`` and a tag.

    Args:
        samples: the dataset or view to search (only samples in it are grouped)
        brain_key (None): a lookalike similarity run; None = byte-identical
            files only (no encoder needed)
        threshold (None): cosine distance; None = the run's calibrated
            ``duplicate_threshold`` (see ``calibrate_threshold``)
        keep ("first"): which sample of a group is kept untagged: "first" (in
            the view's order), "largest" (pixels, then bytes) or "sharpest"
            (variance of the Laplacian)
        method ("auto"): "exact", "approximate" (faiss IVF) or "auto"
            (approximate from 50,000 samples)
        tag ("duplicate"): tag put on every grouped sample but the kept one
        exact_files (True): also pair byte-identical files (SHA-256)
        progress (None): ``progress(fraction, label)``

    Returns:
        a :class:`DuplicateReport`; the fields are ``dup_group`` (group number,
        1 = largest group) and ``dup_distance`` (distance to the kept sample)

    Raises :class:`LeaseHeldError` while another job writes this dataset's duplicates.
    """
    dataset = fo_adapter.root_dataset(samples)
    with leases.hold(dataset, runs.lease_name(KIND), job="find_duplicates",
                     label=runs.lease_label(dataset, KIND)):
        return _find_duplicates(samples, brain_key, threshold, keep, method, tag,
                                exact_files, progress)


def _find_duplicates(samples, brain_key, threshold, keep, method, tag, exact_files, progress):
    if keep not in KEEP_POLICIES:
        raise CurationError(f"unknown keep policy {keep!r}; choose from {KEEP_POLICIES}")
    if method not in METHODS:
        raise CurationError(f"unknown method {method!r}; choose from {METHODS}")
    if len(samples) == 0:
        raise CurationError("the view is empty: there are no samples to search for duplicates")
    report_progress = progress or (lambda fraction, label: None)
    ids, paths = samples.values(["id", "filepath"])
    position = {sid: n for n, sid in enumerate(ids)}
    edges_i, edges_j, edge_d = [], [], []
    vectors, used, index = None, "files", None

    if brain_key is not None:
        import lookalike.similarity as ls
        from lookalike.curation import records

        index = ls.load_index(fo_adapter.root_dataset(samples), brain_key)
        if threshold is None:
            threshold = records.load(index, "calibration")["duplicate_threshold"]
        threshold = check_threshold(threshold)
        rows_of = {sid: r for r, sid in enumerate(index.sample_ids)}
        in_index = [position[sid] for sid in ids if sid in rows_of]
        if len(in_index) < 2:
            raise CurationError(f"fewer than 2 samples of this view are in run '{brain_key}': "
                             "compute their embeddings and rebuild the index")
        rows = np.array([rows_of[ids[p]] for p in in_index])
        vectors = index.engine.matrix[rows]
        search = (lambda done, total: report_progress(
            0.8 * done / total, f"searched {done}/{total} samples"))
        reuse = index.engine if len(rows) == index.total_index_size else None
        used, i, j, d = vector_pairs(vectors, threshold, method, engine=reuse, progress=search)
        in_index = np.asarray(in_index)
        edges_i.append(in_index[i])
        edges_j.append(in_index[j])
        edge_d.append(d)
        num_pairs = len(i)
    else:
        num_pairs = 0
        threshold = 0.0

    num_exact = 0
    if exact_files:
        report_progress(0.8, "hashing files")
        hi, hj, _ = hash_pairs(paths)
        edges_i.append(hi)
        edges_j.append(hj)
        edge_d.append(np.zeros(len(hi), np.float32))
        num_exact = len(hi)

    i = np.concatenate(edges_i) if edges_i else np.zeros(0, np.int64)
    j = np.concatenate(edges_j) if edges_j else np.zeros(0, np.int64)
    groups = groups_from_pairs(len(ids), i, j)
    report_progress(0.9, f"choosing the kept sample of {len(groups)} groups")
    rows_in_vectors = None
    if vectors is not None:
        rows_in_vectors = {int(p): r for r, p in enumerate(in_index)}
    ordered = []
    distances = {}
    for group in groups:
        kept = choose_kept(group, keep, paths)
        rest = sorted(p for p in group if p != kept)
        for p in [kept] + rest:
            if p == kept:
                distances[p] = 0.0
            elif rows_in_vectors is not None and p in rows_in_vectors and kept in rows_in_vectors:
                a, b = vectors[rows_in_vectors[p]], vectors[rows_in_vectors[kept]]
                distances[p] = float(np.clip(1.0 - a @ b, 0.0, 2.0))
            else:
                distances[p] = 0.0  # byte-identical files
        ordered.append([kept] + rest)
    ordered.sort(key=lambda g: (-len(g), g[0]))

    write_groups(samples, ids, ordered, distances, tag)
    report = DuplicateReport(
        threshold=float(threshold), method=used, keep=keep,
        groups=[[ids[p] for p in g] for g in ordered], num_pairs=int(num_pairs),
        num_exact_pairs=int(num_exact), num_searched=len(ids),
        files={ids[p]: paths[p] for g in ordered for p in g})
    if index is not None:
        from lookalike.curation import records

        records.save(index, "duplicates", report.summary())
    report_progress(1.0, f"{report.num_groups} groups, {report.num_duplicates} duplicates")
    return report


def write_groups(samples, ids, groups, distances, tag):
    """Replaces earlier results on ``ids`` (the view's samples) with these groups; publishes.

    The caller holds the lease. :func:`runs.write` stages the values, then
    applies and publishes them: a kill anywhere leaves the old results or,
    rolled forward, the new ones (see :mod:`lookalike.curation.runs`).
    """
    import fiftyone as fo

    dataset = fo_adapter.root_dataset(samples)
    for name, ftype in ((GROUP_FIELD, fo.IntField), (DISTANCE_FIELD, fo.FloatField),
                        (RUN_FIELD, fo.StringField)):
        if name not in dataset.get_field_schema():
            dataset.add_sample_field(name, ftype)
    group_of, dist_of, tagged = {}, {}, []
    for number, group in enumerate(groups, 1):
        for n, p in enumerate(group):
            group_of[ids[p]] = number
            dist_of[ids[p]] = float(distances[p])
            if n > 0:
                tagged.append(ids[p])
    return runs.write(samples, KIND, RUN_FIELD, list(ids),
                      {GROUP_FIELD: group_of, DISTANCE_FIELD: dist_of}, tag, tagged,
                      num_groups=len(groups), num_duplicates=len(tagged))


def duplicates_view(samples):
    """The published run's grouped samples, group by group, the kept one first."""
    from fiftyone import ViewField as F

    dataset = fo_adapter.root_dataset(samples)
    runs.recover(dataset, KIND)  # a killed run is finished (or dropped) first
    run = runs.published_run(dataset, KIND)
    if run is None:
        return samples.limit(0)
    return samples.match((F(RUN_FIELD) == run) & (F(GROUP_FIELD) != None)).sort_by(  # noqa: E711
        [(GROUP_FIELD, 1), (DISTANCE_FIELD, 1)])


@dataclass
class DeletionPlan:
    """What :func:`delete_duplicates` deletes now, derived from the samples that exist now."""

    tag: str
    run: str  # the published find_duplicates run (None: none published yet)
    delete_ids: list  # tagged members of groups whose kept sample still exists
    num_groups: int  # groups that lose samples
    lost_groups: list  # numbers of groups (with tagged members in the view) whose kept sample is gone
    unexplained: int  # samples tagged ``tag`` in the view that no published group explains

    @property
    def count(self):
        return len(self.delete_ids)

    def check(self, dataset_name):
        """Raises :class:`DeletionRefusedError` when groups lost their kept sample."""
        if self.lost_groups:
            n = len(self.lost_groups)
            raise DeletionRefusedError(
                f"{n} duplicate group{'s' if n > 1 else ''} of dataset '{dataset_name}' lost "
                f"{'their' if n > 1 else 'its'} kept sample since find_duplicates ran (group"
                f"{'s' if n > 1 else ''} {', '.join(map(str, self.lost_groups[:10]))}"
                f"{', ...' if n > 10 else ''}): nothing deleted; run find_duplicates again")


def deletion_plan(samples, tag=DEFAULT_TAG, lease_held=False):
    """The samples of ``samples`` that deleting duplicates removes now (see the module docstring).

    ``lease_held``: the caller holds the lease of the dataset's duplicates.
    """
    from fiftyone import ViewField as F

    from lookalike.curation import journal

    dataset = fo_adapter.root_dataset(samples)
    journal.check_flat(dataset)
    runs.check_complete(dataset, KIND, lease_held=lease_held)
    run = runs.published_run(dataset, KIND)
    in_view = set(samples.values("id"))
    tagged_in_view = set(samples.match_tags(tag).values("id"))
    members = {}
    if run is not None and RUN_FIELD in dataset.get_field_schema():
        # The whole dataset: a group's kept sample may lie outside the view.
        ids, numbers, tags = dataset.match(F(RUN_FIELD) == run).values(
            ["id", GROUP_FIELD, "tags"])
        for sid, number, sample_tags in zip(ids, numbers, tags):
            if number is not None:
                members.setdefault(number, []).append((sid, tag in (sample_tags or [])))
    delete_ids, lost, explained, touched = [], [], set(), 0
    for number in sorted(members):
        marked = [sid for sid, is_tagged in members[number] if is_tagged and sid in in_view]
        explained.update(marked)
        if not marked:
            continue
        if all(is_tagged for _, is_tagged in members[number]):
            lost.append(number)
            continue
        delete_ids.extend(marked)
        touched += 1
    return DeletionPlan(tag=tag, run=run, delete_ids=delete_ids, num_groups=touched,
                        lost_groups=lost, unexplained=len(tagged_in_view - explained))


@dataclass
class DeletionResult:
    plan: DeletionPlan
    journal: str  # the journal file of the deleted samples (None when nothing was deleted)

    @property
    def count(self):
        return self.plan.count


def delete_planned(samples, tag=DEFAULT_TAG):
    """Deletes what :func:`deletion_plan` lists, after journaling it; returns a :class:`DeletionResult`.

    Holds the lease of the dataset's duplicates, so no find_duplicates can
    change the groups between the plan and the delete. Image files stay.
    """
    from lookalike.curation import journal

    dataset = fo_adapter.root_dataset(samples)
    with leases.hold(dataset, runs.lease_name(KIND), job="delete_duplicates",
                     label=runs.lease_label(dataset, KIND)):
        plan = deletion_plan(samples, tag, lease_held=True)
        plan.check(dataset.name)
        if not plan.delete_ids:
            return DeletionResult(plan, None)
        path = journal.write(dataset, plan.delete_ids, "delete_duplicates", run=plan.run,
                             tag=tag)
        faults.point("delete.after_journal")
        for start in range(0, len(plan.delete_ids), DELETE_BATCH):
            dataset.delete_samples(plan.delete_ids[start:start + DELETE_BATCH])
            faults.point("delete.after_batch")
    return DeletionResult(plan, path)


def delete_duplicates(samples, tag=DEFAULT_TAG, dry_run=True):
    """Deletes the tagged duplicates that the published groups explain (not their files).

    With ``dry_run`` only counts them; both follow :func:`deletion_plan`, and
    both raise :class:`DeletionRefusedError` when groups lost their kept sample.
    A real run first writes a journal (``lookalike undelete`` restores it).

    Returns the number of samples that are (or would be) deleted.
    """
    if dry_run:
        plan = deletion_plan(samples, tag)
        plan.check(fo_adapter.root_dataset(samples).name)
        return plan.count
    return delete_planned(samples, tag).count


def check_threshold(threshold):
    t = float(threshold)
    if not 0.0 <= t <= 2.0 or not np.isfinite(t):
        raise CurationError(f"a cosine distance threshold must be in [0, 2], got {threshold}")
    return t
