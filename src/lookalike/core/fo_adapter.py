"""The few private FiftyOne attributes lookalike needs, in one place, each with why.

FiftyOne's public API has no name for these; keeping them here means one file
to check on a FiftyOne upgrade.
"""


# The logger FiftyOne's connection code warns through (an internal module's name).
DATABASE_LOGGER = "fiftyone.core.odm.database"

def root_dataset(samples):
    """The dataset under a view (or the dataset itself).

    Needed because brain runs, ``dataset.info`` records and leases belong to the
    dataset, while users hand us views. (``view._root_dataset``: private.)
    """
    return samples._root_dataset


def dataset_id(samples):
    """The database id of the dataset under ``samples``: stable across renames.

    Index artefacts, leases and deletion journals are keyed by it, so renaming a
    dataset keeps them. (``dataset._doc.id``: private.)
    """
    return str(root_dataset(samples)._doc.id)


def view_stages(samples):
    """The view's stages as JSON-ready dicts ([] for a whole dataset).

    A trained encoder's manifest records the view it was trained on, so that
    the run can be told and repeated. (``view._serialize``: private; FiftyOne
    saves views the same way.)
    """
    return samples.view()._serialize() if hasattr(samples, "_serialize") else []


def sample_collection(dataset):
    """The pymongo collection holding ``dataset``'s sample documents.

    Deletion journals save the raw documents (ids, every field, tags) and
    undelete inserts them back unchanged: FiftyOne's public API only re-adds
    samples under new ids. (``dataset._sample_collection``: private.)
    """
    return root_dataset(dataset)._sample_collection


def set_info_key(samples, path, value):
    """Sets ``dataset.info[k1][k2]...`` (``path`` = "k1.k2") with one atomic ``$set``.

    ``dataset.info[k] = ...; dataset.save()`` writes all of ``info[k]`` from this
    process's copy, so two jobs writing two sub-keys lose one of them. FiftyOne
    has no public per-key update: this writes the dataset's document in its
    ``datasets`` collection (private layout), then reloads ``info`` in memory.
    """
    import fiftyone.core.odm.database as fod

    dataset = root_dataset(samples)
    fod.get_db_conn().datasets.update_one({"_id": dataset._doc.id},
                                          {"$set": {f"info.{path}": value}})
    dataset._doc.reload("info")


def read_info_key(samples, key):
    """``dataset.info[key]`` as it is in the database now (other processes' writes
    included), without reloading the dataset. (The ``datasets`` collection: private.)"""
    import fiftyone.core.odm.database as fod

    dataset = root_dataset(samples)
    doc = fod.get_db_conn().datasets.find_one({"_id": dataset._doc.id}, {f"info.{key}": 1})
    return ((doc or {}).get("info") or {}).get(key)


def refresh_runs(samples):
    """Re-reads the dataset's brain runs from the database (other processes' builds).

    A dataset object keeps its document in memory, so an index that another
    process swapped in stays invisible until then; ``dataset.reload()`` would
    also reload every in-memory sample. (``dataset._doc.reload``: private.)
    """
    root_dataset(samples)._doc.reload("brain_methods")


def forget_brain_results(samples, brain_key):
    """Drops ``brain_key``'s cached results, so the next load reads the run anew.

    Used when the run under that key was replaced by another process (its
    build id changed). (``dataset._brain_cache``: private.)
    """
    root_dataset(samples)._brain_cache.pop(brain_key, None)


def saved_brain_results(samples, brain_key):
    """The run's results as saved in the database now (a dict), or None without results.

    Read straight from the run's document, without building the index, so
    that a record saved by another process since this one loaded the run is
    seen. (``fiftyone.core.brain.BrainMethod._get_run_doc``: private.)
    """
    from bson import json_util
    from fiftyone.core.brain import BrainMethod

    refresh_runs(samples)
    try:
        run_doc = BrainMethod._get_run_doc(root_dataset(samples), brain_key)
    except ValueError:
        return None
    run_doc.reload()
    if not run_doc.results:
        return None
    run_doc.results.seek(0)
    return json_util.loads(run_doc.results.read().decode())


def project(samples, field, batch_size):
    """``(db path, cursor)``: ``{"_id", <db path>}`` of the samples of ``samples`` with ``field`` set.

    Streams one field of a view in batches, straight from MongoDB: ``values()``
    would build every value (and a list of them) in memory first. The view's
    own stages come first, so the samples are the view's; they come in the order
    of their ids, not the dataset's: the same samples give the same rows whatever
    order they are stored in (samples that undelete restores come back at the
    end of the dataset), so what is sampled from the rows is the same too.
    (``samples._handle_db_field`` and ``samples._pipeline``: private;
    ``values()`` builds its pipeline with them.)
    """
    db_path = samples._handle_db_field(field)
    pipeline = samples._pipeline(pipeline=[{"$match": {db_path: {"$ne": None}}},
                                           {"$project": {db_path: True}},
                                           {"$sort": {"_id": 1}}])
    return db_path, sample_collection(samples).aggregate(pipeline, batchSize=batch_size,
                                                         allowDiskUse=True)


def kneighbors(index, query, k):
    """``(sample ids, distances)`` of the k nearest by any backend's similarity index.

    Every fiftyone-brain backend implements ``_kneighbors`` (its public
    ``sort_by_similarity`` writes a view and a field instead).
    (``index._kneighbors``: private.)
    """
    ids, _, dists = index._kneighbors(query, k=k, return_dists=True)
    return ids, dists


def db_collection(name):
    """Our own collection ``name`` in FiftyOne's database (leases, published runs)."""
    import fiftyone.core.odm.database as fod

    return fod.get_db_conn()[name]


def serialized_view(view):
    """The view's stages as FiftyOne serializes them (a queued shard's identity)."""
    return view._serialize()


def delegated_operations():
    """FiftyOne's delegated-operation service: the queue that workers claim jobs from."""
    from fiftyone.operators.delegated import DelegatedOperationService

    return DelegatedOperationService()


def operation_request(op):
    """The request a delegated operation was queued with (``dataset_name``, ``params``, ``view``).

    FiftyOne's operation document keeps the dataset's id only (``dataset_id``;
    there is no ``dataset_name``); its name, the operator's parameters and the
    view's stages are in the stored request (``context.request_params``), which
    is also what ``list_operations(dataset_name=...)`` filters on.
    """
    return (op.context.request_params or {}) if op.context else {}


def failed_result(error):
    """An operation result marking a delegated run failed with ``error``."""
    from fiftyone.operators.executor import ExecutionResult

    return ExecutionResult(error=error)


def sample_document_fields():
    """The fields FiftyOne's own sample document declares (filepath, tags, ...), or ()."""
    try:
        import fiftyone as fo
        from fiftyone.core.odm.sample import get_default_fields

        return tuple(get_default_fields(fo.core.odm.DatasetSampleDocument, include_private=True))
    except (ImportError, AttributeError, TypeError):  # another FiftyOne version
        return ()


def dataset_key(samples, what):
    """``"<dataset id>/<what>"``: the key of a dataset's lease or record (an id survives
    renames; views use their root dataset). ``samples`` a str: a dataset *name*, which
    may not exist yet (two imports creating one dataset): ``"name:<name>/<what>"``."""
    if isinstance(samples, str):
        return f"name:{samples}/{what}"
    return f"{dataset_id(samples)}/{what}"


def dataset_ids():
    """The ids (str) of every dataset in the database. (``datasets``: FiftyOne's own
    collection; ``fo.list_datasets`` gives names only.)"""
    import fiftyone.core.odm.database as fod

    return {str(i) for i in fod.get_db_conn().datasets.distinct("_id")}


def db_now():
    """Now, as MongoDB stores times (naive UTC)."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def exact_count(samples):
    """How many samples ``samples`` holds, counted.

    FiftyOne answers ``len(dataset)`` from MongoDB's estimated count, which after an
    unclean shutdown of mongod can read 0 for a full dataset (until the collection is
    validated); a count of a field that every sample has is always counted."""
    return samples.count("_id")


# -- swapping a brain run in ----------------------------------------------------------
# FiftyOne's delete_brain_run + rename_brain_run leave a moment with no run under the
# key (and, between deleting the run document and saving the dataset's, a reference
# FiftyOne logs as "corrupted"): a reader in another process (the App) fails then.
# The dataset document maps each brain key to a run document's id, so repointing the
# key is one atomic write; the replaced run document is kept, marked detached, for
# readers that read the old mapping an instant before, and deleted later.
_DETACHED = "lookalike_detached_at"


def swap_brain_run(samples, new_key, key, results=None):
    """Makes ``key`` name the run now under ``new_key`` (which then goes), in one write.

    ``results``: the new run's loaded results, renamed and cached under ``key`` (as
    FiftyOne's rename does; ``_key`` and ``_brain_cache`` are private)."""
    import fiftyone.core.odm.database as fod

    dataset = root_dataset(samples)
    refresh_runs(dataset)
    runs = dataset._doc.brain_methods  # key -> RunDocument (private)
    new_id, old = runs[new_key].id, runs.get(key)
    db = fod.get_db_conn()
    db.runs.update_one({"_id": new_id}, {"$set": {"key": key}})
    if old is not None:  # marked first: a kill after it leaves it detached-to-be, still used
        db.runs.update_one({"_id": old.id}, {"$set": {_DETACHED: db_now()}})
    db.datasets.update_one({"_id": dataset._doc.id},
                           {"$set": {f"brain_methods.{key}": new_id},
                            "$unset": {f"brain_methods.{new_key}": ""}})
    refresh_runs(dataset)
    for k in (key, new_key):
        forget_brain_results(dataset, k)
    if results is not None:
        results._key = key
        dataset._brain_cache[key] = results


def detached_brain_runs(samples, older_than_s=0.0):
    """``[(run id, key, config dict)]`` of this dataset's runs that a swap replaced more than
    ``older_than_s`` seconds ago and that no key names (a kill can leave a marked run
    still named: it stays)."""
    import datetime

    import fiftyone.core.odm.database as fod

    dataset = root_dataset(samples)
    refresh_runs(dataset)
    named = {doc.id for doc in dataset._doc.brain_methods.values() if hasattr(doc, "id")}
    since = db_now() - datetime.timedelta(seconds=older_than_s)
    docs = fod.get_db_conn().runs.find(
        {"_dataset_id": dataset._doc.id, _DETACHED: {"$lte": since}}, {"config": 1, "key": 1})
    return [(d["_id"], d.get("key"), d.get("config") or {}) for d in docs
            if d["_id"] not in named]


def delete_run_document(run_id):
    """Deletes a detached run's document and its results (GridFS), as FiftyOne's own
    delete_run does for a named one."""
    from fiftyone.core.odm.runs import RunDocument

    doc = RunDocument.objects(id=run_id).first()
    if doc is None:
        return
    if doc.results:
        doc.results.delete()
    doc.delete()
