"""Writes that take turns or land whole (issue #26, item 10): the inliers of a verified
sort, the predictions of match_labels, `import` (a new dataset or --append), and what we
keep beside a dataset once it is deleted.

Real processes are killed (-9) at fault points and raced; the leases and the sweep run
against the session's real database and data directory.
"""

import os
import subprocess
import sys
import threading

import fiftyone as fo
import numpy as np
import pytest
from bson import ObjectId
from PIL import Image

import lookalike.curation as lc
import lookalike.similarity as ls
import processes
from cli_runner import run_cli
from lookalike.core import fo_adapter, leases, orphans
from lookalike.core.errors import LeaseHeldError
from lookalike.core.paths import default_data_dir
from lookalike.curation import journal, label_matching
from lookalike.curation import published_runs as runs
from lookalike.images.folder_import import import_images

LABELS = ["a", "a", "a", "b", "b", "b", "c", "c", "c", "a", "b", "c"]


def _photos(demo_records, n):
    return [r["filepath"] for r in demo_records if r["source"] == "photo"][:n]


def _vectors_dataset(name, paths, labels=None, seed=0):
    """Samples of real image files with unit vectors in "emb": one cluster per label."""
    rng = np.random.default_rng(seed)
    labels = labels or [str(i) for i in range(len(paths))]
    centres = {lab: rng.normal(size=8) for lab in sorted(set(labels))}
    vectors = [centres[lab] + 0.05 * rng.normal(size=8) for lab in labels]
    ds = fo.Dataset(name)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.set_values("emb", [np.asarray(v / np.linalg.norm(v), np.float32) for v in vectors])
    ds.persistent = True
    return ds


# -- 1. verified sorting: the inliers field under a lease ---------------------------------
def test_two_verified_sorts_take_turns_writing_the_inliers(dataset_name, demo_records, tmp_path,
                                                           monkeypatch):
    ds = _vectors_dataset(dataset_name, _photos(demo_records, 8))
    ls.build_index(ds, "emb", "sim")
    ds.add_sample_field("similarity_inliers", fo.IntField)
    ds.set_values("similarity_inliers", [-1] * len(ds))  # what the other sort wrote
    marker = tmp_path / "reached"
    monkeypatch.setenv("LOOKALIKE_FAULT", "verified_sort.before_lease:note")
    monkeypatch.setenv("LOOKALIKE_FAULT_FILE", str(marker))
    other = leases.acquire(ds, "field:similarity_inliers", job="another verified sort")
    result = {}

    def second_sort():
        try:
            result["view"] = ls.sort_by_similarity(ds, "sim", query_ids=[ds.first().id], k=5,
                                                   verify=True)
        except BaseException as e:  # reported by the test's thread below
            result["error"] = e

    thread = threading.Thread(target=second_sort)
    thread.start()
    try:
        processes.wait_for(marker.exists, "the second sort to reach the lease", timeout=100)
        # While the other holds the field, the second waits and writes nothing (a window
        # to observe it; without the lease its five writes take milliseconds).
        thread.join(timeout=3)
        assert thread.is_alive(), result
        assert set(ds.values("similarity_inliers")) == {-1}
    finally:
        other.release()
    thread.join(timeout=60)
    assert not thread.is_alive() and "error" not in result, result
    inliers = result["view"].values("similarity_inliers")
    assert len(inliers) == 5 and -1 not in inliers  # then it wrote its own, whole
    assert leases.current(ds, "field:similarity_inliers") is None


# -- 2. match_labels: the predictions field old-complete or new-complete --------------------
def _predictions(name):
    """{sample id: label id of its prediction} in gt_match, read from the database."""
    import fiftyone.core.odm.database as fod

    db = fod.get_db_conn()
    doc = db.datasets.find_one({"name": name})
    return {str(d["_id"]): (str(d["gt_match"]["_id"]) if d.get("gt_match") else None)
            for d in db[doc["sample_collection_name"]].find({}, {"gt_match": 1})}


MATCH = ("import sys, fiftyone as fo, lookalike.curation as lc\n"
         "lc.match_labels(fo.load_dataset(sys.argv[1]), 'sim', 'gt')\n")


@pytest.mark.system
@pytest.mark.parametrize("point, rolled_forward", [("staging", False), ("staged", True),
                                                   ("applied", True)])
def test_match_labels_killed_leaves_the_predictions_whole_and_a_rerun_finishes(
        point, rolled_forward, dataset_name, demo_records, subprocess_env):
    paths = _photos(demo_records, len(LABELS))
    ds = _vectors_dataset(dataset_name, paths, LABELS)
    ids = ds.values("id")
    labelled = set(ids[:9])
    ds.set_values("gt", [fo.Classification(label=lab) if sid in labelled else None
                         for sid, lab in zip(ids, LABELS)])
    ls.build_index(ds, "emb", "sim")
    lc.calibrate_threshold(ds, "sim", label_field="gt", unknown_fraction=0)
    lc.match_labels(ds, "sim", "gt")
    old = _predictions(dataset_name)
    queries = [sid for sid in ids if sid not in labelled]
    assert all(old[sid] for sid in queries)

    env = dict(subprocess_env, LOOKALIKE_FAULT=f"match_labels.gt_match.{point}:kill")
    out = subprocess.run([sys.executable, "-c", MATCH, dataset_name], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr[-3000:]
    now = _predictions(dataset_name)
    changed = [sid for sid in queries if now[sid] != old[sid]]
    assert changed == ([] if point != "applied" else queries)  # whole: none or all

    # Whatever looks next settles it: staged predictions are applied, the others dropped.
    assert label_matching.settle(ds, "gt_match")
    settled = _predictions(dataset_name)
    assert [sid for sid in queries if settled[sid] != old[sid]] == (
        queries if rolled_forward else [])
    assert {s: settled[s] for s in labelled} == {s: old[s] for s in labelled}
    assert runs.record(ds, "match_labels.gt_match")["pending"] is None
    assert fo_adapter.db_collection(runs.STAGE).count_documents({}) == 0

    report = lc.match_labels(ds, "sim", "gt")  # a rerun writes its own, whole
    assert report.num_queries == len(queries)
    rerun = _predictions(dataset_name)
    assert all(rerun[sid] not in (old[sid], settled[sid]) for sid in queries)
    ds.reload()
    assert sorted(ds.exists("gt_match").values("id")) == sorted(queries)


# -- 3. import: one import of a name at a time; --append finished by a rerun ---------------
def _noise_pngs(folder, n, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"img_{seed}_{i:04d}.png")
    return folder


def _namesakes(name):
    return sorted(n for n in fo.list_datasets() if n.startswith(name))


@pytest.mark.system
def test_append_killed_mid_batch_is_finished_by_a_rerun_and_a_second_import_waits_its_turn(
        dataset_name, subprocess_env, tmp_path):
    old = _noise_pngs(tmp_path / "old", 3, seed=1)
    new = _noise_pngs(tmp_path / "new", 150, seed=2)  # two batches of the append
    import_images(str(old), dataset_name)
    marker = tmp_path / "reached"
    proc = processes.paused_at(
        [sys.executable, "-m", "lookalike.cli", "import", "--images", str(new), "--dataset",
         dataset_name, "--append"], subprocess_env, "importer.append_batch", marker)
    try:
        # A second import of the name is refused in one line, naming the one running.
        with pytest.raises(LeaseHeldError, match=f"dataset '{dataset_name}' is being written "
                                                 f"by job import \\(pid {proc.pid}"):
            import_images(str(new), dataset_name, append=True)
        ran = run_cli("import", "--images", str(new), "--dataset", dataset_name, "--append")
        assert ran.returncode == 2 and f"pid {proc.pid}" in ran.stderr
        assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr
        # So is a match that would add files to it (the same lease).
        ds = fo.load_dataset(dataset_name)
        assert leases.current(ds, "match:import")["pid"] == proc.pid
    finally:
        processes.kill(proc)
    ds = fo.load_dataset(dataset_name)
    ds.reload()
    assert len(ds) == 3 + 100  # the first batch landed, whole samples
    assert None not in ds.values("metadata.width")
    report = import_images(str(new), dataset_name, append=True)  # takes over the dead lease
    assert report.imported == 50  # exactly the missing files
    paths = ds.values("filepath")
    assert len(paths) == len(set(paths)) == 153
    assert _namesakes(dataset_name) == [dataset_name]


@pytest.mark.system
def test_two_imports_creating_one_dataset_one_is_refused(dataset_name, subprocess_env, tmp_path):
    folder = _noise_pngs(tmp_path / "photos", 5, seed=3)
    marker = tmp_path / "reached"
    proc = processes.paused_at(
        [sys.executable, "-m", "lookalike.cli", "import", "--images", str(folder), "--dataset",
         dataset_name], subprocess_env, "importer.after_write", marker)
    try:
        with pytest.raises(LeaseHeldError, match=f"pid {proc.pid}"):
            import_images(str(folder), dataset_name)
        with pytest.raises(LeaseHeldError, match=f"pid {proc.pid}"):
            import_images(str(folder), dataset_name, overwrite=True)
        assert not fo.dataset_exists(dataset_name)  # the first has written, not named, it
    finally:
        processes.kill(proc)
    report = import_images(str(folder), dataset_name)
    assert report.imported == 5
    assert _namesakes(dataset_name) == [dataset_name]  # the dead one's temporary is gone
    assert len(fo.load_dataset(dataset_name)) == 5


# -- 4. what we keep beside a dataset goes with it -------------------------------------------
def _left_by(dataset_id):
    """Our documents and data-directory folders keyed by ``dataset_id``."""
    db = fo_adapter.db_collection(orphans.REGISTRY).database
    docs = {name: db[name].count_documents({"_id": {"$regex": f"^{dataset_id}/"}})
            for name in db.list_collection_names() if name.startswith("lookalike_")}
    root = default_data_dir()
    folders = sorted(kind for kind in os.listdir(root)
                     if os.path.isdir(os.path.join(root, kind, dataset_id)))
    return {k: v for k, v in docs.items() if v}, folders


def test_a_deleted_datasets_records_are_swept_and_a_namesake_never_sees_them(
        dataset_name, demo_records):
    paths = _photos(demo_records, 8)
    labels = ["a", "a", "b", "c", "d", "e", "f", "g"]  # the two "a" are duplicates
    ds = _vectors_dataset(dataset_name, paths, labels)
    ls.build_index(ds, "emb", "sim")
    lc.find_duplicates(ds, "sim", threshold=0.05, verify=False)
    ls.sort_by_similarity(ds, "sim", query_ids=[ds.first().id], k=3, verify=True)
    lc.delete_duplicates(ds, dry_run=False)
    old_id = fo_adapter.dataset_id(ds)
    docs, folders = _left_by(old_id)
    assert docs.get(runs.COLLECTION) and folders == ["features", "indexes", "journal"]
    # A folder of a dataset of another database sharing the data directory: never ours.
    foreign = os.path.join(default_data_dir(), "indexes", str(ObjectId()))
    os.makedirs(foreign)
    # A lease a killed job left (expired).
    now = fo_adapter.db_now()
    fo_adapter.db_collection(leases.COLLECTION).insert_one(dict(
        _id=fo_adapter.dataset_key(ds, "field:x"), owner="dead", job="killed", host="elsewhere",
        pid=1, since=now, expires=now, holders=[]))
    assert old_id not in orphans.sweep().datasets  # it still exists: nothing of it goes
    assert _left_by(old_id) == (docs | {leases.COLLECTION: 1}, folders)
    ds.delete()

    again = _vectors_dataset(dataset_name, paths, labels)  # the same name, a new dataset
    assert fo_adapter.dataset_id(again) != old_id
    assert runs.published_info(again, "duplicates") is None
    assert len(lc.duplicates_view(again)) == 0
    assert again.list_brain_runs() == []
    assert journal.list_journals(again) == []
    assert _left_by(old_id) == (docs | {leases.COLLECTION: 1}, folders)  # not yet swept

    # The next records saved (here: the new dataset's duplicates) sweep the old ones.
    ls.build_index(again, "emb", "sim")
    lc.find_duplicates(again, "sim", threshold=0.05, verify=False)
    assert _left_by(old_id) == ({}, [])
    assert os.path.isdir(foreign)
    new_docs, new_folders = _left_by(fo_adapter.dataset_id(again))
    assert new_docs.get(runs.COLLECTION) and new_folders == ["indexes"]
    report = orphans.sweep()
    assert report.datasets == [] and report.summary() == "nothing left by deleted datasets"
