"""Leases: a job's claim, in the database, on what it writes.

Two jobs writing one embeddings field with two encoders, or rebuilding one
index at once, would mix their writes. Before writing, a job takes a lease on
the thing it writes (an embeddings field, a brain key, a dataset's curation
results): one document in the ``lookalike_leases`` collection of FiftyOne's
database, keyed by ``<dataset id>/<what>``, holding the owner, host, pid and
an expiry. Taking it is one atomic insert (or an atomic takeover of an expired
or dead owner's lease), so every worker that shares the database sees the same
claim. While the job runs a thread renews the expiry; a job killed with -9
stops renewing, and its lease is taken over once it expires, or at once when
its pid is gone on this host.

A job that cannot renew (the database went away) must stop writing before
another job could take its lease over. Writers call :func:`check_held`
between writes: it raises :class:`LeaseLostError` once the lease was taken
over, or once the last renewal the database confirmed is older than half the
TTL. A takeover needs the full TTL since that renewal, and a write begun
before the half-TTL deadline ends within the client's server selection
timeout (30 s, half the default TTL), so two jobs never write at once.

    with leases.hold(dataset, "field:emb_ae", job="compute_embeddings", same=encoder.version):
        ...write...

``same``: a second job with the same ``same`` value (the same encoder resuming
the same field) is allowed to share the lease instead of being refused.
"""

import contextlib
import datetime
import os
import re
import socket
import threading
import time
import uuid

from lookalike.core import fo_adapter
from lookalike.core.errors import LeaseHeldError, LeaseLostError

COLLECTION = "lookalike_leases"
TTL_S = float(os.environ.get("LOOKALIKE_LEASE_TTL_S", "60"))
_HOST = socket.gethostname()
_held = {}  # thread id -> the leases that thread holds, checked by check_held()


def _collection():
    return fo_adapter.db_collection(COLLECTION)


def _pid_alive(holder):
    return process_alive(holder.get("host"), holder["pid"])


def process_tag():
    """``<host>-<pid>-`` of this process: begins a part of the names of files only it writes."""
    return f"{_HOST.replace('-', '_')}-{os.getpid()}-"


def abandoned(name):
    """Whether ``name`` holds the :func:`process_tag` of a process of this host that is gone."""
    match = re.search(rf"{re.escape(_HOST.replace('-', '_'))}-(\d+)-", name)
    return bool(match) and not process_alive(_HOST, match.group(1))


def process_alive(host, pid):
    """Whether process ``pid`` of ``host`` may be running (on another host: always True)."""
    if host != _HOST:
        return True  # another machine: only the expiry tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError):
        pass
    return True


def is_alive(doc):
    """Whether a holder may still be writing (not expired, and a holder's pid exists)."""
    if doc["expires"] < fo_adapter.db_now():
        return False
    return any(_pid_alive(h) for h in doc.get("holders") or [doc])


def describe(doc):
    since = doc["since"].replace(tzinfo=datetime.timezone.utc).astimezone()
    return (f"job {doc.get('job') or 'lookalike'} (pid {doc['pid']} on {doc['host']}) since "
            f"{since:%Y-%m-%d %H:%M:%S}")


def current(dataset, what):
    """The live lease on ``what``, or None."""
    doc = last(dataset, what)
    return doc if doc is not None and is_alive(doc) else None


def last(dataset, what):
    """The lease document on ``what``, live or left by a holder that died; None once released."""
    return _collection().find_one({"_id": fo_adapter.dataset_key(dataset, what)})


def acquire(dataset, what, job=None, same=None, wait=0.0, label=None):
    """Takes the lease on ``what`` or raises :class:`LeaseHeldError`; returns a :class:`Lease`.

    ``wait``: seconds to wait for a live holder to finish before refusing.
    ``label``: how the refusal names ``what`` ("field 'emb'"); default ``what``.
    """
    import pymongo.errors

    coll = _collection()
    key = fo_adapter.dataset_key(dataset, what)
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while True:
        now = fo_adapter.db_now()
        me = dict(host=_HOST, pid=os.getpid())
        doc = dict(_id=key, owner=owner, job=job, same=same, since=now,
                   expires=now + datetime.timedelta(seconds=TTL_S), holders=[me], **me)
        try:
            coll.insert_one(doc)
            return Lease(key, owner, label)
        except pymongo.errors.DuplicateKeyError:
            pass
        held = coll.find_one({"_id": key})
        if held is None:
            continue  # released in between: try again
        if not is_alive(held):
            # Take over a dead or expired lease, only if nobody else did first.
            if coll.find_one_and_replace({"_id": key, "owner": held["owner"]}, doc):
                return Lease(key, owner, label)
            continue
        if same is not None and held.get("same") == same:
            if coll.update_one({"_id": key, "owner": held["owner"]},
                               {"$push": {"holders": me}}).modified_count:
                return Lease(key, held["owner"], label)
            continue
        if time.monotonic() >= deadline:
            raise LeaseHeldError(f"{label or what} is being written by {describe(held)}: "
                                 "wait for it to finish, or stop it")
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


class Lease:
    """A held lease; renewed by a background thread until :meth:`release`."""

    def __init__(self, key, owner, label=None):
        self.key, self.owner, self.label = key, owner, label or key.split("/", 1)[-1]
        self._me = dict(host=_HOST, pid=os.getpid())
        # Until when the database holds our claim, by this process's clock (conservative:
        # measured from before the write that set the expiry).
        self._confirmed_until = time.monotonic() + TTL_S
        self.lost = None
        self._stop = threading.Event()
        self._thread_id = threading.get_ident()
        _held.setdefault(self._thread_id, []).append(self)
        self._thread = threading.Thread(target=self._renew, daemon=True)
        self._thread.start()

    def _renew(self):
        # Never raises: a renewal that fails is retried until the claim would have
        # expired; then the lease is lost and check() stops the writer with one line.
        while not self._stop.wait(TTL_S / 4):
            sent = time.monotonic()
            try:
                done = _collection().update_one(
                    {"_id": self.key, "owner": self.owner},
                    {"$set": {"expires": fo_adapter.db_now() + datetime.timedelta(seconds=TTL_S)}})
            except Exception as e:  # the database is unreachable: retry, unless too late
                if time.monotonic() > self._confirmed_until:
                    self.lost = f"the database did not answer ({type(e).__name__})"
                    return
                continue
            if not done.matched_count:
                self.lost = "another job took it over after it expired"
                return
            self._confirmed_until = sent + TTL_S

    def check(self):
        """Raises :class:`LeaseLostError` unless this job may still write under the lease."""
        if self.lost is None and time.monotonic() > self._confirmed_until - TTL_S / 2:
            self.lost = "the database has not confirmed it for half its time to live"
        if self.lost is not None:
            raise LeaseLostError(
                f"stopped writing {self.label}: this job lost its lease ({self.lost}), so "
                "another job may write it now; nothing more was written: run again to finish")

    def release(self):
        self._stop.set()
        mine = _held.get(self._thread_id, [])
        if self in mine:
            mine.remove(self)
        if not mine:
            _held.pop(self._thread_id, None)
        try:
            coll = _collection()
            coll.update_one({"_id": self.key, "owner": self.owner}, {"$pull": {"holders": self._me}})
            coll.delete_one({"_id": self.key, "owner": self.owner, "holders": {"$size": 0}})
        except Exception:
            if self.lost is None:
                raise
            # A lost lease: the release cannot reach the database; the expiry frees it.


def check_held():
    """Raises :class:`LeaseLostError` if a lease the calling thread holds is lost: writers
    call it before each write, so a job that lost its claim never writes again."""
    for lease in list(_held.get(threading.get_ident(), ())):
        lease.check()


@contextlib.contextmanager
def hold(dataset, what, **kwargs):
    lease = acquire(dataset, what, **kwargs)
    try:
        yield lease
    finally:
        lease.release()
