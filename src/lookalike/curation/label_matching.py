"""Labels for unlabelled samples, with a reject option: TF Similarity's ``match``.

For the samples of a view that have no label yet, the nearest labelled samples
of the index give a predicted ``fo.Classification`` (label, distance, matched
sample id, ``no_match``) in ``<label_field>_match``. Strategies as in TF
Similarity: ``"nearest"`` and ``"vote"`` (majority of the ``k`` nearest, ties to
the label of the nearer neighbour). The reject rule is the calibrated one in
both: no match when the nearest labelled sample is farther than the match
threshold (the vote is held among the neighbours within it), so the no-match
rate is the calibrated one whatever the strategy. (TF Similarity's majority
vote compares the *mean* of the k distances with a cutpoint calibrated for that
matcher; ours is calibrated on nearest-neighbour distances only.)

A run's predictions land whole, per field: staged, applied and published as one
run (:mod:`lookalike.curation.published_runs`, kind ``match_labels.<field>``); a
kill leaves the old predictions, or the new ones once anything looks again
(:func:`settle`: a rerun, :func:`no_match_view`).
"""

from dataclasses import asdict, dataclass, field

import numpy as np

from lookalike.core import faults, fo_adapter, leases
from lookalike.core.errors import CurationError, EmptyViewError
from lookalike.curation import published_runs as runs
from lookalike.curation.calibrate import LABEL_FREE_METHODS
from lookalike.curation.evaluation import NO_MATCH
from lookalike.curation.folder_matching import (  # the run as it is
    _calibration,
    _current_index,
)
from lookalike.curation.index_choice import latest_record
from lookalike.similarity import records

STRATEGIES = ("nearest", "vote")
_LABEL_RECORD = "label_match"


@dataclass
class LabelMatchReport:
    brain_key: str
    label_field: str
    pred_field: str
    strategy: str
    k: int
    threshold: float
    num_queries: int
    num_matched: int
    num_no_match: int
    num_not_indexed: int = 0  # queries without an embedding: left as they were
    label_counts: dict = field(default_factory=dict)  # predicted label -> count

    def summary(self):
        """One paragraph, for the CLI and the App."""
        top = ", ".join(f"{label} {n}" for label, n in
                        sorted(self.label_counts.items(), key=lambda kv: -kv[1])[:8])
        text = (f"{self.num_queries} samples matched against the labelled samples of "
                f"'{self.brain_key}' ({self.strategy}"
                f"{f' of {self.k}' if self.strategy == 'vote' else ''}, no-match threshold "
                f"{self.threshold:.4f}): {self.num_matched} got a label, {self.num_no_match} "
                f"'{NO_MATCH}', in field '{self.pred_field}'")
        if top:
            text += f"; labels: {top}"
        if self.num_not_indexed:
            text += f"; {self.num_not_indexed} samples without an embedding were left out"
        return text + "."

    def as_dict(self):
        return asdict(self)


def label_calibration(index, label_field=None):
    """The run's fresh calibration *with labels*, or the reason it cannot be used."""
    record = _calibration(index)
    if not record.get("label_field") or record.get("method") in LABEL_FREE_METHODS:
        raise CurationError(
            f"run '{index.key}' has a label-free calibration ({record.get('note', '')}): "
            "matching labels needs a threshold calibrated on labels: run calibrate_threshold "
            "with a label field")
    if label_field is not None and record["label_field"] != label_field:
        raise CurationError(
            f"run '{index.key}' was calibrated on '{record['label_field']}', not "
            f"'{label_field}': calibrate it on '{label_field}' first")
    return record


def _vote(labels, dists, threshold):
    """``(label, distance, position)`` of TF Similarity's majority vote among the accepted.

    ``labels``/``dists``: the k nearest, nearest first. Only neighbours within
    the threshold vote; a tie goes to the label met first (the nearer one).
    Returns None when none is within the threshold.
    """
    accepted = [i for i, d in enumerate(dists) if d <= threshold]
    if not accepted:
        return None
    counts, first = {}, {}
    for i in accepted:
        counts[labels[i]] = counts.get(labels[i], 0) + 1
        first.setdefault(labels[i], i)
    best = max(counts.values())
    winner = min((lab for lab, n in counts.items() if n == best), key=lambda lab: first[lab])
    return winner, float(dists[first[winner]]), first[winner], best / len(accepted)


def default_prediction_field(label_field):
    """Where match_labels writes its predictions unless told: ``<label field>_match``."""
    return f"{label_field}_match"


def match_labels(samples, brain_key, label_field, pred_field=None, strategy="nearest", k=5,
                 unlabelled_only=True, no_match_label=NO_MATCH, progress=None):
    """Predicts ``label_field`` for the samples of ``samples``, with a calibrated "no match".

    Args:
        samples: the dataset or a view: the samples to label
        brain_key: a lookalike run calibrated with ``label_field``
            (``calibrate_threshold(..., label_field=...)``); refused when it is
            label-free or stale
        label_field: a Classification (or string) field; its labelled, indexed
            samples (anywhere in the dataset) are the gallery
        pred_field (None): where predictions go (default ``<label_field>_match``)
        strategy ("nearest"): "nearest" or "vote" (majority of ``k``)
        unlabelled_only (True): only the samples whose ``label_field`` is empty;
            False also re-predicts labelled ones (never from themselves)
        no_match_label ("no match"): the label of a rejected sample
        progress (None): ``progress(fraction, label)``

    Returns:
        a :class:`LabelMatchReport`. Each prediction is an ``fo.Classification``
        with ``label``, ``confidence`` (vote: the winner's share of the votes),
        ``distance`` (to ``matched_id``, the nearest sample of that label, or
        for a no match the nearest labelled sample), ``matched_id`` and
        ``no_match``.
    """
    import fiftyone as fo

    from lookalike.core.labels import indexed_labels, label_path
    from lookalike.curation.neighbours import leave_one_out

    if strategy not in STRATEGIES:
        raise CurationError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    k = int(k) if strategy == "vote" else 1
    if k < 1:
        raise CurationError(f"k must be at least 1, got {k}")
    dataset = fo_adapter.root_dataset(samples)
    index = _current_index(dataset, brain_key)
    threshold = float(label_calibration(index, label_field)["threshold"])
    pred_field = pred_field or default_prediction_field(label_field)
    if pred_field == label_field:
        raise CurationError("the prediction field must not be the label field itself")

    gallery, gallery_labels, _ = indexed_labels(dataset, index, label_field)
    if len(gallery) == 0:
        raise CurationError(f"no indexed sample of '{dataset.name}' has a '{label_field}' "
                            "label: nothing to match against")
    label_of = dict(zip(gallery.tolist(), gallery_labels.tolist()))
    ids, labels = samples.values(["id", label_path(samples, label_field)])
    if unlabelled_only:
        ids = [i for i, lab in zip(ids, labels) if lab is None or lab == ""]
    if not ids:
        raise EmptyViewError(
            f"every sample of the view has a '{label_field}' label: nothing to match "
            "(unlabelled_only=False re-predicts labelled samples)" if unlabelled_only
            else "the view is empty: there are no samples to match")
    row_of = {sid: r for r, sid in enumerate(index.sample_ids)}
    queried = [sid for sid in ids if sid in row_of]
    not_indexed = len(ids) - len(queried)
    if not queried:
        raise CurationError(f"none of the {len(ids)} samples to match is in run '{brain_key}': "
                            "compute their embeddings and rebuild the index")
    rows = np.array([row_of[sid] for sid in queried])
    wrap = (lambda done, total: progress(0.9 * done / total, f"matched {done}/{total}")
            ) if progress else None
    inds, dists = leave_one_out(index.engine, rows=rows, k=k, gallery=gallery, progress=wrap)

    sample_ids = index.sample_ids
    predictions, counts, matched = {}, {}, 0
    for sid, row_i, row_d in zip(queried, inds, dists):
        valid = row_i >= 0
        row_i, row_d = row_i[valid], row_d[valid].astype(float)
        neighbour_labels = [label_of[int(i)] for i in row_i]
        vote = _vote(neighbour_labels, row_d, threshold) if len(row_i) else None
        if vote is None:
            nearest = int(row_i[0]) if len(row_i) else None
            pred = fo.Classification(
                label=no_match_label, no_match=True,
                distance=float(row_d[0]) if len(row_d) else None,
                matched_id=str(sample_ids[nearest]) if nearest is not None else None)
        else:
            label, distance, pos, share = vote
            matched += 1
            pred = fo.Classification(
                label=label, no_match=False, distance=distance,
                matched_id=str(sample_ids[int(row_i[pos])]),
                confidence=share if strategy == "vote" else None)
        counts[pred.label] = counts.get(pred.label, 0) + 1
        predictions[sid] = pred

    kind = _run_kind(pred_field)
    with leases.hold(dataset, f"field:{pred_field}", job="match_labels",
                     label=f"field '{pred_field}'"), \
            leases.hold(dataset, runs.lease_name(kind), job="match_labels",
                        label=f"field '{pred_field}'"):
        _declare_prediction_field(dataset, pred_field)
        faults.point("match_labels.before_write")
        # All or nothing: staged, then applied by one server-side command and published;
        # a kill leaves the old predictions whole, or the new ones once rolled forward.
        runs.write(dataset, kind, None, list(predictions),
                   {pred_field: {sid: p.to_dict() for sid, p in predictions.items()}},
                   None, ())
    report = LabelMatchReport(
        brain_key=brain_key, label_field=label_field, pred_field=pred_field,
        strategy=strategy, k=k, threshold=threshold, num_queries=len(queried),
        num_matched=matched, num_no_match=len(queried) - matched,
        num_not_indexed=not_indexed, label_counts=counts)
    records.save(index, _LABEL_RECORD, report.as_dict())
    if progress:
        progress(1.0, "done")
    return report


def _run_kind(pred_field):
    """The published-run kind of the predictions in ``pred_field`` (one per field)."""
    return f"match_labels.{pred_field}"


def settle(samples, pred_field):
    """Finishes what a killed ``match_labels`` into ``pred_field`` left: staged predictions
    are applied (the new ones whole), unstaged ones dropped (the old ones stand); False
    while a live job is still writing them."""
    return runs.recover(fo_adapter.root_dataset(samples), _run_kind(pred_field))


def _declare_prediction_field(dataset, pred_field):
    """Declares the Classification field and its attributes, so the App can filter on them."""
    import fiftyone as fo

    # FiftyOne saves a dataset's whole field list: take turns with other jobs (as embeddings do).
    with leases.hold(dataset, "schema", job="match_labels", wait=120,
                     label=f"the field list of dataset '{dataset.name}'"):
        dataset.reload()
        schema = dataset.get_field_schema(flat=True)
        if pred_field not in schema:
            dataset.add_sample_field(pred_field, fo.EmbeddedDocumentField,
                                     embedded_doc_type=fo.Classification)
        for name, ftype in (("distance", fo.FloatField), ("matched_id", fo.StringField),
                            ("no_match", fo.BooleanField)):
            if f"{pred_field}.{name}" not in schema:
                dataset.add_sample_field(f"{pred_field}.{name}", ftype)


def no_match_view(samples, pred_field=None):
    """The samples predicted "no match", farthest first (``pred_field``: default the last run's)."""
    from fiftyone import ViewField as F

    pred_field = pred_field or last_label_match_field(samples)
    if pred_field is None or pred_field not in samples.get_field_schema():
        raise CurationError("no label matching has run on this dataset yet: run match_labels")
    settle(samples, pred_field)
    return samples.match(F(f"{pred_field}.no_match") == True).sort_by(  # noqa: E712
        f"{pred_field}.distance", reverse=True)


def last_label_match_field(samples):
    """The prediction field of the most recent ``match_labels`` on any run, or None."""
    return (latest_record(samples, _LABEL_RECORD) or {}).get("pred_field")


