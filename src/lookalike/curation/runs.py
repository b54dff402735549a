"""Which curation run's results stand: one record per dataset and kind, switched atomically.

``find_duplicates`` and ``flag_outliers`` write their results in several steps
(clear the view's old values, set the fields, retag). A kill between two steps
would leave a mix of two runs, so every run writes under a run id and readers
trust only the samples carrying the *published* run's id:

1. take the lease ``curation:<kind>`` of the dataset (a second job is refused);
2. :func:`begin`: the record gets ``pending = <new run id>`` (one atomic update);
3. write the result fields, the run-id field (``dup_run`` / ``nn_run``) and the tags;
4. :func:`publish`: ``published = {run, tag, counts}`` and ``pending = None`` in one
   atomic update of the record.

A kill in step 3 leaves ``pending`` set: the state is detectably incomplete,
``delete_duplicates`` refuses to act (:func:`check_complete`), views show only
samples of the published run, and the next run overwrites and publishes.
Samples outside a run's view keep an older run id, so they are never mistaken
for members of the published groups.

The records live in the ``lookalike_curation`` collection of FiftyOne's
database, keyed by ``<dataset id>/<kind>`` (ids survive renames).
"""

import datetime
import uuid

from lookalike import fo_adapter
from lookalike.errors import IncompleteCurationError

COLLECTION = "lookalike_curation"
JOBS = {"duplicates": "find_duplicates", "outliers": "flag_outliers"}


def _collection():
    import fiftyone.core.odm.database as fod

    return fod.get_db_conn()[COLLECTION]


def _key(dataset, kind):
    return f"{fo_adapter.dataset_id(dataset)}/{kind}"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def lease_name(kind):
    return f"curation:{kind}"


def lease_label(dataset, kind):
    return f"the {kind} results of dataset '{fo_adapter.root_dataset(dataset).name}'"


def begin(dataset, kind):
    """Marks a new run of ``kind`` as being written; returns its run id."""
    run = uuid.uuid4().hex[:16]
    _collection().update_one({"_id": _key(dataset, kind)},
                             {"$set": {"pending": run, "pending_since": _now()}}, upsert=True)
    return run


def publish(dataset, kind, run, **info):
    """Makes ``run`` the one readers trust, in one update (only if it is still the pending one)."""
    done = _collection().update_one(
        {"_id": _key(dataset, kind), "pending": run},
        {"$set": {"published": dict(info, run=run, at=_now()), "pending": None}})
    if not done.modified_count:
        raise IncompleteCurationError(
            f"the {kind} run {run} was replaced by another while it wrote: run "
            f"{JOBS.get(kind, kind)} again")


def record(dataset, kind):
    """``{"published": {...} | None, "pending": run id | None}`` of ``kind``."""
    doc = _collection().find_one({"_id": _key(dataset, kind)}) or {}
    return {"published": doc.get("published"), "pending": doc.get("pending")}


def published_run(dataset, kind):
    """The published run id of ``kind``, or None."""
    return (record(dataset, kind)["published"] or {}).get("run")


def check_complete(dataset, kind, lease_held=False):
    """Raises :class:`IncompleteCurationError` when a run of ``kind`` was started and never published.

    ``lease_held``: the caller holds the lease of ``kind``, so a pending run is dead.
    """
    from lookalike import leases

    pending = record(dataset, kind)["pending"]
    if pending is None:
        return
    name, job = fo_adapter.root_dataset(dataset).name, JOBS.get(kind, kind)
    live = None if lease_held else leases.current(dataset, lease_name(kind))
    if live is not None:
        raise IncompleteCurationError(
            f"{job} is writing the {kind} of dataset '{name}' ({leases.describe(live)}): "
            "wait for it to finish")
    raise IncompleteCurationError(
        f"the last {job} on dataset '{name}' did not finish (killed?): its {kind} are "
        f"incomplete, run {job} again")
