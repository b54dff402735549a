"""Jobs shared by many workers: one embedding queued as shards on FiftyOne's delegated queue,
run by two real `fiftyone delegated launch` workers on one database; one worker killed in the
middle of its shard, the shard seen as dead by `lookalike jobs`, queued again and finished."""

import os
import signal
import subprocess
import sys
import time

import fiftyone as fo
import numpy as np
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService

import processes
import pytest
from cli_runner import run_cli
from lookalike.embeddings.compute import compute_embeddings, field_record
from lookalike.encoders import load_encoder
from lookalike.embeddings.shards import list_jobs, shard_views

CHUNK = 20


def _worker(env, log):
    fiftyone_cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    return subprocess.Popen([fiftyone_cli, "delegated", "launch"], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _kill_worker_at(env, tmp_path, fault):
    """Runs worker A until it reaches the fault point ``fault`` in its shard, then kills it (-9)."""
    marker = tmp_path / "reached"
    worker = _worker(dict(env, LOOKALIKE_FAULT=f"{fault}:pause", LOOKALIKE_FAULT_FILE=str(marker)),
                     tmp_path / "a.log")
    try:
        processes.wait_for(marker.exists, f"worker A to reach {fault}", procs=[worker])
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()


def test_shards_cover_the_view_once(dataset_name, demo_records):
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in demo_records[:101]])
    view = ds.skip(3)
    parts = [set(v.values("id")) for v in shard_views(view, 4)]
    assert sorted(len(p) for p in parts) == [24, 24, 25, 25]
    assert set.union(*parts) == set(view.values("id")) and sum(map(len, parts)) == 98
    assert len(shard_views(ds.limit(2), 5)) == 2  # never an empty shard


def test_two_workers_finish_a_sharded_embedding_and_a_dead_workers_shard_is_requeued(
        dataset_name, demo_records, copies_encoder, subprocess_env, tmp_path):
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in demo_records[:240]])
    service = DelegatedOperationService()

    def op(op_id):
        return service.get(ObjectId(op_id))

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "lookalike.cli", *args], capture_output=True,
                             text=True, env=subprocess_env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    # One job per slice, the field's record written once before any is queued.
    from lookalike.embeddings.shards import queue_embeddings

    ops = queue_embeddings(ds, copies_encoder, "emb", shards=4, batch_size=16, chunk_size=CHUNK)
    assert len(ops) == 4 and {op(o).run_state for o in ops} == {"queued"}
    encoder = load_encoder(copies_encoder)
    assert field_record(ds, "emb")["version"] == encoder.version
    assert not ds.exists("emb").count()

    # Worker A stops after its first chunk of vectors, and is killed there (kill -9).
    _kill_worker_at(subprocess_env, tmp_path, "embed.after_chunk")
    killed = [o for o in ops if op(o).run_state == "running"]
    assert len(killed) == 1
    # Worker B takes the other shards; worker C joins it (two workers, one database).
    worker_b = _worker(subprocess_env, tmp_path / "b.log")
    worker_c = _worker(subprocess_env, tmp_path / "c.log")
    try:
        others = [o for o in ops if o not in killed]
        processes.wait_for(lambda: all(op(o).run_state == "completed" for o in others),
              "the other shards", procs=[worker_b, worker_c])
        # The dead worker's shard is visible as such, and only it can be queued again.
        jobs = {j.id: j for j in list_jobs(dataset_name=ds.name)}
        assert jobs[killed[0]].state == "running" and jobs[killed[0]].worker_gone
        assert "gone" in jobs[killed[0]].line() and jobs[killed[0]].shard.endswith("/4")
        listed = subprocess.run([sys.executable, "-m", "lookalike.cli", "jobs", "--dataset",
                                 ds.name], capture_output=True, text=True, env=subprocess_env,
                                timeout=300).stdout
        assert killed[0] in listed and "worker gone" in listed
        refused = subprocess.run([sys.executable, "-m", "lookalike.cli", "jobs", "--requeue",
                                  others[0]], capture_output=True, text=True, env=subprocess_env,
                                 timeout=300)
        assert refused.returncode == 2 and "is completed" in refused.stderr
        [again] = cli("jobs", "--requeue", killed[0])
        processes.wait_for(lambda: op(again).run_state == "completed", "the re-queued shard",
              procs=[worker_b, worker_c])
    finally:
        processes.stop(worker_b)
        processes.stop(worker_c)
    assert op(killed[0]).run_state == "failed"
    # Every vector written once: the completed shards embedded the 240 samples between them,
    # the re-queued one only what its dead worker had not written.
    results = [op(o).result.result for o in others + [again]]
    assert sum(r["embedded"] for r in results) == 240 - CHUNK
    assert op(again).result.result["skipped_existing"] == CHUNK
    ds.reload()
    assert ds.exists("emb").count() == 240
    assert field_record(ds, "emb")["version"] == encoder.version
    # The same vectors as one job in this process.
    ids, got = ds.values(["id", "emb"])
    ref = fo.Dataset()
    ref.add_samples([fo.Sample(filepath=p) for p in ds.values("filepath")])
    compute_embeddings(ref, encoder, "emb")
    assert np.abs(np.stack(got) - np.stack(ref.values("emb"))).max() < 1e-5
    # Both workers took part.
    logs = [(tmp_path / f"{w}.log").read_text() for w in "bc"]
    assert all("Running operation" in log for log in logs), [log[-500:] for log in logs]

    # The same from the command line: the job ids on stdout; --shards alone is refused.
    out = subprocess.run([sys.executable, "-m", "lookalike.cli", "embed", "--dataset", ds.name,
                          "--encoder", copies_encoder, "--field", "emb2", "--shards", "3"],
                         capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert out.returncode == 2 and "add --delegate" in out.stderr
    queued = cli("embed", "--dataset", ds.name, "--encoder", copies_encoder, "--field", "emb2",
                 "--shards", "3", "--delegate")
    assert len(queued) == 3 and {op(o).run_state for o in queued} == {"queued"}
    assert [op(o).label for o in queued] == [f"lookalike embed emb2:{k}/3" for k in (1, 2, 3)]
    for o in queued:  # no worker will run them
        service.delete_operation(ObjectId(o))


def test_a_queue_killed_or_raced_midway_is_finished_and_no_shard_is_queued_twice(
        dataset_name, demo_records, copies_encoder, subprocess_env, tmp_path):
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in demo_records[:30]])
    service = DelegatedOperationService()

    def command(shards):
        return [sys.executable, "-m", "lookalike.cli", "embed", "--dataset", ds.name, "--encoder",
                copies_encoder, "--field", "emb", "--shards", str(shards), "--delegate"]

    def queue(shards):
        return subprocess.run(command(shards), capture_output=True, text=True,
                              env=subprocess_env, timeout=300)

    def shards():
        return sorted(j.shard for j in list_jobs(dataset_name=ds.name))

    try:
        # A stops after queueing 1 of 3 shards; B starts meanwhile and waits for it.
        first = processes.paused_at(command(3), subprocess_env, "jobs.queued",
                                    tmp_path / "queued")
        waiting = tmp_path / "waiting"
        second = subprocess.Popen(command(3), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=dict(subprocess_env, LOOKALIKE_FAULT_FILE=str(
                                      waiting), LOOKALIKE_FAULT="jobs.queue_lease:note"))
        try:
            processes.wait_for(waiting.exists, "B to reach the queue's lease", procs=[second])
            time.sleep(3)
            assert second.poll() is None and shards() == ["shard:emb:1/3"]
        finally:
            processes.kill(first)  # kill -9 in the middle of queueing
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err[-2000:]
        ids = out.split()
        # B took over: it kept A's shard and queued the two others.
        assert len(ids) == 3 and {j.id for j in list_jobs(dataset_name=ds.name)} == set(ids)
        assert shards() == ["shard:emb:1/3", "shard:emb:2/3", "shard:emb:3/3"]
        assert {service.get(ObjectId(o)).run_state for o in ids} == {"queued"}
        # Once more: the same three jobs, nothing queued.
        assert queue(3).stdout.split() == ids and len(shards()) == 3
        # Other slices are other jobs.
        assert not set(queue(2).stdout.split()) & set(ids) and len(shards()) == 5
    finally:
        for job in list_jobs(dataset_name=ds.name):  # no worker will run them
            service.delete_operation(ObjectId(job.id))


def test_the_embed_operator_queues_shards_for_the_workers(dataset_name, demo_records,
                                                        copies_encoder):
    import fiftyone.operators as foo

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in demo_records[:30]])
    out = foo.execute_operator("@lookalike/similarity/compute_embeddings", ctx={"dataset": ds},
                               params={"encoder": copies_encoder, "embeddings_field": "emb",
                                       "shards": 3})
    service = DelegatedOperationService()
    queued = [service.get(ObjectId(o)) for o in out.result["queued"]]
    try:
        assert [q.run_state for q in queued] == ["queued"] * 3
        params = [q.context.request_params["params"] for q in queued]
        assert [p["shard"] for p in params] == [f"shard:emb:{k}/3" for k in (1, 2, 3)]
        assert field_record(ds, "emb")["encoder"] == copies_encoder
        assert out.result["embedded"] == 0 and not ds.exists("emb").count()
    finally:
        for q in queued:
            service.delete_operation(q.id)


def test_jobs_name_their_dataset(dataset_name, demo_records):
    from lookalike.embeddings.shards import queue_features

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in demo_records[:10]])
    ops = queue_features(ds, shards=2)  # queued only: no worker runs them
    service = DelegatedOperationService()
    try:
        jobs = list_jobs(dataset_name=ds.name)
        assert sorted(j.id for j in jobs) == sorted(ops)
        assert [j.dataset for j in jobs] == [ds.name, ds.name]
        assert all(f"  {ds.name}  lookalike features:" in j.line() for j in jobs)
        assert {j.id: j.dataset for j in list_jobs()}[ops[0]] == ds.name
        listed = run_cli("jobs", "--dataset", ds.name)
        assert listed.returncode == 0 and all(
            f"{o}  queued  {ds.name}  lookalike features:" in listed.stdout for o in ops), listed
    finally:
        for o in ops:
            service.delete_operation(ObjectId(o))


def test_a_dead_job_is_queued_again_once(dataset_name, demo_records):
    from lookalike.core import fo_adapter
    from lookalike.core.errors import UsageError
    from lookalike.embeddings.shards import queue_features, requeue

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in demo_records[:10]])
    [op] = queue_features(ds, shards=1)
    service = fo_adapter.delegated_operations()
    # As a worker that raised would leave it: failed, nothing running.
    service.set_failed(ObjectId(op), result=fo_adapter.failed_result("the worker raised"))

    def queued():
        return [j.id for j in list_jobs(dataset_name=ds.name, states=("queued",))]

    try:
        again = requeue(op)
        assert queued() == [again] and again != op
        with pytest.raises(UsageError) as refused:
            requeue(op)
        assert str(refused.value) == (f"job {op} was queued again already, as {again}: "
                                      f"follow that one (`lookalike jobs`)")
        assert queued() == [again]
        ran = run_cli("jobs", "--requeue", op)
        assert ran.returncode == 2 and ran.stderr.splitlines() == [
            f"lookalike jobs: error: {refused.value}"]
        assert queued() == [again]
        # The copy keeps the shard's own label; the old one says where it went.
        labels = {j.id: j.label for j in list_jobs(dataset_name=ds.name)}
        assert labels[again] == "lookalike features:1/1"
        assert labels[op] == f"lookalike features:1/1 (queued again as {again})"
        # Killed between queueing the copy and labelling the old job: the waiting copy
        # (same slice, same settings) is found all the same.
        service.set_label(ObjectId(op), "lookalike features:1/1")
        with pytest.raises(UsageError, match=f"job {op}: its shard shard:features:1/1 is in "
                                             f"the queue already, as {again}: "):
            requeue(op)
        assert queued() == [again]
        # The copy, failed in its turn, can be queued again (once).
        service.set_failed(ObjectId(again), result=fo_adapter.failed_result("raised again"))
        third = requeue(again)
        assert queued() == [third]
    finally:
        for job in list_jobs(dataset_name=ds.name):
            service.delete_operation(ObjectId(job.id))


def test_local_features_are_sharded_over_workers_and_a_dead_workers_shard_is_finished(
        dataset_name, demo_records, subprocess_env, tmp_path):
    """The features of geometric verification, queued like embeddings: one worker killed
    mid-shard, its shard re-queued, every image's features cached once and equal to one run's."""
    from lookalike.images import local_features as verification
    from lookalike.embeddings.shards import queue_features, requeue

    photos = [r["filepath"] for r in demo_records if r["source"] == "photo"][:60]
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in photos])
    service = DelegatedOperationService()
    ops = queue_features(ds, shards=2, chunk_size=8)
    assert [service.get(ObjectId(o)).label for o in ops] == ["lookalike features:1/2",
                                                            "lookalike features:2/2"]
    _kill_worker_at(subprocess_env, tmp_path, "features.after_chunk")  # after 8 images
    [killed] = [o for o in ops if service.get(ObjectId(o)).run_state == "running"]
    [other] = [o for o in ops if o != killed]
    worker_b = _worker(subprocess_env, tmp_path / "b.log")
    try:
        processes.wait_for(lambda: service.get(ObjectId(other)).run_state == "completed", "the other shard",
              procs=[worker_b])
        assert {j.id: j for j in list_jobs(dataset_name=ds.name)}[killed].worker_gone
        again = requeue(killed)
        processes.wait_for(lambda: service.get(ObjectId(again)).run_state == "completed", "the re-queued shard",
              procs=[worker_b])
    finally:
        processes.stop(worker_b)
    done = service.get(ObjectId(again)).result.result
    assert done["images"] == 30 and done["cached_before"] == 8  # the dead worker's chunk kept
    assert service.get(ObjectId(other)).result.result["cached_before"] == 0
    # Every image's entry is in the cache and equals a fresh extraction.
    directory = verification.cache_dir(ds)
    for path in photos[::7]:
        cached, _ = verification._cached(directory, path)
        fresh, _ = verification.extract_file(path)
        assert np.array_equal(cached.descriptors, fresh.descriptors)
    entries = [verification._cache_path(directory, p) for p in photos]
    assert all(os.path.exists(e) for e in entries)
    # The command line queues the same jobs; --shards alone is refused.
    out = subprocess.run([sys.executable, "-m", "lookalike.cli", "features", "--dataset", ds.name,
                          "--shards", "2"], capture_output=True, text=True, env=subprocess_env,
                         timeout=300)
    assert out.returncode == 2 and "add --delegate" in out.stderr
    out = subprocess.run([sys.executable, "-m", "lookalike.cli", "features", "--dataset", ds.name],
                         capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert out.returncode == 0 and "local features of 60 images cached" in out.stdout
