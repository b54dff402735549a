"""Leases in the real test database, held and lost by real processes."""

import datetime
import os
import subprocess
import sys
import time

import pytest

import processes

HOLD = """
import os, sys, time, fiftyone as fo
from lookalike.core import leases
ds = fo.load_dataset(sys.argv[1])
lease = leases.acquire(ds, "field:emb", job="holder", same=sys.argv[2] or None)
open(sys.argv[3], "w").write("held")
time.sleep(600)
"""


@pytest.fixture
def dataset(dataset_name):
    import fiftyone as fo

    return fo.Dataset(dataset_name)


def _hold_in_child(dataset, env, tmp_path, same=""):
    flag = tmp_path / f"held-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, dataset.name, same, str(flag)], env=env)
    processes.wait_for(flag.exists, "the holder to take the lease", 120, procs=[proc])
    return proc


def test_a_live_holder_refuses_a_second_job_and_a_killed_one_is_taken_over(
        dataset, subprocess_env, tmp_path):
    from lookalike.core import leases
    from lookalike.core.errors import LeaseHeldError

    proc = _hold_in_child(dataset, subprocess_env, tmp_path)
    try:
        with pytest.raises(LeaseHeldError) as e:
            leases.acquire(dataset, "field:emb", label="field 'emb'")
        message = str(e.value)
        assert message.startswith("field 'emb' is being written by job holder")
        assert f"pid {proc.pid}" in message and "\n" not in message
        # Other things stay free.
        leases.acquire(dataset, "field:other").release()
    finally:
        proc.kill()
        proc.wait()
    # Its pid is gone: the lease is taken over at once, without waiting for expiry.
    lease = leases.acquire(dataset, "field:emb")
    assert leases.current(dataset, "field:emb")["pid"] == os.getpid()
    lease.release()
    assert leases.current(dataset, "field:emb") is None


def test_the_same_job_kind_shares_and_the_last_release_frees(dataset, subprocess_env, tmp_path):
    from lookalike.core import leases
    from lookalike.core.errors import LeaseHeldError

    proc = _hold_in_child(dataset, subprocess_env, tmp_path, same="enc-v1")
    try:
        with pytest.raises(LeaseHeldError):
            leases.acquire(dataset, "field:emb", same="enc-v2")
        shared = leases.acquire(dataset, "field:emb", same="enc-v1")
        doc = leases.current(dataset, "field:emb")
        assert sorted(h["pid"] for h in doc["holders"]) == sorted([proc.pid, os.getpid()])
    finally:
        processes.stop(proc)
    # The first holder died; the sharer still holds it, so another encoder is refused.
    with pytest.raises(LeaseHeldError):
        leases.acquire(dataset, "field:emb", same="enc-v2")
    shared.release()
    leases.acquire(dataset, "field:emb", same="enc-v2").release()


def test_an_expired_lease_of_another_machine_is_taken_over(dataset):
    from lookalike.core import fo_adapter, leases

    past = datetime.datetime.utcnow() - datetime.timedelta(minutes=5)
    key = fo_adapter.dataset_key(dataset, "index:k")
    leases._collection().insert_one(dict(
        _id=key, owner="x", job="gone", same=None, since=past, expires=past,
        holders=[dict(host="another-machine", pid=1)], host="another-machine", pid=1))
    with leases.hold(dataset, "index:k", job="mine"):
        assert leases.current(dataset, "index:k")["job"] == "mine"
    assert leases.current(dataset, "index:k") is None


def test_waiting_gets_the_lease_when_the_holder_finishes(dataset):
    import threading

    from lookalike.core import leases

    first = leases.acquire(dataset, "curation:duplicates")
    threading.Timer(0.5, first.release).start()
    start = time.monotonic()
    with leases.hold(dataset, "curation:duplicates", wait=10):
        assert 0.3 < time.monotonic() - start < 10
