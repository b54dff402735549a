"""Deleting duplicates you can trust and undo; curation writes that never mix two runs.

Real database, real image files, real processes killed with SIGKILL at named
fault points (lookalike.core.faults) or raced while one holds the lease.
"""

import os
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest

import processes
from cli_runner import run_cli
from PIL import Image

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.core import fo_adapter
from lookalike.curation import journal, published_runs as runs
from lookalike.curation.deletion import delete_planned, deletion_plan
from lookalike.core.errors import (
    DeletionRefusedError,
    IncompleteCurationError,
    JournalError,
    LeaseHeldError,
    UsageError,
)

GROUPS, SIZE, SINGLES, DIM = 4, 3, 4, 16
N = GROUPS * SIZE + SINGLES

FIND = """
import sys, fiftyone as fo, lookalike.curation as lc
ds = fo.load_dataset(sys.argv[1])
r = lc.find_duplicates(ds, "sim", threshold=float(sys.argv[2]))
print("GROUPS", r.num_groups)
"""

OUTLIERS = """
import sys, fiftyone as fo, lookalike.curation as lc
ds = fo.load_dataset(sys.argv[1])
print("OUTLIERS", lc.flag_outliers(ds, "sim", threshold=float(sys.argv[2])).num_outliers)
"""

DELETE = """
import sys, fiftyone as fo
from lookalike.curation import deletion
deletion.DELETE_BATCH = 2  # several batches, so a kill can fall between two
ds = fo.load_dataset(sys.argv[1])
print("DELETED", deletion.delete_planned(ds).count)
"""


def _vectors():
    """4 groups of 3 near-identical unit vectors and 4 loners.

    Groups 0 and 1 lie about 0.1 apart (cosine distance): threshold 0.01 finds
    4 groups, threshold 0.2 joins those two into one group of 6.
    """
    rng = np.random.default_rng(7)
    basis = np.eye(DIM)
    bases = [basis[0], 0.9 * basis[0] + 0.436 * basis[1], basis[2], basis[3]]
    rows = [b + 0.002 * rng.normal(size=DIM) for b in bases for _ in range(SIZE)]
    rows += [basis[4 + k] for k in range(SINGLES)]
    return [np.asarray(r / np.linalg.norm(r), np.float32) for r in rows]


@pytest.fixture
def ds(dataset_name, tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for n in range(N):  # distinct real image files: no byte-identical pairs
        path = str(tmp_path / f"img{n:02d}.png")
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    dataset = fo.Dataset(dataset_name)
    dataset.add_samples([fo.Sample(filepath=p, position=n) for n, p in enumerate(paths)])
    dataset.set_values("emb", _vectors())
    dataset.persistent = True
    ls.build_index(dataset, "emb", "sim")
    return dataset


def _raw_docs(dataset):
    return sorted(fo_adapter.sample_collection(dataset).find({}), key=lambda d: d["_id"])


def _order(dataset):
    """The ids as FiftyOne lists them (the App's grid order)."""
    return dataset.values("id")


def _cli(env, *args):
    out = subprocess.run([sys.executable, "-m", "lookalike.cli", *args], env=env,
                         capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout.strip().splitlines(), out.stderr.strip().splitlines()


def _cli_here(*args):
    """``_cli`` in this process: for wording and exit codes."""
    out = run_cli(*args)
    return out.returncode, out.stdout.strip().splitlines(), out.stderr.strip().splitlines()


def _child(env, code, *args, fault=None, marker=None, wait=True):
    env = dict(env)
    if fault:
        env["LOOKALIKE_FAULT"] = fault
        env["LOOKALIKE_FAULT_FILE"] = str(marker)
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err
    return proc


def _one_error_line(rc, err, *words):
    assert rc == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    for word in words:
        assert word in err[0], err


def _groups_left(dataset):
    """Published group number -> members that still exist."""
    view = lc.duplicates_view(dataset)
    groups = {}
    for sid, g in zip(*view.values(["id", "dup_group"])):
        groups.setdefault(g, []).append(sid)
    return groups


def test_deleted_kept_samples_never_empty_the_dataset(ds, subprocess_env):
    report = lc.find_duplicates(ds, "sim", threshold=0.01)
    assert report.num_groups == GROUPS and report.num_duplicates == GROUPS * (SIZE - 1)
    # Two kept samples go (in the App, or by a concurrent job), and a stray tag
    # lands on a loner: the tags alone would now delete two whole groups.
    ds.delete_samples([report.groups[0][0], report.groups[1][0]])
    loner = ds.match_tags("duplicate", bool=False).match(
        fo.ViewField("dup_group") == None).first()  # noqa: E711
    loner.tags.append("duplicate")
    loner.save()
    n = len(ds)
    with pytest.raises(DeletionRefusedError, match="2 duplicate groups .* lost their kept"):
        lc.delete_duplicates(ds, dry_run=True)
    with pytest.raises(DeletionRefusedError, match="2 duplicate groups"):
        lc.delete_duplicates(ds, dry_run=False)
    rc, out, err = _cli(subprocess_env, "duplicates", "--dataset", ds.name, "--delete", "--yes")
    _one_error_line(rc, err, "2 duplicate groups", "nothing deleted", "find_duplicates again")
    assert len(ds) == n and journal.list_journals(ds) == []

    # Found again from what exists: the two groups have 2 members each now.
    report = lc.find_duplicates(ds, "sim", threshold=0.01)
    assert sorted(len(g) for g in report.groups) == [2, 2, 3, 3]
    assert "duplicate" not in ds[loner.id].tags  # a run retags its whole view
    loner.tags.append("duplicate")
    loner.save()
    plan = deletion_plan(ds)
    assert plan.unexplained == 1 and loner.id not in plan.delete_ids
    rc, out, err = _cli(subprocess_env, "duplicates", "--dataset", ds.name, "--delete")
    assert rc == 0 and "would delete 6 samples" in out[-1] and "left alone: 1" in out[0], err
    dry = lc.delete_duplicates(ds, dry_run=True)
    real = lc.delete_duplicates(ds, dry_run=False)
    assert dry.count == real.count == 6 == plan.count and len(ds) == n - 6
    assert dry.plan.delete_ids == real.plan.delete_ids and dry.journal is None and real.journal
    assert "would delete 6 samples tagged 'duplicate'" in dry.summary()
    assert "undo with `lookalike undelete --dataset" in real.summary(ds.name)
    # One member of every group is left, the loners too, and every file stays.
    assert sorted(len(m) for m in _groups_left(ds).values()) == [1, 1, 1, 1]
    assert loner.id in ds.values("id") and len(ds.match_tags("duplicate")) == 1
    assert all(os.path.exists(p) for p in report.files.values())
    # Nothing explained is left: a second delete removes nothing at all.
    assert lc.delete_duplicates(ds, dry_run=False).count == 0 and len(ds) == n - 6


def _state_of_samples(dataset):
    docs = fo_adapter.sample_collection(dataset).find({}, {"dup_group": 1, "dup_distance": 1,
                                                           "dup_run": 1, "tags": 1})
    return sorted((str(d["_id"]), d.get("dup_group"), d.get("dup_run"), tuple(d.get("tags", [])))
                  for d in docs)


@pytest.mark.parametrize("point,stands", [
    ("duplicates.after_begin", "old"), ("duplicates.staging", "old"),
    ("duplicates.staged", "new"), ("duplicates.applied", "new")])
def test_a_find_duplicates_killed_while_writing_leaves_the_old_or_the_new_run(
        ds, subprocess_env, tmp_path, point, stands):
    lc.find_duplicates(ds, "sim", threshold=0.01)  # 4 groups of 3: 8 duplicates
    old_run = runs.published_run(ds, "duplicates")
    before = _state_of_samples(ds)
    rc, out, err = _child(subprocess_env, FIND, ds.name, 0.2, fault=f"{point}:kill",
                          marker=tmp_path / "reached")
    assert rc == -9 and (tmp_path / "reached").exists(), err[-3000:]
    state = runs.record(ds, "duplicates")
    assert state["published"]["run"] == old_run and state["pending"] not in (None, old_run)
    if stands == "old":
        # Killed before the run was staged whole: the samples were never touched.
        assert _state_of_samples(ds) == before
    n = len(ds)
    # The next look settles it: the old run stands, or the staged one is finished.
    expected = 8 if stands == "old" else 9
    assert lc.delete_duplicates(ds, dry_run=True).count == expected
    state = runs.record(ds, "duplicates")
    assert state["pending"] is None
    assert (state["published"]["run"] == old_run) == (stands == "old")
    sizes = sorted(len(m) for m in _groups_left(ds).values())
    assert sizes == ([3, 3, 3, 3] if stands == "old" else [3, 3, 6])
    assert len(ds.match_tags("duplicate")) == expected
    assert runs._stage().count_documents({}) == 0  # nothing staged is left behind
    rc, out, err = _cli(subprocess_env, "duplicates", "--dataset", ds.name, "--delete", "--yes")
    assert rc == 0, err
    assert len(ds) == n - expected
    assert all(len(m) == 1 for m in _groups_left(ds).values())
    # And a rerun works as ever: the kept samples of groups 0 and 1 lie 0.1 apart.
    assert lc.find_duplicates(ds, "sim", threshold=0.2).num_groups == (
        1 if stands == "old" else 0)


@pytest.mark.parametrize("point,stands", [("outliers.staging", "old"),
                                          ("outliers.applied", "new")])
def test_a_killed_flag_outliers_leaves_the_old_or_the_new_run(
        ds, subprocess_env, tmp_path, point, stands):
    first = lc.flag_outliers(ds, "sim", threshold=0.5)
    assert first.num_outliers == SINGLES
    rc, out, err = _child(subprocess_env, OUTLIERS, ds.name, 0.0, fault=f"{point}:kill",
                          marker=tmp_path / "reached")
    assert rc == -9, err[-3000:]
    assert runs.record(ds, "outliers")["pending"] is not None
    # The killed run flags every sample: either none of that shows, or all of it.
    shown = lc.outliers_view(ds).values("id")
    if stands == "old":
        assert shown == first.outlier_ids and len(ds.match_tags("no_match")) == SINGLES
    else:
        assert len(shown) == N and len(ds.match_tags("no_match")) == N
    assert runs.record(ds, "outliers")["pending"] is None
    again = lc.flag_outliers(ds, "sim", threshold=0.5)
    assert again.num_outliers == SINGLES and len(lc.outliers_view(ds)) == SINGLES


def test_a_second_find_duplicates_is_refused_while_one_writes(ds, subprocess_env, tmp_path):
    marker = tmp_path / "reached"
    holder = _child(subprocess_env, FIND, ds.name, 0.01, wait=False,
                    fault="duplicates.after_begin:pause", marker=marker)
    try:
        processes.reached(marker, holder)
        rc, out, err = _cli(subprocess_env, "duplicates", "--dataset", ds.name,
                            "--brain-key", "sim", "--threshold", "0.01")
        _one_error_line(rc, err, "duplicates results of dataset", "is being written by job "
                        f"find_duplicates (pid {holder.pid}")
        with pytest.raises(LeaseHeldError, match=f"pid {holder.pid}"):
            lc.find_duplicates(ds, "sim", threshold=0.01)
        # Deleting waits for it too: the dry run says so, the real one is refused.
        with pytest.raises(IncompleteCurationError, match="is writing"):
            lc.delete_duplicates(ds, dry_run=True)
        with pytest.raises(LeaseHeldError):
            lc.delete_duplicates(ds, dry_run=False)
        # Outliers are another lease: they can run meanwhile.
        assert lc.flag_outliers(ds, "sim", threshold=0.5).num_outliers == SINGLES
    finally:
        holder.kill()
        holder.wait()
    # Its pid is gone: the next run takes the lease over at once and publishes.
    assert lc.find_duplicates(ds, "sim", threshold=0.01).num_groups == GROUPS
    assert lc.delete_duplicates(ds, dry_run=True).count == GROUPS * (SIZE - 1)


def test_delete_then_undelete_restores_the_same_documents(ds, tmp_path):
    lc.find_duplicates(ds, "sim", threshold=0.01)
    before, order = _raw_docs(ds), _order(ds)
    files = {p: os.stat(p).st_mtime_ns for p in ds.values("filepath")}
    result = delete_planned(ds)
    assert result.count == 8 and len(ds) == N - 8
    saved = journal.load(result.journal)
    assert saved["num_samples"] == 8 and saved["restored_at"] is None
    assert sorted(d["_id"] for d in saved["samples"]) == sorted(
        d["_id"] for d in before if str(d["_id"]) in result.plan.delete_ids)
    restored = journal.restore(ds, last=True)
    assert (restored.restored, restored.already_there, restored.path) == (8, 0, result.journal)
    assert _raw_docs(ds) == before  # ids, vectors, fields, tags: byte for byte
    # Each back in its place: the grid's order is the order before the delete.
    assert _order(ds) == order and restored.moved == N - 8 - 1
    assert ds.values("position") == list(range(N))
    assert len(ds.match_tags("duplicate")) == 8
    assert {p: os.stat(p).st_mtime_ns for p in files} == files
    # The journal stays, marked restored; it is not restored twice.
    assert journal.load(result.journal)["restored_at"]
    with pytest.raises(JournalError, match="already restored"):
        journal.restore(ds, path=result.journal)
    with pytest.raises(JournalError, match="no deletion journal left"):
        journal.restore(ds, last=True)
    with pytest.raises(JournalError, match="nope.json: no such journal file"):
        journal.restore(ds, path=str(tmp_path / "nope.json"))


def test_the_delete_and_undelete_operators_round_trip(ds):
    import fiftyone.operators as foo

    lc.find_duplicates(ds, "sim", threshold=0.01)
    before = _raw_docs(ds)
    execute = lambda name, **params: foo.execute_operator(  # noqa: E731
        f"@lookalike/similarity/{name}", dataset=ds, params=params)
    run = lambda name, **params: execute(name, **params).result  # noqa: E731
    # Not confirmed: the form is invalid (the App keeps Execute disabled), nothing runs.
    with pytest.raises(foo.executor.ExecutionError, match="tick 'Yes, delete 8 samples'"):
        execute("delete_duplicates")
    assert len(ds) == N
    assert run("delete_duplicates", confirm=True) == {"deleted": 8, "would_delete": 8}
    assert len(ds) == N - 8
    path = journal.list_journals(ds)[0].path
    assert run("undelete", journal=path) == {"restored": 8, "already_there": 0, "journal": path}
    assert _raw_docs(ds) == before


@pytest.mark.parametrize("fault,gone", [("delete.after_journal:kill", 0),
                                        ("delete.after_batch:kill:2", 4)])
def test_a_delete_killed_after_its_journal_is_undone_completely(
        ds, subprocess_env, tmp_path, fault, gone):
    lc.find_duplicates(ds, "sim", threshold=0.01)
    before = _raw_docs(ds)
    rc, out, err = _child(subprocess_env, DELETE, ds.name, fault=fault,
                          marker=tmp_path / "reached")
    assert rc == -9, err[-3000:]
    assert len(ds) == N - gone  # batches of 2: killed after the second
    rc, out, err = _cli(subprocess_env, "undelete", "--dataset", ds.name, "--last")
    assert rc == 0 and len(out) == 1, err
    assert out[0].startswith(f"restored {gone} samples from ") and (
        gone == 0 or f"({8 - gone} were still there)" in out[0])
    assert _raw_docs(ds) == before
    assert ds.values("position") == list(range(N))


UNDELETE = """
import sys, fiftyone as fo
from lookalike.curation import journal, sample_order
sample_order.CHUNK = 3  # several chunks, so a kill can fall inside the move
ds = fo.load_dataset(sys.argv[1])
print("RESTORED", journal.restore(ds, last=True).restored)
"""


@pytest.mark.parametrize("fault", ["undelete.moved_out:kill:2", "undelete.inserted:kill"])
def test_an_undelete_killed_while_putting_samples_back_loses_none_and_a_rerun_ends_it(
        ds, subprocess_env, tmp_path, fault):
    lc.find_duplicates(ds, "sim", threshold=0.01)
    before, order = _raw_docs(ds), _order(ds)
    delete_planned(ds)
    rc, out, err = _child(subprocess_env, UNDELETE, ds.name, fault=fault,
                          marker=tmp_path / "reached")
    assert rc == -9, err[-3000:]
    coll = fo_adapter.sample_collection(ds)
    parked = coll.database[f"lookalike_parked.{coll.name}"]
    # Killed with a chunk taken out: its samples wait in the parked collection, not lost.
    if fault.startswith("undelete.moved_out"):
        waiting = [d["_id"] for d in parked.find({}, {"_id": 1})]
        assert waiting and not coll.count_documents({"_id": {"$in": waiting}})
    assert not journal.list_journals(ds)[0].restored_at
    rc, out, err = _cli(subprocess_env, "undelete", "--dataset", ds.name, "--last")
    assert rc == 0 and len(out) == 1, err
    assert _raw_docs(ds) == before and _order(ds) == order
    assert "lookalike_parked." + coll.name not in coll.database.list_collection_names()


def test_undelete_cli_lists_restores_and_refuses_in_one_line(ds, tmp_path):
    rc, out, err = _cli_here("undelete", "--dataset", ds.name)
    assert rc == 0 and out == [f"dataset '{ds.name}' has no deletion journal"], err
    lc.find_duplicates(ds, "sim", threshold=0.01)
    rc, out, err = _cli_here("duplicates", "--dataset", ds.name, "--delete", "--yes")
    assert rc == 0 and len(out) == 1 and out[0].startswith("deleted 8 samples"), err
    assert "undelete --dataset" in out[0] and len(ds) == N - 8
    rc, out, err = _cli_here("undelete", "--dataset", ds.name)
    assert rc == 0 and len(out) == 1 and "8 samples" in out[0] and "not restored" in out[0]
    path = out[0].split()[0]
    rc, out, err = _cli_here("undelete", "--dataset", ds.name, "--journal", path)
    assert rc == 0 and len(ds) == N and out == [
        f"restored 8 samples from {path}; each back in its place (7 samples behind them "
        "moved)"], err
    assert journal.list_journals(ds)[0].restored_at is not None
    # Errors: one line each, exit code 2 (more refusals are checked in-process above).
    rc, out, err = _cli_here("undelete", "--dataset", ds.name, "--journal", path)
    _one_error_line(rc, err, "already restored")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc, out, err = _cli_here("undelete", "--dataset", ds.name, "--journal", str(bad))
    _one_error_line(rc, err, "bad.json", "not a readable journal")
    other = fo.Dataset()
    try:
        with pytest.raises(JournalError, match="not of"):
            journal.restore(other, path=path)
    finally:
        other.delete()


def test_video_datasets_are_refused(dataset_name):
    video = fo.Dataset(dataset_name)
    video.add_sample(fo.Sample(filepath="/nonexistent/clip.mp4"))
    with pytest.raises(UsageError, match="video dataset"):
        deletion_plan(video)
    with pytest.raises(UsageError, match="video dataset"):
        journal.restore(video, last=True)
