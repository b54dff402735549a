"""The threshold sweep: precision, recall and F1 at every candidate distance, and the choice.

TensorFlow Similarity's calibration, re-implemented without TensorFlow:

1. every query's nearest neighbour gives a predicted label and a distance --
   leave-one-out (:mod:`lookalike.curation.neighbours`): a sample never
   matches itself (calibrating the indexed samples against the index would
   otherwise give distance-0 self-matches and a threshold of about 0);
2. distances are rounded to 8 decimals; every distinct one is a candidate;
3. at threshold t a query is *accepted* when its distance <= t and *correct*
   when the neighbour's label equals its own: TP = accepted and correct,
   FP = accepted and wrong, FN = rejected but would have been correct,
   TN = rejected and would have been wrong;
4. precision, recall, F1 per candidate (:func:`threshold_sweep`);
   :func:`choose` picks one: "optimal" is the largest distance with the best
   value (last argmax); a precision target picks the largest distance meeting
   it, a recall or F1 target the smallest.

Open set: with only known classes, rejecting anything never helps F1, so the
optimum drifts to "accept everything". Holding some classes out of the
gallery (their queries can only be wrong) makes rejection count.
"""

from dataclasses import dataclass

import numpy as np

from lookalike.core.errors import CalibrationError

METRICS = ("precision", "recall", "f1")


@dataclass
class Curve:
    """The sweep: one entry per candidate threshold, in increasing order."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    def at(self, i):
        """Threshold, precision, recall and F1 at candidate ``i``, as floats."""
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


def choose(curve, method, target=None):
    """The index of the chosen threshold in ``curve``.

    ``target`` None: the largest threshold at which ``method`` ("precision",
    "recall" or "f1") is best (TF Similarity's last argmax). With a target:
    for "precision" the largest threshold reaching it (precision falls as the
    threshold grows, so that accepts the most), for "recall" and "f1" the
    smallest. Raises :class:`CalibrationError` when the target is never reached.
    """
    if method not in METRICS:
        raise CalibrationError(f"unknown metric {method!r}; choose from {METRICS}")
    values = getattr(curve, method)
    if target is None:
        return int(np.flatnonzero(values == values.max())[-1])
    hits = np.flatnonzero(values >= target)
    if hits.size == 0:
        raise CalibrationError(f"{method} {target} is never reached (best {values.max():.3f})")
    return int(hits[-1] if method == "precision" else hits[0])
