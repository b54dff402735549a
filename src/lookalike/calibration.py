"""Distance thresholds from data: TensorFlow Similarity's calibration, re-implemented on our index.

With labels (TF Similarity's procedure, no TensorFlow needed):

1. every query's nearest neighbour gives a predicted label and a distance --
   leave-one-out: a sample never matches itself (calibrating the indexed
   samples against the index would otherwise give distance-0 self-matches and
   a threshold of about 0);
2. distances are rounded to 8 decimals; every distinct one is a candidate;
3. at threshold t a query is *accepted* when its distance <= t and *correct*
   when the neighbour's label equals its own: TP = accepted and correct,
   FP = accepted and wrong, FN = rejected but would have been correct,
   TN = rejected and would have been wrong;
4. precision, recall, F1 per candidate; "optimal" is the largest distance with
   the best value (last argmax); a precision target picks the largest distance
   meeting it, a recall or F1 target the smallest.

Open set: with only known classes, rejecting anything never helps F1, so the
optimum drifts to "accept everything". Holding some classes out of the
gallery (their queries can only be wrong) makes rejection count.

Without labels: thresholds from the nearest-neighbour distance distribution,
stated as such (a percentile of it), for outliers (the most isolated) and
near-duplicates (the low tail).
"""

from dataclasses import dataclass, field

import numpy as np

METRICS = ("precision", "recall", "f1")


from lookalike.errors import CalibrationError  # noqa: F401 (re-exported)


@dataclass
class Curve:
    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    def at(self, i):
        return {k: float(getattr(self, k)[i]) for k in ("thresholds", "precision", "recall", "f1")}


def threshold_sweep(distances, correct):
    """Precision / recall / F1 at every distinct (rounded) distance."""
    d = np.round(np.asarray(distances, dtype=np.float32), 8)
    correct = np.asarray(correct, dtype=bool)
    if d.shape != correct.shape or d.ndim != 1 or len(d) == 0:
        raise CalibrationError("need one distance and one correct/wrong flag per query")
    order = np.argsort(d, kind="stable")
    d, correct = d[order], correct[order]
    thresholds = np.unique(d)
    # Number of queries with distance <= t, for each candidate t.
    accepted = np.searchsorted(d, thresholds, side="right")
    cum_correct = np.concatenate([[0], np.cumsum(correct)])
    tp = cum_correct[accepted]
    fp = accepted - tp
    fn = correct.sum() - tp
    tn = (len(d) - correct.sum()) - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return Curve(thresholds, precision, recall, f1, tp, fp, fn, tn)


def optimal_index(curve, metric="f1"):
    """The largest threshold at which ``metric`` is best (TF Similarity's last argmax)."""
    values = getattr(curve, metric)
    return int(np.flatnonzero(values == values.max())[-1])


def target_index(curve, metric, target):
    """Precision: the largest threshold reaching ``target``; recall/F1: the smallest. None if never."""
    values = getattr(curve, metric)
    hits = np.flatnonzero(values >= target)
    if hits.size == 0:
        return None
    return int(hits[-1] if metric == "precision" else hits[0])


def nearest_other(matrix, queries_idx=None, gallery_mask=None, batch=2048):
    """Leave-one-out nearest neighbour: for each query row, the closest *other* gallery row.

    ``matrix`` holds unit vectors; returns ``(neighbour index, cosine distance)``.
    """
    n = len(matrix)
    queries_idx = np.arange(n) if queries_idx is None else np.asarray(queries_idx)
    gallery = np.arange(n) if gallery_mask is None else np.flatnonzero(gallery_mask)
    if len(gallery) < 1 or (len(gallery) == 1 and np.isin(gallery, queries_idx).all()):
        raise CalibrationError("need at least 2 samples to find nearest neighbours")
    g = matrix[gallery]
    nn_idx = np.empty(len(queries_idx), dtype=int)
    nn_dist = np.empty(len(queries_idx), dtype=np.float32)
    pos_in_gallery = {int(j): p for p, j in enumerate(gallery)}
    for start in range(0, len(queries_idx), batch):
        q = queries_idx[start:start + batch]
        dist = 1.0 - matrix[q] @ g.T
        for row, qi in enumerate(q):  # never the query itself
            p = pos_in_gallery.get(int(qi))
            if p is not None:
                dist[row, p] = np.inf
        best = np.argmin(dist, axis=1)
        nn_idx[start:start + len(q)] = gallery[best]
        nn_dist[start:start + len(q)] = np.clip(dist[np.arange(len(q)), best], 0.0, 2.0)
    return nn_idx, nn_dist


@dataclass
class Calibration:
    method: str
    threshold: float
    metric_values: dict
    curve: Curve = None
    num_queries: int = 0
    unknown_classes: list = field(default_factory=list)
    note: str = ""


def calibrate_labels(matrix, labels, method="f1", target=None, unknown_classes=None):
    """Threshold from labelled unit vectors, leave-one-out; ``unknown_classes`` held out of the gallery."""
    labels = np.asarray(labels, dtype=object)
    if len(labels) != len(matrix):
        raise CalibrationError("one label per embedding is needed")
    if len(labels) < 2:
        raise CalibrationError("need at least 2 labelled samples")
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise CalibrationError(f"only one class ({classes[0]!r}): calibration needs at least 2")
    unknown = sorted(set(unknown_classes or []))
    if unknown and len(set(classes) - set(unknown)) < 1:
        raise CalibrationError("every class is held out: keep at least one known class")
    gallery_mask = ~np.isin(labels, unknown) if unknown else None
    nn_idx, nn_dist = nearest_other(matrix, gallery_mask=gallery_mask)
    correct = labels[nn_idx] == labels
    curve = threshold_sweep(nn_dist, correct)
    if method == "f1":
        i = optimal_index(curve, "f1")
    elif method == "precision":
        if target is None:
            raise CalibrationError("method 'precision' needs a target, e.g. 0.95")
        i = target_index(curve, "precision", target)
        if i is None:
            raise CalibrationError(f"precision {target} is never reached "
                                   f"(best {curve.precision.max():.3f})")
    else:
        raise CalibrationError(f"unknown method {method!r} with labels; use f1 or precision")
    return Calibration(method=method, threshold=float(curve.thresholds[i]),
                       metric_values=curve.at(i), curve=curve, num_queries=len(labels),
                       unknown_classes=unknown)


def calibrate_percentile(matrix, outlier_percentile=95.0, duplicate_percentile=None):
    """Label-free: a percentile of the leave-one-out nearest-neighbour distances."""
    if not 0 < outlier_percentile < 100:
        raise CalibrationError("the percentile must be between 0 and 100")
    _, nn_dist = nearest_other(matrix)
    threshold = float(np.percentile(nn_dist, outlier_percentile))
    values = {"nn_distance_percentile": outlier_percentile}
    if duplicate_percentile is not None:
        values["duplicate_threshold"] = float(np.percentile(nn_dist, duplicate_percentile))
    return Calibration(method="percentile", threshold=threshold, metric_values=values,
                       num_queries=len(nn_dist),
                       note=(f"no labels: {100 - outlier_percentile:g}% of samples lie farther "
                             "than this from their nearest neighbour"))
