"""``calibrate_threshold``: distance thresholds for a similarity run, saved with the run.

With a label field: TF Similarity's procedure (see :mod:`lookalike.curation.sweep`)
on leave-one-out nearest neighbours, by default open-set: a share of the label
classes is held out of the gallery, so that rejecting their queries counts.
Without labels: thresholds from the distribution of nearest-neighbour distances,
stated as such.

Two thresholds are saved:

* ``threshold``: "matches something we know" (distance <= threshold); samples
  farther than this from every other sample are no-match outliers;
* ``duplicate_threshold``: pairs closer than this are near-duplicates. It is
  label-free in both cases. When the run knows its encoder: the distance that
  keeps ``duplicate_recall`` (95%) of synthetic edited copies of sampled
  images (:mod:`lookalike.curation.synthetic_copies`). Otherwise (embeddings from
  elsewhere): Otsu's split of the distances from each sample to its nearest
  neighbours, which separates a tight "copies" mode from ordinary neighbours
  when the data has copies.

The result is a :class:`Calibration`; the run keeps it as a record (a dict,
:meth:`Calibration.to_record`), which matching and curation read.
"""

from dataclasses import dataclass, field

import numpy as np

from lookalike.core import fo_adapter
from lookalike.similarity import records
from lookalike.curation.neighbours import leave_one_out
from lookalike.curation.sweep import choose, threshold_sweep
from lookalike.curation.thresholds import FALSE_PAIR_TARGET
from lookalike.images.edits import COPY_EDITS, VIEWPOINT_EDITS
from lookalike.core.errors import (
    CalibrationError,
    EmptyViewError,
    MissingRecordError,
    StaleRecordError,
)
from lookalike.core.labels import check_label_field, indexed_labels, pick_unknown_classes
from lookalike.core.progress import stage
from lookalike.similarity.distance import cosine_distance

LABEL_METHODS = ("f1", "precision")  # need a label field; the first is the default
LABEL_FREE_METHODS = ("isolated", "percentile")  # the first is the default without labels
METHODS = LABEL_METHODS + LABEL_FREE_METHODS
# Neighbours per sample whose distances set the label-free duplicate threshold.
DUPLICATE_NEIGHBOURS = 10
_CURVE_POINTS = 2000
# 2: the two-sided duplicate threshold. Records without it predate that rule:
# they load, but deciding with them asks for a recalibration.
DUPLICATE_RULE_VERSION = 2


def _view_rows(samples, index):
    """Rows of the index that hold samples of ``samples`` (an empty view is an error)."""
    if fo_adapter.exact_count(samples) == 0:
        raise EmptyViewError("the view is empty: there are no samples to calibrate on")
    position = {sid: r for r, sid in enumerate(index.sample_ids)}
    # In the index's order (its rows are in id order), not the dataset's: what is sampled
    # from them must not change when undelete puts samples back at the end.
    return np.sort(np.array([position[s] for s in samples.values("id") if s in position],
                            dtype=int))


@dataclass
class Calibration(records.SavedResult):
    """The thresholds of a run, as :func:`calibrate_threshold` saved them with it."""

    NULLABLE = records.SavedResult.NULLABLE + ("target", "label_field", "min_inliers",
                                               "duplicate_warning", "duplicate_separable")
    brain_key: str
    method: str  # "f1", "precision" or "percentile"
    threshold: float  # the match threshold: farther from every other sample = no match
    duplicate_threshold: float = None  # closer pairs are near-duplicates
    duplicate_rule: str = ""  # how the duplicate threshold was set, in words
    note: str = ""  # how the match threshold was set, in words
    target: float = None  # the precision or percentile asked for
    label_field: str = None  # None: label-free
    num_indexed: int = None  # indexed samples of the view calibrated on
    num_queries: int = None
    metric_values: dict = field(default_factory=dict)  # precision, recall, f1 at the threshold
    nn_histogram: dict = None  # counts and edges of nearest-neighbour distances
    nn_percentiles: dict = None  # of nearest-neighbour distances, by percentile ("5", "95")
    duplicate_recall: float = None
    copy_distance_median: dict = None  # per synthetic edit, when copies set the threshold
    # The two-sided rule (lookalike.curation.thresholds); None in older records.
    duplicate_rule_version: int = None
    duplicate_separable: bool = None  # None: not checked against different images
    duplicate_warning: str = None  # why the duplicate threshold cannot be trusted, in words
    excluded_edits: dict = None  # edits the encoder is not invariant to: median distance
    recall_per_edit: dict = None  # share of each edit's copies within the threshold
    duplicate_recall_kept: float = None  # of the invariant edits' copies
    false_pair_target: float = None
    false_pair_rate: dict = None  # kind of negatives -> share within the threshold
    num_negatives: dict = None
    duplicate_limited_by: str = None
    sibling_distance_median: float = None  # with labels: a duplicate is closer than this
    verification_judges: bool = None  # verification tells copies apart on this view
    # Geometric verification (see find_duplicates): which pairs it checks, and
    # the inliers that verify one (None: the images have no local features).
    candidate_threshold: float = None
    candidate_rule: str = ""
    min_inliers: int = None
    inlier_rule: str = ""
    # "Another shot" of the same scene (a camera that moved through 3-D; see
    # lookalike.images.local_features.parallax); None in older records.
    min_shot_inliers: int = None
    min_parallax: int = None
    shot_rule: str = ""
    viewpoint_inliers_median: float = None
    exclude_exact_duplicates: bool = False
    # With labels:
    curve: dict = None  # the sweep (thinned), for the pictures
    num_missing_labels: int = None
    classes: list = None
    unknown_classes: list = None  # held out of the gallery (open set)
    # Of the held-out classes' queries, the share the decision rule calls new
    # (thresholds.decide with both thresholds, as every matching path decides).
    unknown_rejection: float = None
    unknown_called_duplicate: float = None
    num_unknown_queries: int = None

    def summary(self):
        """One paragraph, for the CLI and the App."""
        text = (f"'{self.brain_key}' calibrated ({self.method}): no-match threshold "
                f"{self.threshold:.4f}, duplicate threshold {self.duplicate_threshold:.4f}. "
                f"{self.note}")
        values = {k: v for k, v in (self.metric_values or {}).items() if k != "thresholds"}
        if values:
            text += "; at the no-match threshold: " + ", ".join(
                f"{k} {v:.3f}" for k, v in values.items())
        if self.num_missing_labels:
            text += f"; {self.num_missing_labels} samples without a label were left out"
        if self.num_unknown_queries:
            text += (f"; of {self.num_unknown_queries} queries of the held-out classes "
                     f"{100 * self.unknown_rejection:.1f}% are called new "
                     f"({100 * self.unknown_called_duplicate:.1f}% duplicate)")
        text += f". Duplicate threshold: {self.duplicate_rule}."
        if self.duplicate_warning:
            text += f" Warning: {self.duplicate_warning}."
        if self.min_inliers is not None:
            text += (f" Geometric verification: pairs within {self.candidate_threshold:.4f} "
                     f"with at least {self.min_inliers} inliers ({self.inlier_rule}).")
            if self.shot_rule:
                text += f" {self.shot_rule[0].upper()}{self.shot_rule[1:]}."
        elif self.inlier_rule:
            text += f" {self.inlier_rule[0].upper()}{self.inlier_rule[1:]}."
        return text


    @property
    def not_invariant(self):
        """``"hflip (median 0.55), text_overlay (0.63)"``: edits left out of the threshold."""
        from lookalike.curation.thresholds import describe_excluded

        return describe_excluded(self.excluded_edits or {})


def otsu_threshold(values, bins=256):
    """Otsu's threshold of ``values`` (scikit-image's), at the upper edge of its bin: the
    distances of that bin count as near, as thresholds saved before have always done."""
    from skimage.filters import threshold_otsu

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        raise CalibrationError("need at least 2 distances")
    if v.max() - v.min() < 1e-9:
        return float(v.max())
    # scikit-image answers the bin's centre; half a bin more is its upper edge.
    return float(threshold_otsu(v, nbins=bins) + (v.max() - v.min()) / (2 * bins))


def _curve_dict(curve, chosen):
    n = len(curve.thresholds)
    keep = np.unique(np.concatenate([np.linspace(0, n - 1, min(n, _CURVE_POINTS)).astype(int),
                                     [chosen]]))
    out = {k: getattr(curve, k)[keep].astype(float).tolist()
           for k in ("thresholds", "precision", "recall", "f1")}
    out.update({k: getattr(curve, k)[keep].astype(int).tolist() for k in ("tp", "fp", "fn", "tn")})
    out["points"] = n
    return out


def _histogram(nn_dist):
    finite = nn_dist[np.isfinite(nn_dist)]
    counts, edges = np.histogram(finite, bins=min(60, max(10, len(finite) // 5)))
    return {"counts": counts.tolist(), "edges": edges.astype(float).tolist()}


def duplicate_threshold(index, view_rows, nn_inds, nn_dists, labels=None, duplicate_recall=0.95,
                        false_pair_target=FALSE_PAIR_TARGET, num_copies=64, seed=51,
                        progress=None):
    """``(threshold, rule, extra)``: the two-sided rule (:mod:`lookalike.curation.thresholds`)
    from synthetic copies against different images when the run knows its
    encoder; else Otsu's split of the neighbour distances.

    ``view_rows``: the view's rows of the index, with their leave-one-out
    neighbours ``nn_inds`` / ``nn_dists``; ``labels``: their labels (or None).
    ``extra``: record entries, among them the verification thresholds.
    """
    from lookalike.curation.synthetic_copies import copy_distances, junk_distances
    from lookalike.curation.thresholds import two_sided_threshold
    from lookalike.encoders import EncoderStoreError

    if not 0 < duplicate_recall <= 1:
        raise CalibrationError(f"duplicate_recall must be in (0, 1], got {duplicate_recall}")
    inliers = _inlier_calibration(index, view_rows, seed)
    try:
        dists = copy_distances(index, num_images=num_copies, seed=seed, progress=progress)
    except (ValueError, EncoderStoreError) as e:
        reason = str(e)
    else:
        copies = {e: v for e, v in dists.items() if e in COPY_EDITS and v}
        if copies:
            views = [d for e in VIEWPOINT_EDITS for d in dists.get(e, ())]
            # Only pairs the copies could reach can lower the threshold: verify those.
            reach = float(np.percentile(np.concatenate(list(copies.values())),
                                        100 * duplicate_recall))
            negatives, cleaned, judges = negative_distances(index, view_rows, nn_inds, nn_dists,
                                                    labels=labels, verify_below=reach,
                                                    inliers=inliers, seed=seed)
            negatives["junk"] = junk_distances(
                index, None if len(view_rows) == index.total_index_size else view_rows,
                seed=seed)
            siblings = negatives.get("siblings")
            ceiling = float(np.median(siblings)) if siblings is not None and len(siblings) \
                else None
            rule = two_sided_threshold(copies, negatives, recall=duplicate_recall,
                                       false_pair_target=false_pair_target, ceiling=ceiling)
            text = (f"two-sided: {rule.explain()}; copies: {sum(map(len, copies.values()))} "
                    f"of {len(copies)} edits of {max(map(len, copies.values()))} sampled "
                    f"images; negatives: " + ", ".join(
                        f"{n} {k}" for k, n in rule.num_negatives.items()) + f" ({cleaned})")
            if rule.notes:
                text += "; " + "; ".join(rule.notes)
            extra = {"copy_distance_median": {e: float(np.median(v)) for e, v in dists.items()
                                              if v},
                     "duplicate_separable": rule.separable,
                     "duplicate_warning": rule.why_not() or None,
                     "excluded_edits": rule.excluded_edits,
                     "recall_per_edit": rule.recall_per_edit,
                     "duplicate_recall_kept": rule.recall,
                     "false_pair_target": rule.false_pair_target,
                     "false_pair_rate": rule.false_pair_rate,
                     "num_negatives": rule.num_negatives,
                     "duplicate_limited_by": rule.limited_by,
                     "sibling_distance_median": rule.ceiling,
                     "verification_judges": judges}
            extra.update(_verification_record(inliers, rule.threshold, views, nn_dists))
            return rule.threshold, text, extra
        reason = "none of the sampled images could be read"
    finite = nn_dists[np.isfinite(nn_dists)]
    threshold = otsu_threshold(finite)
    extra = {"duplicate_separable": None,
             "duplicate_warning": f"one-sided duplicate threshold (no synthetic copies: {reason})"}
    extra.update(_verification_record(inliers, threshold, [], nn_dists))
    return (threshold, f"Otsu split of the distances to each sample's {nn_dists.shape[1]} "
            f"nearest neighbours (no synthetic copies: {reason}; nothing checks it against "
            "different images)", extra)


def negative_distances(index, view_rows, nn_inds, nn_dists, labels=None, verify_below=0.0,
                       inliers=None, seed=51, max_rows=5000, max_verified=4000):
    """``({kind: distances}, note, judges)``: distances between *different* images of the
    view, and whether geometric verification could tell copies apart on it.

    * ``neighbours``: each sample's nearest neighbours (at most ``max_rows``
      samples): the hard negatives;
    * ``random``: as many random pairs;
    * ``siblings`` (with ``labels``): random pairs of one class.

    A dataset may hold real copies, and they are among the nearest neighbours:
    pairs within ``verify_below`` are checked by geometric verification
    (``inliers``: the run's :class:`~lookalike.images.local_features.InlierCalibration`;
    flipped too), and a verified pair shows one scene twice: not a negative.
    Nor is a pair verification cannot judge: one of whose images it does not
    confirm even against an edited copy of itself (flat, blurred, repetitive).
    Identical vectors (distance 0) are one image as far as the encoder can tell:
    not a negative either. ``note`` says what was removed.
    """
    rng = np.random.default_rng(seed + 2)
    view_rows = np.asarray(view_rows, int)
    pick = np.arange(len(view_rows))
    if len(pick) > max_rows:
        pick = np.sort(rng.choice(len(pick), max_rows, replace=False))
    a = np.repeat(view_rows[pick], nn_inds.shape[1])
    b = nn_inds[pick].ravel()
    ok = (b >= 0) & np.isfinite(nn_dists[pick].ravel())
    hard = _unique_pairs(a[ok], b[ok])
    n_random = max(len(hard), 1000)
    ra = view_rows[rng.integers(0, len(view_rows), n_random)]
    rb = view_rows[rng.integers(0, len(view_rows), n_random)]
    random_pairs = _unique_pairs(ra[ra != rb], rb[ra != rb])
    kinds = {"neighbours": hard, "random": random_pairs}
    if labels is not None:
        label_of = dict(zip(view_rows.tolist(), labels))
        by_class = {}
        for r in view_rows.tolist():
            if label_of[r] is not None:
                by_class.setdefault(label_of[r], []).append(r)
        sa, sb = [], []
        for members in by_class.values():
            if len(members) > 1:
                m = np.asarray(members)
                n = max(1, n_random * len(m) // len(view_rows))
                x, y = m[rng.integers(0, len(m), n)], m[rng.integers(0, len(m), n)]
                sa.append(x[x != y])
                sb.append(y[x != y])
        if sa:
            kinds["siblings"] = _unique_pairs(np.concatenate(sa), np.concatenate(sb))
    matrix = index.engine.matrix
    dist = {k: cosine_distance(np.einsum("ij,ij->i", matrix[p[:, 0]], matrix[p[:, 1]]))
            for k, p in kinds.items()}
    removed_identical = {k: int((d <= 1e-6).sum()) for k, d in dist.items()}
    # Pairs the copies' reach covers, nearest first, each once across the kinds.
    near = {}
    for k, p in kinds.items():
        for (x, y), d in zip(p.tolist(), dist[k].tolist()):
            if 1e-6 < d <= verify_below:
                near[(x, y)] = d
    same_scene, unjudged = set(), set()
    judges = inliers is not None and _verification_judges(index, view_rows, inliers, rng)
    if judges and near:
        chosen = sorted(near, key=near.get)[:max_verified]
        same_scene, unjudged = _verified_pairs(index, chosen, inliers.min_inliers)
    out = {}
    for k, p in kinds.items():
        keep = dist[k] > 1e-6
        if same_scene or unjudged:
            keep &= np.array([(x, y) not in same_scene and (x, y) not in unjudged
                              for x, y in p.tolist()], bool)
        out[k] = dist[k][keep]
    identical = sum(removed_identical.values())
    note = (f"of {len(near)} pairs within reach, {len(same_scene)} shown by geometric "
            f"verification to be one scene and {len(unjudged)} of images it cannot judge "
            "(not confirmed against their own copies) left out" if judges else
            "no geometric verification (images without enough local features): real copies in "
            "the view would count as different images")
    if identical:
        note += f"; {identical} identical-vector pairs left out"
    return out, note, judges


def _verification_judges(index, view_rows, inliers, rng, num_images=32, share=0.5):
    """Whether geometric verification can tell copies on this view: it confirms at least
    ``share`` of ``num_images`` sampled images against edited copies of themselves."""
    from lookalike.images.local_features import cache_dir, recognises_itself

    rows = rng.choice(view_rows, min(num_images, len(view_rows)), replace=False)
    ids = [index.sample_ids[r] for r in rows]
    paths = index.dataset.select(ids).values("filepath")
    return bool(len(paths)) and bool(recognises_itself(
        paths, inliers.min_inliers, cache=cache_dir(index.dataset)).mean() >= share)


def _unique_pairs(a, b):
    """``(n, 2)`` int array of the distinct unordered pairs ``(a[i], b[i])``, ``a != b``."""
    p = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)
    p = p[p[:, 0] != p[:, 1]]
    return np.unique(p, axis=0) if len(p) else p.reshape(0, 2)


def _verified_pairs(index, pairs, min_inliers):
    """``(same, unjudged)`` of pairs of index rows: see :func:`lookalike.images.local_features.confirm_pairs`."""
    from lookalike.images import local_features as verification

    rows = sorted({r for p in pairs for r in p})
    ids = [index.sample_ids[r] for r in rows]
    path_of = dict(zip(*index.dataset.select(ids).values(["id", "filepath"])))
    paths = {r: path_of.get(i) for r, i in zip(rows, ids)}
    return verification.confirm_pairs(paths, pairs, min_inliers,
                                      verification.cache_dir(index.dataset), judge=True)


def _inlier_calibration(index, view_rows, seed, num_images=32):
    """The run's :class:`~lookalike.images.local_features.InlierCalibration` on sampled images of
    the view, or None when they have no local features (flat, tiny: digits at 32 px)."""
    from lookalike.images.local_features import calibrate_inliers

    ids = list(index.sample_ids)
    rng = np.random.default_rng(seed + 1)
    rows = np.asarray(view_rows, int)
    rows = rows[rng.choice(len(rows), min(num_images, len(rows)), replace=False)]
    path_of = dict(zip(*index.dataset.select([ids[r] for r in rows]).values(["id", "filepath"])))
    rows = [r for r in rows if ids[r] in path_of]
    return calibrate_inliers([path_of[ids[r]] for r in rows], vectors=index.engine.matrix[rows],
                             seed=seed)


def _verification_record(inliers, duplicate_threshold, viewpoint_distances, nn_dists):
    """The label-free thresholds of geometric verification, as record entries.

    ``candidate_threshold``: pairs this close are verified (see
    ``find_duplicates``); ``min_inliers``: the inliers that make a verified pair
    a duplicate (None when the sampled images have no local features).
    """
    candidate, candidate_rule = candidate_threshold(duplicate_threshold, viewpoint_distances,
                                                    nn_dists)
    if inliers is None:
        return {"candidate_threshold": candidate, "candidate_rule": candidate_rule,
                "min_inliers": None,
                "inlier_rule": "no verification: fewer than 2 of the sampled images have local "
                               "features (flat or tiny images)"}
    return {"candidate_threshold": candidate, "candidate_rule": candidate_rule,
            "min_inliers": int(inliers.min_inliers), "inlier_rule": inliers.rule,
            "min_shot_inliers": int(inliers.min_shot_inliers),
            "min_parallax": int(inliers.min_parallax), "shot_rule": inliers.shot_rule,
            "viewpoint_inliers_median": float(np.median(inliers.copy_inliers))}


def candidate_threshold(duplicate_threshold, viewpoint_distances, nn_dists):
    """``(distance, rule)``: how far apart two samples may be for verification to check them."""
    views = np.asarray(viewpoint_distances, float)
    if len(views):
        d = max(duplicate_threshold, 1.5 * float(views.max()))
        return d, (f"1.5 x the farthest of {len(views)} synthetic viewpoint copies, at least the "
                   "duplicate threshold")
    finite = nn_dists[np.isfinite(nn_dists)]
    return (max(duplicate_threshold, float(np.median(finite))),
            f"the median distance to each sample's {nn_dists.shape[1]} nearest neighbours")


def calibrate_threshold(samples, brain_key, label_field=None, method=None, target=None,
                        unknown_classes=None, unknown_fraction=0.2, exclude_exact_duplicates=False,
                        duplicate_recall=0.95, false_pair_target=FALSE_PAIR_TARGET, seed=51,
                        progress=None):
    """Calibrates and saves the thresholds of similarity run ``brain_key``.

    Args:
        samples: the dataset or a view (with labels: the labelled queries)
        brain_key: a lookalike similarity run
        label_field (None): a Classification (or string) field; None = label-free
        method (None): "f1" (default with labels), "precision" (needs ``target``),
            "isolated" (default without labels: only samples whose nearest
            neighbour is unusually far, see :mod:`lookalike.curation.isolation`)
            or "percentile"
        target (None): the precision to reach; for "isolated" k, the robust
            standard deviations above the typical neighbour distance (default
            2.5); for "percentile" the percentile of nearest-neighbour
            distances beyond which samples are outliers (default 95: always
            the most isolated 5%)
        unknown_classes (None): label classes held out as unknowns (open set)
        unknown_fraction (0.2): share of classes held out at random when
            ``unknown_classes`` is not given; 0 for closed-set calibration
        exclude_exact_duplicates (False): ignore distance-0 neighbours
        duplicate_recall (0.95): share of synthetic copies the duplicate
            threshold keeps, where the negatives allow
        false_pair_target (0.001): the most of each kind of different-image
            pairs the duplicate threshold may admit (see
            :mod:`lookalike.curation.thresholds`)
        seed (51): seed of the held-out class choice
        progress (None): ``progress(fraction, label)`` over the neighbour searches

    Returns:
        a :class:`Calibration`, also saved with the run
    """
    import lookalike.similarity as ls

    index = ls.load_index(fo_adapter.root_dataset(samples), brain_key)
    method = method or (LABEL_METHODS[0] if label_field else LABEL_FREE_METHODS[0])
    if method not in METHODS:
        raise CalibrationError(f"unknown method {method!r}; choose from {METHODS}")
    if method in LABEL_METHODS and not label_field:
        raise CalibrationError(f"method {method!r} needs a label field")
    if method in LABEL_METHODS:  # labels that are not labels: refused before any search
        check_label_field(samples, label_field, CalibrationError)
    if index.total_index_size < 2:
        raise CalibrationError(f"run '{brain_key}' holds {index.total_index_size} embeddings: "
                               "calibration needs at least 2")
    engine = index.engine

    # Label-free part, for every indexed sample of the view (neighbours from the
    # view too, as fiftyone-brain's methods do): nearest-neighbour distances.
    view_rows = _view_rows(samples, index)
    if len(view_rows) < 2:
        raise CalibrationError(f"{len(view_rows)} samples of this view are in run "
                               f"'{brain_key}': calibration needs at least 2")
    whole = len(view_rows) == index.total_index_size
    nn_inds, nn_dists = leave_one_out(engine, rows=None if whole else view_rows,
                                      gallery=None if whole else view_rows,
                                      k=DUPLICATE_NEIGHBOURS,
                                      exclude_exact=exclude_exact_duplicates,
                                      progress=stage(progress, 0.0, 0.5 if label_field else 1.0,
                                                     "nearest neighbours"))
    nn1 = nn_dists[:, 0]
    nn_rows = np.arange(engine.size) if whole else view_rows  # the rows nn_inds belong to
    row_labels = None
    if label_field:  # siblings are different images too, and bound the duplicate threshold
        check_label_field(samples, label_field, CalibrationError)
        l_rows, l_labels, _ = indexed_labels(samples, index, label_field, CalibrationError)
        label_of = dict(zip(l_rows.tolist(), l_labels.tolist()))
        row_labels = [label_of.get(int(r)) for r in nn_rows]
    inputs = _duplicate_inputs((nn_rows, nn_inds, nn_dists), row_labels, duplicate_recall,
                               false_pair_target, seed, exclude_exact_duplicates)
    reused = _saved_duplicate_part(index, inputs)
    if reused is not None:
        dup_threshold, dup_rule, dup_extra = reused
    else:
        dup_threshold, dup_rule, dup_extra = duplicate_threshold(
            index, nn_rows, nn_inds, nn_dists, labels=row_labels,
            duplicate_recall=duplicate_recall, false_pair_target=false_pair_target, seed=seed)
    record = {
        "brain_key": brain_key,
        "method": method,
        "target": target,
        "label_field": label_field,
        "num_indexed": int(len(view_rows)),
        "nn_histogram": _histogram(nn1),
        "nn_percentiles": {str(q): float(np.percentile(nn1[np.isfinite(nn1)], q))
                           for q in (1, 5, 25, 50, 75, 95, 99)},
        "duplicate_threshold": dup_threshold,
        "duplicate_rule": dup_rule,
        "duplicate_recall": duplicate_recall,
        **dup_extra,
        "duplicate_rule_version": DUPLICATE_RULE_VERSION,
        "exclude_exact_duplicates": bool(exclude_exact_duplicates),
        "duplicate_inputs": inputs,
        "duplicate_extra_keys": sorted(dup_extra),
    }

    if method == "percentile":
        q = 95.0 if target is None else float(target)
        if not 0 < q < 100:
            raise CalibrationError(f"the percentile target must be in (0, 100), got {q}")
        record.update(
            target=q, threshold=float(np.percentile(nn1[np.isfinite(nn1)], q)),
            num_queries=int(np.isfinite(nn1).sum()), metric_values={},
            note=(f"no labels: {100 - q:g}% of the samples lie farther than this from "
                  "their nearest neighbour"))
        return _save(index, record)
    if method == "isolated":
        from lookalike.curation.isolation import DEFAULT_K, isolation_threshold

        k = DEFAULT_K if target is None else float(target)
        finite = nn1[np.isfinite(nn1)]
        threshold, centre = isolation_threshold(finite, k, floor=dup_threshold)
        record.update(
            target=k, threshold=threshold, num_queries=int(len(finite)), metric_values={},
            note=(f"no labels: {int((finite > threshold).sum())} of {len(finite)} samples are "
                  f"isolated: their nearest neighbour is farther than {k:g} robust standard "
                  f"deviations (log scale) above {centre:.4f}, the median of the farther half "
                  "of nearest-neighbour distances, and than the duplicate threshold"))
        return _save(index, record)

    rows, labels, missing = indexed_labels(samples, index, label_field, CalibrationError)
    if len(rows) < 2:
        raise CalibrationError(
            f"{len(rows)} indexed samples have a '{label_field}' label ({missing} without): "
            "calibration needs at least 2")
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise CalibrationError(f"only one class ({classes[0]!r}) in '{label_field}': "
                               "calibration needs at least 2")
    if unknown_classes is None:
        unknown = pick_unknown_classes(classes, unknown_fraction, seed)
    else:
        unknown = sorted(set(map(str, unknown_classes)))
        strangers = set(unknown) - set(classes)
        if strangers:
            raise CalibrationError(f"unknown_classes {sorted(strangers)} are not labels of "
                                   f"'{label_field}' (labels: {classes[:20]})")
        if len(unknown) >= len(classes):
            raise CalibrationError("every class is held out: keep at least one known class")
    known = ~np.isin(labels, unknown)
    idx, dist = leave_one_out(engine, rows=rows, k=1, gallery=rows[known],
                              exclude_exact=exclude_exact_duplicates,
                              progress=stage(progress, 0.5, 0.5, "labelled neighbours"))
    found = idx[:, 0] >= 0
    label_of = dict(zip(rows.tolist(), labels.tolist()))
    neighbour_labels = np.array([label_of.get(int(i)) for i in idx[:, 0]], dtype=object)
    correct = (neighbour_labels == labels)[found]
    curve = threshold_sweep(dist[found, 0], correct)
    if method == "precision" and (target is None or not 0 < float(target) <= 1):
        raise CalibrationError("method 'precision' needs a target in (0, 1], e.g. 0.95")
    i = choose(curve, method, None if method == "f1" else float(target))
    i, junk_note = _junk_capped(index, rows[known], curve, i)
    threshold = float(curve.thresholds[i])
    if unknown:  # what the decision rule makes of the queries no gallery class fits
        from lookalike.curation.thresholds import decide

        held = found & ~known
        calls = [decide(d, dup_threshold, d, threshold) for d in dist[held, 0].tolist()]
        if calls:
            record.update(unknown_rejection=calls.count("new") / len(calls),
                          unknown_called_duplicate=calls.count("duplicate") / len(calls),
                          num_unknown_queries=len(calls))
    record.update(
        threshold=threshold, metric_values=curve.at(i),
        curve=_curve_dict(curve, i), num_queries=int(found.sum()),
        num_missing_labels=int(missing), classes=classes, unknown_classes=unknown,
        note=("open set: " + f"{len(unknown)} of {len(classes)} classes held out as unknowns"
              if unknown else "closed set: every class is known (the F1 optimum tends to "
              "accept everything)") + (f"; {junk_note}" if junk_note else ""))
    return _save(index, record)


def _duplicate_inputs(arrays, labels, duplicate_recall, false_pair_target, seed, exclude_exact):
    """A digest of everything the duplicate part of a calibration depends on besides the
    embeddings (whose state every saved record keeps): the view's rows and their
    neighbours (``arrays``), their labels, the settings and the rule's version."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    digest.update(json.dumps([labels, duplicate_recall, false_pair_target, seed,
                              bool(exclude_exact), DUPLICATE_RULE_VERSION],
                             default=str).encode())
    return digest.hexdigest()


def _saved_duplicate_part(index, inputs):
    """``(threshold, rule, extra)`` of the saved calibration when it was computed from the
    same inputs and the same embeddings (fresh), else None. The duplicate part is the slow
    one (synthetic copies embedded, pairs verified) and depends on nothing a calibration
    with another method, target or held-out choice changes: such a recalibration reuses it.
    """
    try:
        saved = records.load(index, "calibration")
    except (MissingRecordError, StaleRecordError):
        return None
    if saved.get("duplicate_inputs") != inputs or "duplicate_extra_keys" not in saved:
        return None
    return (saved["duplicate_threshold"], saved["duplicate_rule"],
            {k: saved.get(k) for k in saved["duplicate_extra_keys"]})


def _junk_capped(index, gallery_rows, curve, i):
    """``(i, note)``: the chosen point of ``curve``, moved below the nearest junk image
    (noise, flat colours, patterns: :func:`~lookalike.curation.synthetic_copies.junk_images`) to a
    labelled sample, so that nothing like them is ever a match. ``note`` says so
    ("" when the junk lies farther, or the run has no encoder to embed it)."""
    from lookalike.curation.synthetic_copies import junk_distances
    from lookalike.encoders import EncoderStoreError

    try:
        junk = junk_distances(index, gallery_rows, k=1)
    except (ValueError, EncoderStoreError):
        return i, ""
    if not len(junk) or float(junk.min()) > float(curve.thresholds[i]):
        return i, ""
    nearest = float(junk.min())
    j = int(np.searchsorted(curve.thresholds, nearest, side="left")) - 1
    if j < 0:
        raise CalibrationError(
            f"junk images (noise, flat colours) lie nearer a labelled sample ({nearest:.4f}) "
            "than any query's nearest neighbour: the encoder cannot tell images from junk; "
            "train it longer or on more images, or use another encoder")
    return j, (f"the match threshold is capped below {nearest:.4f}, the nearest of "
               f"{len(junk)} junk images (noise, flat colours, patterns) to a labelled sample "
               f"(uncapped: {float(curve.thresholds[i]):.4f})")


def _save(index, record):
    """Saves ``record`` as the run's calibration, unless it failed: a calibration with no
    usable threshold (not a distance in [0, 2], or labels that never match: F1 0) never
    replaces the one saved before. Returns the :class:`Calibration`."""
    import math

    threshold = record.get("threshold")
    f1 = (record.get("metric_values") or {}).get("f1")
    reason = None
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or not 0 <= threshold <= 2:
        reason = f"no usable threshold ({threshold})"
    elif record.get("method") in LABEL_METHODS and (f1 is None or not f1 > 0):
        reason = (f"F1 {0 if f1 is None else f1:.3f} with labels '{record['label_field']}': no "
                  "query's nearest neighbour shares its label")
    if reason:
        kept = ("the calibration saved before is kept" if (index.curation or {}).get(
            "calibration") else "nothing was saved")
        raise CalibrationError(f"calibration of '{index.key}' failed, {reason}; {kept}")
    return Calibration.from_record(records.save(index, "calibration", record))


def get_calibration(samples, brain_key, check_fresh=True):
    """The saved :class:`Calibration` of ``brain_key``.

    Refuses a stale one (:class:`StaleRecordError`) unless ``check_fresh=False``.
    """
    import lookalike.similarity as ls

    index = ls.load_index(fo_adapter.root_dataset(samples), brain_key)
    return Calibration.from_record(records.load(index, "calibration", check_fresh=check_fresh))
