"""Near-duplicate groups on a dataset: pairs joined into groups, written to sample fields
and tags.

Pairs (:mod:`.duplicate_pairs`) are joined into groups (a single bridging pair
never merges two groups, see :func:`~lookalike.similarity.pairs.groups_from_pairs`)
and each group keeps one sample (``keep``: first, largest or sharpest,
:mod:`lookalike.curation.keep`); every other member says why it is in the group
(``dup_reason``: its embedding distance, its inliers or identical bytes, to the
kept sample or to the member that links it), the others get a tag. Deleting
them is a separate, explicit step (:mod:`.deletion`).

Writes never mix two runs: each run holds the lease ``curation:duplicates`` of
the dataset, writes its groups under a run id (field ``dup_run``) and publishes
that id in one atomic update (see :mod:`lookalike.curation.published_runs`);
readers trust only samples of the published run.
"""

import os
from dataclasses import dataclass, field

import numpy as np

from lookalike.core import fo_adapter, leases
from lookalike.curation import published_runs as runs
from lookalike.curation.duplicate_pairs import (
    DEFAULT_CANDIDATES,
    EMBEDDING,
    IDENTICAL,
    SHOT,
    TURNED,
    fill_features,
    pair_reason,
    find_pairs,
    pair_key,
    verify_all,
)
from lookalike.curation.keep import check_keep_policy, choose_kept
from lookalike.similarity import records
from lookalike.similarity.pairs import groups_from_pairs, split_at_weak_pairs

DEFAULT_TAG = "duplicate"
KEPT_TAG = "kept"  # the one sample of each group that stays: a badge on its tile
KEPT_FIELD = "dup_kept"  # True on the kept sample of a group, False on the others
GROUP_FIELD = "dup_group"
DISTANCE_FIELD = "dup_distance"
INLIERS_FIELD = "dup_inliers"  # RANSAC inliers with the kept sample (verification on)
REASON_FIELD = "dup_reason"  # why the sample is in its group, in words
LABEL_FIELD = "dup_label"  # what a tile shows: "group 3: kept", "group 3: 0.0012, 142 inliers"
RUN_FIELD = "dup_run"  # the run that wrote a sample's group; only the published one counts
# Another shot of the same scene (not a duplicate: keep both, mind leaks): a group of
# its own, the reason, and a tag of its own.
SHOT_GROUP_FIELD = "shot_group"
SHOT_REASON_FIELD = "shot_reason"
SHOT_TAG = "another_shot"
CHECK_NEAREST = 4  # embedding pairs per group member that verification checks
KIND = "duplicates"


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
    shot_groups: list = field(default_factory=list)  # sample ids: shots of one scene
    num_shot_pairs: int = 0
    shot_reasons: dict = field(default_factory=dict)  # sample id -> "another shot of ..."

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
                    verification=self.verification, warning=self.warning,
                    num_shot_groups=len(self.shot_groups), num_shot_pairs=self.num_shot_pairs)

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
            if v.get("num_turned"):
                text += (f"; {v['num_turned']} pairs are a quarter turn or transpose of each "
                         "other within the threshold")
            if v.get("num_contained"):
                text += (f"; in {v['num_contained']} pairs without local features one "
                         "picture was found inside the other")
            if self.shot_groups:
                text += (f". Not duplicates: {sum(map(len, self.shot_groups))} samples in "
                         f"{len(self.shot_groups)} groups are other shots of one scene "
                         f"({self.num_shot_pairs} pairs; tagged '{SHOT_TAG}', field "
                         f"'{SHOT_GROUP_FIELD}')")
        elif v:
            text += f"; no geometric verification ({v['why_not']})"
        if self.warning:
            text += f". Warning: {self.warning}"
        return text


def find_duplicates(samples, brain_key=None, threshold=None, keep="first", engine="auto",
                    tag=DEFAULT_TAG, exact_files=True, verify="auto", min_inliers=None,
                    candidates=DEFAULT_CANDIDATES, progress=None, orientations=True,
                    feature_votes="auto", other_shots=True):
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
        orientations (True): with verification, also check the nearest
            neighbours of each image turned by quarter turns and transposed
            (:mod:`lookalike.curation.orientations`): rotated copies
        feature_votes ("auto"): with verification, also check the images that
            share the most local features with each image, wherever the
            embedding puts them (:mod:`lookalike.images.feature_votes`): crops,
            rotations, screenshots. True, False, or "auto" = on for views of up
            to :data:`lookalike.images.feature_votes.VOTE_UP_TO` samples (votes
            need every image's local features, not only the candidates')
        other_shots (True): with verification, also name the candidate pairs that
            are another shot of the same scene -- a camera that moved through
            3-D, found by a fundamental matrix with parallax
            (:func:`lookalike.images.local_features.parallax`). They are not
            duplicates: grouped apart in ``shot_group`` and ``shot_reason``,
            tagged ``another_shot``, and never deleted as duplicates

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
                                exact_files, verify, min_inliers, candidates, progress,
                                orientations, feature_votes, other_shots)


def _find_duplicates(samples, brain_key, threshold, keep, engine, tag, exact_files, verify,
                     min_inliers, candidates, progress, orientations=True, feature_votes="auto",
                     other_shots=True):
    from lookalike.images import local_features as verification

    check_keep_policy(keep)
    report_progress = progress or (lambda fraction, label: None)
    pairs = find_pairs(samples, brain_key, threshold, engine, exact_files, verify, min_inliers,
                       candidates, progress, orientations, feature_votes, other_shots)
    shot = pairs.kinds == SHOT  # not duplicates: grouped apart
    ids, paths = pairs.ids, pairs.paths
    i, j, kinds = pairs.i[~shot], pairs.j[~shot], pairs.kinds[~shot]
    features, inliers_of, settings = pairs.features, pairs.inliers_of, pairs.verification
    distance, inliers = pairs.distance, pairs.inliers
    groups = groups_from_pairs(len(ids), i, j, unbreakable=kinds == IDENTICAL)

    if features is not None:
        report_progress(0.88, f"checking the pairs inside {len(groups)} groups")
        cache = verification.cache_dir(fo_adapter.root_dataset(samples))
        fill_features(features, [p for g in groups for p in g], paths, verification, cache)

        def mirrored_features(positions):
            got, _ = verification.compute_features([paths[p] for p in positions], cache,
                                                   mirrored=True)
            return dict(zip(positions, got))

        groups = _split_unverified(groups, i, j, kinds, features, inliers_of, distance,
                                   settings["min_inliers"], verification, mirrored_features,
                                   pairs.turned_of)
    report_progress(0.9, f"choosing the kept sample of {len(groups)} groups")

    link = _links(i, j, kinds)
    ordered, distances, inlier_counts, reasons = [], {}, {}, {}
    kept_of = [choose_kept(group, keep, paths) for group in groups]
    if features is not None:  # each member's inliers with its kept sample, in parallel
        verify_all(features, [(p, kept) for g, kept in zip(groups, kept_of) for p in g
                               if p != kept], inliers_of, verification)
    for group, kept in zip(groups, kept_of):
        rest = sorted(p for p in group if p != kept)
        for p, via, kind in _reached_from(kept, set(group), link):
            # Files without a vector join only as identical bytes: distance 0.
            distances[p] = (distance(p, kept) if p != kept else None) or 0.0
            inlier_counts[p] = inliers(p, kept) if p != kept else None
            reasons[p] = "kept" if p == kept else pair_reason(
                kind, distance(p, via), inliers(p, via),
                None if via == kept else os.path.basename(paths[via]),
                pairs.turned_of.get(pair_key(p, via)), pairs.contained_of.get(pair_key(p, via)))
        ordered.append([kept] + rest)
    ordered.sort(key=lambda g: (-len(g), g[0]))

    shot_groups, shot_reasons = _shot_groups(pairs, pairs.i[shot], pairs.j[shot])
    write_groups(samples, ids, ordered, distances, tag, inlier_counts, reasons,
                 brain_key=brain_key, shots=(shot_groups, shot_reasons))
    report = DuplicateReport(
        threshold=float(pairs.threshold), engine=pairs.engine, keep=keep,
        groups=[[ids[p] for p in g] for g in ordered], num_pairs=int(pairs.num_pairs),
        num_exact_pairs=int(pairs.num_exact), num_searched=len(ids),
        num_verified_pairs=pairs.num_verified, verification=settings,
        files={ids[p]: paths[p] for g in ordered + shot_groups for p in g},
        reasons={ids[p]: reasons[p] for g in ordered for p in g if p in reasons},
        brain_key=brain_key, warning=pairs.warning,
        shot_groups=[[ids[p] for p in g] for g in shot_groups], num_shot_pairs=int(shot.sum()),
        shot_reasons={ids[p]: r for p, r in shot_reasons.items()})
    if brain_key is not None:
        import lookalike.similarity as ls

        records.save(ls.load_index(fo_adapter.root_dataset(samples), brain_key), "duplicates",
                     report.to_record())
    report_progress(1.0, f"{report.num_groups} groups, {report.num_duplicates} duplicates")
    return report


def _split_unverified(groups, i, j, kinds, features, inliers_of, distance, min_inliers,
                      verification, mirrored_features, turned_of=None):
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
    ``inliers_of`` ({(i, j): inliers}) gets the counts of the pairs checked. A
    TURNED pair (``turned_of``: {(i, j): (turn, distance)}) is an embedding pair
    like the others, at its turned distance (the encoder confuses turned textures
    as it confuses upright ones).
    """
    turned_of = turned_of or {}
    d = np.array([turned_of[pair_key(a, b)][1] if k == TURNED else
                  distance(int(a), int(b)) or 0.0 for a, b, k in zip(i, j, kinds)])
    weak = (kinds == EMBEDDING) | (kinds == TURNED)
    strong = ~weak
    grouped = {p for g in groups for p in g}
    by_member = {}
    for e in np.flatnonzero(weak):
        a, b = int(i[e]), int(j[e])
        if a in grouped and b in grouped:
            by_member.setdefault(a, []).append(e)
            by_member.setdefault(b, []).append(e)
    by_member = {m: sorted(edges, key=lambda e: d[e]) for m, edges in by_member.items()}

    def check(edges):
        verify_all(features, [(int(i[e]), int(j[e])) for e in edges], inliers_of,
                    verification)

    def holds(e):
        return inliers_of[pair_key(i[e], j[e])] >= min_inliers

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


def _shot_groups(pairs, i, j):
    """``(groups, reasons)``: the SHOT pairs joined into groups (shots of one scene,
    positions, largest first) and each member's reason, naming its partner with the most
    epipolar inliers."""
    best = {}
    for a, b in zip(i.tolist(), j.tolist()):
        evidence = pairs.shot_of[pair_key(a, b)]
        for p, other in ((a, b), (b, a)):
            if p not in best or evidence[0] > best[p][1][0]:
                best[p] = (other, evidence)
    groups = sorted(groups_from_pairs(len(pairs.ids), i, j, split_bridges=False),
                    key=lambda g: (-len(g), g[0]))
    reasons = {p: pair_reason(SHOT, None, None, os.path.basename(pairs.paths[other]),
                              shot=evidence) for p, (other, evidence) in best.items()}
    return groups, reasons


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


def write_groups(samples, ids, groups, distances, tag, inliers=None, reasons=None,
                 brain_key=None, shots=((), None)):
    """Replaces earlier results on ``ids`` (the view's samples) with these groups; publishes.

    ``distances``, ``inliers`` and ``reasons`` are keyed by position in ``ids``;
    the first member of each group is the kept one: ``dup_kept`` True and the
    tag :data:`KEPT_TAG`, the others get ``tag``. ``brain_key``: the index that
    made them, named in the published record. ``shots``: ``(groups, reasons)`` of
    other shots of one scene (positions), written to ``shot_group`` and
    ``shot_reason`` and tagged :data:`SHOT_TAG`.

    The caller holds the lease. :func:`runs.write` stages the values, then
    applies and publishes them: a kill anywhere leaves the old results or,
    rolled forward, the new ones (see :mod:`lookalike.curation.published_runs`).
    """
    import fiftyone as fo

    dataset = fo_adapter.root_dataset(samples)
    inliers, reasons = inliers or {}, reasons or {}
    for name, ftype in ((GROUP_FIELD, fo.IntField), (DISTANCE_FIELD, fo.FloatField),
                        (INLIERS_FIELD, fo.IntField), (REASON_FIELD, fo.StringField),
                        (KEPT_FIELD, fo.BooleanField), (RUN_FIELD, fo.StringField),
                        (LABEL_FIELD, fo.StringField), (SHOT_GROUP_FIELD, fo.IntField),
                        (SHOT_REASON_FIELD, fo.StringField)):
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
    label_of = {sid: tile_label(group_of[sid], kept_of[sid], dist_of.get(sid),
                                inliers_of.get(sid)) for sid in group_of}
    shot_groups, shot_reasons = shots[0], shots[1] or {}
    shot_group_of = {ids[p]: number for number, g in enumerate(shot_groups, 1) for p in g}
    shot_reason_of = {ids[p]: shot_reasons[p] for g in shot_groups for p in g
                      if p in shot_reasons}
    return runs.write(samples, KIND, RUN_FIELD, list(ids),
                      {GROUP_FIELD: group_of, DISTANCE_FIELD: dist_of, INLIERS_FIELD: inliers_of,
                       REASON_FIELD: reason_of, KEPT_FIELD: kept_of, LABEL_FIELD: label_of,
                       SHOT_GROUP_FIELD: shot_group_of, SHOT_REASON_FIELD: shot_reason_of},
                      tag, tagged,
                      marked=[ids[g[0]] for g in groups], mark=KEPT_TAG,
                      extra_tags={SHOT_TAG: sorted(shot_group_of)}, brain_key=brain_key,
                      num_groups=len(groups), num_duplicates=len(tagged),
                      num_shot_groups=len(shot_groups))


def tile_label(group, kept, distance, inliers):
    """A group member as a tile says it, labelled and rounded: "group 3: kept",
    "group 3: distance 0.0012, 142 inliers" (raw floats mean nothing to a curator)."""
    if kept:
        return f"group {group}: kept"
    if distance is None:
        text = "distance ?"
    elif distance < 5e-5:
        text = "distance < 0.0001" if distance > 0 else "distance 0"
    else:
        text = f"distance {distance:.4f}"
    return f"group {group}: {text}" + (f", {inliers} inliers" if inliers is not None else "")


def shots_view(samples):
    """The published run's other shots of one scene, group by group (see ``other_shots``)."""
    from fiftyone import ViewField as F

    if SHOT_GROUP_FIELD not in samples.get_field_schema():
        return samples.limit(0)
    return runs.published_view(samples, KIND, RUN_FIELD, F(SHOT_GROUP_FIELD) != None,  # noqa: E711
                               [(SHOT_GROUP_FIELD, 1)])


def duplicates_view(samples):
    """The published run's grouped samples, group by group, the kept one first."""
    from fiftyone import ViewField as F

    # Runs published before dup_kept existed: their kept sample is the one at distance 0.
    kept = [(KEPT_FIELD, -1)] if KEPT_FIELD in samples.get_field_schema() else []
    return runs.published_view(samples, KIND, RUN_FIELD, F(GROUP_FIELD) != None,  # noqa: E711
                               [(GROUP_FIELD, 1)] + kept + [(DISTANCE_FIELD, 1)])


