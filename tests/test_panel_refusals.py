"""No refusal breaks the lookalike panel (issue #27, case 1), in-process.

The App turns a panel event that fails into an "Uncaught Operator Error" that
replaces the panel until the page is reloaded: every panel event says its failure
in one line instead (panel state and a notification), and the panel's buttons open
their operators through ``ctx.prompt``, whose ``on_error`` brings a failed run back
to the panel. The same in a real browser: tests/test_browser_refusals.py.
"""

import fiftyone as fo
import fiftyone.operators as foo
import pytest

PLUGIN = "@lookalike/similarity"
PANEL = f"{PLUGIN}/lookalike_panel"


def _panel(dataset, method, state=None, **params):
    """Runs a panel event as the App does; returns (panel state it leaves, other requests)."""
    result = foo.execute_operator(PANEL, dataset=dataset, params={
        "__method__": method, "panel_id": "test-panel", "panel_state": dict(state or {}),
        **params})
    assert not result.error, result.error_message
    state, requests = dict(state or {}), []
    for request in result.executor.to_json()["requests"]:
        if request["operator_uri"] == "patch_panel_state":
            state.update(request["params"]["state"])
        elif request["operator_uri"] == "set_panel_state":
            state = dict(request["params"]["state"])
        else:
            requests.append(request)
    return state, requests


@pytest.fixture
def ds(dataset_name):
    dataset = fo.Dataset(dataset_name)
    dataset.add_sample(fo.Sample(filepath="/nowhere/a.jpg"))
    return dataset


def test_a_panel_event_that_fails_leaves_the_panel_drawn_with_the_reason(ds):
    # A button left by an older state: no label matching ever ran on this dataset.
    state, requests = _panel(ds, "show_label_no_match", {"label_match": "stale"})
    assert state["failure"] == "Show label no match"
    assert state["failure_reason"] == ("no label matching has run on this dataset yet: "
                                       "run match_labels")
    notes = [r["params"] for r in requests if r["operator_uri"] == "notify"]
    assert notes == [{"message": state["failure_reason"], "variant": "error"}]
    # The panel is drawn, the reason in it.
    shown = [r for r in requests if r["operator_uri"] == "show_panel_output"]
    assert len(shown) == 1
    failure = shown[0]["params"]["output"]["type"]["properties"]["failure"]
    assert failure["view"]["label"] == "Show label no match failed"
    assert failure["view"]["description"] == state["failure_reason"]
    # Refresh forgets it.
    state, _ = _panel(ds, "refresh", state)
    assert state["failure"] is None


def test_the_buttons_open_their_forms_and_a_failed_run_comes_back_to_the_panel(ds):
    state, requests = _panel(ds, "open_operator", {}, operator="find_leaks")
    (prompt,) = [r for r in requests if r["operator_uri"] == "prompt_user_for_operation"]
    assert prompt["params"]["operator_uri"] == f"{PLUGIN}/find_leaks"
    assert prompt["params"]["on_error"] == f"{PANEL}#operator_failed"
    assert prompt["params"]["on_success"] == f"{PANEL}#operator_done"
    assert state["prompted"] == "find_leaks" and state["failure"] is None
    # What the App hands on_error: the run's traceback, our one-line reason last.
    error = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in execute\n"
             "    raise Exception(one_line(e)) from None\n"
             "Exception: brain key 'not a key' is not usable\n")
    state, _ = _panel(ds, "operator_failed", state, error=error)
    assert (state["failure"], state["failure_reason"]) == (
        "Leaks", "brain key 'not a key' is not usable")
    state, _ = _panel(ds, "operator_done", state, result={})
    assert state["failure"] is None
    # Only the panel's own buttons.
    state, _ = _panel(ds, "open_operator", {}, operator="delete_dataset")
    assert state["failure_reason"] == "no such button: 'delete_dataset'"
