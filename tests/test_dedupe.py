"""One command from a folder to duplicate groups (#29): ``lookalike dedupe DIR``, ``lk.dedupe``.

Real image files (the demo's photos and their planted copies), a real database, a real
contrastive encoder trained by the call itself.
"""

import collections
import importlib
import os
import shutil

import fiftyone as fo
import pytest

import lookalike as lk
from cli_runner import run_cli

# The module (lookalike.curation's "dedupe" is the function).
dedupe_module = importlib.import_module("lookalike.curation.dedupe")


def _form(uri, dataset_name, params):
    """The operator's input form as the App asks for it (POST /operators/resolve-type)."""
    import asyncio

    from fiftyone.operators.executor import resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    request = {"operator_uri": uri, "target": "inputs", "dataset_name": dataset_name,
               "params": params, "selected": []}
    return asyncio.run(resolve_type(OperatorRegistry(), uri, request)).to_json()["type"][
        "properties"]


def _photos(demo_records, groups):
    return [r for r in demo_records if r["source"] == "photo" and r["gt_group"] in groups]


def _copy_into(folder, records):
    for r in records:
        shutil.copyfile(r["filepath"], folder / os.path.basename(r["filepath"]))
    return records


def _groups(demo_records):
    return sorted({r["gt_group"] for r in demo_records if r["source"] == "photo"})


def test_dedupe_trains_once_and_a_rerun_takes_only_the_new_images(
        demo_records, store_dir, dataset_name, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    groups = _groups(demo_records)
    first = _copy_into(folder, _photos(demo_records, groups[:3]))
    (folder / "notes.txt").write_text("not an image")
    stages, labels = [], []
    report = lk.dedupe(str(folder), dataset_name=dataset_name, sample_size=12, epochs=1,
                       progress=lambda fraction, label: (stages.append(fraction),
                                                         labels.append(label)))
    assert report.dataset_name == dataset_name and report.encoder == f"{dataset_name}-dedupe"
    assert report.imported.imported == len(first) and len(report.imported.failures) == 1
    # Trained here, on a sample of 12 of the images; then every image embedded and indexed.
    assert report.trained is not None and report.trained.manifest["num_training_images"] == 12
    curation = report.curation
    assert curation.embedded == len(first) and curation.num_indexed == len(first)
    assert curation.calibration is not None and curation.duplicates is not None
    assert stages and stages == sorted(stages) and stages[-1] <= 1.0
    assert {"import", "train", "embed", "index", "calibrate", "duplicates"} <= set(
        report.seconds)
    assert "encoder" in report.summary() and "trained" in report.summary()
    # Before the work, an estimate of every stage after the import: training included,
    # every image to embed; shown while it runs and kept in the summary.
    per_image = dedupe_module.SECONDS_PER_IMAGE
    assert list(report.estimate) == ["train", "embed", "index", "calibrate", "duplicates",
                                     "outliers"]
    assert report.estimate["embed"] == pytest.approx(len(first) * per_image["embed"])
    line = dedupe_module.estimate_line(report.estimate)
    assert line in labels and line.startswith("estimated on this CPU: about ")
    assert "estimated beforehand on this CPU: about " in report.summary()

    # New photos arrive: only they are imported and embedded; the encoder is reused.
    # Pairs of local features the first run matched are read, never matched again.
    from lookalike.images.result_cache import ResultCache

    saved, added, read = {}, set(), []
    real_get, real_add = ResultCache.get, ResultCache.add

    def get(self, keys):
        self._known = None  # each call reads the shards afresh (as a new process would)
        saved.update(dict.fromkeys(k for k in self._load() if k not in added))
        found = real_get(self, keys)
        read.extend(k for k, v in zip(keys, found) if v is not None)
        return found

    def add(self, keys, values):
        added.update(k for k in keys if k is not None)
        return real_add(self, keys, values)

    monkeypatch.setattr(ResultCache, "get", get)
    monkeypatch.setattr(ResultCache, "add", add)
    second = _copy_into(folder, _photos(demo_records, groups[3:4]))
    again = lk.dedupe(str(folder), dataset_name=dataset_name, sample_size=12, epochs=1)
    monkeypatch.undo()
    assert read, "the rerun read no pair the first run matched"
    assert not added & set(saved), "the rerun matched pairs the first run had saved"
    assert again.imported.imported == len(second) and again.trained is None
    assert again.curation.embedding.embedded == len(second)
    assert again.curation.embedding.skipped_existing == len(first)
    assert again.curation.num_indexed == len(first) + len(second)
    assert len(fo.load_dataset(dataset_name)) == len(first) + len(second)
    assert f"encoder '{dataset_name}-dedupe': reused (trained by an earlier dedupe)" in \
        again.summary()
    # The rerun's estimate: no training, only the new images to embed.
    assert "train" not in again.estimate
    assert again.estimate["embed"] == pytest.approx(len(second) * per_image["embed"])


def test_cli_dedupe_with_an_encoder_groups_the_planted_copies(
        demo_records, copies_encoder, dataset_name, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    records = _copy_into(folder, _photos(demo_records, _groups(demo_records)[:8]))
    group_of = {os.path.basename(r["filepath"]): r["gt_group"] for r in records}
    out = run_cli("dedupe", str(folder), "--dataset", dataset_name, "--encoder", copies_encoder)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"import: {len(records)} new images into '{dataset_name}'"
    assert lines[1] == f"encoder '{copies_encoder}': given"
    assert any(line.startswith("duplicate groups (") for line in lines)
    assert lines[-1].startswith(f"review them in the App: lookalike plugin install && "
                                f"fiftyone app launch {dataset_name}")
    # The groups are the planted copies: each group's members are copies of one photo.
    ds = fo.load_dataset(dataset_name)
    members = collections.defaultdict(list)
    for path, group in zip(*ds.exists("dup_group").values(["filepath", "dup_group"])):
        members[group].append(group_of[os.path.basename(path)])
    assert len(members) >= 6, dict(members)
    grouped = sum(len(m) for m in members.values())
    pure = sum(collections.Counter(m).most_common(1)[0][1] for m in members.values())
    assert pure >= 0.9 * grouped, dict(members)


def test_cli_dedupe_refuses_in_one_line(tmp_path):
    out = run_cli("dedupe", str(tmp_path / "nope"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "nope" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("dedupe", str(tmp_path), "--yes")
    assert out.returncode == 2 and "--yes confirms --delete" in out.stderr


def test_the_one_job_operator_curates_the_dataset_with_a_saved_encoder(
        demo_records, copies_encoder, dataset_name, tmp_path):
    """The App's "Curate this dataset": the form offers training on a sample first where
    this dataset has no encoder of its own, or a saved one; the run does every step."""
    import fiftyone.operators as foo

    folder = tmp_path / "photos"
    folder.mkdir()
    records = _copy_into(folder, _photos(demo_records, _groups(demo_records)[:3]))
    lk.import_images(str(folder), dataset_name)
    ds = fo.load_dataset(dataset_name)
    uri = "@lookalike/similarity/curate_dataset"
    # The form: training "<dataset>-dedupe" on a sample is the default, saved encoders follow.
    props = _form(uri, dataset_name, {})
    choices = [c["value"] for c in props["encoder"]["view"]["choices"]]
    assert props["encoder"]["default"] == "" and choices[0] == "" and copies_encoder in choices
    assert props["sample_size"]["default"] == dedupe_module.SAMPLE_SIZE and "epochs" in props
    # The form says how long it would take, training included.
    expected = dedupe_module.estimate_line(dedupe_module.estimate_seconds(len(records)))
    assert props["estimate"]["view"]["label"] == expected, props["estimate"]
    props = _form(uri, dataset_name, {"encoder": copies_encoder})
    assert "sample_size" not in props  # nothing to train
    assert props["estimate"]["view"]["label"] == dedupe_module.estimate_line(
        dedupe_module.estimate_seconds(len(records), train=False))
    result = foo.execute_operator(uri, dataset=ds, params={"encoder": copies_encoder}).result
    assert f"encoder '{copies_encoder}': given" in result["summary"], result
    ds.reload()
    assert len(ds.exists(f"emb_{copies_encoder}")) == len(records)
    assert len(ds.exists("dup_group")) > 0 and ds.list_brain_runs()
