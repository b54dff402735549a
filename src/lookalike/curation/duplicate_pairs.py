"""Every duplicate pair of a view: within the embedding threshold, verified by local
features, or byte-identical files (:func:`find_pairs`).

Pairs come from the run's vectors, by the one pair search
(:mod:`lookalike.similarity.pairs`, exact or faiss IVF), from byte-identical
files (same SHA-256, no encoder needed) and, unless turned off, from geometric
verification (:mod:`lookalike.images.local_features`): each sample's nearest
neighbours within the looser candidate distance are checked with local
features, and a pair with enough RANSAC inliers is a duplicate even when the
embedding put it beyond the threshold -- the same object photographed again
from another viewpoint. Writes nothing: grouping is :mod:`.duplicates`, leaks
across splits :mod:`.leaks`.
"""

from dataclasses import dataclass, field

import numpy as np

from lookalike.core import fo_adapter
from lookalike.core.errors import CurationError
from lookalike.core.progress import scaled
from lookalike.curation.keep import hash_pairs
from lookalike.curation.orientations import ORIENTATION_CANDIDATES, orientation_pairs
from lookalike.images.feature_votes import VOTE_CANDIDATES, vote_pairs
from lookalike.similarity import records
from lookalike.similarity.distance import cosine_distance
from lookalike.similarity.engine import check_engine
from lookalike.similarity.pairs import vector_pairs

VERIFY_CHOICES = ("auto", True, False)  # also feature_votes' choices
DEFAULT_CANDIDATES = 10  # nearest neighbours per sample that verification checks
# How a pair joined: the reason kinds, in the order a group's reasons prefer them.
# TURNED: one image's quarter turn or transpose is within the duplicate threshold of
# the other (a photo that lost its EXIF orientation) and verification cannot judge.
# CONTAINED: one picture found inside the other where verification cannot judge.
# SHOT: not a duplicate -- another shot of the same scene, the camera moved through
# 3-D (parallax; see lookalike.images.local_features.parallax): kept apart from the
# duplicate groups, counted by find_leaks.
IDENTICAL, EMBEDDING, VERIFIED, TURNED, CONTAINED, SHOT = 0, 1, 2, 3, 4, 5
DUPLICATE_KINDS = (IDENTICAL, EMBEDDING, VERIFIED, TURNED, CONTAINED)


def _verification_settings(index, verify, min_inliers, candidates, num_samples,
                           orientations=True, feature_votes="auto", other_shots=True):
    """``(on, settings)``: whether to verify, with the thresholds to use (see find_duplicates)."""
    from lookalike.images.feature_votes import VOTE_UP_TO
    from lookalike.images.local_features import (
        DEFAULT_MIN_INLIERS,
        MIN_PARALLAX_FLOOR,
        MIN_SHOT_INLIERS_FLOOR,
        VERIFY_UP_TO,
    )

    if verify not in VERIFY_CHOICES:
        raise CurationError(f"verify must be one of {VERIFY_CHOICES}, got {verify!r}")
    if feature_votes not in VERIFY_CHOICES:
        raise CurationError(f"feature_votes must be one of {VERIFY_CHOICES}, "
                            f"got {feature_votes!r}")
    if feature_votes == "auto":
        feature_votes = num_samples <= VOTE_UP_TO
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
                      calibration["candidate_threshold"]),
                  "orientations": bool(orientations), "feature_votes": bool(feature_votes),
                  "other_shots": bool(other_shots),
                  # Records calibrated before "another shot" existed: the floors.
                  "min_shot_inliers": int(calibration.get("min_shot_inliers")
                                          or MIN_SHOT_INLIERS_FLOOR),
                  "min_parallax": int(calibration.get("min_parallax") or MIN_PARALLAX_FLOOR)}


def _candidate_pairs(index, rows, k, within, known):
    """Positions ``(i, j)`` in ``rows`` of each row's ``k`` nearest neighbours within
    ``within``, and ``(i, j)`` of those beyond it (for :func:`_contained_edges`).

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
    found, near = b >= 0, dists.ravel() <= within
    i, j = np.minimum(a, b), np.maximum(a, b)
    codes = np.unique(i[found & near] * np.int64(len(rows)) + j[found & near])
    codes = codes[~np.isin(codes, known)]
    far = np.unique(i[found & ~near] * np.int64(len(rows)) + j[found & ~near])
    far = far[~np.isin(far, known) & ~np.isin(far, codes)]
    return codes // len(rows), codes % len(rows), (far // len(rows), far % len(rows))


@dataclass
class Pairs:
    """The duplicate pairs of a view, before grouping (see :func:`find_pairs`)."""

    ids: list  # the view's sample ids; pairs hold positions in it
    paths: list
    i: np.ndarray
    j: np.ndarray
    kinds: np.ndarray  # IDENTICAL, EMBEDDING, VERIFIED, TURNED, CONTAINED or SHOT
    threshold: float
    engine: str  # the pair search used, or "files"
    verification: dict = None  # settings and counts (None: not asked for)
    num_pairs: int = 0  # within the embedding threshold
    num_exact: int = 0  # byte-identical files
    num_verified: int = 0  # beyond the threshold, verified by local features
    num_turned: int = 0  # a turn of one within the threshold of the other, unverifiable
    turned_of: dict = field(default_factory=dict)  # (a, b), a < b -> (turn, distance)
    num_contained: int = 0  # one found inside the other, unverifiable
    contained_of: dict = field(default_factory=dict)  # (a, b), a < b -> correlation
    num_shots: int = 0  # another shot of the same scene (not duplicates)
    shot_of: dict = field(default_factory=dict)  # (a, b), a < b -> (inliers, off plane)
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
        from lookalike.images import local_features as verification

        if self.features is None:
            return None
        fill_features(self.features, [a, b], self.paths, verification, self.cache)
        verify_all(self.features, [(a, b)], self.inliers_of, verification)
        return self.inliers_of[pair_key(a, b)]


def find_pairs(samples, brain_key=None, threshold=None, engine="auto", exact_files=True,
               verify="auto", min_inliers=None, candidates=DEFAULT_CANDIDATES, progress=None,
               orientations=True, feature_votes="auto", other_shots=True):
    """Every duplicate pair of ``samples``: within the threshold, verified, or identical
    files; and, with verification and ``other_shots``, the pairs that are another shot of
    the same scene (kind SHOT).

    The arguments are :func:`find_duplicates`'; returns :class:`Pairs` and
    writes nothing. ``progress`` runs to 0.85.
    """
    from lookalike.images import local_features as verification

    check_engine(engine)
    if fo_adapter.exact_count(samples) == 0:
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
                                                  len(ids), orientations, feature_votes,
                                                  other_shots)
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
            known = i * np.int64(len(rows)) + j
            ci, cj, beyond = _candidate_pairs(index, rows, settings["candidates"],
                                              settings["candidate_threshold"], known)
            row_paths = [paths[p] for p in in_index]
            mirror = np.ones(len(ci), bool)  # retried mirrored when they fall short
            num_embedding = len(ci)
            out.cache = verification.cache_dir(fo_adapter.root_dataset(samples))
            if orientations:
                report_progress(0.5, "embedding each image's quarter turns and transposes")
                ti, tj, tm, td, tt = orientation_pairs(
                    index, rows, row_paths, ORIENTATION_CANDIDATES,
                    settings["candidate_threshold"], cache=out.cache)
                close = (td <= out.threshold) & ~np.isin(ti * np.int64(len(rows)) + tj, known)
                turned_close = (ti[close], tj[close], tt[close], td[close])
                ci, cj, mirror = _merge(len(rows), known, (ci, cj, mirror), (ti, tj, tm))
            out.features = {}  # absent: not computed
            votes = settings["feature_votes"]
            needed = (np.arange(len(rows)) if votes else np.unique(np.concatenate([ci, cj])))
            found, missing = verification.compute_features(
                [row_paths[r] for r in needed], out.cache,
                progress=scaled(progress, 0.5, 0.25))
            for r, f in zip(needed, found):
                out.features[int(in_index[r])] = f
            if votes:
                report_progress(0.75, "local features voting for candidate pairs")
                vi, vj, _ = vote_pairs(found, VOTE_CANDIDATES)
                ci, cj, mirror = _merge(len(rows), known, (ci, cj, mirror),
                                        (vi, vj, np.zeros(len(vi), bool)))
            ci, cj = in_index[ci], in_index[cj]
            names = {p: verification.entry_name(paths[p]) for p in out.features}
            counts = verification.verify_pairs(out.features, ci, cj,
                                               progress=scaled(progress, 0.75, 0.08),
                                               with_parallax=other_shots,
                                               saved=(out.cache, names))
            counts, evidence = counts if other_shots else (counts, None)
            counts[mirror] = verification.verify_mirrored(
                out.features, ci[mirror], cj[mirror], counts[mirror], settings["min_inliers"],
                paths, out.cache)
            ok = counts >= settings["min_inliers"]
            out.inliers_of = {pair_key(a, b): int(c) for a, b, c in zip(ci, cj, counts)}
            shot = np.zeros(len(ci), bool)
            if other_shots:
                report_progress(0.83, "looking for other shots of the same scenes")
                shot = _shot_edges(out, edges, ci, cj, ok, evidence, settings, verification)
            ok &= ~shot
            edges.append((ci[ok], cj[ok], np.full(int(ok.sum()), VERIFIED)))
            if orientations:
                _turned_edges(out, edges, in_index, turned_close, settings["min_inliers"],
                              verification)
            report_progress(0.83, "looking for crops of images without local features")
            _contained_edges(out, edges, (ci[~ok & ~shot], cj[~ok & ~shot]),
                             (in_index[beyond[0]], in_index[beyond[1]]),
                             settings["min_inliers"], verification)
            out.num_verified = int(ok.sum())
            settings.update(num_candidates=int(len(ci)), num_featureless=len(missing),
                            num_other_candidates=int(len(ci) - num_embedding),
                            num_turned=out.num_turned, num_contained=out.num_contained,
                            num_shots=out.num_shots)

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


def _blind(out, images, min_inliers, verification):
    """The positions of ``images`` whose local features cannot judge a pair: none at all
    (flat, blurred, tiny), or not confirmed even against an edited copy of themselves
    (:func:`~lookalike.images.local_features.recognises_itself`, cached)."""
    images = sorted({int(p) for p in images})
    # Features absent from out.features were not computed: that says nothing.
    blind = {p for p in images if p in out.features and out.features[p] is None}
    unsure = [p for p in images if p not in blind]
    if unsure:
        judged = verification.recognises_itself([out.paths[p] for p in unsure], min_inliers,
                                                cache=out.cache)
        blind |= {p for p, ok in zip(unsure, judged) if not ok}
    return blind


def _contained_edges(out, edges, unverified, beyond, min_inliers, verification):
    """CONTAINED pairs: one picture found inside the other
    (:mod:`lookalike.images.containment`) where local features cannot judge either.

    Checked: the candidate pairs that did not verify, and the nearest-neighbour pairs
    beyond the candidate distance (``beyond``: a crop of a featureless photo embeds far
    from it, 0.29 for a chessboard's 30% crop), where one of the two is blind
    (:func:`_blind`). An image with a verified pair is not blind; every other image at
    an end of these pairs is self-checked once (cached): the first run's main cost.
    """
    from lookalike.images import containment

    a, b = (np.concatenate([x, y]).astype(np.int64) for x, y in zip(unverified, beyond))
    seen = {int(p) for key in out.inliers_of if out.inliers_of[key] >= min_inliers
            for p in key}
    edge_ends = np.concatenate([a, b])
    blind = _blind(out, [p for p in edge_ends.tolist() if p not in seen], min_inliers,
                   verification)
    check = np.array([int(x) in blind or int(y) in blind for x, y in zip(a, b)], bool)
    a, b = a[check], b[check]
    out.verification.update(num_blind=len(blind), num_containment_checked=int(len(a)))
    scores = containment.pair_scores(out.paths, list(zip(a.tolist(), b.tolist()))) if len(
        a) else np.zeros(0)
    keep = scores >= containment.MIN_SCORE
    edges.append((a[keep], b[keep], np.full(int(keep.sum()), CONTAINED)))
    out.contained_of = {pair_key(x, y): float(v) for x, y, v in
                        zip(a[keep], b[keep], scores[keep])}
    out.num_contained = int(keep.sum())


def _shot_edges(out, edges, ci, cj, verified, evidence, settings, verification):
    """SHOT pairs among the candidate pairs ``(ci, cj)``: another shot of one scene.

    A pair is one when a fundamental matrix explains at least ``min_shot_inliers``
    of its matches and ``min_parallax`` of those lie off the plane that holds most
    (:func:`~lookalike.images.local_features.parallax`,
    :func:`~lookalike.images.local_features.shows_parallax`): the camera moved
    through a 3-D scene. Judged on the cached features first (``evidence``, from
    verification's matching: (inliers, off plane) per pair); a pair that reaches
    the epipolar inliers but no homography verified is judged again on
    :data:`~lookalike.images.local_features.DENSE_KEYPOINTS` features (cached
    apart), since 500 keypoints sit mostly on the nearest big plane. A pair a
    homography verified (``verified``) is one only with twice the parallax on the
    cached features: edited copies show up to 9 matches off one plane there
    (mirrored symmetric pictures, repetitive textures), the real stereo pair 66.
    Returns the mask of SHOT pairs; writes ``out.shot_of`` and ``out.num_shots``.
    """
    low, need = settings["min_shot_inliers"], settings["min_parallax"]
    evidence = np.array(evidence, np.int32).reshape(len(ci), 2)
    shot = verification.shows_parallax(evidence, low, np.where(verified, 2 * need, need))
    again = np.flatnonzero(~verified & ~shot & (evidence[:, 0] >= low))
    if len(again):
        images = sorted({int(p) for n in again for p in (ci[n], cj[n])})
        got, _ = verification.compute_features([out.paths[p] for p in images], out.cache,
                                               dense=True)
        dense = dict(zip(images, got))
        ok = [n for n in again if dense[int(ci[n])] is not None
              and dense[int(cj[n])] is not None]
        if ok:
            names = {p: verification.entry_name(out.paths[p], dense=True) for p in images}
            evidence[ok] = verification.parallax_pairs(dense, ci[ok], cj[ok],
                                                       saved=(out.cache, names))
            shot[ok] = verification.shows_parallax(evidence[ok], low, need)
    edges.append((ci[shot], cj[shot], np.full(int(shot.sum()), SHOT)))
    out.shot_of = {pair_key(a, b): (int(f), int(p))
                   for a, b, (f, p) in zip(ci[shot], cj[shot], evidence[shot])}
    out.num_shots = int(shot.sum())
    out.verification["num_shot_checked"] = int(len(again))
    return shot


def _turned_edges(out, edges, in_index, turned_close, min_inliers, verification):
    """TURNED pairs: a turn of one image within the duplicate threshold of the other, not
    verified, where verification cannot judge: either image has no local features (flat,
    blurred, tiny) or is not confirmed even against an edited copy of itself
    (:func:`~lookalike.images.local_features.recognises_itself`).

    Where both can be judged verification decides (SIFT is rotation-invariant: a turned
    copy verifies with hundreds of inliers, a transposed one mirrored): four turned
    embeddings per image meet an unrelated image within a loose threshold four times as
    often as the plain one does (measured on mosaics of shared photos with a weak encoder:
    14 such pairs among 164 images, most of them false).
    """
    a, b, turns, dists = turned_close
    a, b = in_index[a], in_index[b]
    verified = np.array([out.inliers_of.get(pair_key(x, y), 0) >= min_inliers
                         for x, y in zip(a, b)], bool)
    blind = _blind(out, np.concatenate([a[~verified], b[~verified]]).tolist(), min_inliers,
                   verification)
    keep = ~verified & np.array([int(x) in blind or int(y) in blind for x, y in zip(a, b)],
                                bool)
    edges.append((a[keep], b[keep], np.full(int(keep.sum()), TURNED)))
    out.turned_of = {pair_key(x, y): (str(t), float(d))
                     for x, y, t, d in zip(a[keep], b[keep], turns[keep], dists[keep])}
    out.num_turned = int(keep.sum())


def _merge(n, known, first, more):
    """``first`` (i, j, mirror) with the pairs of ``more`` not already in it or ``known``
    (``i * n + j`` codes); a pair in both is retried mirrored if either says so."""
    codes = first[0] * np.int64(n) + first[1]
    extra = np.minimum(more[0], more[1]) * np.int64(n) + np.maximum(more[0], more[1])
    keep = ~np.isin(extra, known) & (more[0] != more[1])
    extra, flags = extra[keep], more[2][keep]
    mirror = first[2].copy()
    mirror[np.isin(codes, extra[flags])] = True
    new = np.unique(extra[~np.isin(extra, codes)])
    new_flags = np.zeros(len(new), bool)
    if len(new):
        mirror_codes = set(extra[flags].tolist())
        new_flags = np.array([c in mirror_codes for c in new.tolist()], bool)
    return (np.concatenate([first[0], new // n]), np.concatenate([first[1], new % n]),
            np.concatenate([mirror, new_flags]))


TURN_WORDS = {"rot90": "turned a quarter", "rot180": "turned upside down",
              "transpose": "transposed", "transverse": "transposed and turned upside down"}


def pair_key(a, b):
    return (int(min(a, b)), int(max(a, b)))


def verify_all(features, pairs, inliers_of, verification):
    """Adds the inliers of every pair of positions not yet in ``inliers_of``, in parallel."""
    todo = sorted({pair_key(a, b) for a, b in pairs} - set(inliers_of))
    if todo:
        counts = verification.verify_pairs(features, [a for a, _ in todo], [b for _, b in todo])
        inliers_of.update(zip(todo, counts.tolist()))


def fill_features(features, group, paths, verification, cache):
    """Features for members that verification did not need (for their inliers with the kept one)."""
    todo = [p for p in group if p not in features]
    if todo:
        got, _ = verification.compute_features([paths[p] for p in todo], cache)
        for p, f in zip(todo, got):
            features[p] = f


def pair_reason(kind, distance, inliers, via, turned=None, contained=None, shot=None):
    """Why a pair is a duplicate, in words; ``turned``: ``(turn, distance)`` of a TURNED
    pair, ``contained``: the correlation of a CONTAINED one, ``shot``: ``(inliers, off
    plane)`` of a SHOT one (another shot of the scene)."""
    if kind == IDENTICAL:
        text = "identical file"
    elif kind == SHOT:
        return (f"another shot of the same scene{'' if via is None else ' as ' + via} "
                f"({shot[0]} epipolar inliers, {shot[1]} off one plane)")
    elif kind == CONTAINED:
        text = f"one found inside the other (correlation {contained:.3f})"
    elif kind == EMBEDDING:
        text = f"distance {distance:.4f}"
    elif kind == TURNED:
        text = f"{TURN_WORDS.get(turned[0], turned[0])}, distance {turned[1]:.4f}"
    else:
        text = f"{inliers} inliers, distance {distance:.4f}"
    return text if via is None else f"{text} to {via}"
