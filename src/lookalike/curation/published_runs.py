"""Which curation run's results stand: staged, then applied and published, rolled forward.

``find_duplicates`` and ``flag_outliers`` write fields and tags on many samples;
MongoDB has no multi-document transaction on a standalone server, so a kill
half-way would leave a mix of two runs. Instead (:func:`write`):

1. the caller holds the lease ``curation:<kind>`` of the dataset (a second job
   is refused);
2. :func:`begin`: the record gets ``pending = <new run id>`` (one atomic update);
3. *stage*: every value and tag decision of the run goes into the
   ``lookalike_curation_stage`` collection -- the samples are not touched, so a
   kill here leaves the old results standing, whole; the staged rows are
   dropped by the next look (:func:`recover`);
4. ``staged = <run id>`` (one atomic update): from here the run is decided;
5. *apply*: one server-side ``$merge`` copies the staged values, the run id
   (``dup_run`` / ``nn_run``) and the tags onto the samples; it is idempotent, so
   a kill during it is finished by :func:`recover`, which applies it again;
6. :func:`publish`: ``published = {run, tag, counts}``, ``pending = staged = None``.

So after a kill at any point either the old results stand or, once anything
looks again (a rerun, a view, a deletion), the new ones: :func:`recover` runs
first in each of those. Readers trust only samples carrying the *published*
run's id; samples outside a run's view keep an older run id, so they are never
mistaken for members of the published groups.

The records live in the ``lookalike_curation`` collection of FiftyOne's
database, keyed by ``<dataset id>/<kind>`` (ids survive renames).
"""

import uuid

from lookalike.core import fo_adapter, leases
from lookalike.core.errors import IncompleteCurationError

COLLECTION = "lookalike_curation"
STAGE = "lookalike_curation_stage"
_STAGE_BATCH = 10_000
JOBS = {"duplicates": "find_duplicates", "outliers": "flag_outliers", "leaks": "find_leaks"}


def _collection():
    return fo_adapter.db_collection(COLLECTION)


def _stage():
    return fo_adapter.db_collection(STAGE)


def lease_name(kind):
    return f"curation:{kind}"


def lease_label(dataset, kind):
    return f"the {kind} results of dataset '{fo_adapter.root_dataset(dataset).name}'"


def begin(dataset, kind):
    """Marks a new run of ``kind`` as being written; returns its run id."""
    run = uuid.uuid4().hex[:16]
    _collection().update_one({"_id": fo_adapter.dataset_key(dataset, kind)},
                             {"$set": {"pending": run, "pending_since": fo_adapter.db_now()}},
                             upsert=True)
    return run


def publish(dataset, kind, run, **info):
    """Makes ``run`` the one readers trust, in one update (only if it is still the pending one)."""
    done = _collection().update_one(
        {"_id": fo_adapter.dataset_key(dataset, kind), "pending": run},
        {"$set": {"published": dict(info, run=run, at=fo_adapter.db_now()), "pending": None,
                  "staged": None}})
    if not done.modified_count:
        raise IncompleteCurationError(
            f"the {kind} run {run} was replaced by another while it wrote: run "
            f"{JOBS.get(kind, kind)} again")


def record(dataset, kind):
    """``{"published": {...} | None, "pending": run id | None, "staged": {...} | None}``."""
    doc = _collection().find_one({"_id": fo_adapter.dataset_key(dataset, kind)}) or {}
    return {"published": doc.get("published"), "pending": doc.get("pending"),
            "staged": doc.get("staged")}


def write(samples, kind, run_field, ids, values, tag, tagged, marked=(), mark=None,
          extra_tags=None, **info):
    """Replaces the results of ``kind`` on the samples ``ids`` with one run's; returns its id.

    ``values``: ``{field: {sample id: value}}`` (a missing id clears the field; values as
    MongoDB holds them: a label's ``to_dict()``);
    ``run_field``: the field that gets the run id (None: none does);
    ``tagged``: the ids that get ``tag`` (the others of ``ids`` lose it; ``tag`` None: the
    tags are left alone);
    ``marked``: the ids that get the second tag ``mark`` (the kept sample of a
    duplicate group), likewise; ``extra_tags``: ``{tag: ids}``, more tags likewise
    (another shot of a scene); ``info``: what the published record keeps
    (counts, the brain key that made the run). The fields must be declared and
    the caller must hold the lease of ``kind``.
    """
    from bson import ObjectId

    from lookalike.core import faults

    dataset = fo_adapter.root_dataset(samples)
    recover(dataset, kind, lease_held=True)
    run = begin(dataset, kind)
    faults.point(f"{kind}.after_begin")
    tagged, marked = set(tagged), set(marked)
    extra = {t: set(got) for t, got in (extra_tags or {}).items()}
    stage = _stage()
    for start in range(0, len(ids), _STAGE_BATCH):
        leases.check_held()
        stage.insert_many([
            {"_id": f"{run}/{sid}", "run": run, "sample": ObjectId(sid),
             "v": {f: v.get(sid) for f, v in values.items()}, "t": sid in tagged,
             "m": sid in marked, "x": [t for t in sorted(extra) if sid in extra[t]]}
            for sid in ids[start:start + _STAGE_BATCH]], ordered=False)
        faults.point(f"{kind}.staging")
    staged = dict(info, run=run, tag=tag, mark=mark, run_field=run_field, fields=sorted(values),
                  extra_tags=sorted(extra))
    _collection().update_one({"_id": fo_adapter.dataset_key(dataset, kind), "pending": run},
                             {"$set": {"staged": staged}})
    faults.point(f"{kind}.staged")
    _apply_and_publish(dataset, kind, staged)
    return run


def _apply_and_publish(dataset, kind, staged):
    from lookalike.core import faults

    run, tag, mark = staged["run"], staged["tag"], staged.get("mark")
    update = {f: f"$$new.v.{f}" for f in staged["fields"]}
    if staged["run_field"]:
        update[staged["run_field"]] = run
    if tag:
        extra = list(staged.get("extra_tags") or [])  # runs staged before them: none
        ours = [tag] + ([mark] if mark else []) + extra
        without_ours = {"$filter": {"input": {"$ifNull": ["$tags", []]},
                                    "cond": {"$not": [{"$in": ["$$this", ours]}]}}}
        update["tags"] = {"$concatArrays": [without_ours, {"$cond": ["$$new.t", [tag], []]}] + (
            [{"$cond": [{"$ifNull": ["$$new.m", False]}, [mark], []]}] if mark else []) + (
            [{"$ifNull": ["$$new.x", []]}] if extra else [])}
    update["last_modified_at"] = "$$NOW"
    leases.check_held()
    # One server-side command; setting the same values twice is harmless, so an
    # interrupted one is simply run again. Samples deleted meanwhile are skipped.
    _stage().aggregate([
        {"$match": {"run": run}},
        {"$project": {"_id": "$sample", "v": 1, "t": 1, "m": 1, "x": 1}},
        {"$merge": {"into": fo_adapter.sample_collection(dataset).name, "on": "_id",
                    "whenMatched": [{"$set": update}], "whenNotMatched": "discard"}},
    ])
    faults.point(f"{kind}.applied")
    info = {k: v for k, v in staged.items() if k not in ("run", "run_field", "fields")}
    publish(dataset, kind, run, **info)
    _stage().delete_many({"run": run})
    dataset.reload()  # in-memory samples must see the merged values


def recover(dataset, kind, lease_held=False):
    """Finishes or drops what a killed run of ``kind`` left; True when the state is settled.

    A staged run is applied and published (new-complete); a run killed before
    it was staged is dropped (old-complete). Without ``lease_held`` this takes
    the lease, and leaves a run that a live job is still writing alone (False).
    """
    from lookalike.core.errors import LeaseHeldError

    state = record(dataset, kind)
    if state["pending"] is None:
        return True
    if not lease_held:
        try:
            lease = leases.acquire(dataset, lease_name(kind), job=f"recover {kind}")
        except LeaseHeldError:
            return False
        try:
            return recover(dataset, kind, lease_held=True)
        finally:
            lease.release()
    pending, staged = state["pending"], state["staged"]
    if staged is not None and staged.get("run") == pending:
        _apply_and_publish(dataset, kind, staged)
    else:
        _stage().delete_many({"run": pending})
        _collection().update_one({"_id": fo_adapter.dataset_key(dataset, kind), "pending": pending},
                                 {"$set": {"pending": None}})
    return True


def published_info(dataset, kind):
    """What the published run of ``kind`` keeps: ``run``, ``at`` (UTC), ``brain_key`` (the
    index that made it, where one did), its counts; None before any run."""
    return record(dataset, kind)["published"]


def published_run(dataset, kind):
    """The published run id of ``kind``, or None."""
    return (record(dataset, kind)["published"] or {}).get("run")


def published_view(samples, kind, run_field, where, sort, reverse=False):
    """The samples of ``samples`` that the published run of ``kind`` wrote and ``where`` matches.

    A killed run is finished (or dropped) first, and only samples carrying the
    published run's id count; sorted by ``sort`` (a :meth:`sort_by` argument).
    No published run: an empty view.
    """
    from fiftyone import ViewField as F

    dataset = fo_adapter.root_dataset(samples)
    recover(dataset, kind)
    run = published_run(dataset, kind)
    if run is None:
        return samples.limit(0)
    return samples.match((F(run_field) == run) & where).sort_by(sort, reverse=reverse)


def check_complete(dataset, kind, lease_held=False):
    """Settles what a killed run left (:func:`recover`); raises :class:`IncompleteCurationError`
    while a live job is still writing ``kind``.

    ``lease_held``: the caller holds the lease of ``kind``, so a pending run is dead.
    """

    if recover(dataset, kind, lease_held=lease_held):
        return
    name, job = fo_adapter.root_dataset(dataset).name, JOBS.get(kind, kind)
    live = leases.current(dataset, lease_name(kind))
    raise IncompleteCurationError(
        f"{job} is writing the {kind} of dataset '{name}'"
        + (f" ({leases.describe(live)})" if live else "") + ": wait for it to finish")
