"""The plugin as FiftyOne sees it: discovery, registration and execution on the real database."""

import os

import fiftyone as fo
import fiftyone.operators as foo
import pytest
import yaml
from fiftyone.operators.registry import OperatorRegistry

import imagefiles as files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "@lookalike/similarity"


def _manifest():
    with open(os.path.join(REPO_ROOT, "fiftyone.yml")) as f:
        return yaml.safe_load(f)


def test_manifest_layout():
    manifest = _manifest()
    assert manifest["name"] == PLUGIN
    assert manifest["py_entry"] == "plugin/__init__.py"
    assert os.path.isfile(os.path.join(REPO_ROOT, manifest["py_entry"]))


def test_every_listed_operator_is_registered_without_errors():
    # The session's plugins directory holds the plugin's files only (see conftest.py).
    assert sorted(os.listdir(os.path.join(fo.config.plugins_dir, "lookalike"))) == [
        "assets", "fiftyone.yml", "plugin", "requirements.txt"]
    listed = set(_manifest()["operators"]) | set(_manifest().get("panels") or [])
    ours = {
        op.uri.split("/")[-1]
        for op in foo.list_operators(enabled="all", builtin=False)
        if op.plugin_name == PLUGIN
    }
    assert ours == listed
    errors = OperatorRegistry().list_errors()
    assert errors == [], errors


def test_import_images_operator_on_real_database(tmp_path, dataset_name):
    folder = tmp_path / "imgs"
    folder.mkdir()
    files.write_jpeg(str(folder / "a.jpg"))
    files.write_rgba_png(str(folder / "b.png"))
    files.write_truncated_jpeg(str(folder / "c.jpg"))
    result = foo.execute_operator(
        f"{PLUGIN}/import_images",
        params={"directory": str(folder), "dataset_name": dataset_name},
    )
    assert result.result["imported"] == 2
    assert [os.path.basename(s["path"]) for s in result.result["skipped"]] == ["c.jpg"]
    assert len(fo.load_dataset(dataset_name)) == 2
    notes = [r for r in result.to_json()["executor"]["requests"] if r["operator_uri"] == "notify"]
    assert "Imported 2 images" in notes[0]["params"]["message"]


def test_import_images_operator_reports_bad_input(tmp_path, dataset_name):
    with pytest.raises(foo.executor.ExecutionError, match="no such folder"):
        foo.execute_operator(
            f"{PLUGIN}/import_images",
            params={"directory": str(tmp_path / "missing"), "dataset_name": dataset_name},
        )
    with pytest.raises(foo.executor.ExecutionError, match="Required property"):
        foo.execute_operator(f"{PLUGIN}/import_images", params={"dataset_name": dataset_name})
    assert not fo.dataset_exists(dataset_name)


# -- execution options, risk levels, progress ----------------------------------------

# The operators that can run long: the App offers its own Execute / Schedule for each.
LONG_RUNNING = ("import_images", "train_encoder", "compute_embeddings", "build_index",
                "calibrate_threshold", "find_duplicates", "flag_outliers", "evaluate_retrieval",
                "visualize_embeddings", "match_labels", "match_images", "find_leaks",
                "extract_features", "curate_dataset")
RISK_LEVELS = {"sort_by_similarity": "low", "extract_features": "low", "delete_duplicates": "high",
               "import_images": "high"}


def _our_operators():
    return [op for op in foo.list_operators(enabled="all", builtin=False)
            if op.plugin_name == PLUGIN and not isinstance(op, foo.Panel)]


def _forms():
    """The plugin's forms module, as FiftyOne loaded it."""
    import sys

    op = OperatorRegistry().get_operator(f"{PLUGIN}/train_encoder")
    return sys.modules[type(op).__module__].forms


def test_long_operators_offer_the_apps_execute_or_schedule():
    import asyncio

    from fiftyone.operators.executor import resolve_execution_options

    registry = OperatorRegistry()
    for op in _our_operators():
        uri = op.uri
        options = asyncio.run(resolve_execution_options(
            registry, uri, {"operator_uri": uri, "params": {}})).to_dict()
        long_running = op.name in LONG_RUNNING
        assert options["allow_immediate_execution"], op.name
        assert options["allow_delegated_execution"] == long_running, op.name
        # Only training (and the one job that trains) preselects Schedule; the rest are
        # quick on small datasets.
        assert options["default_choice_to_delegated"] == (
            op.name in ("train_encoder", "curate_dataset")), op.name


def test_every_operator_declares_its_risk_level():
    declared = {op.name: op.config.risk_level.value for op in _our_operators()}
    assert declared == {name: RISK_LEVELS.get(name, "medium") for name in declared}


class _Ctx:
    """What forms.progress uses of an ExecutionContext: set_progress (and delegated)."""

    delegated = True

    def __init__(self):
        self.writes = []

    def set_progress(self, progress=None, label=None):
        self.writes.append((progress, label))


def test_progress_is_written_at_most_once_per_interval_and_always_at_the_end():
    forms = _forms()
    now = [0.0]
    ctx = _Ctx()
    report = forms.progress(ctx, interval=1.0, clock=lambda: now[0])
    for i in range(1, 21):  # 20 reports, one every 0.25 s
        now[0] = i * 0.25
        report(i / 40, f"step {i}")
    report(1.0, "done")  # 0 s after the last
    # The first at once, then the first report once a second has passed, and the end.
    assert [label for _, label in ctx.writes] == [
        "step 1", "step 5", "step 9", "step 13", "step 17", "done"]
    assert ctx.writes[-1] == (1.0, "done")


def test_a_delegated_run_writes_its_progress_about_once_a_second(tmp_path, dataset_name,
                                                                  monkeypatch):
    # A real delegated run (queued, then run by FiftyOne's own service) whose package call
    # reports once per file: each write is counted on its way to the database.
    import shutil
    import time

    from fiftyone.operators.delegated import DelegatedOperationService

    folder = tmp_path / "imgs"
    folder.mkdir()
    files.write_jpeg(str(folder / "000.jpg"))
    for i in range(1, 400):
        shutil.copy(folder / "000.jpg", folder / f"{i:03d}.jpg")
    writes = []
    write = DelegatedOperationService.set_progress

    def counted(self, doc_id, progress):
        writes.append((time.monotonic(), progress.progress))
        return write(self, doc_id, progress)

    monkeypatch.setattr(DelegatedOperationService, "set_progress", counted)
    uri = f"{PLUGIN}/import_images"
    queued = foo.execute_operator(uri, params={"directory": str(folder),
                                               "dataset_name": dataset_name},
                                  request_delegation=True)
    assert queued.delegated
    started = time.monotonic()
    DelegatedOperationService().execute_queued_operations(operator=uri)
    elapsed = time.monotonic() - started
    doc = DelegatedOperationService().get(queued.result["id"])
    assert doc.run_state == "completed", doc.status
    assert len(fo.load_dataset(dataset_name)) == 400
    assert writes and writes[-1][1] == pytest.approx(1.0)
    # 400 reports; at most one write a second, plus the first and the last.
    interval = _forms().PROGRESS_INTERVAL
    assert len(writes) <= elapsed / interval + 2, (len(writes), elapsed)
    gaps = [b[0] - a[0] for a, b in zip(writes, writes[1:]) if b[1] < 1]
    assert all(g >= interval * 0.99 for g in gaps), gaps
