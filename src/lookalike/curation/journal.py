"""Deletion journals: the raw documents of deleted samples, written before they go, to undo it.

Every deletion first saves the full MongoDB documents of the samples it is
about to delete (ids, every field, tags) to
``<data dir>/journal/<dataset id>/<UTC time>-<8 hex>.json`` in MongoDB's
canonical extended JSON (``bson.json_util``: ObjectIds, dates, binary vectors
and int/float kinds round-trip exactly). The file is written to a temporary
name, fsynced and renamed into place (and the folder fsynced) before the first
sample is deleted, so a kill at any point leaves either no journal and no
deletion, or a complete journal; a journal that cannot be written (a full disk)
fails in one line and nothing is deleted.

:func:`restore` inserts the journal's documents that are missing from the
dataset (those still there are left alone, so a deletion killed half-way is
undone without duplicates), each after the sample it followed (the journal's
``anchors``; :mod:`sample_order`), so the dataset's order is what it was; then
it marks the journal restored (it is kept). The
marked journal is written whole beside the old one *before* the first sample
goes back, and renamed over it after the last: a full disk fails before
anything is restored, and a restore cut short (killed, the database gone) is
finished by a rerun, which skips the samples already back.
Image files are never touched. Datasets with frames (video) or groups are
refused: their samples are not one document each.
"""

import datetime
import glob
import os
import uuid
from dataclasses import dataclass

from lookalike.core import faults, fo_adapter, paths
from lookalike.core.errors import JournalError, UsageError
from lookalike.curation import sample_order

FORMAT = "lookalike-journal/1"
WHAT = "the deletion journal"  # how a write error names what it was writing


def journal_dir(dataset):
    return os.path.join(paths.default_data_dir(), "journal", fo_adapter.dataset_id(dataset))


def check_flat(dataset):
    """Refuses datasets whose samples are more than one document (video frames, groups)."""
    dataset = fo_adapter.root_dataset(dataset)
    if dataset.media_type in ("video", "group") or dataset.group_field is not None:
        raise UsageError(f"dataset '{dataset.name}' is a {dataset.media_type} dataset: deleting "
                         "and restoring samples is only supported for image datasets")


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _dumps(payload):
    from bson import json_util

    return json_util.dumps(payload, json_options=json_util.CANONICAL_JSON_OPTIONS)


def write(dataset, sample_ids, reason, **info):
    """Saves the documents of ``sample_ids`` (those that exist) to a new journal; returns its path."""
    from bson import ObjectId

    check_flat(dataset)
    root = fo_adapter.root_dataset(dataset)
    oids = [ObjectId(i) for i in sample_ids]
    coll = fo_adapter.sample_collection(root)
    found = {}
    for start in range(0, len(oids), 10_000):
        found.update((d["_id"], d) for d in coll.find({"_id": {"$in": oids[start:start + 10_000]}}))
    # In the dataset's order, each with the sample it follows (undelete puts it back there).
    placed = sample_order.anchors(sample_order.natural_ids(coll), found)
    docs = [found[oid] for oid, _ in placed]
    now = _now()
    folder = paths.make_folder(journal_dir(root), WHAT)
    paths.remove_abandoned_temporaries(folder)
    path = os.path.join(folder, f"{now:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}.json")
    payload = dict(info, format=FORMAT, dataset_id=fo_adapter.dataset_id(root),
                   dataset_name=root.name, reason=reason, created_at=now.isoformat(),
                   restored_at=None, num_samples=len(docs), samples=docs,
                   anchors=[anchor for _, anchor in placed])
    # Fsynced, renamed, the rename fsynced: on disk before the first sample goes.
    paths.write_file(path, _dumps(payload), WHAT)
    return path


def load(path):
    """The journal at ``path`` (documents decoded), or :class:`JournalError` naming the file."""
    from bson import json_util

    try:
        with open(path, encoding="utf-8") as f:
            payload = json_util.loads(f.read(), json_options=json_util.CANONICAL_JSON_OPTIONS)
    except FileNotFoundError:
        raise JournalError(f"{path}: no such journal file") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise JournalError(f"{path}: not a readable journal ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise JournalError(f"{path}: not a lookalike deletion journal")
    return payload


@dataclass
class JournalEntry:
    path: str
    created_at: str
    num_samples: int
    reason: str
    restored_at: str = None

    def label(self):
        """How a person reads it: "2026-12-06 22:50:01 UTC: 177 samples (delete_duplicates)"."""
        try:
            when = datetime.datetime.fromisoformat(self.created_at)
            when = f"{when.astimezone(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        except (TypeError, ValueError):
            when = str(self.created_at)
        return f"{when}: {self.num_samples} samples ({self.reason})"


def list_journals(dataset):
    """The dataset's journals, newest first (unreadable files are skipped)."""
    entries = []
    for path in glob.glob(os.path.join(journal_dir(dataset), "*.json")):
        try:
            meta = load(path)
        except JournalError:
            continue
        entries.append(JournalEntry(path, meta["created_at"], meta["num_samples"],
                                    meta.get("reason", ""), meta.get("restored_at")))
    return sorted(entries, key=lambda e: (e.created_at, e.path), reverse=True)


@dataclass
class RestoreResult:
    path: str
    restored: int  # documents inserted back
    already_there: int  # documents whose sample still existed (a deletion cut short)
    moved: int = 0  # samples behind them taken out and put back, to restore the order


def restore(dataset, path=None, last=False, progress=None):
    """Inserts back the samples of journal ``path`` (or, with ``last``, the newest unrestored one).

    Each goes back to its place in the dataset's order (:mod:`sample_order`).
    """
    from lookalike.core import leases
    from lookalike.curation import published_runs as runs

    check_flat(dataset)
    root = fo_adapter.root_dataset(dataset)
    if (path is None) == (not last):
        raise UsageError("give a journal file or ask for the last one")
    if last:
        pending = [e for e in list_journals(root) if e.restored_at is None]
        if not pending:
            raise JournalError(f"dataset '{root.name}' has no deletion journal left to restore")
        path = pending[0].path
    payload = load(path)
    if payload["dataset_id"] != fo_adapter.dataset_id(root):
        raise JournalError(f"{path}: journal of dataset '{payload.get('dataset_name')}' (id "
                           f"{payload['dataset_id']}), not of '{root.name}'")
    if payload.get("restored_at"):
        raise JournalError(f"{path}: already restored at {payload['restored_at']}")
    docs = payload["samples"]
    _check_fields(root, docs, path)
    with leases.hold(root, runs.lease_name("duplicates"), job="undelete",
                     label=runs.lease_label(root, "duplicates")):
        coll = fo_adapter.sample_collection(root)
        cut_short = sample_order.unfinished(coll)
        if cut_short and os.path.abspath(cut_short) != os.path.abspath(path):
            raise JournalError(f"an undelete of {cut_short} was cut short: run it again first "
                               "(its samples are being put back in their places)")
        sample_order.recover_parked(coll)  # an undelete killed while moving samples
        ids = [d["_id"] for d in docs]
        there = set()
        for start in range(0, len(ids), 10_000):
            there.update(d["_id"] for d in coll.find(
                {"_id": {"$in": ids[start:start + 10_000]}}, {"_id": 1}))
        missing = [d for d in docs if d["_id"] not in there]
        paths.remove_abandoned_temporaries(os.path.dirname(os.path.abspath(path)))
        payload["restored_at"] = _now().isoformat()
        # The journal marked restored is written first (a full disk fails here, with
        # nothing restored) and renamed into place once every sample is back.
        with paths.StagedFile(path, WHAT) as marked:
            with marked.open("w", encoding="utf-8") as f:
                f.write(_dumps(payload))
            moved = 0
            if "anchors" in payload:
                moved = sample_order.put_in_order(
                    coll, list(zip(ids, payload["anchors"])), {d["_id"]: d for d in missing},
                    os.path.abspath(path), progress=progress)
            elif missing:  # a journal from before anchors: the samples go last
                _insert(coll, missing)
            faults.point("undelete.inserted")
            marked.commit()
    root.reload()
    return RestoreResult(path, len(missing), len(there), moved)


def _insert(coll, docs):
    import pymongo.errors

    try:
        coll.insert_many(docs, ordered=False)
    except pymongo.errors.BulkWriteError as e:
        # A sample that came back in between (same id) is already restored.
        others = [w for w in e.details.get("writeErrors", []) if w.get("code") != 11000]
        if others:
            raise


def _check_fields(dataset, docs, path):
    """Refuses documents with fields the dataset no longer declares (they would not load)."""
    schema = dataset.get_field_schema()
    known = {getattr(f, "db_field", None) or name for name, f in schema.items()}
    unknown = sorted({k for d in docs for k in d if not k.startswith("_") and k not in known})
    if unknown:
        raise JournalError(f"{path}: the samples have fields that dataset '{dataset.name}' no "
                           f"longer has ({', '.join(unknown)}): add them back first")
