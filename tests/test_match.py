"""Matching with a calibrated "no match": unlabelled digits, and a folder of new photos.

Real encoders throughout: a metric encoder trained here on the known digit
classes only (the held-out classes are truly unseen), and the session's
contrastive "copies" encoder on the demo photos. Real processes are killed
(SIGKILL) while importing, and raced against each other.
"""

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time

import fiftyone as fo
from fiftyone import ViewField as F
import numpy as np
import pytest

import processes
from cli_runner import run_cli
from PIL import Image

import imagefiles as files
import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.curation.label_matching import _vote
from lookalike.demo.dataset import UNIQUE_PHOTOS
from lookalike.images.edits import apply_edit
from lookalike.embeddings.compute import compute_embeddings
from lookalike.core.errors import (
    CurationError,
    EmptyViewError,
    LeaseHeldError,
    StaleRecordError,
    UsageError,
)

KNOWN = [str(c) for c in range(7)]  # labelled in the dataset
TRAINED = KNOWN[:6]  # the encoder's classes: "6" is labelled but as new to it as 7-9
HELD_OUT = ["7", "8", "9"]
PER_CLASS = 60
LABELLED_PER_CLASS = 40  # the rest of each known class is unlabelled: the queries
TRAIN_PER_CLASS = 30  # other digits of the known classes, for training only


def _error_lines(out):
    """Our lines on stderr (the frameworks may log their own warnings there)."""
    return [line for line in out.stderr.splitlines() if line.startswith("lookalike ")]


def _cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "lookalike.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, **kw)


# -- digits: labels with a reject option ------------------------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """600 real digits: 7 labelled classes (40 labelled + 20 unlabelled each), 3 unlabelled.

    The metric encoder is trained on 30 other digits of each of the classes 0-5,
    none of them in the dataset: calibration (on the labelled samples) and
    matching (the unlabelled ones) see the same kind of data, and classes 6-9
    are as new to it as to a deployed model.
    """
    from sklearn.datasets import load_digits

    from lookalike.encoders import metric

    root = tmp_path_factory.mktemp("match-digits")
    data = load_digits()
    taken = {str(c): 0 for c in range(10)}
    samples, train_images, train_labels = [], [], []
    for i, (pixels, target) in enumerate(zip(data.images, data.target)):
        label = str(int(target))
        img = Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.BILINEAR)
        if taken[label] < PER_CLASS:
            path = str(root / f"digit_{i:04d}_{label}.png")
            img.save(path)
            labelled = label in KNOWN and taken[label] < LABELLED_PER_CLASS
            samples.append(fo.Sample(filepath=path, truth=label,
                                     gt=fo.Classification(label=label) if labelled else None))
        elif label in TRAINED and taken[label] < PER_CLASS + TRAIN_PER_CLASS:
            train_images.append(np.asarray(img.convert("RGB")))
            train_labels.append(label)
        taken[label] += 1
    ds = fo.Dataset("test-match-digits")
    ds.add_samples(samples)
    ds.persistent = True
    start = time.perf_counter()
    metric.train(np.stack(train_images), train_labels, "match-metric", epochs=5, width=0.5,
                 embedding_size=64, examples_per_class_per_batch=4, classes_per_batch=7)
    print(f"\nmetric encoder on {len(train_images)} digits: {time.perf_counter() - start:.0f} s")
    compute_embeddings(ds, "match-metric", "emb")
    ls.build_index(ds, "emb", "emb_sim")
    # Open set: the class held out of the calibration's gallery is one the encoder never
    # saw, so its rejection rate is the one to expect for other unseen classes.
    cal = lc.calibrate_threshold(ds, "emb_sim", label_field="gt", unknown_classes=["6"])
    ev = lc.evaluate_retrieval(ds, "emb_sim", "gt", k=10)
    yield ds, cal, ev
    fo.delete_dataset(ds.name)


def test_unlabelled_digits_get_their_class_and_unseen_classes_no_match(digits):
    ds, cal, ev = digits
    report = lc.match_labels(ds, "emb_sim", "gt")
    unlabelled = ds.exists("gt", False)
    assert report.num_queries == len(unlabelled) == 7 * 20 + 3 * PER_CLASS
    truth, pred, no_match, dist, matched = unlabelled.values(
        ["truth", "gt_match.label", "gt_match.no_match", "gt_match.distance",
         "gt_match.matched_id"])
    truth, pred, no_match = np.array(truth), np.array(pred), np.array(no_match)
    known = np.isin(truth, KNOWN)
    accuracy = float(np.mean(pred[known] == truth[known]))
    known_rejected = float(np.mean(no_match[known]))
    unseen_rejected = float(np.mean(no_match[~known]))
    # The evaluation's confusion matrix at the same threshold: its "no match" row holds the
    # calibration's own held-out class (rejected at the calibrated rate) ...
    conf = ev.confusion
    calibrated_rejection = conf["matrix"][-1][-1] / max(sum(conf["matrix"][-1]), 1)
    print(f"\nmatch threshold {cal.threshold:.4f} (held out in calibration: "
          f"{cal.unknown_classes}); evaluate_retrieval: match accuracy "
          f"{ev.match_accuracy:.3f}, unknown rejected {calibrated_rejection:.3f}, recall@1 "
          f"{ev.recall_at_1:.3f}; match_labels: known accuracy {accuracy:.3f} "
          f"(no match {known_rejected:.3f}), unseen classes no match {unseen_rejected:.3f}")
    # ... and the truly unseen classes come back "no match" at about that rate.
    assert unseen_rejected >= 0.6
    assert abs(unseen_rejected - calibrated_rejection) <= 0.25
    assert accuracy >= 0.8 and known_rejected <= 0.2
    assert set(pred[no_match]) == {"no match"}
    # Every prediction names the labelled sample it came from, at the distance stated.
    rows = {sid: r for r, sid in enumerate(ls.load_index(ds, "emb_sim").sample_ids)}
    index = ls.load_index(ds, "emb_sim")
    ids = unlabelled.values("id")
    for sid, d, m, p, rejected in list(zip(ids, dist, matched, pred, no_match))[::17]:
        exact = 1 - index.engine.matrix[rows[sid]] @ index.engine.matrix[rows[m]]
        assert d == pytest.approx(exact, abs=1e-5)
        assert (d > cal.threshold) == rejected
        if not rejected:
            assert ds[m].gt.label == p
    # The view of the rejected ones, farthest first.
    view = lc.no_match_view(ds)
    assert len(view) == report.num_no_match == int(no_match.sum())
    d = view.values("gt_match.distance")
    assert d == sorted(d, reverse=True)
    # The App's operator writes the same predictions; the panel shows its line.
    import fiftyone.operators as foo

    from lookalike.app import panel_rows as overview

    out = foo.execute_operator("@lookalike/similarity/match_labels", dataset=ds,
                               params=dict(brain_key="emb_sim", label_field="gt",
                                           pred_field="gt_app"))
    assert out.result["num_no_match"] == report.num_no_match
    assert unlabelled.values("gt_app.label") == list(pred)
    assert "'gt_app'" in overview.match_rows(ds)["labels"]


def test_the_held_out_queries_of_calibration_get_the_rejection_it_printed(digits, tmp_path):
    """Calibration's held-out class, matched as a folder against the calibration's own
    gallery (the other labelled classes): the share called new is the one it printed."""
    ds, cal, _ = digits
    assert cal.num_unknown_queries == LABELLED_PER_CLASS and cal.unknown_classes == ["6"]
    assert f"{100 * cal.unknown_rejection:.1f}% are called new" in cal.summary()
    held = ds.match(F("gt.label") == "6")
    for path in held.values("filepath"):
        shutil.copyfile(path, tmp_path / ("query_" + os.path.basename(path)))
    gallery = ds.match(F("gt.label").is_in([c for c in KNOWN if c != "6"]))
    report = lc.match_images(gallery, "emb_sim", str(tmp_path))
    calls = [r.decision for r in report.rows]
    assert len(calls) == cal.num_unknown_queries
    assert calls.count("new") / len(calls) == pytest.approx(cal.unknown_rejection,
                                                          abs=1.01 / len(calls))
    assert calls.count("duplicate") / len(calls) == pytest.approx(
        cal.unknown_called_duplicate, abs=1.01 / len(calls))
    # A digit of a class the gallery lacks is never a duplicate of one of its digits.
    assert cal.unknown_called_duplicate <= 0.05 and cal.unknown_rejection >= 0.6


def test_majority_vote_rejects_the_same_samples_and_breaks_ties_by_distance(digits):
    ds, cal, _ = digits
    nearest = lc.match_labels(ds, "emb_sim", "gt")
    vote = lc.match_labels(ds, "emb_sim", "gt", pred_field="gt_vote", strategy="vote", k=5)
    unlabelled = ds.exists("gt", False)
    truth, a, b, share = unlabelled.values(["truth", "gt_match.label", "gt_vote.label",
                                            "gt_vote.confidence"])
    # The reject rule is the calibrated one for both strategies.
    assert vote.num_no_match == nearest.num_no_match
    assert [x == "no match" for x in a] == [x == "no match" for x in b]
    known = np.isin(truth, KNOWN)
    acc_vote = np.mean(np.array(b)[known] == np.array(truth)[known])
    acc_near = np.mean(np.array(a)[known] == np.array(truth)[known])
    assert acc_vote >= acc_near - 0.05
    assert all(0 < s <= 1 for s, lab in zip(share, b) if lab != "no match")
    # Hand-checked: a 2-2 tie goes to the label met first (the nearer one); the
    # neighbour beyond the threshold does not vote.
    t = 0.5
    assert _vote(["a", "b", "b", "a", "b"], [0.1, 0.2, 0.3, 0.4, 0.9], t)[:3] == ("a", 0.1, 0)
    assert _vote(["a", "b", "b", "a"], [0.1, 0.2, 0.3, 0.6], t)[:3] == ("b", 0.2, 1)
    assert _vote(["a"], [0.7], t) is None


def test_match_labels_refuses_without_a_fresh_label_calibration(digits, dataset_name):
    ds, _, _ = digits
    with pytest.raises(CurationError, match="calibrated on 'gt', not 'truth'"):
        lc.match_labels(ds, "emb_sim", "truth")
    with pytest.raises(CurationError, match="strategy"):
        lc.match_labels(ds, "emb_sim", "gt", strategy="knn")
    with pytest.raises(EmptyViewError, match="every sample of the view has a 'gt' label"):
        lc.match_labels(ds.exists("gt"), "emb_sim", "gt")
    # A copy with a label-free calibration, then a stale one.
    copy = ds.clone(dataset_name)
    ls.build_index(copy, "emb", "sim")
    lc.calibrate_threshold(copy, "sim")
    with pytest.raises(CurationError, match="label-free calibration"):
        lc.match_labels(copy, "sim", "gt")
    lc.calibrate_threshold(copy, "sim", label_field="gt")
    sample = copy.first()
    sample["emb"] = None
    sample.save()
    with pytest.raises(StaleRecordError, match="changed since"):
        lc.match_labels(copy, "sim", "gt")


def test_cli_match_labels_prints_one_paragraph_and_errors_in_one_line(digits, subprocess_env):
    ds, _, _ = digits
    out = _cli(["match-labels", "--dataset", ds.name, "--brain-key", "emb_sim", "--label-field",
                "gt", "--pred-field", "gt_cli", "--strategy", "vote", "-k", "3"], subprocess_env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'no match'" in out.stdout and "gt_cli" in out.stdout
    ds.reload()
    assert len(ds.exists("gt_cli")) == len(ds.exists("gt", False))
    bad = _cli(["match-labels", "--dataset", ds.name, "--brain-key", "emb_sim", "--label-field",
                "truth", "--tag", "nothing-has-it"], subprocess_env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(_error_lines(bad)) == 1 and "calibrated on 'gt'" in bad.stderr


# -- a folder of new photos ----------------------------------------------------------
COPIED = ("astronaut", "brick", "camera", "chelsea", "coins", "horse")


def _library(name, demo_records, copies_encoder):
    """The demo photos without the unique ones, embedded, indexed and calibrated (label-free)."""
    photos = [r for r in demo_records if r["source"] == "photo"
              and r["gt_group"] not in UNIQUE_PHOTOS]
    ds = fo.Dataset(name)
    ds.add_samples([fo.Sample(filepath=r["filepath"], group=r["gt_group"]) for r in photos])
    ds.persistent = True
    compute_embeddings(ds, copies_encoder, "emb")
    ls.build_index(ds, "emb", "emb_sim")
    # The percentile's tighter match threshold: with this small encoder two of the unseen
    # photos lie about as far from the library as its hardest copies ("isolated" would
    # call them matches).
    lc.calibrate_threshold(ds, "emb_sim", method="percentile")
    return ds


@pytest.fixture(scope="module")
def shared_library(demo_records, copies_encoder):
    """One library for the tests that only read it (they import nothing): built once."""
    import uuid

    ds = _library(f"test-match-library-{uuid.uuid4().hex[:8]}", demo_records, copies_encoder)
    yield ds
    fo.delete_dataset(ds.name)


@pytest.fixture(scope="module")
def query_folder(tmp_path_factory, demo_records):
    """New edited copies of 6 dataset photos, 6 photos the dataset lacks, 2 unreadable files."""
    import sklearn.datasets

    folder = tmp_path_factory.mktemp("query")
    originals = {r["gt_group"]: r["filepath"] for r in demo_records
                 if r["source"] == "photo" and r["gt_edit"] == "original"}
    rng = random.Random(7)  # other parameters than the demo's planted copies
    expected = {}
    for name, edit in zip(COPIED, ("crop", "jpeg", "rotate", "brightness_contrast", "resize",
                                     "text_overlay")):
        with Image.open(originals[name]) as img:
            img.load()
            edited, ext = apply_edit(img, edit, rng)
        path = str(folder / f"new_{name}_{edit}{ext}")
        edited.convert("RGB").save(path) if ext == ".png" else edited.convert("RGB").save(
            path, quality=80)
        expected[os.path.basename(path)] = name
    unseen = [originals[n] for n in UNIQUE_PHOTOS]
    images = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    unseen += [os.path.join(images, f) for f in ("china.jpg", "flower.jpg")]
    for path in unseen:
        shutil.copyfile(path, folder / ("unseen_" + os.path.basename(path)))
        expected["unseen_" + os.path.basename(path)] = None
    files.write_truncated_jpeg(str(folder / "broken.jpg"))
    (folder / "notes.txt").write_text("not an image")
    return str(folder), expected


def test_folder_match_finds_copies_and_new_photos_and_add_new_is_rerunnable(
        demo_records, copies_encoder, query_folder, dataset_name, tmp_path):
    folder, expected = query_folder
    ds = _library(dataset_name, demo_records, copies_encoder)
    n = len(ds)
    report = lc.match_images(ds, "emb_sim", folder, out=str(tmp_path / "table.csv"))
    by_file = {r.file: r for r in report.rows}
    assert set(by_file) == set(expected)
    assert sorted(os.path.basename(f.path) for f in report.unreadable) == ["broken.jpg",
                                                                        "notes.txt"]
    for file, group in expected.items():
        row = by_file[file]
        if group:  # a copy: a duplicate of a sample of the right photo
            assert row.decision == "duplicate", (file, row)
            assert ds[row.nearest_id].group == group
        else:
            assert row.decision == "new", (file, row)
    print("\n" + report.summary())
    # Copies beyond the (two-sided) duplicate threshold are found by geometric
    # verification; without it they would be new, and nothing else changes.
    beyond = {r.file for r in report.rows if r.verified}
    assert all(by_file[f].distance > report.duplicate_threshold and "inliers" in by_file[f].note
               for f in beyond)
    plain = lc.match_images(ds, "emb_sim", folder, verify=False)
    assert all(r.verified is None for r in plain.rows)
    assert {r.file for r in plain.rows if r.decision == "duplicate"} == \
        {r.file for r in report.rows if r.decision == "duplicate"} - beyond
    assert len(ds) == n  # add="none" writes nothing
    with open(tmp_path / "table.csv") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("file,decision,nearest_path,distance")
    assert len(lines) == 1 + len(expected) + 2

    added = lc.match_images(ds, "emb_sim", folder, add="new")
    new_files = sorted(f for f, g in expected.items() if g is None)
    assert added.counts["new"] == len(new_files) and len(added.added_ids) == len(new_files)
    batch = ds.match_tags(added.tag)
    assert sorted(os.path.basename(p) for p in batch.values("filepath")) == new_files
    assert len(ds) == n + len(new_files) and len(batch.exists("emb")) == len(new_files)
    index = ls.load_index(ds, "emb_sim")
    assert index.total_index_size == n + len(new_files)
    lc.get_calibration(ds, "emb_sim")  # carried over to the grown field: not stale

    again = lc.match_images(ds, "emb_sim", folder, add="new")
    assert again.added_ids == [] and again.counts["new"] == 0
    assert len(ds) == n + len(new_files)
    for file in new_files:
        row = {r.file: r for r in again.rows}[file]
        assert row.decision == "duplicate" and row.note == "already in the dataset"
        assert row.distance == pytest.approx(0, abs=1e-5)


def test_two_copies_in_the_folder_import_once_and_verify_hook_downgrades(
        demo_records, copies_encoder, dataset_name, tmp_path):
    ds = _library(dataset_name, demo_records, copies_encoder)
    folder = tmp_path / "batch"
    folder.mkdir()
    coffee = next(r["filepath"] for r in demo_records if r["gt_group"] == "coffee")
    shutil.copyfile(coffee, folder / "a_coffee.png")
    with Image.open(coffee) as img:
        img.convert("RGB").save(folder / "b_coffee.jpg", quality=70)
    report = lc.match_images(ds, "emb_sim", str(folder), add="new")
    rows = {r.file: r for r in report.rows}
    assert rows["a_coffee.png"].decision == "new" and rows["a_coffee.png"].sample_id
    assert rows["b_coffee.jpg"].decision == "duplicate"
    assert rows["b_coffee.jpg"].note == "copy of another new image of this folder"
    assert len(report.added_ids) == 1
    # A verifier that refuses every pair turns duplicates into matches (or new).
    calls = []
    checked = lc.match_images(ds, "emb_sim", str(folder),
                              verify=lambda q, s: calls.append((q, s)) or False)
    assert calls == [] or all(r.verified is False for r in checked.rows if r.verified is not None)
    edited = tmp_path / "edited"
    edited.mkdir()
    with Image.open(coffee) as img:
        img.convert("RGB").save(edited / "small.jpg", quality=85)  # within the threshold
    checked = lc.match_images(ds, "emb_sim", str(edited),
                              verify=lambda q, s: calls.append((q, s)) or False)
    row = checked.rows[0]
    assert calls and row.verified is False and row.decision != "duplicate"
    # The App's operator on the same folder: the table and the panel's rows of the last match.
    import fiftyone.operators as foo

    from lookalike.app import panel_rows as overview

    out = foo.execute_operator("@lookalike/similarity/match_images", dataset=ds,
                               params=dict(brain_key="emb_sim", directory=str(folder)))
    files_ = {r["file"]: r["decision"] for r in out.result["rows"]}
    assert files_ == {"a_coffee.png": "duplicate", "b_coffee.jpg": "duplicate"}
    rows = overview.match_rows(ds)
    assert [r["file"] for r in rows["rows"]] == ["a_coffee.png", "b_coffee.jpg"]
    assert "2 already there" in rows["folder"]


def test_bad_folders_and_runs_are_one_line_errors(shared_library, tmp_path, monkeypatch):
    ds = shared_library
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmptyViewError, match="contains no files"):
        lc.match_images(ds, "emb_sim", str(empty))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    files.write_truncated_jpeg(str(junk / "b.jpg"))
    with pytest.raises(EmptyViewError, match="none of its 2 files is a readable image"):
        lc.match_images(ds, "emb_sim", str(junk))
    with pytest.raises(UsageError, match="add must be one of"):
        lc.match_images(ds, "emb_sim", str(junk), add="some")
    # Embeddings from elsewhere: the run knows no encoder to embed new images with.
    ds.set_values("raw", [np.random.default_rng(0).normal(size=8) for _ in range(len(ds))])
    ls.build_index(ds, "raw", "raw_sim")
    lc.calibrate_threshold(ds, "raw_sim")
    with pytest.raises(UsageError, match="cannot embed new images"):
        lc.match_images(ds, "raw_sim", str(junk))
    with pytest.raises(Exception, match="no such folder"):
        lc.match_images(ds, "emb_sim", str(tmp_path / "missing"))
    monkeypatch.chdir(tmp_path)
    out = run_cli("match", "--dataset", ds.name, "--brain-key", "emb_sim", "--images", junk)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = _error_lines(out)
    assert len(lines) == 1 and lines[0].startswith(
        f"lookalike match: error: {junk}: none of its 2 files is a readable image (e.g. a.txt: ")


def test_the_csv_table_neutralises_cells_a_spreadsheet_would_run(shared_library, tmp_path):
    from lookalike.core.paths import spreadsheet_cell

    ds = shared_library
    folder = tmp_path / "formulas"
    folder.mkdir()
    for name in ("=SUM(1+2).png", "+1.jpg", "plain.jpg"):
        files.write_jpeg(str(folder / name))
    report = lc.match_images(ds, "emb_sim", str(folder), out=str(tmp_path / "table.csv"))
    assert sorted(r.file for r in report.rows) == ["+1.jpg", "=SUM(1+2).png", "plain.jpg"]
    with open(tmp_path / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == ["'+1.jpg", "'=SUM(1+2).png", "plain.jpg"]
    assert all(r["path"].startswith(str(folder)) for r in rows)  # a path starts with "/"
    # The JSON table keeps the names as they are: JSON is data, not a sheet.
    report.write(str(tmp_path / "table.json"))
    with open(tmp_path / "table.json") as f:
        assert "=SUM(1+2).png" in {r["file"] for r in json.load(f)["rows"]}
    assert [spreadsheet_cell(v) for v in ("-2", "@x", "\tx", "\rx", "a=b", 1.5, None, -1)] == \
        ["'-2", "'@x", "'\tx", "'\rx", "a=b", 1.5, None, -1]


def test_a_bad_out_is_refused_before_anything_is_embedded_or_imported(
        shared_library, tmp_path, monkeypatch):
    ds = shared_library
    n = len(ds)
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copyfile(_sklearn_image("china.jpg"), folder / "china.jpg")  # new: --add imports it
    missing = tmp_path / "nonexistent" / "dir"
    (tmp_path / "dir.csv").mkdir()
    for out, reason in ((tmp_path / "table.txt", "the table is written as .csv or .json"),
                        (missing / "t.csv", f"no such folder {missing}"),
                        (tmp_path / "dir.csv", "is a folder")):
        calls = []
        with pytest.raises(UsageError) as e:
            lc.match_images(ds, "emb_sim", str(folder), add="new", out=str(out),
                            progress=lambda f, label: calls.append(label))
        assert str(e.value).startswith(f"{out}: ") and reason in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
        assert calls == [] and len(ds) == n  # nothing matched, nothing imported
        ran = run_cli("match", "--dataset", ds.name, "--brain-key", "emb_sim", "--images",
                      folder, "--add", "new", "--out", out)
        assert ran.returncode == 2, ran.stderr[-2000:]
        assert ran.stderr.splitlines() == [f"lookalike match: error: {e.value}"]
        ds.reload()
        assert len(ds) == n
    assert not os.path.exists(missing)
    # The default table lands in the working folder: an unwritable one is refused as early.
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(UsageError, match="cannot write in"):
            lc.match_images(ds, "emb_sim", str(folder), add="new", out=str(locked / "t.csv"))
        assert len(ds) == n


def test_a_folder_reached_through_a_symlink_is_already_in_the_dataset(
        shared_library, demo_records, tmp_path):
    ds = shared_library
    n = len(ds)
    chelsea = next(r["filepath"] for r in demo_records if r["gt_group"] == "chelsea")
    real = os.path.dirname(chelsea)  # every file in it is a sample of the library
    link = tmp_path / "link"
    os.symlink(real, link)
    id_of = dict(zip(*ds.values(["filepath", "id"])))
    for add in ("all", "new"):
        report = lc.match_images(ds, "emb_sim", str(link), add=add)
        assert len(report.rows) == len(os.listdir(real)) and not report.unreadable
        assert report.added_ids == [] and len(ds) == n, add
        for row in report.rows:
            assert row.path.startswith(str(link))
            assert row.decision == "duplicate" and row.note == "already in the dataset", row
            assert row.sample_id == id_of[os.path.join(real, row.file)]
            assert row.distance == pytest.approx(0, abs=1e-5)


def _sklearn_image(name):
    import sklearn.datasets

    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)


@pytest.mark.parametrize("point", ["match.after_import", "match.after_vectors"])
def test_killed_import_is_finished_by_a_rerun(point, demo_records, copies_encoder, query_folder,
                                              dataset_name, subprocess_env, tmp_path):
    folder, expected = query_folder
    ds = _library(dataset_name, demo_records, copies_encoder)
    n = len(ds)
    env = dict(subprocess_env, LOOKALIKE_FAULT=f"{point}:kill")
    out = _cli(["match", "--dataset", ds.name, "--brain-key", "emb_sim", "--images", folder,
                "--add", "new"], env, cwd=str(tmp_path))
    assert out.returncode == -9, out.stderr[-3000:]
    ds.reload()
    new_files = sorted(f for f, g in expected.items() if g is None)
    assert len(ds) == n + len(new_files)  # the samples were added before the kill
    # The rerun embeds what is missing and carries the calibration over; nothing twice.
    rerun = lc.match_images(ds, "emb_sim", folder, add="new")
    assert rerun.added_ids == []
    paths = ds.values("filepath")
    assert len(paths) == len(set(paths)) == n + len(new_files)
    assert len(ds.exists("emb")) == len(ds)
    assert ls.load_index(ds, "emb_sim").total_index_size == len(ds)
    lc.get_calibration(ds, "emb_sim")
    assert lc.match_images(ds, "emb_sim", folder, add="new").counts["new"] == 0


def test_two_imports_at_once_one_is_refused(demo_records, copies_encoder, query_folder,
                                            dataset_name, subprocess_env, tmp_path):
    folder, expected = query_folder
    ds = _library(dataset_name, demo_records, copies_encoder)
    n = len(ds)
    marker = tmp_path / "reached"
    env = dict(subprocess_env, LOOKALIKE_FAULT="match.after_chunk:pause",
               LOOKALIKE_FAULT_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "match", "--dataset",
                             ds.name, "--brain-key", "emb_sim", "--images", folder, "--add",
                             "new"], env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        processes.reached(marker, proc, timeout=180)
        with pytest.raises(LeaseHeldError, match="importing into"):
            lc.match_images(ds, "emb_sim", folder, add="new")
        # Matching without importing is read-only and needs no lease.
        assert lc.match_images(ds, "emb_sim", folder).counts["new"] >= 1
    finally:
        proc.kill()
        proc.wait()
    # The paused job had decided but written nothing: a rerun takes over its dead lease.
    ds.reload()
    assert len(ds) == n
    report = lc.match_images(ds, "emb_sim", folder, add="new")
    assert len(report.added_ids) == sum(1 for g in expected.values() if g is None)


def test_a_table_is_written_whole_or_not_at_all_and_two_writers_never_share_a_temporary(
        tmp_path):
    import threading

    from lookalike.core.paths import write_csv

    path = str(tmp_path / "t.csv")
    rows = {n: [{"file": f"w{n}_{i}.jpg", "decision": "new"} for i in range(2000)]
            for n in range(4)}
    threads = [threading.Thread(target=write_csv, args=(path, ["file", "decision"], rows[n]))
               for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = open(path).read().splitlines()
    assert len(lines) == 2001 and len({line.split("_")[0] for line in lines[1:]}) == 1
    # A row that cannot be written: the old table stays, and no temporary is left.
    with pytest.raises(AttributeError):
        write_csv(path, ["file"], [{"file": "ok.jpg"}, None])
    assert open(path).read().splitlines() == lines
    assert sorted(os.listdir(tmp_path)) == ["t.csv"]
