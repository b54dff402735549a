"""Where samples sit in a dataset, and putting restored samples back in their places.

FiftyOne lists a dataset's samples (the App's grid, ``dataset.first()``) in
MongoDB's natural order, the order they were inserted, and an inserted sample
always goes last. So a deletion records, for each sample it deletes, its
*anchor*: the nearest earlier sample that stays. Undelete puts each sample back
after its anchor: from the first place where the dataset differs from that
order, every sample is taken out and inserted again, in order, a chunk at a time.

Taking a sample out means deleting its document before inserting it again. The
order to reach is saved first (``lookalike_order_plan.<sample collection>``, a
chunk of ids per document, removed as each chunk lands), and each chunk is
parked in a collection of its own (``lookalike_parked.<sample collection>``)
before its samples are deleted, so a kill at any point loses nothing: the next
undelete of that journal puts parked samples back and goes on with the plan. The documents are the same (ids,
fields, tags); only their place changes. Cost: one read, delete and insert per
sample behind the first restored one.
"""

from lookalike.core import faults, leases, progress as prog

CHUNK = 1000


def natural_ids(coll):
    """The collection's ids in natural order (as FiftyOne lists them)."""
    return [d["_id"] for d in coll.find({}, {"_id": 1}).hint([("$natural", 1)])]


def anchors(order, deleted):
    """``[(id, anchor)]`` for the ``deleted`` ids in ``order``; anchor None: first in the dataset."""
    deleted, out, last = set(deleted), [], None
    for oid in order:
        if oid in deleted:
            out.append((oid, last))
        else:
            last = oid
    return out


def _parked(coll):
    return coll.database[f"lookalike_parked.{coll.name}"]


def recover_parked(coll):
    """Inserts back the samples a killed move left parked (at the end); returns how many."""
    parked = _parked(coll)
    docs = list(parked.find({}).hint([("$natural", 1)]))
    there = {d["_id"] for d in coll.find({"_id": {"$in": [d["_id"] for d in docs]}},
                                         {"_id": 1})} if docs else set()
    missing = [d for d in docs if d["_id"] not in there]
    if missing:
        coll.insert_many(missing, ordered=True)
    parked.drop()
    return len(missing)


def target_order(current, entries):
    """The order with each ``(id, anchor)`` entry right after its anchor.

    ``current``: the ids now, in natural order (entries among them are moved).
    An entry whose anchor is gone since (deleted too) goes last.
    """
    present = set(current)
    moved = {oid for oid, _ in entries}
    after, orphans = {}, []
    for oid, anchor in entries:
        if anchor is None or (anchor in present and anchor not in moved):
            after.setdefault(anchor, []).append(oid)
        else:
            orphans.append(oid)
    order = list(after.get(None, ()))
    for oid in current:
        if oid not in moved:
            order.append(oid)
            order.extend(after.get(oid, ()))
    return order + orphans


def _plan(coll):
    return coll.database[f"lookalike_order_plan.{coll.name}"]


def unfinished(coll):
    """The journal whose samples were being put back when a kill stopped it, or None."""
    meta = _plan(coll).find_one({"_id": "meta"})
    return meta["journal"] if meta else None


def _write_plan(coll, tail, journal):
    """The order to reach, saved before the first sample moves: a rerun after a kill
    goes on from it (the dataset's order then no longer says what the order was)."""
    plan = _plan(coll)
    plan.drop()
    chunks = [{"_id": k, "ids": tail[first:first + CHUNK]}
              for k, first in enumerate(range(0, len(tail), CHUNK))]
    if chunks:
        plan.insert_many(chunks, ordered=True)
    plan.insert_one({"_id": "meta", "journal": journal})  # last: the plan is whole


def put_in_order(coll, entries, docs_by_id, journal, progress=None):
    """Inserts the missing ``entries`` (documents in ``docs_by_id``) after their anchors.

    ``journal`` names the restore (a plan left by a killed one is finished only by
    the same journal). Returns how many samples already there were moved.
    """
    plan, parked, moved = _plan(coll), _parked(coll), 0
    if unfinished(coll) is None:
        current = natural_ids(coll)
        target = target_order(current, entries)
        start = next((k for k, (a, b) in enumerate(zip(current, target)) if a != b),
                     min(len(current), len(target)))
        _write_plan(coll, target[start:], journal)
    chunks = list(plan.find({"_id": {"$type": "int"}}).sort("_id", 1))
    counter = prog.stage(progress, 0.0, 1.0, "put back in place")
    for done, chunk in enumerate(chunks, 1):
        ids = chunk["ids"]
        leases.check_held()
        there = {d["_id"]: d for d in coll.find({"_id": {"$in": ids}})}
        if there:
            parked.insert_many(list(there.values()), ordered=True)
            coll.delete_many({"_id": {"$in": list(there)}})
            faults.point("undelete.moved_out")
        # An id gone since the plan was made (deleted meanwhile) stays gone.
        docs = [there.get(oid) or docs_by_id.get(oid) for oid in ids]
        coll.insert_many([d for d in docs if d is not None], ordered=True)
        parked.drop()
        plan.delete_one({"_id": chunk["_id"]})
        moved += len(there)
        if counter:
            counter(done, len(chunks))
    plan.drop()
    return moved
