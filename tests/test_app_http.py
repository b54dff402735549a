"""The App's own HTTP API against a real App server on 127.0.0.1 (started and stopped by PID)."""

import fiftyone as fo
import numpy as np
import pytest
import requests

import lookalike.similarity as ls

PLUGIN = "@lookalike/similarity"


@pytest.fixture
def indexed(dataset_name, demo_records):
    paths = [r["filepath"] for r in demo_records if r["source"] == "photo"][:40]
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    rng = np.random.default_rng(0)
    ds.set_values("emb", list(rng.normal(size=(len(ds), 16)).astype(np.float32)))
    ls.build_index(ds, "emb", "emb_sim")
    return ds


def test_operators_are_listed_without_errors(app_server, indexed):
    body = requests.post(f"{app_server}/operators", json={"dataset_name": indexed.name},
                         timeout=60).json()
    ours = {op["uri"] for op in body["operators"] if op["uri"].startswith(PLUGIN)}
    assert {f"{PLUGIN}/{n}" for n in ("import_images", "train_encoder", "load_encoder",
                                      "compute_embeddings", "build_index",
                                      "sort_by_similarity")} <= ours
    assert body["errors"] == []


def test_graphql_lists_our_run_for_sort_by_similarity(app_server, indexed):
    query = ('{ dataset(name: "%s") { brainMethods { key config { cls method embeddingsField '
             'supportsLeastSimilarity } } } }' % indexed.name)
    body = requests.post(f"{app_server}/graphql", json={"query": query}, timeout=60).json()
    runs = {r["key"]: r["config"] for r in body["data"]["dataset"]["brainMethods"]}
    assert runs["emb_sim"]["cls"] == "lookalike.similarity.backend.LookalikeSimilarityConfig"
    assert "similarity" in runs["emb_sim"]["cls"].lower()  # the App's filter
    assert runs["emb_sim"]["method"] == "lookalike"


def test_the_apps_similarity_search_returns_our_order(app_server, indexed):
    ids = indexed.values("id")
    response = requests.post(f"{app_server}/operators/execute", timeout=120, json={
        "operator_uri": "@voxel51/panels/similarity_search",
        "dataset_name": indexed.name, "view": [], "selected": [ids[2]],
        "params": {"brain_key": "emb_sim", "query_type": "image", "query": [ids[2]], "k": 7,
                   "reverse": False},
    }).json()
    assert not response.get("error"), response.get("error_message")
    from bson import ObjectId
    from fiftyone.operators.store import ExecutionStore

    store = ExecutionStore.create("similarity_search_panel", ObjectId(indexed._doc.id))
    run = store.get("run:" + response["result"]["run_id"])
    expected = indexed.sort_by_similarity(ids[2], brain_key="emb_sim", k=7).values("id")
    assert run["result_ids"] == expected and expected[0] == ids[2]


def test_our_find_similar_over_http(app_server, indexed):
    ids = indexed.values("id")
    response = requests.post(f"{app_server}/operators/execute", timeout=120, json={
        "operator_uri": f"{PLUGIN}/sort_by_similarity", "dataset_name": indexed.name,
        "view": [], "selected": [ids[5]],
        "params": {"brain_key": "emb_sim", "k": 4, "dist_field": "similarity_dist"},
    }).json()
    assert not response.get("error"), response.get("error_message")
    dists = [r["distance"] for r in response["result"]["results"]]
    assert len(dists) == 4 and dists[0] < 1e-6 and dists == sorted(dists)
    assert any(r["operator_uri"] == "set_view" for r in response["executor"]["requests"])
