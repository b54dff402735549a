"""Retrieval quality of a similarity run against labels, leave-one-out.

For each labelled query, its ``k`` nearest *other* labelled samples are the
ranked answers; an answer is relevant when it has the query's label.

* recall@1: share of queries whose nearest neighbour is relevant;
* precision@k: mean share of relevant answers among the top ``k``;
* mAP@k: mean over queries of AP@k = sum_i P@i * rel_i / min(R, k), R being
  the number of relevant samples in the gallery.

Queries with R = 0 (a class of one) have nothing to find: they are left out of
all three and counted in ``num_unfindable``.

The confusion matrix follows the TF Similarity seed: at the calibrated
threshold a query is predicted as its neighbour's label, or "no match" when
the neighbour is farther; its true class is "no match" when no other sample
in the gallery has its label (held-out "unknown" classes of an open-set
calibration are left out of the gallery, as they were for calibrating).

The result is a :class:`RetrievalEvaluation`, saved with the run as a record
whose metric keys carry ``k`` (``map_at_10``), as they always have.
"""

from dataclasses import dataclass

import numpy as np

from lookalike.core import fo_adapter
from lookalike.similarity import records
from lookalike.core.errors import CurationError, EmptyViewError
from lookalike.core.progress import stage

NO_MATCH = "no match"


@dataclass
class RetrievalEvaluation(records.SavedResult):
    """Leave-one-out retrieval quality at ``k``, and matching at the calibrated threshold."""

    NULLABLE = records.SavedResult.NULLABLE + ("confusion",)
    k: int
    recall_at_1: float
    precision_at_k: float
    map_at_k: float
    num_queries: int  # queries with something to find
    num_unfindable: int = 0  # queries alone in their class: left out
    label_field: str = None
    num_missing_labels: int = None
    # At the calibrated threshold; None (and a note) when the run has no fresh calibration.
    confusion: dict = None  # classes, matrix (rows true, columns predicted), threshold, unknowns
    confusion_note: str = None
    match_accuracy: float = None

    def summary(self):
        """One paragraph, for the CLI and the App."""
        against = f" against '{self.label_field}'" if self.label_field else ""
        text = (f"Retrieval{against}: recall@1 {self.recall_at_1:.3f}, precision@{self.k} "
                f"{self.precision_at_k:.3f}, mAP@{self.k} {self.map_at_k:.3f} "
                f"({self.num_queries} queries)")
        if self.match_accuracy is not None:
            text += (f"; match / no match at {self.confusion['threshold']:.4f}: accuracy "
                     f"{self.match_accuracy:.3f}")
        return text + "."

    def to_record(self):
        record = super().to_record()
        record[f"precision_at_{self.k}"] = record.pop("precision_at_k")
        record[f"map_at_{self.k}"] = record.pop("map_at_k")
        return record

    @classmethod
    def from_record(cls, record):
        k = record["k"]
        record = dict(record, precision_at_k=record[f"precision_at_{k}"],
                      map_at_k=record[f"map_at_{k}"])
        del record[f"precision_at_{k}"], record[f"map_at_{k}"]
        return super().from_record(record)


def retrieval_metrics(relevant, num_relevant):
    """recall@1, precision@k and mAP@k from a (Q, k) boolean relevance matrix.

    Returns a :class:`RetrievalEvaluation` with only these (and the counts) filled.

    ``num_relevant``: relevant samples each query could find (R).
    """
    relevant = np.asarray(relevant, dtype=bool)
    num_relevant = np.asarray(num_relevant)
    q, k = relevant.shape
    if q == 0 or k == 0:
        raise CurationError("need at least one query and k >= 1")
    findable = num_relevant > 0
    if not findable.any():
        raise CurationError("no query has another sample of its class: nothing to retrieve")
    relevant, num_relevant = relevant[findable], num_relevant[findable]
    hits = np.cumsum(relevant, axis=1)
    precision_at_i = hits / np.arange(1, k + 1)
    ap = (precision_at_i * relevant).sum(axis=1) / np.minimum(num_relevant, k)
    return RetrievalEvaluation(
        k=int(k), recall_at_1=float(relevant[:, 0].mean()),
        precision_at_k=float(relevant.mean()), map_at_k=float(ap.mean()),
        num_queries=int(findable.sum()), num_unfindable=int(q - findable.sum()))


def confusion(true_labels, predicted_labels):
    """``(classes, matrix)`` with rows = true class, columns = predicted, "no match" last."""
    from sklearn.metrics import confusion_matrix

    classes = sorted((set(true_labels) | set(predicted_labels)) - {NO_MATCH})
    classes.append(NO_MATCH)
    matrix = confusion_matrix(list(true_labels), list(predicted_labels), labels=classes)
    return classes, matrix


def evaluate_retrieval(samples, brain_key, label_field, k=10, progress=None):
    """Evaluates run ``brain_key`` against ``label_field``.

    ``progress(fraction, label)``. Returns a :class:`RetrievalEvaluation`, also
    saved with the run.
    """
    import lookalike.similarity as ls
    from lookalike.curation.neighbours import leave_one_out
    from lookalike.core.labels import indexed_labels

    if int(k) < 1:
        raise CurationError(f"k must be at least 1, got {k}")
    if fo_adapter.exact_count(samples) == 0:
        raise EmptyViewError("the view is empty: there are no samples to evaluate")
    index = ls.load_index(fo_adapter.root_dataset(samples), brain_key)
    rows, labels, missing = indexed_labels(samples, index, label_field, CurationError)
    if len(rows) < 2:
        raise CurationError(f"{len(rows)} indexed samples have a '{label_field}' label: "
                               "evaluation needs at least 2")
    k = min(int(k), len(rows) - 1)
    label_of = dict(zip(rows.tolist(), labels.tolist()))
    idx, dist = leave_one_out(index.engine, rows=rows, k=k, gallery=rows,
                              progress=stage(progress, 0.0, 0.5, "ranked"))
    answers = np.array([[label_of.get(int(i)) for i in row] for row in idx], dtype=object)
    relevant = answers == labels[:, None]
    counts = {c: n for c, n in zip(*np.unique(labels.astype(str), return_counts=True))}
    num_relevant = np.array([counts[c] - 1 for c in labels.astype(str)])
    record = retrieval_metrics(relevant, num_relevant).to_record()
    record.update(label_field=label_field, num_missing_labels=int(missing))

    try:
        calibration = records.load(index, "calibration")
    except (records.MissingRecordError, records.StaleRecordError) as e:
        record["confusion"] = None
        record["confusion_note"] = f"no confusion matrix: {e}"
    else:
        threshold = calibration["threshold"]
        unknown = calibration.get("unknown_classes") or []
        gallery = rows[~np.isin(labels, unknown)] if unknown else rows
        if unknown:
            nidx, ndist = leave_one_out(index.engine, rows=rows, k=1, gallery=gallery,
                                        progress=stage(progress, 0.5, 0.5, "matched"))
        else:  # the same gallery as the ranking: its first neighbours
            nidx, ndist = idx[:, :1], dist[:, :1]
        gallery_counts = {}
        for r in gallery.tolist():
            gallery_counts[label_of[r]] = gallery_counts.get(label_of[r], 0) + 1
        # A known query is itself in the gallery: it needs one more of its class.
        truth = [lab if lab not in unknown and gallery_counts.get(lab, 0) > 1 else NO_MATCH
                 for lab in labels.tolist()]
        predicted = [label_of[int(i)] if i >= 0 and d <= threshold else NO_MATCH
                     for i, d in zip(nidx[:, 0], ndist[:, 0])]
        classes, matrix = confusion(truth, predicted)
        record["confusion"] = {"classes": classes, "matrix": matrix.tolist(),
                               "threshold": float(threshold), "unknown_classes": unknown}
        record["match_accuracy"] = float(np.mean(np.array(truth) == np.array(predicted)))
    return RetrievalEvaluation.from_record(records.save(index, "evaluation", record))
