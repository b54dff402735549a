"""Calibration on a run, duplicates, outliers, evaluation and pictures, on real image files."""

import os
import shutil

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image, ImageFilter

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.curation.evaluation import retrieval_metrics
from lookalike.curation.keep import sharpness
from lookalike.similarity.engine import IVFEngine, as_unit_matrix
from lookalike.similarity.pairs import approximate_pairs, exact_pairs


def _dataset(name, paths, vectors, labels=None):
    ds = fo.Dataset(name)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.set_values("emb", [np.asarray(v, np.float32) for v in vectors])
    if labels is not None:
        ds.set_values("gt", [None if lab is None else fo.Classification(label=lab)
                             for lab in labels])
    ds.persistent = True
    return ds


@pytest.fixture
def image_paths(demo_records):
    return [r["filepath"] for r in demo_records]


def test_calibration_on_a_run_hand_checked(dataset_name, image_paths):
    # Unit vectors at angles (degrees) on a circle; leave-one-out neighbours:
    #   a0 (0) -> a1 (10): right   a1 -> a0: right   b0 (25) -> a1 (10): wrong
    #   b1 (60) -> b0 (25): right  c (180) -> b1 (60): wrong
    angles = np.deg2rad([0, 10, 25, 60, 180])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = ["a", "a", "b", "b", "c"]
    ds = _dataset(dataset_name, image_paths[:5], vectors, labels)
    ls.build_index(ds, "emb", "sim")
    record = lc.calibrate_threshold(ds, "sim", label_field="gt", unknown_fraction=0)
    d = lambda deg: 1 - np.cos(np.deg2rad(deg))  # noqa: E731
    # Sorted distances: 10 (right, twice), 15 (wrong), 35 (right), 120 (wrong).
    # F1 at 10: P 1, R 2/3 -> 0.8; at 15: P 2/3, R 2/3 -> 2/3; at 35: P 3/4, R 1 -> 6/7;
    # at 120: P 3/5, R 1 -> 0.75. Best: 35 degrees.
    assert record.threshold == pytest.approx(d(35), abs=1e-6)
    assert record.metric_values["f1"] == pytest.approx(6 / 7)
    assert record.curve["thresholds"] == pytest.approx([d(10), d(15), d(35), d(120)], abs=1e-6)
    # Same as a brute-force leave-one-out on the same unit vectors: every distinct
    # nearest-neighbour distance tried, the largest with the best F1 kept.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    dist = 1 - unit @ unit.T
    np.fill_diagonal(dist, np.inf)
    nearest = dist.argmin(axis=1)
    nn_dist = dist[np.arange(len(unit)), nearest]
    correct = np.array(labels)[nearest] == np.array(labels)
    best_f1, expected = -1.0, None
    for t in np.unique(nn_dist):
        tp = int((correct & (nn_dist <= t)).sum())
        fp = int((~correct & (nn_dist <= t)).sum())
        p, r = tp / (tp + fp), tp / int(correct.sum())
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 >= best_f1 - 1e-12:
            best_f1, expected = f1, t
    assert record.threshold == pytest.approx(expected, abs=1e-6)
    # A precision target picks the largest distance that reaches it.
    record = lc.calibrate_threshold(ds, "sim", label_field="gt", method="precision",
                                    target=0.75, unknown_fraction=0)
    assert record.threshold == pytest.approx(d(35), abs=1e-6)


def test_leave_one_out_never_matches_itself_and_exact_copies_can_be_excluded(
        dataset_name, image_paths):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    vectors = np.concatenate([base, base[:10]])  # 10 exact copies
    labels = [str(i % 4) for i in range(40)] + [str(i % 4) for i in range(10)]
    ds = _dataset(dataset_name, image_paths[:50], vectors, labels)
    index = ls.build_index(ds, "emb", "sim")
    from lookalike.curation.neighbours import leave_one_out

    inds, dists = leave_one_out(index.engine, k=3)
    assert not (inds == np.arange(50)[:, None]).any()
    # Copies find each other at distance 0; excluded, they no longer do.
    assert (dists[:10, 0] < 1e-6).all() and (dists[40:, 0] < 1e-6).all()
    inds, dists = leave_one_out(index.engine, k=1, exclude_exact=True)
    assert (dists[:, 0] > 1e-6).all()
    rec = lc.calibrate_threshold(ds, "sim", label_field="gt", unknown_fraction=0)
    assert rec.threshold > 0  # a self-match would have given 0


def test_open_set_holds_classes_out_and_lowers_the_threshold(dataset_name, image_paths):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 24))
    cls = np.repeat(np.arange(6), 25)
    vectors = centres[cls] + 0.6 * rng.normal(size=(150, 24))
    ds = _dataset(dataset_name, image_paths[:150], vectors, [f"c{c}" for c in cls])
    ls.build_index(ds, "emb", "sim")
    closed = lc.calibrate_threshold(ds, "sim", label_field="gt", unknown_fraction=0)
    opened = lc.calibrate_threshold(ds, "sim", label_field="gt", unknown_classes=["c0", "c1"])
    assert opened.unknown_classes == ["c0", "c1"] and "open set" in opened.note
    assert opened.threshold < closed.threshold
    seeded = lc.calibrate_threshold(ds, "sim", label_field="gt", unknown_fraction=0.34, seed=3)
    assert len(seeded.unknown_classes) == 2


def test_calibration_survives_a_restart_and_refuses_when_stale(dataset_name, image_paths):
    rng = np.random.default_rng(2)
    ds = _dataset(dataset_name, image_paths[:60], rng.normal(size=(60, 8)))
    ls.build_index(ds, "emb", "sim")
    saved = lc.calibrate_threshold(ds, "sim", target=3)
    assert saved.method == "isolated" and saved.target == 3 and "no labels" in saved.note
    # A fresh load of the dataset reads it back from the run.
    ds.clear_cache() if hasattr(ds, "clear_cache") else None
    reloaded = fo.load_dataset(dataset_name)
    reloaded._brain_cache.clear() if hasattr(reloaded, "_brain_cache") else None
    again = lc.get_calibration(reloaded, "sim")
    assert again.threshold == pytest.approx(saved.threshold)
    assert again.nn_histogram == saved.nn_histogram
    # The saved record is the dataclass's record, whole.
    record = ls.load_index(reloaded, "sim").curation["calibration"]
    assert again.to_record() == record and "no labels" in again.summary()
    # The embeddings change (one sample loses its vector): every use is refused.
    first = reloaded.first()
    first["emb"] = None
    first.save()
    with pytest.raises(lc.StaleRecordError, match="changed since"):
        lc.get_calibration(reloaded, "sim")
    with pytest.raises(lc.StaleRecordError):
        lc.flag_outliers(reloaded, "sim")
    with pytest.raises(lc.StaleRecordError):
        lc.find_duplicates(reloaded, "sim")
    # ... until calibrated again (the index rebuilt from the field).
    ls.build_index(reloaded, "emb", "sim")
    with pytest.raises(lc.MissingRecordError):
        lc.get_calibration(reloaded, "sim")
    lc.calibrate_threshold(reloaded, "sim")
    assert lc.flag_outliers(reloaded, "sim").num_searched == 59


def test_bad_input_is_refused_clearly(dataset_name, image_paths):
    rng = np.random.default_rng(3)
    labels = ["x"] * 10 + [None] * 5
    ds = _dataset(dataset_name, image_paths[:15], rng.normal(size=(15, 8)), labels)
    ls.build_index(ds, "emb", "sim")
    with pytest.raises(lc.CalibrationError, match="only one class"):
        lc.calibrate_threshold(ds, "sim", label_field="gt")
    ds.set_values("gt", [fo.Classification(label=lab) if lab else None
                         for lab in ["x", "y"] * 5 + [None] * 5])
    record = lc.calibrate_threshold(ds, "sim", label_field="gt", unknown_fraction=0)
    assert record.num_missing_labels == 5 and record.num_queries == 10
    with pytest.raises(lc.CalibrationError, match="no field 'nope'"):
        lc.calibrate_threshold(ds, "sim", label_field="nope")
    with pytest.raises(lc.CalibrationError, match=r"'emb' is a \w+; a label field is a "
                       r"Classification or a string field \(label fields: gt\)"):
        lc.calibrate_threshold(ds, "sim", label_field="emb")
    with pytest.raises(lc.CalibrationError, match="needs a target"):
        lc.calibrate_threshold(ds, "sim", label_field="gt", method="precision")
    with pytest.raises(lc.CalibrationError, match="needs a label field"):
        lc.calibrate_threshold(ds, "sim", method="f1")
    with pytest.raises(lc.CalibrationError, match="percentile"):
        lc.calibrate_threshold(ds, "sim", method="percentile", target=100)
    with pytest.raises(lc.CalibrationError, match=r"target \(method 'isolated'.*> 0, got -1"):
        lc.calibrate_threshold(ds, "sim", target=-1)
    with pytest.raises(lc.CurationError, match=r"\[0, 2\]"):
        lc.flag_outliers(ds, "sim", threshold=2.5)
    with pytest.raises(lc.CurationError, match=r"\[0, 2\]"):
        lc.find_duplicates(ds, "sim", threshold=-0.1)
    with pytest.raises(lc.CurationError, match="empty"):
        lc.flag_outliers(ds.limit(0), "sim", threshold=0.5)
    with pytest.raises(ls.NotOurIndexError):
        lc.flag_outliers(ds, "missing", threshold=0.5)
    with pytest.raises(lc.CurationError, match="empty"):
        lc.find_duplicates(ds.limit(0), "sim", threshold=0.1)
    with pytest.raises(lc.CurationError, match="keep policy"):
        lc.find_duplicates(ds, "sim", threshold=0.1, keep="biggest")
    with pytest.raises(lc.CurationError, match="no field 'nope'"):
        lc.visualize_embeddings(ds, "nope")
    with pytest.raises(lc.CurationError, match="unknown method"):
        lc.visualize_embeddings(ds, "emb", method="mds")
    with pytest.raises(lc.CurationError, match="at least 3"):
        lc.visualize_embeddings(ds.limit(2), "emb")
    with pytest.raises(lc.CurationError, match="k must be at least 1"):
        lc.evaluate_retrieval(ds, "sim", "gt", k=0)
    # Fewer than 2 embedded samples.
    ds.set_values("emb", [None] * 14 + [np.ones(8, np.float32)])
    ls.build_index(ds, "emb", "one")
    with pytest.raises(lc.CalibrationError, match="at least 2"):
        lc.calibrate_threshold(ds, "one")


def test_evaluation_equals_sklearn_and_numpy_references(dataset_name, image_paths):
    from sklearn.metrics import average_precision_score
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(4)
    n = 80
    cls = rng.integers(0, 5, n)
    vectors = rng.normal(size=(5, 12))[cls] + 0.9 * rng.normal(size=(n, 12))
    labels = np.array([f"k{c}" for c in cls])
    ds = _dataset(dataset_name, image_paths[:n], vectors, labels.tolist())
    index = ls.build_index(ds, "emb", "sim")
    order = [list(ds.values("id")).index(s) for s in index.sample_ids]  # index row -> sample
    x, y = as_unit_matrix(vectors)[order], labels[order]

    nn = NearestNeighbors(n_neighbors=n, metric="cosine", algorithm="brute").fit(x)
    dist, ind = nn.kneighbors(x)
    others = [[j for j in row if j != i] for i, row in enumerate(ind)]
    k = 7
    rel = np.array([[y[j] == y[i] for j in row] for i, row in enumerate(others)])
    ev = lc.evaluate_retrieval(ds, "sim", "gt", k=k)
    assert ev.k == k and ev.recall_at_1 == pytest.approx(rel[:, 0].mean())
    assert ev.precision_at_k == pytest.approx(rel[:, :k].mean())
    # Over the whole ranking (k = N - 1), mAP equals sklearn's average precision.
    full = lc.evaluate_retrieval(ds, "sim", "gt", k=n - 1)
    sims = x @ x.T
    aps = []
    for i in range(n):
        mask = np.arange(n) != i
        aps.append(average_precision_score(y[mask] == y[i], sims[i, mask]))
    assert full.k == n - 1 and full.map_at_k == pytest.approx(np.mean(aps), abs=1e-6)
    # Saved as before (metric keys carrying k), and read back whole.
    record = ls.load_index(ds, "sim").curation["evaluation"]
    assert record[f"map_at_{n - 1}"] == full.map_at_k
    assert lc.RetrievalEvaluation.from_record(record) == full and full.to_record() == record
    # A confusion matrix needs a calibration; then it has a "no match" class.
    assert ev.confusion is None and "calibrate" in ev.confusion_note
    lc.calibrate_threshold(ds, "sim", label_field="gt", unknown_classes=["k0"])
    ev = lc.evaluate_retrieval(ds, "sim", "gt", k=k)
    conf = ev.confusion
    assert conf["classes"][-1] == "no match" and "k0" not in conf["classes"]
    assert np.sum(conf["matrix"]) == n
    assert sum(conf["matrix"][-1]) == int((labels == "k0").sum())  # k0 is truly no-match


def test_retrieval_metrics_hand_checked():
    rel = np.array([[True, False, True], [False, False, False], [False, True, True]])
    # The second query has nothing to find (a class of one): it is left out.
    m = retrieval_metrics(rel, num_relevant=[2, 0, 5])
    assert m.num_queries == 2 and m.num_unfindable == 1 and m.k == 3
    assert m.recall_at_1 == pytest.approx(1 / 2)
    assert m.precision_at_k == pytest.approx(4 / 6)
    # AP@3: (1 + 2/3) / 2 and (1/2 + 2/3) / 3.
    assert m.map_at_k == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 3) / 2)


def test_approximate_pairs_recover_exact_pairs():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(3000, 32)).astype(np.float32)
    near = base[:600] + 0.05 * rng.normal(size=(600, 32)).astype(np.float32)
    matrix = as_unit_matrix(np.concatenate([base, near]))
    ei, ej, ed = exact_pairs(matrix, 0.01)
    ai, aj, ad = approximate_pairs(matrix, 0.01, reuse=IVFEngine(matrix, nlist=40))
    exact = set(zip(ei.tolist(), ej.tolist()))
    found = set(zip(ai.tolist(), aj.tolist()))
    assert len(exact) >= 600 and found <= exact
    assert len(found & exact) / len(exact) >= 0.99
    brute = 1 - matrix @ matrix.T
    iu = np.triu_indices(len(matrix), 1)
    assert len(exact) == int((brute[iu] <= 0.01).sum())


def test_a_single_pair_never_merges_two_groups():
    from lookalike.similarity.pairs import groups_from_pairs

    # Two groups of copies (stars around 0 and 4), joined by one chance pair 3-4;
    # a copy hanging on one pair (9-10 of the triangle 8, 9, 10) and a chain of 3.
    i = [0, 0, 0, 4, 4, 4, 3, 8, 9, 9, 12, 13]
    j = [1, 2, 3, 5, 6, 7, 4, 9, 10, 8, 13, 14]
    assert groups_from_pairs(15, i, j) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10],
                                           [12, 13, 14]]
    assert groups_from_pairs(15, i, j, split_bridges=False)[0] == list(range(8))
    # Two pairs between the groups are no chance: one group.
    assert groups_from_pairs(15, i + [2], j + [5])[0] == list(range(8))
    # An unbreakable pair (identical files) stays; the next most even bridge goes.
    fixed = np.array([k == 6 for k in range(len(i))])
    assert groups_from_pairs(15, i, j, unbreakable=fixed)[:2] == [[0, 1, 2], [3, 4, 5, 6, 7]]
    # Three groups in a row: both bridges cut.
    i2, j2 = [0, 0, 1, 3, 3, 4, 6, 6, 7, 2, 5], [1, 2, 2, 4, 5, 5, 7, 8, 8, 3, 6]
    assert groups_from_pairs(9, i2, j2) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_byte_identical_files_and_keep_policies(dataset_name, demo_records, tmp_path):
    src = next(r["filepath"] for r in demo_records if r["source"] == "photo")
    same = str(tmp_path / "same.png")
    shutil.copyfile(src, same)
    with Image.open(src) as img:
        img = img.convert("RGB")
        small = str(tmp_path / "small.png")
        img.resize((img.width // 2, img.height // 2)).save(small)
        blurred = str(tmp_path / "blurred.png")
        img.filter(ImageFilter.GaussianBlur(4)).save(blurred)
    others = [r["filepath"] for r in demo_records if r["source"] == "digit"][:5]
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in [blurred, same, src, small] + others])
    # Without an encoder: only the byte-identical pair.
    report = lc.find_duplicates(ds, None)
    assert report.num_groups == 1 and report.num_duplicates == 1
    assert sorted(report.files[s] for s in report.groups[0]) == sorted([same, src])
    assert ds.match_tags("duplicate").values("filepath") == [src]  # "first" keeps same.png
    # One vector for all four copies: a group of 4; keep the largest / the sharpest.
    copies = {blurred: [1, 0, 0, 0], same: [1, 0, 0, 0], src: [1, 0, 0, 0],
              small: [0.99, 0.05, 0, 0]}
    far = np.eye(4)[1:]
    ds.set_values("emb", [np.asarray(copies.get(p, far[i % 3] + 0.3 * i * far[(i + 1) % 3]),
                                     np.float32)
                          for i, p in enumerate(ds.values("filepath"))])
    ls.build_index(ds, "emb", "sim")
    report = lc.find_duplicates(ds, "sim", threshold=0.01, keep="largest")
    assert report.num_groups == 1 and len(report.groups[0]) == 4
    kept = report.files[report.groups[0][0]]
    assert kept in (same, src, blurred) and kept != small
    report = lc.find_duplicates(ds, "sim", threshold=0.01, keep="sharpest")
    assert report.files[report.groups[0][0]] != blurred
    assert sharpness(blurred) < 0.5 * sharpness(src)
    assert len(ds.match_tags("duplicate")) == 3  # earlier tags were replaced, not added
    view = lc.duplicates_view(ds)
    assert view.values("dup_group") == [1, 1, 1, 1] and view.values("dup_distance")[0] == 0
    # Deleting is explicit: a dry run counts, then only the tagged samples go.
    assert lc.delete_duplicates(ds, dry_run=True).count == 3 and len(ds) == 9
    assert lc.delete_duplicates(ds, dry_run=False).count == 3 and len(ds) == 6
    assert all(os.path.exists(p) for p in (blurred, same, src, small))
