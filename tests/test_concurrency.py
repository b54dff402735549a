"""Embedding jobs in real processes: two at once, and killed with -9 at every write.

A field must never hold vectors of two encoders, a field's record must never be
lost to another job's write, and a rerun after a kill finishes the job. Every
stored vector is compared with what each encoder computes for that file, so a
mixed field cannot pass.
"""

import os
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest

import processes

from lookalike.core import leases
from lookalike.embeddings.compute import compute_embeddings, field_record, field_records
from lookalike.encoders import autoencoder as ae
from lookalike.encoders import load_encoder
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import input_manifest

SMALL = dict(image_size=32, width=0.25, batch_size=8, epochs=1)
NUM = 24  # three chunks of 8

# One job, as a caller of the Python API: <dataset> <encoder> <field> <overwrite 0|1>.
EMBED = """
import sys, fiftyone as fo
from lookalike.embeddings.compute import compute_embeddings
ds = fo.load_dataset(sys.argv[1])
r = compute_embeddings(ds, sys.argv[2], sys.argv[3], chunk_size=8, batch_size=8,
                       overwrite=sys.argv[4] == "1")
print("EMBEDDED", r.embedded, r.skipped_existing)
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


@pytest.fixture(scope="module")
def paths(demo_records):
    return [r["filepath"] for r in demo_records if r["source"] == "photo"][:NUM]


@pytest.fixture(scope="module")
def expected(store, paths):
    """{encoder: {filepath: vector}}, computed here, independently of any job."""
    out = {}
    for name in ("tiny", "tiny-other"):
        encoder = load_encoder(os.path.join(store, name))
        emb, ok, failed = encoder.embed_paths(paths, batch_size=8)
        assert not failed
        out[name] = {paths[i]: v for i, v in zip(ok, emb)}
    assert not np.allclose(out["tiny"][paths[0]], out["tiny-other"][paths[0]], atol=1e-3)
    return out


@pytest.fixture
def photos(dataset_name, paths, store, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_MODELS_DIR", store)
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.persistent = True  # child processes load it
    return ds


@pytest.fixture
def env(subprocess_env, store):
    return dict(subprocess_env, LOOKALIKE_MODELS_DIR=store)


def _python(env, *args, fault=None, marker=None):
    env = dict(env)
    if fault:
        env["LOOKALIKE_FAULT"] = fault
    if marker:
        env["LOOKALIKE_FAULT_FILE"] = str(marker)
    return subprocess.Popen([sys.executable, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _cli(env, *args, **kwargs):
    return _python(env, "-m", "lookalike.cli", *args, **kwargs)


def _embed(env, dataset, encoder, field, overwrite=False, **kwargs):
    return _python(env, "-c", EMBED, dataset.name, encoder, field, "1" if overwrite else "0",
                   **kwargs)


def _finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _kill(proc):
    proc.kill()
    proc.communicate()


def _error_lines(stderr):
    # The frameworks print their own start-up warnings on stderr; ours start so.
    return [line for line in stderr.splitlines() if line.startswith("lookalike embed:")]


def _check_one_encoder(dataset, field, encoder, expected, count=None):
    """The field's record names ``encoder`` and every vector is that encoder's."""
    record = field_record(dataset, field)
    assert record is not None and record["encoder"] == encoder
    dataset.reload()
    stored = []  # a job killed right after its record had not yet declared the field
    if field in dataset.get_field_schema():
        stored = [(p, v) for p, v in zip(*dataset.values(["filepath", field])) if v is not None]
    for path, vector in stored:
        assert np.abs(vector - expected[encoder][path]).max() < 1e-4, (
            f"{path} holds a vector that is not {encoder}'s")
    if count is not None:
        assert len(stored) == count
    return len(stored)


def test_a_second_encoder_is_refused_inside_the_write_window_the_same_one_shares_it(
        photos, env, expected, tmp_path):
    marker = tmp_path / "reached"
    first = _cli(env, "embed", "--dataset", photos.name, "--encoder", "tiny", "--field", "emb",
                 fault="embed.after_record:pause", marker=marker)
    try:
        processes.reached(marker, first)  # its record is written, no vector yet
        rc, out, err = _finish(_cli(env, "embed", "--dataset", photos.name,
                                    "--encoder", "tiny-other", "--field", "emb"))
        assert rc == 2, err[-2000:]
        lines = _error_lines(err)
        assert len(lines) == 1 and "Traceback" not in err
        assert f"field 'emb' is being written by job compute_embeddings (pid {first.pid} " in lines[0]
        assert " since " in lines[0]
        # The same encoder resuming the same field shares the lease and finishes it.
        rc, out, err = _finish(_embed(env, photos, "tiny", "emb"))
        assert rc == 0, err[-2000:]
        assert "EMBEDDED 24 0" in out
    finally:
        _kill(first)
    _check_one_encoder(photos, "emb", "tiny", expected, count=NUM)
    # The paused job, killed with -9, left a lease that a rerun takes over.
    rc, out, err = _finish(_cli(env, "embed", "--dataset", photos.name, "--encoder", "tiny",
                                "--field", "emb"))
    assert rc == 0 and "embedded 0 images into 'emb' (24 already done)" in out, err[-2000:]
    assert leases.current(photos, "field:emb") is None
    # With nobody writing, the other encoder is refused by the record.
    rc, out, err = _finish(_cli(env, "embed", "--dataset", photos.name, "--encoder", "tiny-other",
                                "--field", "emb"))
    assert rc == 2 and "Traceback" not in err
    assert len(_error_lines(err)) == 1 and "refusing to mix" in _error_lines(err)[0]
    _check_one_encoder(photos, "emb", "tiny", expected, count=NUM)


def test_two_encoders_started_at_once_never_share_a_field(photos, env, expected):
    jobs = {name: _cli(env, "embed", "--dataset", photos.name, "--encoder", name,
                       "--field", "emb") for name in ("tiny", "tiny-other")}
    results = {name: _finish(proc) for name, proc in jobs.items()}
    winners = [name for name, (rc, _, _) in results.items() if rc == 0]
    assert len(winners) == 1, {n: (rc, err[-500:]) for n, (rc, _, err) in results.items()}
    loser = "tiny-other" if winners == ["tiny"] else "tiny"
    rc, _, err = results[loser]
    assert rc == 2 and "Traceback" not in err and len(_error_lines(err)) == 1
    assert "is being written by job compute_embeddings" in err or "refusing to mix" in err
    _check_one_encoder(photos, "emb", winners[0], expected, count=NUM)


def test_jobs_on_two_fields_keep_both_records_and_both_search(photos, env, expected, tmp_path):
    stale = fo.load_dataset(photos.name)  # loaded before either job writes its record
    jobs = [_cli(env, "embed", "--dataset", photos.name, "--encoder", name, "--field", field)
            for name, field in (("tiny", "emb_a"), ("tiny-other", "emb_b"))]
    for proc in jobs:
        rc, out, err = _finish(proc)
        assert rc == 0, err[-2000:]
    # A third job whose dataset object predates both records.
    compute_embeddings(stale, "tiny", "emb_c")
    assert set(field_records(photos)) == {"emb_a", "emb_b", "emb_c"}
    _check_one_encoder(photos, "emb_a", "tiny", expected, count=NUM)
    _check_one_encoder(photos, "emb_b", "tiny-other", expected, count=NUM)
    _check_one_encoder(photos, "emb_c", "tiny", expected, count=NUM)

    query = str(tmp_path / "query.png")
    with open(photos.first().filepath, "rb") as src, open(query, "wb") as dst:
        dst.write(src.read())
    for field in ("emb_a", "emb_b"):
        rc, out, err = _finish(_cli(env, "index", "--dataset", photos.name, "--field", field))
        assert rc == 0, err[-2000:]
        rc, out, err = _finish(_cli(env, "search", "--dataset", photos.name, "--brain-key",
                                    f"{field}_sim", "--image", query, "-k", "3"))
        assert rc == 0, err[-2000:]
        lines = out.strip().splitlines()
        # The query's own file (or one of its exact copies) comes first.
        assert len(lines) == 3 and lines[0].startswith("0.0000")


@pytest.mark.parametrize("point, nth, kept", [
    ("embed.after_record", 1, 0),
    ("embed.after_chunk", 2, 16),
    ("embed.before_final_write", 1, 16),
])
def test_killed_at_each_write_a_rerun_finishes_with_one_encoder(
        photos, env, expected, tmp_path, point, nth, kept):
    marker = tmp_path / "reached"
    rc, out, err = _finish(_embed(env, photos, "tiny", "emb", fault=f"{point}:kill:{nth}",
                                  marker=marker))
    assert rc == -9 and marker.exists(), err[-2000:]
    assert _check_one_encoder(photos, "emb", "tiny", expected) == kept
    # Its lease is left behind, held by a dead pid: the rerun takes it over.
    rc, out, err = _finish(_embed(env, photos, "tiny", "emb"))
    assert rc == 0, err[-2000:]
    assert f"EMBEDDED {NUM - kept} {kept}" in out
    _check_one_encoder(photos, "emb", "tiny", expected, count=NUM)
    assert leases.current(photos, "field:emb") is None


def test_replacing_another_encoder_killed_midway_leaves_only_the_new_one(
        photos, env, expected, tmp_path):
    compute_embeddings(photos, "tiny", "emb")
    rc, out, err = _finish(_embed(env, photos, "tiny-other", "emb", overwrite=True,
                                  fault="embed.after_chunk:kill:1"))
    assert rc == -9, err[-2000:]
    # The old encoder's vectors were cleared before the new record was written.
    assert _check_one_encoder(photos, "emb", "tiny-other", expected) == 8
    rc, out, err = _finish(_embed(env, photos, "tiny-other", "emb"))
    assert rc == 0 and "EMBEDDED 16 8" in out, err[-2000:]
    _check_one_encoder(photos, "emb", "tiny-other", expected, count=NUM)
