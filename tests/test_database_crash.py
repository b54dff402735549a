"""MongoDB killed with -9 under a running job, then started again (issue #26, case 4).

Each test runs its own ``mongod`` (``processes.Mongod``), so killing it leaves the
session's database alone; the jobs are real ``lookalike`` processes pointed at it.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import processes
from lookalike.core.database import bundled_mongod_path
from lookalike.encoders import autoencoder as ae
from lookalike.encoders import load_encoder
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import input_manifest

pytestmark = pytest.mark.system

SMALL = dict(image_size=32, width=0.25, batch_size=8, epochs=1)
NUM = 24

# What the dataset holds, read in a child process: FiftyOne's len() (MongoDB's estimated
# count), the counted samples, and each file's vector.
READ = """
import json, sys, fiftyone as fo
ds = fo.load_dataset(sys.argv[1])
ids, paths, vecs = ds.values(["id", "filepath", sys.argv[2]]) if ds.has_field(sys.argv[2]) else ([], [], [])
print(json.dumps({"len": len(ds), "counted": ds.count("_id"),
                  "vectors": {p: (v.tolist() if v is not None else None) for p, v in zip(paths, vecs)}}))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_records):
    """Two tiny autoencoders (different seeds): two encoders whose vectors differ."""
    path = str(tmp_path_factory.mktemp("models"))
    photos = [r["filepath"] for r in demo_records if r["source"] == "photo"][:8]
    images = load_images(photos, input_manifest("autoencoder", 32)).images
    ae.train(images, "tiny", store_dir=path, **SMALL)
    ae.train(images, "tiny-other", store_dir=path, seed=7, **SMALL)
    return path


@pytest.fixture
def folder(tmp_path, demo_records):
    out = tmp_path / "photos"
    out.mkdir()
    for r in [r for r in demo_records if r["source"] == "photo"][:NUM]:
        shutil.copy(r["filepath"], out / os.path.basename(r["filepath"]))
    return out


@pytest.fixture
def mongod(tmp_path):
    db = processes.Mongod(tmp_path / "db", bundled_mongod_path()).start()
    yield db
    db.stop()


@pytest.fixture
def env(subprocess_env, store, mongod):
    return dict(subprocess_env, LOOKALIKE_MODELS_DIR=store, FIFTYONE_DATABASE_URI=mongod.uri)


def _cli(env, *args, fault=None, marker=None):
    env = dict(env)
    if fault:
        env.update(LOOKALIKE_FAULT=fault, LOOKALIKE_FAULT_FILE=str(marker))
    return subprocess.Popen([sys.executable, "-m", "lookalike.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _ok(env, *args):
    rc, out, err = _finish(_cli(env, *args))
    assert rc == 0, f"lookalike {' '.join(args)}: {err[-3000:]}"
    return out


def _read(env, name, field):
    out = subprocess.run([sys.executable, "-c", READ, name, field], env=env, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _one_error_line(err, command):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
    assert lines and lines[-1].startswith(f"lookalike {command}: error:"), err[-3000:]
    return lines[-1]


def _expected(store, encoder, folder):
    paths = sorted(str(p) for p in folder.iterdir())
    emb, ok, failed = load_encoder(os.path.join(store, encoder)).embed_paths(paths, batch_size=8)
    assert not failed
    return {paths[i]: v for i, v in zip(ok, emb)}


def test_a_crash_mid_embed_stops_the_job_with_one_line_and_every_command_works_after_it(
        env, mongod, folder, dataset_name, tmp_path):
    _ok(env, "import", "--images", str(folder), "--dataset", dataset_name)
    marker = tmp_path / "reached"
    job = _cli(env, "embed", "--dataset", dataset_name, "--encoder", "tiny", "--field", "emb",
               fault="embed.after_record:hold", marker=marker)
    processes.reached(str(marker), job)
    mongod.crash()  # within a minute of the import: before MongoDB's next checkpoint
    os.remove(marker)  # the job goes on, with no database
    rc, _, err = _finish(job)
    line = _one_error_line(err, "embed")
    assert rc == 2 and "database did not answer" in line, err[-3000:]

    mongod.start()
    state = _read(env, dataset_name, "emb")
    # FiftyOne's len() is MongoDB's estimate, which an unclean shutdown can leave at 0
    # (it did on this machine); whatever it says, the samples are there and are used.
    assert state["counted"] == NUM, state
    _ok(env, "embed", "--dataset", dataset_name, "--encoder", "tiny", "--field", "emb")
    _ok(env, "index", "--dataset", dataset_name, "--field", "emb", "--brain-key", "emb_sim")
    _ok(env, "duplicates", "--dataset", dataset_name, "--brain-key", "emb_sim",
        "--threshold", "0.01", "--verify", "off")
    vectors = _read(env, dataset_name, "emb")["vectors"]
    expected = _expected(env["LOOKALIKE_MODELS_DIR"], "tiny", folder)
    assert sorted(vectors) == sorted(expected)
    for path, vec in vectors.items():
        np.testing.assert_allclose(vec, expected[path], rtol=1e-4, atol=1e-5)


def test_a_job_that_lost_its_lease_while_the_database_was_down_never_writes_again(
        env, mongod, folder, dataset_name, tmp_path):
    """Job A holds the field's lease; MongoDB dies for longer than the lease lives; job B
    (another encoder, --overwrite) takes the expired lease and fills the field; then A
    goes on. A must stop before writing: a single vector of A's would mix two encoders."""
    env = dict(env, LOOKALIKE_LEASE_TTL_S="4")
    _ok(env, "import", "--images", str(folder), "--dataset", dataset_name)
    marker = tmp_path / "reached"
    # --overwrite: A embeds every sample whatever B writes meanwhile.
    first = _cli(env, "embed", "--dataset", dataset_name, "--encoder", "tiny", "--field", "emb",
                 "--overwrite", fault="embed.after_record:hold", marker=marker)
    processes.reached(str(marker), first)
    mongod.crash()
    time.sleep(5)  # the lease's whole time to live (4 s) passes with no database
    mongod.start()
    _ok(env, "embed", "--dataset", dataset_name, "--encoder", "tiny-other", "--field", "emb",
        "--overwrite")
    os.remove(marker)  # A goes on
    rc, _, err = _finish(first)
    line = _one_error_line(err, "embed")
    assert rc == 2 and "lost its lease" in line, err[-3000:]

    vectors = _read(env, dataset_name, "emb")["vectors"]
    expected = _expected(env["LOOKALIKE_MODELS_DIR"], "tiny-other", folder)
    assert sorted(vectors) == sorted(expected)
    for path, vec in vectors.items():
        np.testing.assert_allclose(vec, expected[path], rtol=1e-4, atol=1e-5)
