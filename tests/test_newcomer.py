"""What a newcomer meets in the App, through a real App server: results named by the index
that made them, the last-used index offered first, the kept image of a group marked and
first, dataset-wide curation by default, leaks across splits, distances on the tiles."""

import os

import fiftyone as fo
import pytest
import requests
from fiftyone import ViewField as F

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.app import panel_rows as overview
from lookalike.curation.duplicates import KEPT_FIELD, KEPT_TAG
from lookalike.embeddings.compute import compute_embeddings
from test_app_http import PLUGIN, _execute, _panel


@pytest.fixture
def photos(dataset_name, demo_records, copies_encoder):
    """60 demo photos (originals with their edited copies), one field, two indexes over it."""
    records = [r for r in demo_records if r["source"] == "photo"][:60]
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=r["filepath"], gt_group=r["gt_group"],
                              gt_edit=r["gt_edit"]) for r in records])
    compute_embeddings(ds, copies_encoder, "emb")
    ls.build_index(ds, "emb", "a_sim")
    ls.build_index(ds, "emb", "b_sim")
    return ds


def _form(url, dataset, operator, params, selected=()):
    body = requests.post(f"{url}/operators/resolve-type", timeout=120, json={
        "operator_uri": f"{PLUGIN}/{operator}", "dataset_name": dataset.name, "view": [],
        "selected": list(selected), "params": params, "target": "inputs"}).json()
    return body["type"]["properties"]


def _brain_key_choice(url, dataset, operator="flag_outliers"):
    """The index a form offers first, and the label of each choice."""
    prop = _form(url, dataset, operator, {})["brain_key"]
    choices = {c["value"]: c["label"] for c in prop["view"]["choices"]}
    return prop["default"], choices


def test_results_name_their_index_and_the_last_used_index_is_offered_first(app_server, photos):
    url = app_server
    _execute(url, photos, "calibrate_threshold", {"brain_key": "b_sim", "method": "percentile",
                                                  "target": 95.0})
    first, labels = _brain_key_choice(url, photos)
    assert first == "b_sim" and labels["b_sim"] == "b_sim (last used)"
    assert labels["a_sim"] == "a_sim"
    _execute(url, photos, "calibrate_threshold", {"brain_key": "a_sim", "method": "percentile",
                                                  "target": 95.0})
    assert _brain_key_choice(url, photos, "find_duplicates")[0] == "a_sim"

    # Curated with index A, then with B (a wider threshold): both are there, named.
    dups_a = _execute(url, photos, "find_duplicates", {"brain_key": "a_sim", "threshold": 0.005,
                                                       "verify": "off"})
    dups_b = _execute(url, photos, "find_duplicates", {"brain_key": "b_sim", "threshold": 0.3,
                                                       "verify": "off"})
    notes = [r["params"]["message"] for r in dups_b["executor"]["requests"]
             if r["operator_uri"] == "notify"]
    assert "(index 'b_sim', duplicate threshold 0.3000" in notes[0]  # the report's summary
    assert dups_a["result"]["num_duplicates"] < dups_b["result"]["num_duplicates"]
    assert all("/" not in g["kept"] for g in dups_b["result"]["groups"])  # file names only
    state = _panel(url, photos, "on_load", {})
    assert state["run"] == "b_sim"  # the last used
    assert [r["shown"] for r in state["runs"]] == ["", "▶"]  # a_sim, b_sim: the chosen marked
    assert state["groups_origin"].startswith(" (by index 'b_sim', ")
    assert state["groups_origin"].endswith(" UTC)")
    assert len(state["groups"]) == dups_b["result"]["num_groups"]
    assert "these are the tags in the dataset now" in state["summary"]
    # The user picks A in the panel: its own results are listed, said to be replaced.
    state = _panel(url, photos, "choose_run", state, params={"row": 0})
    assert state["run"] == "a_sim"
    assert (f"Duplicates: {dups_a['result']['num_groups']} groups, "
            f"{dups_a['result']['num_duplicates']} tagged") in state["summary"]
    assert "the dataset now shows index 'b_sim'" in state["summary"]
    assert [r["shown"] for r in state["runs"]] == ["▶", ""]
    # Looking at an index in the panel is not using it: the forms still offer the one the
    # last job ran with.
    assert _brain_key_choice(url, photos)[0] == "b_sim"
    # A group shown in the grid says which index found it; numbers come rounded.
    body = _panel(url, photos, "show_group", state, params={"row": 0}, raw=True)
    notes = [r["params"]["message"] for r in body["executor"]["requests"]
             if r["operator_uri"] == "notify"]
    assert notes[0].startswith("Duplicate group 1, the kept image first (by index 'b_sim', ")
    assert round(dups_b["result"]["threshold"], 4) == dups_b["result"]["threshold"]
    # The remembered index lives with the dataset: the API and the CLI offer it too.
    assert overview.preferred_index(photos) == "b_sim"
    # Without one (or one since deleted): the one whose results the dataset shows.
    assert overview.preferred_index(photos, remembered="gone") == "b_sim"


def test_without_results_the_best_calibrated_index_comes_first(photos):
    photos.set_values("label", [fo.Classification(label=g) for g in photos.values("gt_group")])
    assert overview.preferred_index(photos) in ("a_sim", "b_sim")
    lc.calibrate_threshold(photos, "b_sim", method="percentile", target=95.0)
    assert overview.preferred_index(photos) == "b_sim"  # calibrated before none
    lc.calibrate_threshold(photos, "a_sim", label_field="label", method="f1")
    assert overview.preferred_index(photos) == "a_sim"  # from labels before label-free
    lc.calibrate_threshold(photos, "b_sim", label_field="label", method="f1")
    assert overview.preferred_index(photos) == "b_sim"  # the more recent of two alike
    photos.set_values("emb", [None] * 3 + photos.values("emb")[3:])  # stale: both
    ls.build_index(photos, "emb", "b_sim", overwrite=True)  # fresh again, no calibration
    assert overview.preferred_index(photos) == "a_sim"  # stale before none


def test_the_kept_image_of_a_group_is_marked_and_first(photos):
    lc.calibrate_threshold(photos, "a_sim", method="percentile", target=95.0)
    report = lc.find_duplicates(photos, "a_sim", threshold=0.2)
    assert report.num_groups >= 3 and report.brain_key == "a_sim"
    assert "index 'a_sim'" in report.summary()
    tags = dict(zip(*photos.values(["id", "tags"])))
    kept = dict(zip(*photos.values(["id", KEPT_FIELD])))
    for group in report.groups:
        assert KEPT_TAG in tags[group[0]] and "duplicate" not in tags[group[0]]
        assert kept[group[0]] is True
        for member in group[1:]:
            assert "duplicate" in tags[member] and KEPT_TAG not in tags[member]
            assert kept[member] is False
    # Each group of the duplicates view opens on its kept image.
    view = lc.duplicates_view(photos)
    firsts = {}
    for g, sid in zip(*view.values(["dup_group", "id"])):
        firsts.setdefault(g, sid)
    assert sorted(firsts.values()) == sorted(g[0] for g in report.groups)
    rows = overview.group_member_rows(photos, report.groups[0][-1])
    assert rows[0]["kept"] and rows[0]["id"] == report.groups[0][0]
    # A narrower rerun: the mark follows the new groups, no stale 'kept' is left.
    again = lc.find_duplicates(photos, "a_sim", threshold=0.001, verify=False)
    assert again.num_duplicates < report.num_duplicates
    assert sorted(photos.match_tags(KEPT_TAG).values("id")) == sorted(g[0] for g in again.groups)
    assert len(photos.match(F(KEPT_FIELD) == True)) == again.num_groups  # noqa: E712
    # A user's own tags are left alone.
    assert lc.duplicates_view(photos).first().tags.count(KEPT_TAG) == 1


def test_dataset_jobs_default_to_the_whole_dataset_and_warn_on_a_few_samples(app_server,
                                                                             photos):
    ids = photos.values("id")[:3]
    for operator in ("calibrate_threshold", "flag_outliers", "find_duplicates", "find_leaks"):
        form = _form(app_server, photos, operator, {"brain_key": "a_sim"}, selected=ids)
        assert form["view_target"]["default"] == "DATASET", operator
        assert "few_samples" not in form
        form = _form(app_server, photos, operator,
                     {"brain_key": "a_sim", "view_target": "SELECTED_SAMPLES"}, selected=ids)
        warning = form["few_samples"]["view"]["label"]
        assert warning.startswith("Only 3 samples of the selection: pick 'Dataset'"), operator


def test_find_leaks_from_the_app_with_the_calibrated_threshold(app_server, photos):
    lc.calibrate_threshold(photos, "a_sim", method="percentile", target=95.0)
    originals = photos.match(F("gt_edit") == "original")
    originals.tag_samples("train")
    photos.match(F("gt_edit") != "original").tag_samples("test")
    out = _execute(app_server, photos, "find_leaks", {"brain_key": "a_sim", "split_by": "tags",
                                                      "split_tags": "train, val, test"})
    result = out["result"]
    assert result["num_leaks"] > 0 and result["splits"] == ["test", "train"]
    assert result["num_pairs"] == len(result["pairs"]) and "test / train" in result["summary"]
    assert all("/" not in r["file"] + r["other"] for r in result["pairs"])
    # Which file is in which split, in the table and on the tiles (the tags, the reason).
    assert all({r["split"], r["other_split"]} == {"train", "test"} for r in result["pairs"])
    assert len(photos.match_tags("leak")) == result["num_leaks"]
    assert any(r["operator_uri"] == "set_view" for r in out["executor"]["requests"])
    active = [r["params"]["fields"] for r in out["executor"]["requests"]
              if r["operator_uri"] == "set_active_fields"]
    assert active and active[0][:2] == ["tags", "leak_reason"]
    assert "similarity_dist" not in active[0]
    photos.reload()
    assert overview.result_origin(photos, "leaks")["brain_key"] == "a_sim"
    # Splits from a field, picked in the form among the string fields.
    photos.set_values("fold", ["a" if e == "original" else "b" for e in photos.values("gt_edit")])
    form = _form(app_server, photos, "find_leaks", {"brain_key": "a_sim", "split_by": "field"})
    assert "fold" in [c["value"] for c in form["split_field"]["view"]["choices"]]
    out = _execute(app_server, photos, "find_leaks", {"brain_key": "a_sim", "split_by": "field",
                                                      "split_field": "fold"})
    assert out["result"]["splits"] == ["a", "b"]
    # A field with one split: one line, no traceback.
    photos.set_values("fold", ["a"] * len(photos))
    body = requests.post(f"{app_server}/operators/execute", timeout=300, json={
        "operator_uri": f"{PLUGIN}/find_leaks", "dataset_name": photos.name, "view": [],
        "selected": [], "params": {"brain_key": "a_sim", "split_by": "field",
                                   "split_field": "fold"}}).json()
    # The form says it before Execute, and Execute is refused as the form is invalid.
    said = " ".join(str(body.get(k) or "") for k in ("error", "error_message", "stack"))
    assert "Validation error" in said and "only the split 'a'" in said, body
    assert not body.get("result"), body


def test_find_similar_shows_its_distances_on_the_tiles(app_server, photos):
    out = _execute(app_server, photos, "sort_by_similarity", {"brain_key": "a_sim", "k": 5},
                   selected=[photos.first().id])
    active = [r["params"]["fields"] for r in out["executor"]["requests"]
              if r["operator_uri"] == "set_active_fields"]
    assert active and "similarity_dist" in active[0] and "tags" in active[0]
    dists = [r["distance"] for r in out["result"]["results"]]
    assert len(dists) == 5 and dists == sorted(dists)
    assert os.path.basename(out["result"]["results"][0]["path"])
