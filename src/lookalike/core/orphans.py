"""What lookalike keeps beside a dataset, removed once the dataset is deleted.

FiftyOne deletes a dataset's samples and runs (our similarity records travel in
the runs' results, so they go with it), but not what we keep beside it, keyed by
its id: documents of our collections (``lookalike_*``, ``_id`` ``<dataset
id>/...``: :func:`fo_adapter.dataset_key`) and folders of the data directory
named by the id (``<data dir>/<kind>/<dataset id>``: index artefacts, feature
caches, deletion journals). FiftyOne has no delete hook, so :func:`sweep` removes
them later; ``records.commit`` runs it each time a run's records are saved.
A dataset created again with the same name has a new id: it never sees them.

Only ids this database has held are swept: one data directory may serve two
databases (FiftyOne's default one is shared), and a folder of a dataset of the
other one must stay. The ids it knows: those of our collections' documents, and
every dataset id a sweep saw, kept in ``lookalike_datasets`` (so a dataset
created and deleted with no sweep in between leaves its folders).
Our keys and folders are listed before the datasets, so a dataset created in
between is never taken for a deleted one (ids are never reused). A deleted
dataset that a live job still holds a lease on is left for the next sweep.
"""

import os
import re
import shutil
from dataclasses import dataclass, field

from lookalike.core import fo_adapter, leases

PREFIX = "lookalike_"
REGISTRY = "lookalike_datasets"  # {_id: <dataset id>}: the datasets this database held
_ID = re.compile(r"^[0-9a-f]{24}$")
_KEYED = {"$regex": "^[0-9a-f]{24}/"}


@dataclass
class SweepReport:
    datasets: list = field(default_factory=list)  # ids of deleted datasets cleared
    documents: int = 0  # documents removed from our collections
    folders: list = field(default_factory=list)  # folders removed from the data directory
    skipped: list = field(default_factory=list)  # ids left: a live job holds a lease

    def summary(self):
        if not self.datasets:
            text = "nothing left by deleted datasets"
        else:
            text = (f"removed what {len(self.datasets)} deleted datasets left: "
                    f"{self.documents} records, {len(self.folders)} folders")
        if self.skipped:
            text += f"; {len(self.skipped)} left while a job still holds a lease on them"
        return text


def _db():
    return fo_adapter.db_collection(REGISTRY).database


def _collections():
    return [fo_adapter.db_collection(name) for name in sorted(_db().list_collection_names())
            if name.startswith(PREFIX) and name != REGISTRY]


def _folders():
    """``{dataset id: [folder, ...]}`` of the data directory's per-dataset folders."""
    from lookalike.core.paths import default_data_dir

    root, out = default_data_dir(), {}
    try:
        kinds = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return out
    for kind in kinds:
        if not kind.is_dir(follow_symlinks=False):
            continue
        try:
            entries = list(os.scandir(kind.path))
        except OSError:
            continue
        for entry in entries:
            if _ID.match(entry.name) and entry.is_dir(follow_symlinks=False):
                out.setdefault(entry.name, []).append(entry.path)
    return out


def _register(ids):
    import pymongo.errors

    registry = fo_adapter.db_collection(REGISTRY)
    new = ids - set(registry.distinct("_id", {"_id": {"$in": sorted(ids)}}))
    if new:
        try:
            registry.insert_many([{"_id": i} for i in sorted(new)], ordered=False)
        except pymongo.errors.BulkWriteError:
            pass  # another sweep registered some of them first


def sweep():
    """Removes what deleted datasets left (see the module); returns a :class:`SweepReport`."""
    collections = _collections()
    keyed = {}  # dataset id -> collections holding its documents
    for coll in collections:
        for doc in coll.aggregate([{"$match": {"_id": _KEYED}},
                                   {"$group": {"_id": {"$substrCP": ["$_id", 0, 24]}}}]):
            keyed.setdefault(doc["_id"], []).append(coll)
    folders = _folders()
    registry = fo_adapter.db_collection(REGISTRY)
    known = set(registry.distinct("_id")) | set(keyed)
    existing = fo_adapter.dataset_ids()  # read last: see the module
    _register(existing)
    report = SweepReport()
    for gone in sorted(known - existing):
        prefix = {"_id": {"$regex": f"^{gone}/"}}
        lease_coll = leases.COLLECTION
        if any(leases.is_alive(doc) for coll in keyed.get(gone, ())
               if coll.name == lease_coll for doc in coll.find(prefix)):
            report.skipped.append(gone)
            continue
        for coll in keyed.get(gone, ()):
            # A run being written when its dataset went takes its staged rows with it.
            runs = [doc["pending"] for doc in coll.find(prefix, {"pending": 1})
                    if isinstance(doc.get("pending"), str)]
            if runs:
                for other in collections:
                    report.documents += other.delete_many({"run": {"$in": runs}}).deleted_count
            report.documents += coll.delete_many(prefix).deleted_count
        for path in folders.get(gone, ()):
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.exists(path):
                report.folders.append(path)
        registry.delete_one({"_id": gone})
        report.datasets.append(gone)
    return report
