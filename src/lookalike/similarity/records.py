"""Curation results saved with the similarity run (calibration, evaluation); thresholds from them.

They live in the run's results (``index.curation``), so they survive restarts,
travel with the run and disappear with it. Each record keeps the state of the
embeddings field it was computed from (which samples held a vector and the
encoder version that wrote them): when the field has changed since, the record
is stale and using it is refused until it is computed again.
"""

import math
import time
from dataclasses import dataclass, field, fields

from lookalike.core.errors import CurationError, MissingRecordError, StaleRecordError
from lookalike.similarity import artefacts




def field_state(index):
    field = index.config.embeddings_field
    if field is None:
        return {"size": int(index.total_index_size)}
    # Over the view the run was built on: changes outside it do not matter.
    state = artefacts.field_state(index.samples, field)
    return dict(state, size=int(index.total_index_size))


def save(index, name, record):
    """Saves ``record`` (a JSON-serialisable dict) as ``name`` on the run."""
    record = dict(record, saved_at=time.time(), field_state=field_state(index),
                  encoder=index.config.encoder, encoder_version=index.config.encoder_version)
    commit(index, {name: record})
    return record


def commit(index, changes):
    """Merges ``changes`` ({name: record}) into the run's records as saved now, and saves.

    The records travel in the run's results, which FiftyOne saves whole: two
    processes that each loaded the run and then saved a record would lose one
    of them. So the save holds a lease on the run's records and merges into the
    records read back from the database, not into this process's copy.
    """
    from lookalike.core import fo_adapter, leases, orphans

    dataset = fo_adapter.root_dataset(index.samples)
    with leases.hold(dataset, f"records:{index.key}", job="save curation records", wait=120,
                     label=f"the curation records of '{index.key}'"):
        saved = fo_adapter.saved_brain_results(dataset, index.key) or {}
        index.curation = dict(saved.get("curation") or {}, **changes)
        index.save()
    # What deleted datasets left beside them goes when records are next saved (a few
    # queries; FiftyOne has no delete hook to do it at once).
    orphans.sweep()


def load(index, name, check_fresh=True):
    record = (index.curation or {}).get(name)
    if record is None:
        raise MissingRecordError(
            f"run '{index.key}' has no {name} yet: run "
            f"{'calibrate_threshold' if name == 'calibration' else 'evaluate_retrieval'} first")
    if check_fresh and name == "calibration" and not record.get("duplicate_rule_version"):
        raise StaleRecordError(
            f"the calibration of run '{index.key}' predates the two-sided duplicate threshold: "
            "run calibrate_threshold again")
    if check_fresh:
        now = field_state(index)
        if record.get("field_state") != now:
            raise StaleRecordError(
                f"the embeddings of run '{index.key}' changed since its {name} "
                f"({_describe_change(record.get('field_state') or {}, now)}): "
                f"run {'calibrate_threshold' if name == 'calibration' else 'evaluate_retrieval'} "
                "again")
    return record


@dataclass(kw_only=True)
class SavedResult:
    """Base of the results saved as a record with the run (calibration, evaluation).

    It holds what :func:`save` stamps on the record. ``to_record()`` gives the
    record as saved (fields without a value left out, except the ``NULLABLE``
    ones, which the record holds as null); ``from_record`` reads one back,
    keeping the keys it has no field for (other jobs' bookkeeping, other
    versions' additions) in ``extra``, so that the round trip loses nothing.
    """

    NULLABLE = ("encoder", "encoder_version")
    saved_at: float = None
    field_state: dict = None  # of the embeddings the result was computed from
    encoder: str = None
    encoder_version: str = None
    extra: dict = field(default_factory=dict)

    def to_record(self):
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return dict({k: v for k, v in values.items() if v is not None or k in self.NULLABLE},
                    **self.extra)

    @classmethod
    def from_record(cls, record):
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in record.items() if k in names},
                   extra={k: v for k, v in record.items() if k not in names})


def is_fresh(index, name):
    record = (index.curation or {}).get(name)
    return record is not None and record.get("field_state") == field_state(index)


def threshold(index, which, given=None):
    """The distance threshold to use: ``given``, or (None) the run's calibrated ``which``.

    ``which``: "threshold" (the match threshold) or "duplicate_threshold".
    Either way checked by :func:`check_threshold`.
    """
    if given is None:
        given = load(index, "calibration")[which]
    return check_threshold(given)


def duplicate_warning(index, given=None):
    """The calibration's warning about its duplicate threshold (it cannot separate copies
    from different images, or it is one-sided), when a job uses that threshold: None
    when ``given`` replaces it or the calibration raised none."""
    if given is not None:
        return None
    warning = ((index.curation or {}).get("calibration") or {}).get("duplicate_warning")
    return f"the duplicate threshold of '{index.key}' is unreliable: {warning}" if warning \
        else None


def check_threshold(threshold):
    """``threshold`` as a float if it is a cosine distance (in [0, 2]), else CurationError."""
    t = float(threshold)
    if not 0.0 <= t <= 2.0 or not math.isfinite(t):
        raise CurationError(f"a cosine distance threshold must be in [0, 2], got {threshold}")
    return t


def _describe_change(old, new):
    if old.get("version") != new.get("version"):
        return f"encoder version {old.get('version')} -> {new.get('version')}"
    if old.get("count") != new.get("count") or old.get("size") != new.get("size"):
        return f"{old.get('size')} -> {new.get('size')} embedded samples"
    return "different samples"
