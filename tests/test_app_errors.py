"""The App's errors for our operators: one-line reasons, over a real App server's HTTP API."""

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import requests

import imagefiles
import lookalike.similarity as ls

PLUGIN = "@lookalike/similarity"


@pytest.fixture
def indexed(dataset_name, tmp_path):
    """Real JPEGs, random embeddings that record no encoder, an index over them."""
    paths = [imagefiles.write_jpeg(str(tmp_path / f"{name}.jpg"), name)
             for name in ("chelsea", "astronaut", "coffee", "camera")]
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.set_values("emb", list(np.random.default_rng(0).normal(size=(len(ds), 8))
                              .astype(np.float32)))
    ls.build_index(ds, "emb", "emb_sim")
    return ds


def _form(url, dataset, operator, params):
    return requests.post(f"{url}/operators/resolve-type", timeout=60, json={
        "operator_uri": f"{PLUGIN}/{operator}", "dataset_name": dataset.name, "view": [],
        "selected": [], "params": params, "target": "inputs"}).json()


def _execute(url, dataset, operator, params):
    return requests.post(f"{url}/operators/execute", timeout=300, json={
        "operator_uri": f"{PLUGIN}/{operator}", "dataset_name": dataset.name, "view": [],
        "selected": [], "params": params}).json()


def test_find_similar_form_says_why_a_query_path_is_unusable(app_server, indexed, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not an image")
    for path, reason in ((missing, "file not found"),
                         (str(not_an_image), "not a recognised image format")):
        form = _form(app_server, indexed, "sort_by_similarity",
                     {"brain_key": "emb_sim", "query_path": path})
        field = form["type"]["properties"]["query_path"]
        assert field["invalid"] is True
        assert field["error_message"] == f"{path}: {reason}"
        # Execution is refused with the form's reason, before our code runs.
        body = _execute(app_server, indexed, "sort_by_similarity",
                        {"brain_key": "emb_sim", "query_path": path})
        assert f"Path: query_path. Reason: {path}: {reason}" in str(body)
    good = indexed.first().filepath
    form = _form(app_server, indexed, "sort_by_similarity",
                 {"brain_key": "emb_sim", "query_path": good})
    assert form["type"]["properties"]["query_path"]["invalid"] is False


def test_an_error_in_execute_reaches_the_app_as_one_line(app_server, indexed):
    # A readable image, but the index records no encoder to embed it with.
    body = _execute(app_server, indexed, "sort_by_similarity",
                    {"brain_key": "emb_sim", "query_path": indexed.first().filepath, "k": 3})
    message = body["error_message"]
    assert "does not record which encoder" in message
    assert "\n" not in message and "Traceback" not in message
    # FiftyOne's traceback beside it ends in the same line, with no chain of causes.
    assert body["error"].rstrip().splitlines()[-1] == f"Exception: {message}"
    assert "During handling" not in body["error"] and "direct cause" not in body["error"]
    # The index form on a field lookalike did not embed: the form ends with its reason and
    # is invalid (the App keeps Execute disabled); a direct call is refused with it.
    body = _execute(app_server, indexed, "build_index",
                    {"embeddings_field": "emb", "brain_key": "not a key"})
    said = " ".join(str(body.get(k) or "") for k in ("error", "error_message", "stack"))
    assert "Validation error" in said and "No lookalike embeddings yet" in said, body
    assert not body.get("result"), body


def test_in_process_execution_shows_the_reason_too(indexed, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(foo.executor.ExecutionError,
                       match=f"Path: query_path. Reason: {missing}: file not found"):
        foo.execute_operator(f"{PLUGIN}/sort_by_similarity", dataset=indexed,
                             params={"brain_key": "emb_sim", "query_path": missing})
