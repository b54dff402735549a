"""Near-duplicate groups on a dataset: found, written to sample fields and tags, deleted.

The FiftyOne side of near-duplicates. Pairs come from the run's vectors, by the
one pair search (:mod:`lookalike.similarity.pairs`, exact or faiss IVF), and
from byte-identical files (same SHA-256, no encoder needed); pairs are joined
and, unless turned off, from geometric verification (:mod:`lookalike.images.local_features`):
each sample's nearest neighbours within the looser candidate distance are
checked with local features, and a pair with enough RANSAC inliers is a
duplicate even when the embedding put it beyond the threshold -- the same
object photographed again from another viewpoint. Pairs are joined into groups
(a single bridging pair never merges two groups, see
:func:`~lookalike.similarity.pairs.groups_from_pairs`) and each group keeps one
sample (``keep``: first, largest or sharpest, :mod:`lookalike.curation.keep`);
every other member says why it is in the group (``dup_reason``: its embedding
distance, its inliers or identical bytes, to the kept sample or to the member
that links it), the others get a tag, and deleting them is a separate, explicit
step with a dry run first.

Writes never mix two runs: each run holds the lease ``curation:duplicates`` of
the dataset, writes its groups under a run id (field ``dup_run``) and publishes
that id in one atomic update (see :mod:`lookalike.curation.published_runs`); readers
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

from dataclasses import dataclass, field

import numpy as np

import os

from lookalike.core import faults, fo_adapter, leases
from lookalike.similarity import records
from lookalike.curation import published_runs as runs
from lookalike.curation.keep import check_keep_policy, choose_kept, hash_pairs
from lookalike.core.errors import CurationError, DeletionRefusedError
from lookalike.core.progress import scaled
from lookalike.similarity.distance import cosine_distance
from lookalike.similarity.engine import check_engine
from lookalike.similarity.pairs import groups_from_pairs, split_at_weak_pairs, vector_pairs

DEFAULT_TAG = "duplicate"
KEPT_TAG = "kept"  # the one sample of each group that stays: a badge on its tile
KEPT_FIELD = "dup_kept"  # True on the kept sample of a group, False on the others
GROUP_FIELD = "dup_group"
DISTANCE_FIELD = "dup_distance"
INLIERS_FIELD = "dup_inliers"  # RANSAC inliers with the kept sample (verification on)
REASON_FIELD = "dup_reason"  # why the sample is in its group, in words
RUN_FIELD = "dup_run"  # the run that wrote a sample's group; only the published one counts
VERIFY_CHOICES = ("auto", True, False)
DEFAULT_CANDIDATES = 10  # nearest neighbours per sample that verification checks
# How a pair joined: the reason kinds, in the order a group's reasons prefer them.
IDENTICAL, EMBEDDING, VERIFIED = 0, 1, 2
CHECK_NEAREST = 4  # embedding pairs per group member that verification checks
KIND = "duplicates"
DELETE_BATCH = 10_000  # samples per delete; a kill between batches is undone from the journal


@dataclass
class DuplicateReport:
    threshold: float
    engine: str  # the pair search used: "exact", "approximate", or "files" (hashes only)
    keep: str
    groups: list  # lists of sample ids, the kept one first
    num_pairs: int = 0
    num_exact_pairs: int = 0
    num_searched: int = 0
    num_verified_pairs: int = 0  # pairs beyond the threshold that verification added
    verification: dict = None  # its settings and counts; None when it did not run
    files: dict = field(default_factory=dict)  # sample id -> filepath, for printing
    reasons: dict = field(default_factory=dict)  # sample id -> why it is in its group
    brain_key: str = None  # the index that found them (None: byte-identical files only)
    warning: str = None  # the calibration's, when its duplicate threshold was used

    @property
    def num_groups(self):
        return len(self.groups)

    @property
    def num_duplicates(self):
        """Samples that are not kept (tagged)."""
        return sum(len(g) - 1 for g in self.groups)

    def to_record(self):
        """The counts saved with the run (``index.curation["duplicates"]``)."""
        return dict(threshold=self.threshold, engine=self.engine, keep=self.keep,
                    num_groups=self.num_groups, num_duplicates=self.num_duplicates,
                    num_pairs=self.num_pairs, num_exact_pairs=self.num_exact_pairs,
                    num_searched=self.num_searched, num_verified_pairs=self.num_verified_pairs,
                    verification=self.verification, warning=self.warning)

    def summary(self):
        """One paragraph, for the CLI and the App."""
        by = f"index '{self.brain_key}', " if self.brain_key else ""
        text = (f"{self.num_groups} near-duplicate groups among {self.num_searched} samples "
                f"({by}duplicate threshold {self.threshold:.4f}, {self.engine} search, "
                f"keep {self.keep}): "
                f"{self.num_duplicates} duplicates tagged, {self.num_exact_pairs} "
                "byte-identical pairs")
        v = self.verification
        if v and v.get("ran"):
            text += (f"; geometric verification of {v['num_candidates']} candidate pairs "
                     f"(within {v['candidate_threshold']:.4f}, >= {v['min_inliers']} inliers) "
                     f"added {self.num_verified_pairs} pairs")
        elif v:
            text += f"; no geometric verification ({v['why_not']})"
        if self.warning:
            text += f". Warning: {self.warning}"
        return text


def find_duplicates(samples, brain_key=None, threshold=None, keep="first", engine="auto",
                    tag=DEFAULT_TAG, exact_files=True, verify="auto", min_inliers=None,
                    candidates=DEFAULT_CANDIDATES, progress=None):
    """Finds near-duplicate groups in ``samples``; writes ``dup_*`` fields and a tag.

    Args:
        samples: the dataset or view to search (only samples in it are grouped)
        brain_key (None): a lookalike similarity run; None = byte-identical
            files only (no encoder needed)
        threshold (None): cosine distance; None = the run's calibrated
            ``duplicate_threshold`` (see ``calibrate_threshold``)
        keep ("first"): which sample of a group is kept untagged: "first" (in
            the view's order), "largest" (pixels, then bytes) or "sharpest"
            (variance of the Laplacian)
        engine ("auto"): the pair search, one of
            :data:`lookalike.similarity.engine.ENGINES`: "exact", "approximate"
            (faiss IVF) or "auto" (approximate from 50,000 samples)
        tag ("duplicate"): tag put on every grouped sample but the kept one
        exact_files (True): also pair byte-identical files (SHA-256)
        verify ("auto"): geometric verification of each sample's ``candidates``
            nearest neighbours within the run's calibrated
            ``candidate_threshold``: True, False, or "auto" = on for views of
            up to :data:`lookalike.images.local_features.VERIFY_UP_TO` samples when the
            run's calibration found images with local features
        min_inliers (None): inliers that verify a pair; None = the run's
            calibrated ``min_inliers``
        candidates (10): nearest neighbours per sample that verification checks
        progress (None): ``progress(fraction, label)``

    Returns:
        a :class:`DuplicateReport`; the fields are ``dup_group`` (group number,
        1 = largest group), ``dup_distance`` (distance to the kept sample),
        ``dup_inliers`` (inliers with the kept sample, when verification ran)
        and ``dup_reason`` (why the sample is in its group)

    Raises :class:`LeaseHeldError` while another job writes this dataset's duplicates.
    """
    dataset = fo_adapter.root_dataset(samples)
    with leases.hold(dataset, runs.lease_name(KIND), job="find_duplicates",
                     label=runs.lease_label(dataset, KIND)):
        return _find_duplicates(samples, brain_key, threshold, keep, engine, tag,
                                exact_files, verify, min_inliers, candidates, progress)


def _verification_settings(index, verify, min_inliers, candidates, num_samples):
    """``(on, settings)``: whether to verify, with the thresholds to use (see find_duplicates)."""
    from lookalike.images.local_features import DEFAULT_MIN_INLIERS, VERIFY_UP_TO

    if verify not in VERIFY_CHOICES:
        raise CurationError(f"verify must be one of {VERIFY_CHOICES}, got {verify!r}")
    if int(candidates) < 1:
        raise CurationError(f"candidates must be at least 1, got {candidates}")
    if verify is False:
        return False, {"ran": False, "why_not": "turned off"}
    if index is None:
        if verify is True:
            raise CurationError("geometric verification needs a similarity run: its nearest "
                                "neighbours are the candidate pairs (give brain_key)")
        return False, None
    calibration = (index.curation or {}).get("calibration") or {}
    if verify == "auto" and num_samples > VERIFY_UP_TO:
        return False, {"ran": False, "why_not": f"{num_samples} samples, more than "
                       f"{VERIFY_UP_TO} (pass verify=True to verify anyway)"}
    if calibration.get("candidate_threshold") is None:
        why = (f"run '{index.key}' has no verification thresholds: run calibrate_threshold"
               f"{' again' if calibration else ''}")
        if verify is True:
            raise CurationError(f"cannot verify: {why}")
        return False, {"ran": False, "why_not": why}
    if verify == "auto" and calibration.get("min_inliers") is None:
        return False, {"ran": False, "why_not": calibration.get("inlier_rule")}
    if min_inliers is None:
        min_inliers = calibration.get("min_inliers") or DEFAULT_MIN_INLIERS
    if int(min_inliers) < 4:
        raise CurationError(f"min_inliers must be at least 4 (a homography needs 4 points), "
                            f"got {min_inliers}")
    return True, {"ran": True, "min_inliers": int(min_inliers), "candidates": int(candidates),
                  "candidate_threshold": records.check_threshold(
                      calibration["candidate_threshold"])}


def _candidate_pairs(index, rows, k, within, known):
    """Positions ``(i, j)`` in ``rows`` of each row's ``k`` nearest neighbours within ``within``.

    Pairs in ``known`` (``i * n + j`` codes, already duplicates) are left out.
    """
    from lookalike.curation.neighbours import leave_one_out

    whole = len(rows) == index.total_index_size
    inds, dists = leave_one_out(index.engine, rows=rows, k=min(k, len(rows) - 1),
                                gallery=None if whole else rows)
    position = np.full(index.total_index_size, -1, np.int64)
    position[rows] = np.arange(len(rows))
    a = np.repeat(np.arange(len(rows)), inds.shape[1])
    b = np.where(inds >= 0, position[np.clip(inds, 0, None)], -1).ravel()
    ok = (b >= 0) & (dists.ravel() <= within)
    i, j = np.minimum(a, b)[ok], np.maximum(a, b)[ok]
    codes = np.unique(i * np.int64(len(rows)) + j)
    codes = codes[~np.isin(codes, known)]
    return codes // len(rows), codes % len(rows)


@dataclass
class Pairs:
    """The duplicate pairs of a view, before grouping (see :func:`find_pairs`)."""

    ids: list  # the view's sample ids; pairs hold positions in it
    paths: list
    i: np.ndarray
    j: np.ndarray
    kinds: np.ndarray  # IDENTICAL, EMBEDDING or VERIFIED
    threshold: float
    engine: str  # the pair search used, or "files"
    verification: dict = None  # settings and counts (None: not asked for)
    num_pairs: int = 0  # within the embedding threshold
    num_exact: int = 0  # byte-identical files
    num_verified: int = 0  # beyond the threshold, verified by local features
    features: dict = None  # position -> Features or None (verification ran)
    inliers_of: dict = field(default_factory=dict)  # (a, b), a < b -> inliers
    vectors: np.ndarray = None  # of the samples in the run
    row_in_vectors: dict = field(default_factory=dict)  # position -> row of vectors
    cache: str = None  # the dataset's feature cache
    warning: str = None  # the calibration's, when its duplicate threshold was used

    def distance(self, a, b):
        """Cosine distance of two positions, None when either has no vector."""
        if a in self.row_in_vectors and b in self.row_in_vectors:
            return float(cosine_distance(self.vectors[self.row_in_vectors[a]]
                                         @ self.vectors[self.row_in_vectors[b]]))
        return None

    def inliers(self, a, b):
        """Inliers of two positions (computed once), None when verification did not run."""
        from lookalike.images.decode import local_features as verification

        if self.features is None:
            return None
        _fill_features(self.features, [a, b], self.paths, verification, self.cache)
        _verify_all(self.features, [(a, b)], self.inliers_of, verification)
        return self.inliers_of[_key(a, b)]


def find_pairs(samples, brain_key=None, threshold=None, engine="auto", exact_files=True,
               verify="auto", min_inliers=None, candidates=DEFAULT_CANDIDATES, progress=None):
    """Every duplicate pair of ``samples``: within the threshold, verified, or identical files.

    The arguments are :func:`find_duplicates`'; returns :class:`Pairs` and
    writes nothing. ``progress`` runs to 0.85.
    """
    from lookalike.images.decode import local_features as verification

    check_engine(engine)
    if len(samples) == 0:
        raise CurationError("the view is empty: there are no samples to search for duplicates")
    report_progress = progress or (lambda fraction, label: None)
    ids, paths = samples.values(["id", "filepath"])
    position = {sid: n for n, sid in enumerate(ids)}
    edges = []  # (i, j, kind) arrays, positions in ids
    out = Pairs(ids, paths, None, None, None, 0.0, "files")

    index = None
    if brain_key is not None:
        import lookalike.similarity as ls

        index = ls.load_index(fo_adapter.root_dataset(samples), brain_key)
    on, out.verification = _verification_settings(index, verify, min_inliers, candidates,
                                                  len(ids))
    if index is not None:
        out.threshold = records.threshold(index, "duplicate_threshold", threshold)
        out.warning = records.duplicate_warning(index, threshold)
        rows_of = {sid: r for r, sid in enumerate(index.sample_ids)}
        in_index = [position[sid] for sid in ids if sid in rows_of]
        if len(in_index) < 2:
            raise CurationError(f"fewer than 2 samples of this view are in run '{brain_key}': "
                                "compute their embeddings and rebuild the index")
        rows = np.array([rows_of[ids[p]] for p in in_index])
        out.vectors = index.engine.matrix[rows]
        reuse = index.engine if len(rows) == index.total_index_size else None
        out.engine, i, j, _ = vector_pairs(out.vectors, out.threshold, engine, reuse=reuse,
                                           progress=scaled(progress, 0.0, 0.5 if on else 0.8))
        in_index = np.asarray(in_index)
        edges.append((in_index[i], in_index[j], np.full(len(i), EMBEDDING)))
        out.num_pairs = len(i)
        out.row_in_vectors = {int(p): r for r, p in enumerate(in_index)}
        if on:
            settings = out.verification
            report_progress(0.5, "choosing candidate pairs for geometric verification")
            ci, cj = _candidate_pairs(index, rows, settings["candidates"],
                                      settings["candidate_threshold"],
                                      i * np.int64(len(rows)) + j)
            needed = np.unique(np.concatenate([ci, cj]))
            out.features = {}  # absent: not computed
            out.cache = verification.cache_dir(fo_adapter.root_dataset(samples))
            found, missing = verification.compute_features(
                [paths[in_index[r]] for r in needed], out.cache,
                progress=scaled(progress, 0.5, 0.25))
            for r, f in zip(needed, found):
                out.features[int(in_index[r])] = f
            ci, cj = in_index[ci], in_index[cj]
            counts = verification.verify_pairs(out.features, ci, cj,
                                               progress=scaled(progress, 0.75, 0.08))
            counts = verification.verify_mirrored(out.features, ci, cj, counts,
                                                  settings["min_inliers"], paths, out.cache)
            ok = counts >= settings["min_inliers"]
            edges.append((ci[ok], cj[ok], np.full(int(ok.sum()), VERIFIED)))
            out.inliers_of = {_key(a, b): int(c) for a, b, c in zip(ci, cj, counts)}
            out.num_verified = int(ok.sum())
            settings.update(num_candidates=int(len(ci)), num_featureless=len(missing))

    if exact_files:
        report_progress(0.85, "hashing files")
        hi, hj, _ = hash_pairs(paths)
        edges.append((np.asarray(hi, np.int64), np.asarray(hj, np.int64),
                      np.full(len(hi), IDENTICAL)))
        out.num_exact = len(hi)
    if edges:
        out.i, out.j, out.kinds = (np.concatenate(parts).astype(np.int64)
                                   for parts in zip(*edges))
    else:
        out.i = out.j = out.kinds = np.zeros(0, np.int64)
    return out


def _find_duplicates(samples, brain_key, threshold, keep, engine, tag, exact_files, verify,
                     min_inliers, candidates, progress):
    from lookalike.images.decode import local_features as verification

    check_keep_policy(keep)
    report_progress = progress or (lambda fraction, label: None)
    pairs = find_pairs(samples, brain_key, threshold, engine, exact_files, verify, min_inliers,
                       candidates, progress)
    ids, paths, i, j, kinds = pairs.ids, pairs.paths, pairs.i, pairs.j, pairs.kinds
    features, inliers_of, settings = pairs.features, pairs.inliers_of, pairs.verification
    distance, inliers = pairs.distance, pairs.inliers
    groups = groups_from_pairs(len(ids), i, j, unbreakable=kinds == IDENTICAL)

    if features is not None:
        report_progress(0.88, f"checking the pairs inside {len(groups)} groups")
        cache = verification.cache_dir(fo_adapter.root_dataset(samples))
        _fill_features(features, [p for g in groups for p in g], paths, verification, cache)

        def mirrored_features(positions):
            got, _ = verification.compute_features([paths[p] for p in positions], cache,
                                                   mirrored=True)
            return dict(zip(positions, got))

        groups = _split_unverified(groups, i, j, kinds, features, inliers_of, distance,
                                   settings["min_inliers"], verification, mirrored_features)
    report_progress(0.9, f"choosing the kept sample of {len(groups)} groups")

    link = _links(i, j, kinds)
    ordered, distances, inlier_counts, reasons = [], {}, {}, {}
    kept_of = [choose_kept(group, keep, paths) for group in groups]
    if features is not None:  # each member's inliers with its kept sample, in parallel
        _verify_all(features, [(p, kept) for g, kept in zip(groups, kept_of) for p in g
                               if p != kept], inliers_of, verification)
    for group, kept in zip(groups, kept_of):
        rest = sorted(p for p in group if p != kept)
        for p, via, kind in _reached_from(kept, set(group), link):
            # Files without a vector join only as identical bytes: distance 0.
            distances[p] = (distance(p, kept) if p != kept else None) or 0.0
            inlier_counts[p] = inliers(p, kept) if p != kept else None
            reasons[p] = "kept" if p == kept else _reason(
                kind, distance(p, via), inliers(p, via),
                None if via == kept else os.path.basename(paths[via]))
        ordered.append([kept] + rest)
    ordered.sort(key=lambda g: (-len(g), g[0]))

    write_groups(samples, ids, ordered, distances, tag, inlier_counts, reasons,
                 brain_key=brain_key)
    report = DuplicateReport(
        threshold=float(pairs.threshold), engine=pairs.engine, keep=keep,
        groups=[[ids[p] for p in g] for g in ordered], num_pairs=int(pairs.num_pairs),
        num_exact_pairs=int(pairs.num_exact), num_searched=len(ids),
        num_verified_pairs=pairs.num_verified, verification=settings,
        files={ids[p]: paths[p] for g in ordered for p in g},
        reasons={ids[p]: reasons[p] for g in ordered for p in g if p in reasons},
        brain_key=brain_key, warning=pairs.warning)
    if brain_key is not None:
        import lookalike.similarity as ls

        records.save(ls.load_index(fo_adapter.root_dataset(samples), brain_key), "duplicates",
                     report.to_record())
    report_progress(1.0, f"{report.num_groups} groups, {report.num_duplicates} duplicates")
    return report


def _split_unverified(groups, i, j, kinds, features, inliers_of, distance, min_inliers,
                      verification, mirrored_features):
    """Groups split where only pairs that local features do not confirm join their parts.

    A pair is *strong* when its files are identical, it was verified, or it is
    one of a member's :data:`CHECK_NEAREST` nearest embedding pairs in its
    group and has at least ``min_inliers`` inliers. Parts are what strong pairs
    join. A member none of whose pairs held is checked once more mirrored
    (``mirrored_features(positions)``: SIFT does not match a flipped copy with
    its original). The other members (images without local features, ...) go
    with their nearest partner's part
    (:func:`~lookalike.similarity.pairs.split_at_weak_pairs`). Textures the
    encoder confuses (the demo's grass and gravel) are joined by weak pairs only.
    ``inliers_of`` ({(i, j): inliers}) gets the counts of the pairs checked.
    """
    d = np.array([distance(int(a), int(b)) or 0.0 for a, b in zip(i, j)])
    strong = kinds != EMBEDDING
    grouped = {p for g in groups for p in g}
    by_member = {}
    for e in np.flatnonzero(kinds == EMBEDDING):
        a, b = int(i[e]), int(j[e])
        if a in grouped and b in grouped:
            by_member.setdefault(a, []).append(e)
            by_member.setdefault(b, []).append(e)
    by_member = {m: sorted(edges, key=lambda e: d[e]) for m, edges in by_member.items()}

    def check(edges):
        _verify_all(features, [(int(i[e]), int(j[e])) for e in edges], inliers_of,
                    verification)

    def holds(e):
        return inliers_of[_key(i[e], j[e])] >= min_inliers

    check([e for edges in by_member.values() for e in edges[:CHECK_NEAREST]])
    for edges in by_member.values():
        for e in edges[:CHECK_NEAREST]:
            strong[e] = holds(e)
    # A member none of whose nearest pairs held looks further (its original may
    # lie beyond images the encoder confuses it with).
    lonely = [edges for edges in by_member.values() if not strong[edges].any()]
    check([e for edges in lonely for e in edges[CHECK_NEAREST:4 * CHECK_NEAREST]])
    for edges in lonely:
        for e in edges[CHECK_NEAREST:4 * CHECK_NEAREST]:
            strong[e] = holds(e)
    lonely = {m: edges[:4 * CHECK_NEAREST] for m, edges in by_member.items()
              if not strong[edges].any() and features.get(m) is not None}
    if lonely:
        mirrored = mirrored_features(sorted(lonely))
        pairs = [(m, e, int(j[e]) if int(i[e]) == m else int(i[e]))
                 for m, edges in lonely.items() for e in edges]
        both = {**features, **{("mirrored", m): f for m, f in mirrored.items()}}
        counts = verification.verify_pairs(both, [("mirrored", m) for m, _, _ in pairs],
                                           [o for _, _, o in pairs])
        for (_, e, _), c in zip(pairs, counts):
            strong[e] |= bool(c >= min_inliers)
    return split_at_weak_pairs(groups, i, j, strong, d)


def _key(a, b):
    return (int(min(a, b)), int(max(a, b)))


def _verify_all(features, pairs, inliers_of, verification):
    """Adds the inliers of every pair of positions not yet in ``inliers_of``, in parallel."""
    todo = sorted({_key(a, b) for a, b in pairs} - set(inliers_of))
    if todo:
        counts = verification.verify_pairs(features, [a for a, _ in todo], [b for _, b in todo])
        inliers_of.update(zip(todo, counts.tolist()))


def _links(i, j, kinds):
    """``{position: [(other, kind), ...]}``, the strongest reason first (identical, embedding, verified)."""
    link = {}
    for a, b, k in zip(i.tolist(), j.tolist(), kinds.tolist()):
        link.setdefault(a, []).append((b, k))
        link.setdefault(b, []).append((a, k))
    for neighbours in link.values():
        neighbours.sort(key=lambda t: t[1])
    return link


def _reached_from(kept, members, link):
    """``(member, the member it was reached from, how)`` breadth-first from ``kept``.

    A member joined to the kept sample directly gets that pair's reason; one
    reached through another member gets the reason of the pair to that member.
    Breadth-first, so each member is as few pairs from the kept one as it can be,
    and among pairs of one step the strongest reason wins.
    """
    seen, frontier = {kept}, [kept]
    yield kept, kept, None
    while frontier:
        found = {}
        for a in frontier:
            for b, kind in link.get(a, ()):
                if b in members and b not in seen and (b not in found or kind < found[b][1]):
                    found[b] = (a, kind)
        for b in sorted(found):
            seen.add(b)
            yield b, found[b][0], found[b][1]
        frontier = sorted(found)


def _fill_features(features, group, paths, verification, cache):
    """Features for members that verification did not need (for their inliers with the kept one)."""
    todo = [p for p in group if p not in features]
    if todo:
        got, _ = verification.compute_features([paths[p] for p in todo], cache)
        for p, f in zip(todo, got):
            features[p] = f


def _reason(kind, distance, inliers, via):
    if kind == IDENTICAL:
        text = "identical file"
    elif kind == EMBEDDING:
        text = f"distance {distance:.4f}"
    else:
        text = f"{inliers} inliers, distance {distance:.4f}"
    return text if via is None else f"{text} to {via}"


def write_groups(samples, ids, groups, distances, tag, inliers=None, reasons=None,
                 brain_key=None):
    """Replaces earlier results on ``ids`` (the view's samples) with these groups; publishes.

    ``distances``, ``inliers`` and ``reasons`` are keyed by position in ``ids``;
    the first member of each group is the kept one: ``dup_kept`` True and the
    tag :data:`KEPT_TAG`, the others get ``tag``. ``brain_key``: the index that
    made them, named in the published record.

    The caller holds the lease. :func:`runs.write` stages the values, then
    applies and publishes them: a kill anywhere leaves the old results or,
    rolled forward, the new ones (see :mod:`lookalike.curation.published_runs`).
    """
    import fiftyone as fo

    dataset = fo_adapter.root_dataset(samples)
    inliers, reasons = inliers or {}, reasons or {}
    for name, ftype in ((GROUP_FIELD, fo.IntField), (DISTANCE_FIELD, fo.FloatField),
                        (INLIERS_FIELD, fo.IntField), (REASON_FIELD, fo.StringField),
                        (KEPT_FIELD, fo.BooleanField), (RUN_FIELD, fo.StringField)):
        if name not in dataset.get_field_schema():
            dataset.add_sample_field(name, ftype)
    group_of, dist_of, inliers_of, reason_of, kept_of, tagged = {}, {}, {}, {}, {}, []
    for number, group in enumerate(groups, 1):
        for n, p in enumerate(group):
            group_of[ids[p]] = number
            kept_of[ids[p]] = n == 0
            dist_of[ids[p]] = None if distances.get(p) is None else float(distances[p])
            if inliers.get(p) is not None:
                inliers_of[ids[p]] = int(inliers[p])
            if p in reasons:
                reason_of[ids[p]] = reasons[p]
            if n > 0:
                tagged.append(ids[p])
    return runs.write(samples, KIND, RUN_FIELD, list(ids),
                      {GROUP_FIELD: group_of, DISTANCE_FIELD: dist_of, INLIERS_FIELD: inliers_of,
                       REASON_FIELD: reason_of, KEPT_FIELD: kept_of}, tag, tagged,
                      marked=[ids[g[0]] for g in groups], mark=KEPT_TAG, brain_key=brain_key,
                      num_groups=len(groups), num_duplicates=len(tagged))


def duplicates_view(samples):
    """The published run's grouped samples, group by group, the kept one first."""
    from fiftyone import ViewField as F

    # Runs published before dup_kept existed: their kept sample is the one at distance 0.
    kept = [(KEPT_FIELD, -1)] if KEPT_FIELD in samples.get_field_schema() else []
    return runs.published_view(samples, KIND, RUN_FIELD, F(GROUP_FIELD) != None,  # noqa: E711
                               [(GROUP_FIELD, 1)] + kept + [(DISTANCE_FIELD, 1)])


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
