"""train_encoder and load_encoder as the App runs them: immediately and delegated to a worker."""

import os
import subprocess
import sys
import time

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService


PLUGIN = "@lookalike/similarity"
SMALL = {"kind": "autoencoder", "image_size": 32, "width": 0.25, "epochs": 2, "batch_size": 8}


@pytest.fixture
def photo_dataset(tmp_path, dataset_name, monkeypatch, demo_records):
    monkeypatch.setenv("LOOKALIKE_MODELS_DIR", str(tmp_path / "models"))
    records = [r for r in demo_records if r["source"] == "photo"]
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in records[:12]])
    ds.persistent = True  # the worker process must see it
    return ds


def test_train_encoder_immediately(photo_dataset):
    # The App's Execute: no delegation requested.
    result = foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                                  params=dict(SMALL, name="ae-op"), request_delegation=False)
    assert not result.delegated
    assert result.result["epochs"] == 2 and result.result["final_loss"] > 0
    assert os.path.isfile(os.path.join(result.result["path"], "manifest.json"))
    notes = [r for r in result.to_json()["executor"]["requests"] if r["operator_uri"] == "notify"]
    assert "ae-op: autoencoder, 32 px, 64-d, 2 epochs" in notes[0]["params"]["message"]


def _execution_options(operator, dataset, params=None):
    """What the App asks before it offers Execute / Schedule (resolve-execution-options)."""
    import asyncio

    from fiftyone.operators.executor import resolve_execution_options
    from fiftyone.operators.registry import OperatorRegistry

    uri = f"{PLUGIN}/{operator}"
    request = {"operator_uri": uri, "dataset_name": dataset.name, "params": params or {}}
    return asyncio.run(resolve_execution_options(OperatorRegistry(), uri, request)).to_dict()


def test_train_encoder_offers_schedule_first_and_a_worker_runs_it(photo_dataset, subprocess_env):
    options = _execution_options("train_encoder", photo_dataset, SMALL)
    assert options["allow_immediate_execution"] and options["allow_delegated_execution"]
    assert options["default_choice_to_delegated"]  # the App preselects Schedule
    assert not options["orchestrator_registration_enabled"]  # Schedule queues for a worker
    # The App's Schedule: delegation requested.
    queued = foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                                  params=dict(SMALL, name="ae-delegated"), request_delegation=True)
    assert queued.delegated
    op_id = queued.result["id"]
    # A second process, as `fiftyone delegated launch` would be.
    env = dict(subprocess_env, LOOKALIKE_MODELS_DIR=os.environ["LOOKALIKE_MODELS_DIR"])
    code = (
        "from fiftyone.operators.delegated import DelegatedOperationService\n"
        f"DelegatedOperationService().execute_queued_operations(dataset_name={photo_dataset.name!r})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = DelegatedOperationService().get(op_id)
    assert doc.run_state == "completed", doc.status
    assert doc.status.progress == pytest.approx(1.0)
    assert "epoch 2/2" in doc.status.label
    assert doc.result.result["summary"].startswith("ae-delegated: autoencoder")


def test_without_a_worker_set_up_training_runs_in_the_app(photo_dataset, monkeypatch):
    # Without FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS the App cannot queue a job (its Schedule
    # reads "not available"): the form says how to enable it; Execute runs it here.
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", False)
    assert _execution_options("train_encoder", photo_dataset, SMALL)[
        "orchestrator_registration_enabled"]
    notice = _form("train_encoder", photo_dataset, SMALL)["type"]["properties"]["no_worker"]
    assert "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true" in notice["view"]["label"]
    result = foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                                  params=dict(SMALL, name="ae-here", epochs=1))
    assert not result.delegated and result.result["epochs"] == 1


# 12 photos x 2,000 epochs at 128 px through the tf-keras twin: over 10 minutes on 16 cores.
LONG = dict(SMALL, image_size=128, width=1.0, epochs=2000)


def test_a_training_estimated_past_600_s_is_refused_immediately_and_scheduled(photo_dataset):
    from lookalike.encoders import estimate_seconds

    seconds = estimate_seconds("autoencoder", "train", len(photo_dataset), 128, epochs=2000)
    if seconds is None or seconds <= fo.config.operator_timeout:
        pytest.skip("this machine trains it within the App's limit (a GPU, or many cores)")
    form = _form("train_encoder", photo_dataset, LONG)["type"]["properties"]
    assert "schedule it (delegated)" in form["too_long"]["view"]["label"]
    started = time.monotonic()
    with pytest.raises(foo.executor.ExecutionError,
                       match=r"Train an encoder: this run would take about \d+ min, more than the "
                       r"App's 600 s for immediate runs: schedule it \(delegated\)"):
        foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                             params=dict(LONG, name="ae-long"))
    assert time.monotonic() - started < 30  # refused up front, not timed out
    store = os.environ["LOOKALIKE_MODELS_DIR"]
    assert not os.path.exists(store) or not any("ae-long" in n for n in os.listdir(store))
    queued = foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                                  params=dict(LONG, name="ae-long"), request_delegation=True)
    assert queued.delegated
    DelegatedOperationService().delete_operation(queued.result["id"])  # no worker runs it here


def test_training_estimates_err_short_and_scale_with_the_work():
    from lookalike.encoders import CPU_RATES, RATES_CORES, estimate_seconds

    est = estimate_seconds("autoencoder", "train", 1000, 64, epochs=10)
    if est is None:
        pytest.skip("a CUDA device is visible: the CPU figures do not apply")
    cores = max(1.0, len(os.sched_getaffinity(0)) / RATES_CORES)
    # The measured figure at a measured size: 1000 x 10 images at 15.7 img/s on 2 cores.
    assert est == pytest.approx(10_000 / CPU_RATES[("autoencoder", "train", "tensorflow")][64]
                                / cores)
    assert estimate_seconds("autoencoder", "train", 2000, 64, epochs=10) == pytest.approx(2 * est)
    assert estimate_seconds("autoencoder", "train", 1000, 64, epochs=20) == pytest.approx(2 * est)
    # Between measured sizes: from the smaller one by pixels, faster than the larger's figure.
    at_96 = estimate_seconds("autoencoder", "train", 1000, 96, epochs=10)
    assert est < at_96 < estimate_seconds("autoencoder", "train", 1000, 128, epochs=10)
    assert estimate_seconds("autoencoder", "train", 1000, 64, epochs=10, width=0.5) == \
        pytest.approx(est / 4)
    assert estimate_seconds("autoencoder", "train", 1000, 64, epochs=10, trainer="paddle") > est
    assert estimate_seconds("contrastive", "train", 1000, 32) == pytest.approx(
        2 * estimate_seconds("metric", "train", 1000, 32), rel=1e-3)
    assert estimate_seconds("metric", "train", 0, 32) == 0


def test_load_encoder_by_name_and_by_path(photo_dataset, tmp_path):
    trained = foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                                   params=dict(SMALL, name="ae-src", epochs=1))
    by_name = foo.execute_operator(f"{PLUGIN}/load_encoder", dataset=photo_dataset,
                                   params={"name": "ae-src"})
    assert by_name.result["embedding_size"] == 64 and by_name.result["version"].startswith("ae-src@")

    import shutil

    shared = str(tmp_path / "from-a-colleague")
    shutil.copytree(trained.result["path"], shared)
    imported = foo.execute_operator(f"{PLUGIN}/load_encoder", dataset=photo_dataset,
                                    params={"path": shared, "name": "ae-imported"})
    assert imported.result["name"] == "ae-imported"
    assert imported.result["path"] == os.path.join(os.environ["LOOKALIKE_MODELS_DIR"], "ae-imported")

    os.makedirs(tmp_path / "junk")
    with pytest.raises(foo.executor.ExecutionError, match="not a lookalike encoder"):
        foo.execute_operator(f"{PLUGIN}/load_encoder", dataset=photo_dataset,
                             params={"path": str(tmp_path / "junk"), "name": "junk"})
    assert not os.path.exists(os.path.join(os.environ["LOOKALIKE_MODELS_DIR"], "junk"))


def test_train_encoder_reports_bad_input(photo_dataset):
    with pytest.raises(foo.executor.ExecutionError, match="invalid encoder name"):
        foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                             params=dict(SMALL, name="../x"))
    with pytest.raises(foo.executor.ExecutionError, match="view is empty"):
        foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                             view=photo_dataset.limit(0),
                             params=dict(SMALL, name="ae-empty",
                                         view_target="CURRENT_VIEW"))


def _form(operator, dataset, params):
    """The input form as the App asks for it (POST /operators/resolve-type)."""
    import asyncio

    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    uri = f"{PLUGIN}/{operator}"
    request = {"operator_uri": uri, "target": "inputs", "dataset_name": dataset.name,
               "params": params}
    return asyncio.run(resolve_type(OperatorRegistry(), uri, request)).to_json()


def test_forms_list_saved_encoders_and_label_fields(photo_dataset):
    foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                         params=dict(SMALL, name="ae-listed", epochs=1))
    photo_dataset.set_values("ground_truth", [fo.Classification(label="x")] * len(photo_dataset))
    form = _form("train_encoder", photo_dataset, {"kind": "metric"})
    props = form["type"]["properties"]
    assert props["label_field"]["type"]["values"] == ["ground_truth"]
    assert "ae-listed" in props["saved"]["view"]["label"]
    form = _form("load_encoder", photo_dataset, {})
    choices = form["type"]["properties"]["name"]["view"]["choices"]
    assert [c["value"] for c in choices] == ["ae-listed"]
