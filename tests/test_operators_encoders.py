"""train_encoder and load_encoder as the App runs them: immediately and delegated to a worker."""

import os
import subprocess
import sys

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
    result = foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                                  params=dict(SMALL, name="ae-op", delegate=False))
    assert not result.delegated
    assert result.result["epochs"] == 2 and result.result["final_loss"] > 0
    assert os.path.isfile(os.path.join(result.result["path"], "manifest.json"))
    notes = [r for r in result.to_json()["executor"]["requests"] if r["operator_uri"] == "notify"]
    assert "ae-op: autoencoder, 32 px, 64-d, 2 epochs" in notes[0]["params"]["message"]


def test_train_encoder_is_delegated_by_default_and_a_worker_runs_it(photo_dataset, subprocess_env):
    queued = foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                                  params=dict(SMALL, name="ae-delegated"))
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
    # Without FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS the App cannot queue a job (it would
    # hide "Execute"): the form says how to enable it and the operator runs immediately.
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", False)
    result = foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                                  params=dict(SMALL, name="ae-here", epochs=1))
    assert not result.delegated and result.result["epochs"] == 1


def test_load_encoder_by_name_and_by_path(photo_dataset, tmp_path):
    trained = foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                                   params=dict(SMALL, name="ae-src", epochs=1, delegate=False))
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
                             params=dict(SMALL, name="../x", delegate=False))
    with pytest.raises(foo.executor.ExecutionError, match="view is empty"):
        foo.execute_operator(f"{PLUGIN}/train_encoder", dataset=photo_dataset,
                             view=photo_dataset.limit(0),
                             params=dict(SMALL, name="ae-empty", delegate=False,
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
                         params=dict(SMALL, name="ae-listed", epochs=1, delegate=False))
    photo_dataset.set_values("ground_truth", [fo.Classification(label="x")] * len(photo_dataset))
    form = _form("train_encoder", photo_dataset, {"kind": "metric"})
    props = form["type"]["properties"]
    assert props["label_field"]["type"]["values"] == ["ground_truth"]
    assert "ae-listed" in props["saved"]["view"]["label"]
    form = _form("load_encoder", photo_dataset, {})
    choices = form["type"]["properties"]["name"]["view"]["choices"]
    assert [c["value"] for c in choices] == ["ae-listed"]
