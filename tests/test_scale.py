"""Scale: the field streamed into one matrix, the compressed engine, the list-join pair search.

Speed and memory figures live in ``benchmarks/index.py`` and
``benchmarks/curation.py``; these tests check that the fast paths give the
same answers as the plain ones.
"""

import os
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest

import lookalike.similarity as ls
import processes
from lookalike.core.errors import InvalidEmbeddingsError
from lookalike.similarity import artefacts
from lookalike.similarity.engine import CompressedEngine, ExactEngine, IVFEngine, as_unit_matrix
from lookalike.similarity.field_vectors import read_unit_vectors
from lookalike.similarity.pairs import approximate_pairs, exact_pairs


def _clustered(n, d, centers=30, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    return (c[rng.integers(0, centers, n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture
def image_dataset(dataset_name, demo_records):
    paths = [r["filepath"] for r in demo_records][:240]
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.persistent = True
    return ds


def test_the_field_streams_into_one_matrix_equal_to_values_in_id_order(image_dataset):
    ds = image_dataset
    vectors = _clustered(len(ds), 48)
    ids = ds.values("id")
    # float32 and float64 VectorFields and a plain list field (other tools
    # write lists); some samples without a vector.
    ds.set_values("emb", [v if k % 7 else None for k, v in enumerate(vectors)])
    ds.set_values("emb64", [v.astype(np.float64) for v in vectors])
    ds.add_sample_field("emb_list", fo.ListField, subfield=fo.FloatField)
    ds.set_values("emb_list", [v.tolist() for v in vectors])
    view = ds.sort_by("filepath", reverse=True).skip(3)
    for field in ("emb", "emb64", "emb_list"):
        matrix, got_ids = read_unit_vectors(view, field, batch=17)  # many cursor batches
        want_ids, want = view.values(["id", field])
        # The view's samples in the order of their ids, whatever order the view has.
        keep = sorted((k for k, v in enumerate(want) if v is not None), key=lambda k: want_ids[k])
        assert got_ids.tolist() == [want_ids[k] for k in keep]
        assert matrix.dtype == np.float32 and matrix.flags.c_contiguous
        np.testing.assert_allclose(matrix, as_unit_matrix([want[k] for k in keep]), atol=1e-6)
    assert len(read_unit_vectors(ds, "emb")[1]) == len(ids) - len(range(0, len(ids), 7))


def test_bad_vectors_in_a_streamed_field_name_the_field(image_dataset):
    ds = image_dataset
    vectors = _clustered(len(ds), 16)
    ds.set_values("mixed", [v if k != 5 else v[:8] for k, v in enumerate(vectors)])
    with pytest.raises(InvalidEmbeddingsError, match=r"'mixed' embeddings have mixed shapes"):
        read_unit_vectors(ds, "mixed")
    vectors[9, 3] = np.nan
    vectors[11] = 0
    ds.set_values("bad", list(vectors))
    with pytest.raises(InvalidEmbeddingsError, match=r"1 of 240 'bad' embeddings contain NaN or inf \(rows \[9\]\)"):
        read_unit_vectors(ds, "bad")
    vectors[9, 3] = 1
    ds.set_values("zero", list(vectors))
    with pytest.raises(InvalidEmbeddingsError, match=r"1 of 240 'zero' embeddings are all zeros"):
        read_unit_vectors(ds, "zero")


def test_compressed_engine_answers_with_exact_distances_and_high_recall():
    both = as_unit_matrix(_clustered(20_060, 64, centers=200, spread=0.5))
    x, q = both[:20_000], both[20_000:]  # queries: new vectors of the same collection
    exact = ExactEngine(x)
    engine = CompressedEngine(x, recall_target=0.99)
    truth, truth_d = exact.knn(q, 25)
    found, found_d = engine.knn(q, 25)
    recall = np.mean([len(set(a) & set(b)) / 25 for a, b in zip(found, truth)])
    assert recall >= 0.99, recall
    # Distances are re-ranked from the float vectors: exact, not 8-bit estimates.
    ref = 1 - np.einsum("qd,qkd->qk", q, x[found])
    np.testing.assert_allclose(found_d, np.clip(ref, 0, 2), atol=1e-6)
    # The codes take a quarter of the floats (plus list ids): 8 bits a dimension.
    import faiss

    assert faiss.serialize_index(engine.index).nbytes < 0.45 * x.nbytes
    # Radius search: the same members and distances as exact within the threshold.
    thresh = float(np.quantile(truth_d[:, 5], 0.5))
    got_i, got_d = engine.radius(q[:10], thresh)
    want_i, want_d = exact.radius(q[:10], thresh)
    for gi, gd, wi, wd in zip(got_i, got_d, want_i, want_d):
        assert len(set(gi) & set(wi)) >= 0.98 * len(wi)
        np.testing.assert_allclose(np.sort(gd), np.sort(wd)[:len(gd)], atol=1e-6)
        assert (gd <= thresh).all()


def test_auto_turns_compressed_when_the_floats_do_not_fit_and_a_new_process_maps_them(
        image_dataset, monkeypatch, subprocess_env, tmp_path):
    ds = image_dataset
    ds.set_values("emb", list(_clustered(len(ds), 32)))
    exact = ls.build_index(ds, "emb", "emb_exact", engine="exact")
    # 240 x 32 floats twice over is 61 kB: a budget of 0.01 MB does not hold it.
    monkeypatch.setenv("LOOKALIKE_INDEX_MEMORY_MB", "0.01")
    staged = []
    stage_vectors = artefacts.stage_vectors
    monkeypatch.setattr(artefacts, "stage_vectors",
                        lambda *a: staged.append(stage_vectors(*a)) or staged[-1])
    index = ls.build_index(ds, "emb", "emb_auto", engine="auto")
    assert index.engine.name == "compressed"
    # The field was read straight into a file on disk, which became vectors.npy.
    assert [m.shape for m in staged] == [(len(ds), 32)]
    vectors = os.path.join(artefacts.directory(ds, "emb_auto"), "vectors.npy")
    assert artefacts.is_mapped_from(index.engine.matrix, vectors)
    assert not _staged_files(ds)
    query = ds.first().id
    want = ds.sort_by_similarity(query, brain_key="emb_exact", k=10, dist_field="d").values("d")
    got = ds.sort_by_similarity(query, brain_key="emb_auto", k=10, dist_field="d").values("d")
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Another process, with all the memory it wants, loads the same kind of
    # engine over the same file: the saved index decides, not its own budget.
    code = ("import sys, fiftyone as fo, lookalike.similarity as ls\n"
            "from lookalike.similarity import artefacts\n"
            "ds = fo.load_dataset(sys.argv[1]); i = ls.load_index(ds, 'emb_auto')\n"
            "print(i.engine.name, artefacts.memory_map_of(i.engine.matrix) is not None)\n")
    env = {k: v for k, v in subprocess_env.items() if k != "LOOKALIKE_INDEX_MEMORY_MB"}
    out = subprocess.run([sys.executable, "-c", code, ds.name], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split()[-2:] == ["compressed", "True"], out.stderr[-2000:]
    # Edits keep working (they read the floats into memory) and are saved.
    removed = ds.take(5, seed=1).values("id")
    index.remove_from_index(sample_ids=removed)
    assert index.total_index_size == len(ds) - 5
    assert not set(removed) & set(ds.sort_by_similarity(query, brain_key="emb_auto", k=50)
                                  .values("id"))
    assert exact.total_index_size == len(ds)


def test_list_join_pair_search_finds_every_exact_pair():
    rng = np.random.default_rng(3)
    base = as_unit_matrix(_clustered(6000, 64, centers=80, spread=0.4))
    copies = base[rng.choice(len(base), 300, replace=False)]
    copies = as_unit_matrix(copies + 0.01 * rng.normal(size=copies.shape).astype(np.float32))
    x = np.concatenate([base, copies])
    ei, ej, ed = exact_pairs(x, 0.01)
    for reuse in (None, IVFEngine(x, nlist=60)):
        ai, aj, ad = approximate_pairs(x, 0.01, reuse=reuse)
        assert set(zip(ai.tolist(), aj.tolist())) == set(zip(ei.tolist(), ej.tolist()))
        got = dict(zip(zip(ai.tolist(), aj.tolist()), ad.tolist()))
        for a, b, d in zip(ei.tolist(), ej.tolist(), ed.tolist()):
            assert abs(got[(a, b)] - d) < 1e-6



def _staged_files(ds):
    root = artefacts.dataset_directory(ds)
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files
            if f.startswith(artefacts.STAGE_PREFIX)]


def test_a_compressed_read_killed_or_raced_leaves_whole_artefacts_and_no_file(
        image_dataset, subprocess_env, tmp_path):
    ds = image_dataset
    ds.set_values("emb", list(_clustered(len(ds), 32, seed=3)))
    env = dict(subprocess_env, LOOKALIKE_INDEX_MEMORY_MB="0.01")
    code = ("import sys, fiftyone as fo, lookalike.similarity as ls\n"
            "ds = fo.load_dataset(sys.argv[1])\n"
            "if sys.argv[2] == 'build': ls.build_index(ds, 'emb', 'emb_c', engine='auto')\n"
            "i = ls.load_index(ds, 'emb_c')\n"
            "print(i.engine.name, i.total_index_size)\n")

    def run(what, fault=None):
        extra = dict(LOOKALIKE_FAULT=fault, LOOKALIKE_FAULT_FILE=str(tmp_path / "reached")) \
            if fault else {}
        return subprocess.run([sys.executable, "-c", code, ds.name, what], env=dict(env, **extra),
                              capture_output=True, text=True, timeout=300)

    # A build killed while it reads the field into its staged file: no index,
    # the file left behind; the next build clears it and completes.
    out = run("build", "field.reading:kill")
    assert out.returncode == -9 and (tmp_path / "reached").exists(), out.stderr[-2000:]
    assert len(_staged_files(ds)) == 1
    out = run("build")
    assert out.stdout.split()[-2:] == ["compressed", str(len(ds))], out.stderr[-2000:]
    assert not _staged_files(ds)
    ds.reload()  # the run was made by another process
    vectors = os.path.join(artefacts.directory(ds, "emb_c"), "vectors.npy")
    before = np.load(vectors)

    # One vector cleared: the saved index is stale and a load re-reads the
    # field. A paused halfway through: the old artefacts stay whole.
    ds.select(ds.first().id).set_values("emb", [None])
    command = [sys.executable, "-c", code, ds.name, "load"]
    reader = processes.paused_at(command, env, "field.reading", tmp_path / "reading")
    try:
        [staged_by_reader] = _staged_files(ds)
        np.testing.assert_array_equal(np.load(vectors), before)
        # B loads at the same time: it reads into its own file, saves, and
        # leaves the live reader's file alone.
        out = run("load")
        assert out.stdout.split()[-2:] == ["compressed", str(len(ds) - 1)], out.stderr[-2000:]
        assert _staged_files(ds) == [staged_by_reader]
        assert np.load(vectors).shape == (len(ds) - 1, 32)
    finally:
        processes.kill(reader)  # kill -9 while reading
    # The next load (from the saved artefacts) removes the dead reader's file.
    out = run("load")
    assert out.stdout.split()[-2:] == ["compressed", str(len(ds) - 1)], out.stderr[-2000:]
    assert not _staged_files(ds)


def test_bad_vectors_read_into_a_staged_file_leave_no_file(image_dataset, monkeypatch):
    ds = image_dataset
    vectors = _clustered(len(ds), 16, seed=4)
    vectors[7] = np.nan
    ds.set_values("emb", list(vectors))
    monkeypatch.setenv("LOOKALIKE_INDEX_MEMORY_MB", "0.01")
    with pytest.raises(InvalidEmbeddingsError, match="'emb' embeddings contain NaN"):
        ls.build_index(ds, "emb", "emb_bad", engine="auto")
    assert not _staged_files(ds)
