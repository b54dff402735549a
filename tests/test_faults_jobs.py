"""Import and training jobs killed with -9 at their writes, then run again.

Each job runs in a child process that kills itself at a named fault point
(lookalike.core.faults); the test then checks what the store or the database holds
and that a rerun finishes the job.
"""

import json
import os
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest

import imagefiles as files
from lookalike.encoders import autoencoder as ae
from lookalike.encoders import list_encoders, load_encoder, read_manifest
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import input_manifest


def _run(env, args, fault=None):
    env = dict(env)
    if fault:
        env["LOOKALIKE_FAULT"] = fault
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=600)


# -- import ----------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    for name in ("chelsea", "astronaut"):
        files.write_jpeg(str(old / f"{name}.jpg"), name=name)
    for name in ("chelsea", "astronaut", "camera", "coffee", "rocket"):
        files.write_jpeg(str(new / f"{name}.jpg"), name=name)
    return old, new


def _import(env, folder, name, *flags, fault=None):
    return _run(env, ["-m", "lookalike.cli", "import", "--images", str(folder), "--dataset", name,
                      *flags], fault=f"{fault}:kill" if fault else None)


def _names(dataset_name):
    return sorted(n for n in fo.list_datasets() if n.startswith(dataset_name))


def _basenames(paths):
    return sorted(os.path.basename(p) for p in paths)


def test_import_killed_before_taking_the_name_leaves_no_dataset(
        folders, dataset_name, subprocess_env):
    _, new = folders
    out = _import(subprocess_env, new, dataset_name, fault="importer.after_write")
    assert out.returncode == -9, out.stderr[-2000:]
    assert not fo.dataset_exists(dataset_name)  # only the unnamed temporary one
    out = _import(subprocess_env, new, dataset_name)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"imported 5 images into dataset '{dataset_name}'" in out.stdout
    assert _names(dataset_name) == [dataset_name]  # the dead job's temporary one is gone
    ds = fo.load_dataset(dataset_name)
    assert ds.persistent and len(ds) == 5


def _state(dataset_name):
    """{name: (persistent, file names)} of ``dataset_name`` and its temporary or set-aside
    namesakes, read from the database: this process caches dataset objects by name,
    and the child jobs rename them under it."""
    import fiftyone.core.odm.database as fod

    db = fod.get_db_conn()
    state = {}
    for doc in db.datasets.find({"name": {"$regex": f"^{dataset_name}"}}):
        paths = [d["filepath"] for d in db[doc["sample_collection_name"]].find({}, {"filepath": 1})]
        state[doc["name"]] = (doc.get("persistent"), _basenames(paths))
    return state


@pytest.mark.parametrize("point", ["importer.after_write", "importer.old_set_aside",
                                   "importer.renamed"])
def test_overwrite_killed_at_each_step_keeps_one_complete_dataset(
        folders, dataset_name, subprocess_env, point):
    old, new = folders
    old_files, new_files = _basenames(os.listdir(old)), _basenames(os.listdir(new))
    assert _import(subprocess_env, old, dataset_name).returncode == 0
    try:
        out = _import(subprocess_env, new, dataset_name, "--overwrite", fault=point)
        assert out.returncode == -9, out.stderr[-2000:]
        # Whichever dataset holds the name, or was set aside, is complete and persistent.
        complete = {name: files for name, (persistent, files) in _state(dataset_name).items()
                    if persistent}
        if point == "importer.after_write":
            assert complete[dataset_name] == old_files
        elif point == "importer.old_set_aside":  # between the two renames
            assert dataset_name not in complete
            assert old_files in complete.values() and new_files in complete.values()
        else:
            assert complete[dataset_name] == new_files

        # A plain import first puts back whatever a killed one set aside.
        out = _import(subprocess_env, old, dataset_name)
        assert out.returncode == 2 and "already exists" in out.stderr, out.stderr[-2000:]
        assert dataset_name in _state(dataset_name)
        out = _import(subprocess_env, new, dataset_name, "--overwrite")
        assert out.returncode == 0, out.stderr[-2000:]
        assert _state(dataset_name) == {dataset_name: (True, new_files)}
    finally:
        for name in _state(dataset_name):
            if name != dataset_name:  # the fixture deletes that one
                fo.delete_dataset(name)


# -- training --------------------------------------------------------------------
SETTINGS = dict(image_size=32, width=0.25, batch_size=8, epochs=3)
TRAIN = """
import json, sys
from lookalike.encoders import autoencoder as ae
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import input_manifest
images = load_images(json.loads(sys.argv[1]), input_manifest("autoencoder", 32)).images
done = []
ae.train(images, "resumed", store_dir=sys.argv[2], on_epoch=lambda e, n, m: done.append(e),
         **json.loads(sys.argv[3]))
print("EPOCHS", done)
"""


@pytest.fixture(scope="module")
def training_photos(demo_records):
    return [r["filepath"] for r in demo_records if r["source"] == "photo"][:16]


@pytest.fixture(scope="module")
def reference(training_photos, tmp_path_factory):
    """The same training, never interrupted: what a resumed job must end with."""
    images = load_images(training_photos, input_manifest("autoencoder", 32)).images
    path = ae.train(images, "reference", store_dir=str(tmp_path_factory.mktemp("ref")),
                    **SETTINGS)
    return load_encoder(path).embed(images), images


@pytest.mark.parametrize("point, nth, done_before, rerun_epochs", [
    ("train.batch", 3, [1], [2, 3]),  # the first batch of epoch 2 (two batches an epoch)
    ("train.after_checkpoint", 2, [1], [2, 3]),  # epoch 2's arrays saved, its state not yet
    ("train.before_publish", 1, [1, 2, 3], []),  # all trained, staged, not published
])
def test_training_killed_mid_job_resumes_and_publishes_the_same_encoder(
        training_photos, reference, tmp_path, subprocess_env, point, nth, done_before,
        rerun_epochs):
    store = str(tmp_path / "models")
    args = ["-c", TRAIN, json.dumps(training_photos), store, json.dumps(SETTINGS)]
    out = _run(subprocess_env, args, fault=f"{point}:kill:{nth}")
    assert out.returncode == -9, out.stderr[-2000:]
    final = os.path.join(store, "resumed")
    assert not os.path.exists(final)  # nothing half-published under the name
    assert [m["name"] for m in list_encoders(store)] == []
    with open(os.path.join(store, ".resumed.partial", "state.json")) as f:
        assert [h["epoch"] for h in json.load(f)["history"]] == done_before

    out = _run(subprocess_env, args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"EPOCHS {rerun_epochs}" in out.stdout
    manifest = read_manifest(final)  # every file there, checksums verified
    assert [h["epoch"] for h in manifest["history"]] == [1, 2, 3]
    assert sorted(os.listdir(store)) == ["resumed"]  # no partial or staging directory left
    # Weights and optimiser state came back exactly: the same encoder as never killed.
    expected, images = reference
    assert np.abs(load_encoder(final).embed(images) - expected).max() < 1e-4
