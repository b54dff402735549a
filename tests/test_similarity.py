"""Our brain backend: exact, drift-free, persistent across processes, updatable in place."""

import os
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest

import lookalike.similarity as ls
from lookalike.similarity.engine import ExactEngine, InvalidEmbeddingsError, as_unit_matrix


def _clustered(n, d, centers=20, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.normal(size=(n, d))
    return x.astype(np.float32)


@pytest.fixture
def vector_dataset(dataset_name, demo_records):
    """A dataset of real image files whose 'emb' field holds clustered random vectors."""
    paths = [r["filepath"] for r in demo_records][:300]
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.set_values("emb", list(_clustered(len(ds), 32)))
    ds.persistent = True
    return ds


def test_engine_equals_numpy_brute_force():
    x = _clustered(500, 24)
    q = _clustered(7, 24, seed=1)
    engine = ExactEngine(as_unit_matrix(x))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    ref = 1 - qn @ xn.T
    for reverse in (False, True):
        inds, dists = engine.knn(as_unit_matrix(q), 10, reverse=reverse)
        order = np.argsort(-ref if reverse else ref, axis=1)[:, :10]
        assert np.array_equal(inds, order)
        assert np.allclose(dists, np.take_along_axis(ref, order, axis=1), atol=1e-5)
    keep = np.arange(0, 500, 3)
    inds, dists = engine.knn(as_unit_matrix(q[:1]), 5, keep=keep)  # single query: 1 thread
    assert np.array_equal(keep[inds[0]], np.argsort(ref[0][keep])[:5] * 3)
    ri, rd = engine.radius(as_unit_matrix(q), 0.5)
    for row, idx, d in zip(ref, ri, rd):
        assert set(idx) == set(np.flatnonzero(row <= 0.5)) and np.all(d <= 0.5)


def test_invalid_vectors_are_refused():
    with pytest.raises(InvalidEmbeddingsError, match="mixed shapes"):
        as_unit_matrix([np.ones(4), np.ones(5)])
    with pytest.raises(InvalidEmbeddingsError, match="NaN or inf"):
        as_unit_matrix(np.array([[1, 2.0], [np.nan, 1]]))
    with pytest.raises(InvalidEmbeddingsError, match="all zeros"):
        as_unit_matrix(np.zeros((2, 3)))


def test_self_distance_stays_zero_after_many_queries(vector_dataset):
    index = ls.build_index(vector_dataset, "emb", "emb_sim")
    ids = vector_dataset.values("id")
    vectors = np.stack(vector_dataset.values("emb"))
    for i in range(0, 300, 3):  # many queries, by id and by vector
        view = vector_dataset.sort_by_similarity(ids[i], brain_key="emb_sim", k=3, dist_field="d")
        assert view.first().id == ids[i] and abs(view.first().d) < 1e-6
    found, _, dists = index._kneighbors(vectors[5], k=1, return_dists=True)
    assert found == [ids[5]] and abs(dists[0]) < 1e-6
    # The App's sort gives the same order and distances as numpy.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ref = 1 - unit @ unit[7]
    view = vector_dataset.sort_by_similarity(ids[7], brain_key="emb_sim", k=10, dist_field="d")
    assert view.values("id") == [ids[j] for j in np.argsort(ref)[:10]]
    assert np.allclose(view.values("d"), np.sort(ref)[:10], atol=1e-5)


def test_index_loads_in_a_new_process_from_artefacts_and_detects_staleness(
        vector_dataset, subprocess_env, tmp_path):
    ls.build_index(vector_dataset, "emb", "emb_sim")
    # Writing a distance field (as the App's sort does) must not make the cache stale.
    ids = vector_dataset.values("id")
    vector_dataset.sort_by_similarity(ids[0], brain_key="emb_sim", k=5, dist_field="dist")
    from lookalike.similarity import artefacts

    vectors_file = os.path.join(artefacts.directory(vector_dataset, "emb_sim"), "vectors.npy")
    mtime = os.stat(vectors_file).st_mtime_ns
    code = f"""
import sys, fiftyone as fo
import lookalike.similarity.backend as b
if sys.argv[1] == "fresh":
    def boom(*a, **k):
        raise AssertionError("read every embedding from MongoDB")
    b.read_field = boom
ds = fo.load_dataset({vector_dataset.name!r})
index = ds.load_brain_results("emb_sim")
print("SIZE", index.total_index_size)
"""
    out = subprocess.run([sys.executable, "-c", code, "fresh"], capture_output=True, text=True,
                         env=subprocess_env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SIZE 300" in out.stdout
    assert os.stat(vectors_file).st_mtime_ns == mtime  # loaded, not rewritten
    new = fo.Sample(filepath=vector_dataset.first().filepath, emb=np.ones(32, np.float32))
    vector_dataset.add_sample(new)  # the field changed behind the index's back
    out = subprocess.run([sys.executable, "-c", code, "fresh"], capture_output=True, text=True,
                         env=subprocess_env, timeout=300)
    assert out.returncode != 0 and "read every embedding" in out.stderr  # stale: rebuilt
    out = subprocess.run([sys.executable, "-c", code, "any"], capture_output=True, text=True,
                         env=subprocess_env, timeout=300)
    assert "SIZE 301" in out.stdout


def test_add_and_remove_without_rebuild(vector_dataset):
    index = ls.build_index(vector_dataset, "emb", "emb_sim")
    extra = fo.Sample(filepath=vector_dataset.first().filepath)
    vector_dataset.add_sample(extra)
    v = np.zeros(32, np.float32)
    v[0] = 1
    index.add_to_index(v[np.newaxis], [extra.id])
    assert index.total_index_size == 301
    view = vector_dataset.sort_by_similarity(v, brain_key="emb_sim", k=1, dist_field="d")
    assert view.first().id == extra.id and abs(view.first().d) < 1e-6
    assert np.allclose(vector_dataset[extra.id].emb, v)  # written to the field too
    index.remove_from_index(sample_ids=[extra.id])
    assert index.total_index_size == 300 and extra.id not in set(index.sample_ids)
    assert vector_dataset[extra.id].emb is None
    reloaded = vector_dataset.load_brain_results("emb_sim", cache=False)
    assert reloaded.total_index_size == 300
    with pytest.raises(InvalidEmbeddingsError, match="dimension 8"):
        index.add_to_index(np.ones((1, 8), np.float32), [extra.id])


def test_bad_input(vector_dataset):
    ids = vector_dataset.values("id")
    vector_dataset.set_values("emb", [None] * 10 + list(vector_dataset.values("emb"))[10:])
    index = ls.build_index(vector_dataset, "emb", "emb_sim")
    assert index.total_index_size == 290 and index.num_missing == 10
    with pytest.raises(ValueError, match="no embedding"):
        ls.sort_by_similarity(vector_dataset, "emb_sim", [ids[0]])
    view = ls.sort_by_similarity(vector_dataset, "emb_sim", [ids[20]], k=10_000)
    assert len(view) == 290  # k larger than the index: all of it
    with pytest.raises(ValueError, match="k must be at least 1"):
        ls.sort_by_similarity(vector_dataset, "emb_sim", [ids[20]], k=0)
    with pytest.raises(ls.NotOurIndexError, match="not a lookalike similarity index"):
        ls.sort_by_similarity(vector_dataset, "nope", [ids[20]])
    with pytest.raises(InvalidEmbeddingsError, match="dimension 5"):
        vector_dataset.sort_by_similarity(np.ones(5), brain_key="emb_sim", k=3)

    vector_dataset.set_values("emb2", [np.ones(4)] * 150 + [np.ones(6)] * 150)
    with pytest.raises(InvalidEmbeddingsError, match="mixed shapes"):
        ls.build_index(vector_dataset, "emb2", "emb2_sim")
    vector_dataset.set_values("emb3", [np.array([np.nan, 1.0])] + [np.ones(2)] * 299)
    with pytest.raises(InvalidEmbeddingsError, match="NaN or inf"):
        ls.build_index(vector_dataset, "emb3", "emb3_sim")
    with pytest.raises(ValueError, match="has no field 'nothing'"):
        ls.build_index(vector_dataset, "nothing")


def test_the_apps_own_similarity_search_operator_uses_our_index(vector_dataset):
    import fiftyone.operators as foo

    ls.build_index(vector_dataset, "emb", "emb_sim")
    ids = vector_dataset.values("id")
    info = vector_dataset.get_brain_info("emb_sim")
    assert "Similarity" in info.config.cls  # what the App filters on
    result = foo.execute_operator(
        "@voxel51/panels/similarity_search", dataset=vector_dataset,
        params={"brain_key": "emb_sim", "query_type": "image", "query": [ids[3]], "k": 5,
                "reverse": False})
    expected = vector_dataset.sort_by_similarity(ids[3], brain_key="emb_sim", k=5).values("id")
    assert expected[0] == ids[3]
    # The builtin operator keeps its result in its execution store, read by its panel.
    from bson import ObjectId
    from fiftyone.operators.store import ExecutionStore

    store = ExecutionStore.create("similarity_search_panel", ObjectId(vector_dataset._doc.id))
    run = store.get("run:" + result.result["run_id"])
    assert run["status"] == "completed", run.get("status_details")
    assert run["result_ids"] == expected


def test_approximate_engine_recall_against_exact():
    from lookalike.similarity.engine import IVFEngine

    data = as_unit_matrix(_clustered(20_200, 64, centers=200, seed=3))
    x, q = data[:20_000], data[20_000:]  # held-out queries from the same distribution
    exact = ExactEngine(x)
    approx = IVFEngine(x, recall_target=0.97)
    # about sqrt(N) lists, capped so each list trains on >= 39 points
    assert approx.index.nlist == min(round(np.sqrt(20_000)), 20_000 // 39)
    assert approx.nprobe >= 1
    ei, ed = exact.knn(q, 25)
    ai, ad = approx.knn(q, 25)
    recall = np.mean([len(set(a) & set(e)) / 25 for a, e in zip(ai, ei)])
    assert recall >= 0.95, recall
    assert np.all(np.diff(ad, axis=1) >= -1e-6)  # nearest first
    same = ai == ei
    assert np.allclose(ad[same], ed[same], atol=1e-5)  # same distances where it agrees
    # A restricted view: indices come back as positions within `keep`.
    keep = np.arange(0, 20_000, 2)
    ki, _ = approx.knn(q[:20], 10, keep=keep)
    ek, _ = exact.knn(q[:20], 10, keep=keep)
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ki, ek)]) >= 0.9
    # Range search at a near-duplicate radius: a subset of exact, missing little.
    ri, rd = approx.radius(q[:50], 0.1)
    xi, _ = exact.radius(q[:50], 0.1)
    for a, e, d in zip(ri, xi, rd):
        assert set(a) <= set(e) and np.all(d <= 0.1)
    assert sum(map(len, ri)) >= 0.9 * sum(map(len, xi)) > 0
    # Adding needs no retraining; the new row is found.
    v = np.zeros((1, 64), np.float32)
    v[0, 0] = 1
    approx.add(v)
    inds, dists = approx.knn(v, 1)
    assert inds[0, 0] == 20_000 and dists[0, 0] < 1e-6
    approx.remove([20_000])
    assert approx.size == 20_000 and approx.index.ntotal == 20_000


def test_approximate_index_in_fiftyone_persists_its_faiss_index(
        dataset_name, demo_records, subprocess_env):
    paths = [r["filepath"] for r in demo_records]
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths * 3])  # ~1,150 samples
    ds.set_values("emb", list(_clustered(len(ds), 32, centers=40)))
    index = ls.build_index(ds, "emb", "emb_ivf", engine="approximate")
    assert index.engine.name == "ivf"
    ids = ds.values("id")
    # (No dist_field here: writing it is an edit, after which a new process checks
    # every document instead of the quick state.)
    view = ds.sort_by_similarity(ids[10], brain_key="emb_ivf", k=5)
    assert view.first().id == ids[10] and index.nearest(ids[10], 1)[1][0] < 1e-6
    code = f"""
import fiftyone as fo
import lookalike.similarity.backend as b
import lookalike.similarity.engine as e
def boom(*a, **k):
    raise AssertionError("rebuilt instead of loading the saved index")
b.read_field = boom
e.IVFEngine.tune = boom
import lookalike.similarity.artefacts as a
import numpy as np
state = a.field_state
a.field_state = boom  # nothing changed since the save: the quick state says so
ds = fo.load_dataset({dataset_name!r})
index = ds.load_brain_results("emb_ivf")
print("ENGINE", index.engine.name, index.engine.index.ntotal, index.engine.nprobe)
print("FIRST", ds.sort_by_similarity({ids[10]!r}, brain_key="emb_ivf", k=3).first().id)
# Mapped from the artefacts, not read: the vectors and faiss's lists.
print("MAPPED", a.memory_map_of(index.engine.matrix) is not None, index.engine.index_mapped)
a.field_state = state
# An edit makes the index its own first (faiss would abort the process on the map).
new = fo.Sample(filepath="/new.jpg", emb=np.asarray(index.engine.matrix[10]) * -1)
ds.add_sample(new)
index.add_to_index(np.asarray([new.emb]), [new.id])
print("ADDED", index.engine.index_mapped, index.engine.index.ntotal,
      index.nearest(new.id, 1)[0][0] == new.id)
index.remove_from_index([new.id])
print("REMOVED", index.engine.index.ntotal)
"""
    n = len(ds)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=subprocess_env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"ENGINE ivf {n} {index.engine.nprobe}" in out.stdout
    assert f"FIRST {ids[10]}" in out.stdout
    assert "MAPPED True True" in out.stdout
    assert f"ADDED False {n + 1} True" in out.stdout
    assert f"REMOVED {n}" in out.stdout
