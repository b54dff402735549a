"""The App's own HTTP API against a real App server on 127.0.0.1 (started and stopped by PID)."""

import os
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest
import requests

import lookalike.similarity as ls
import processes

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


OPERATORS = ("import_images", "train_encoder", "load_encoder", "compute_embeddings",
             "build_index", "sort_by_similarity", "calibrate_threshold", "flag_outliers",
             "find_duplicates", "delete_duplicates", "undelete", "evaluate_retrieval",
             "visualize_embeddings", "match_labels", "match_images", "find_leaks",
             "extract_features", "curate_dataset")


# Immediate only: they answer in moments.
QUICK = ("load_encoder", "sort_by_similarity", "delete_duplicates", "undelete")


def _execute(url, dataset, operator, params, selected=(), **extra):
    body = requests.post(f"{url}/operators/execute", timeout=600, json={
        "operator_uri": f"{PLUGIN}/{operator}", "dataset_name": dataset.name, "view": [],
        "selected": list(selected), "params": params, **extra}).json()
    assert not body.get("error"), f"{operator}: {body.get('error_message')}"
    return body


@pytest.fixture
def photos(dataset_name, demo_records, copies_encoder):
    records = [r for r in demo_records if r["source"] == "photo"][:45]
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=r["filepath"],
                              ground_truth=fo.Classification(label=r["gt_group"]))
                    for r in records])
    return ds


def test_the_panel_and_every_operator_are_listed_with_forms(app_server, photos):
    body = requests.post(f"{app_server}/operators", json={"dataset_name": photos.name},
                         timeout=60).json()
    ours = {op["uri"]: op for op in body["operators"] if op["uri"].startswith(PLUGIN)}
    assert {f"{PLUGIN}/{n}" for n in OPERATORS + ("lookalike_panel",)} == set(ours)
    assert ours[f"{PLUGIN}/lookalike_panel"]["config"]["unlisted"] is True
    assert body["errors"] == []
    for name in OPERATORS:
        config = ours[f"{PLUGIN}/{name}"]["config"]
        assert config["label"].startswith("Lookalike") and config["description"]
        assert config["icon"] == "/assets/icon.svg"
        form = requests.post(f"{app_server}/operators/resolve-type", timeout=60, json={
            "operator_uri": f"{PLUGIN}/{name}", "dataset_name": photos.name, "view": [],
            "selected": [], "params": {}, "target": "inputs"}).json()
        assert form["type"]["name"] == "Object", (name, form)
        # What the App asks before it offers Execute and Schedule.
        options = requests.post(f"{app_server}/operators/resolve-execution-options", timeout=60,
                                json={"operator_uri": f"{PLUGIN}/{name}",
                                      "dataset_name": photos.name, "view": [], "selected": [],
                                      "params": {}}).json()
        assert options["allow_immediate_execution"], name
        assert options["allow_delegated_execution"] == (name not in QUICK), name
        assert options["default_choice_to_delegated"] == (
            name in ("train_encoder", "curate_dataset")), name
        assert config["risk_level"] in ("low", "medium", "high"), name  # each declared


def test_every_curation_operator_runs_over_http_and_the_panel_shows_it(app_server, photos):
    url = app_server
    out = _execute(url, photos, "compute_embeddings", {"encoder": "copies",
                                                       "embeddings_field": "emb"})
    assert out["result"]["embedded"] == 45
    assert _execute(url, photos, "build_index", {"embeddings_field": "emb",
                                                 "brain_key": "emb_sim"})["result"]["size"] == 45
    cal = _execute(url, photos, "calibrate_threshold", {"brain_key": "emb_sim",
                                                        "label_field": "ground_truth",
                                                        "method": "f1"})["result"]
    assert 0 < cal["threshold"] < 2 and cal["note"].startswith("open set")
    dups = _execute(url, photos, "find_duplicates", {"brain_key": "emb_sim"})["result"]
    assert dups["num_groups"] >= 3 and dups["groups"][0]["size"] >= 2
    outliers = _execute(url, photos, "flag_outliers", {"brain_key": "emb_sim"})
    assert any(r["operator_uri"] == "set_view" for r in outliers["executor"]["requests"])
    ev = _execute(url, photos, "evaluate_retrieval", {"brain_key": "emb_sim",
                                                      "label_field": "ground_truth", "k": 5})
    assert 0 < ev["result"]["recall_at_1"] <= 1
    vis = _execute(url, photos, "visualize_embeddings", {"embeddings_field": "emb",
                                                         "method": "pca", "brain_key": "emb_pca"})
    assert vis["result"]["points"] == 45
    # Deleting asks for a confirmation: without it the form is invalid (the App keeps
    # Execute disabled) and says how many would go; nothing is deleted.
    tagged = len(photos.match_tags("duplicate"))
    body = requests.post(f"{url}/operators/execute", timeout=300, json={
        "operator_uri": f"{PLUGIN}/delete_duplicates", "dataset_name": photos.name, "view": [],
        "selected": [], "params": {}}).json()
    said = " ".join(str(body.get(k) or "") for k in ("error", "error_message", "stack"))
    assert f"tick 'Yes, delete {tagged} samples' to delete them" in said, body
    assert not body.get("result"), body
    assert len(photos) == 45

    # The panel's on_load lists the run, its thresholds and figures, the groups and outliers.
    state = _panel(url, photos, "on_load", {})
    assert [r["brain_key"] for r in state["runs"]] == ["emb_sim"]
    assert state["runs"][0]["calibration"] == "fresh"
    assert "match threshold" in state["summary"] and "recall@1" in state["summary"]
    assert set(state["figure_names"]) == {"threshold_curves", "precision_recall",
                                          "distance_histogram", "confusion_matrix"}
    assert len(state["groups"]) == dups["num_groups"]
    assert "copies" in [e["name"] for e in state["encoders"]]
    # A row button: show duplicate group 1 in the grid.
    body = _panel(url, photos, "show_group", state, params={"row": 0}, raw=True)
    assert any(r["operator_uri"] == "set_view" for r in body["executor"]["requests"])
    # One selected sample: its nearest neighbours.
    selected = photos.first().id
    state = _panel(url, photos, "on_change_selected", state, selected=[selected])
    assert len(state["neighbours"]) == 10
    assert all(n["id"] != selected for n in state["neighbours"])
    # Bad input: the form refuses a threshold out of range ...
    body = requests.post(f"{url}/operators/execute", timeout=120, json={
        "operator_uri": f"{PLUGIN}/flag_outliers", "dataset_name": photos.name, "view": [],
        "selected": [], "params": {"brain_key": "emb_sim", "threshold": 3}}).json()
    assert "threshold. Reason: Value must be less than 2.0" in body["stack"]
    # ... and the App shows our one-line reason for what only execution finds out.
    photos.set_values("one_class", [fo.Classification(label="x")] * len(photos))
    body = requests.post(f"{url}/operators/execute", timeout=120, json={
        "operator_uri": f"{PLUGIN}/calibrate_threshold", "dataset_name": photos.name,
        "view": [], "selected": [], "params": {"brain_key": "emb_sim",
                                                "label_field": "one_class", "method": "f1"}})
    body = body.json()
    assert "only one class ('x')" in body["error_message"]
    assert "Traceback" not in body["error_message"]
    # When the embeddings change, the form says the calibration is stale.
    photos.limit(5).set_values("emb", [None] * 5)
    form = requests.post(f"{url}/operators/resolve-type", timeout=60, json={
        "operator_uri": f"{PLUGIN}/flag_outliers", "dataset_name": photos.name, "view": [],
        "selected": [], "params": {"brain_key": "emb_sim"}, "target": "inputs"}).json()
    threshold = form["type"]["properties"]["threshold"]
    assert threshold["required"] and "changed since its calibration" in str(threshold)


def _panel(url, dataset, method, state, params=None, selected=(), raw=False):
    """Calls a panel method the way the App does; returns the panel state it leaves."""
    body = requests.post(f"{url}/operators/execute", timeout=300, json={
        "operator_uri": f"{PLUGIN}/lookalike_panel", "dataset_name": dataset.name, "view": [],
        "selected": list(selected),
        "params": {"__method__": method, "panel_id": "test-panel", "panel_state": state,
                   **(params or {})}}).json()
    assert not body.get("error"), body.get("error_message")
    if raw:
        return body
    state = dict(state)
    for request in body["executor"]["requests"]:
        if request["operator_uri"] == "patch_panel_state":
            state.update(request["params"]["state"])
    return state


def test_a_job_queued_from_the_app_runs_in_a_worker_after_the_app_closes(
        photos, subprocess_env, tmp_path):
    from conftest import start_app_server
    from fiftyone.operators.delegated import DelegatedOperationService

    proc, url = start_app_server(subprocess_env, tmp_path / "app.log")
    try:
        queued = _execute(url, photos, "train_encoder", {
            "kind": "autoencoder", "name": "ae-from-app", "image_size": 32, "width": 0.25,
            "epochs": 2, "batch_size": 8}, request_delegation=True)  # the App's Schedule
    finally:
        processes.stop(proc)  # the App is closed: the job waits in the database
    assert queued["delegated"] is True
    from bson import ObjectId

    op_id = queued["result"]["id"]
    op_id = ObjectId(op_id["$oid"] if isinstance(op_id, dict) else op_id)
    service = DelegatedOperationService()
    assert service.get(op_id).run_state == "queued"
    # The one command the README gives for the worker.
    fiftyone_cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    worker = subprocess.Popen([fiftyone_cli, "delegated", "launch"], env=subprocess_env,
                              stdout=open(tmp_path / "worker.log", "w"),
                              stderr=subprocess.STDOUT)
    try:
        processes.wait_for(
            lambda: service.get(op_id).run_state not in ("queued", "scheduled", "running"),
            "the worker to finish the job", 300, procs=[worker])
    finally:
        processes.stop(worker)
    doc = service.get(op_id)
    assert doc.run_state == "completed", doc.status
    assert "epoch 2/2" in doc.status.label and doc.status.progress == pytest.approx(1.0)
    assert doc.result.result["summary"].startswith("ae-from-app: autoencoder")
    assert "Running operation" in (tmp_path / "worker.log").read_text()
