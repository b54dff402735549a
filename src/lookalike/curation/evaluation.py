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
"""

import numpy as np

from lookalike.curation.errors import CurationError

NO_MATCH = "no match"


def retrieval_metrics(relevant, num_relevant):
    """recall@1, precision@k and mAP@k from a (Q, k) boolean relevance matrix.

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
    return {
        "recall_at_1": float(relevant[:, 0].mean()),
        f"precision_at_{k}": float(relevant.mean()),
        f"map_at_{k}": float(ap.mean()),
        "k": int(k),
        "num_queries": int(findable.sum()),
        "num_unfindable": int(q - findable.sum()),
    }


def confusion(true_labels, predicted_labels):
    """``(classes, matrix)`` with rows = true class, columns = predicted, "no match" last."""
    from sklearn.metrics import confusion_matrix

    classes = sorted((set(true_labels) | set(predicted_labels)) - {NO_MATCH})
    classes.append(NO_MATCH)
    matrix = confusion_matrix(list(true_labels), list(predicted_labels), labels=classes)
    return classes, matrix


def evaluate_retrieval(samples, brain_key, label_field, k=10, progress=None):
    """Evaluates run ``brain_key`` against ``label_field``; saves and returns the record."""
    import lookalike.similarity as ls
    from lookalike.curation import records
    from lookalike.curation.calibrate import load_labels
    from lookalike.curation.neighbours import leave_one_out

    if int(k) < 1:
        raise CurationError(f"k must be at least 1, got {k}")
    if len(samples) == 0:
        from lookalike.errors import EmptyViewError

        raise EmptyViewError("the view is empty: there are no samples to evaluate")
    index = ls.load_index(samples._root_dataset, brain_key)
    rows, labels, missing = load_labels(samples, index, label_field)
    if len(rows) < 2:
        raise CurationError(f"{len(rows)} indexed samples have a '{label_field}' label: "
                               "evaluation needs at least 2")
    k = min(int(k), len(rows) - 1)
    label_of = dict(zip(rows.tolist(), labels.tolist()))
    wrap = (lambda done, total: progress(0.5 * done / total, f"ranked {done}/{total}")
            ) if progress else None
    idx, dist = leave_one_out(index.engine, rows=rows, k=k, gallery=rows, progress=wrap)
    answers = np.array([[label_of.get(int(i)) for i in row] for row in idx], dtype=object)
    relevant = answers == labels[:, None]
    counts = {c: n for c, n in zip(*np.unique(labels.astype(str), return_counts=True))}
    num_relevant = np.array([counts[c] - 1 for c in labels.astype(str)])
    record = retrieval_metrics(relevant, num_relevant)
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
            wrap = (lambda done, total: progress(0.5 + 0.5 * done / total, "matching")
                    ) if progress else None
            nidx, ndist = leave_one_out(index.engine, rows=rows, k=1, gallery=gallery,
                                        progress=wrap)
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
    return records.save(index, "evaluation", record)
