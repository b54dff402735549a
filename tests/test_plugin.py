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
