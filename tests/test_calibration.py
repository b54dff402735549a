"""Calibration equals a direct computation; leave-one-out never matches a sample to itself."""

import numpy as np
import pytest

from lookalike.calibration import (
    CalibrationError,
    calibrate_labels,
    calibrate_percentile,
    nearest_other,
    optimal_index,
    target_index,
    threshold_sweep,
)


def test_hand_checked_sweep():
    curve = threshold_sweep([0.1, 0.2, 0.2, 0.3, 0.5], [True, True, False, True, False])
    assert curve.thresholds.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.5])
    assert curve.tp.tolist() == [1, 2, 3, 3] and curve.fp.tolist() == [0, 1, 1, 2]
    assert curve.fn.tolist() == [2, 1, 0, 0] and curve.tn.tolist() == [2, 1, 1, 0]
    assert curve.precision.tolist() == pytest.approx([1, 2 / 3, 3 / 4, 3 / 5])
    assert curve.recall.tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert curve.f1.tolist() == pytest.approx([0.5, 2 / 3, 6 / 7, 0.75])
    assert curve.thresholds[optimal_index(curve, "f1")] == pytest.approx(0.3)
    # precision >= 0.75 holds at 0.1 and 0.3: the largest distance wins
    assert curve.thresholds[target_index(curve, "precision", 0.75)] == pytest.approx(0.3)
    assert curve.thresholds[target_index(curve, "recall", 0.6)] == pytest.approx(0.2)
    assert target_index(curve, "precision", 1.01) is None


def test_last_argmax_on_a_tie():
    # F1 is 2/3 at 0.1 and again at 0.4: the optimum is the largest distance.
    curve = threshold_sweep([0.1, 0.2, 0.3, 0.4], [True, False, False, True])
    assert curve.f1.tolist() == pytest.approx([2 / 3, 0.5, 0.4, 2 / 3])
    assert curve.thresholds[optimal_index(curve, "f1")] == pytest.approx(0.4)


def test_sweep_equals_direct_computation_with_many_ties():
    rng = np.random.default_rng(0)
    d = np.round(rng.random(300), 1).astype(np.float32)  # 11 distinct values: ties everywhere
    correct = rng.random(300) < 0.7
    curve = threshold_sweep(d, correct)
    for i, t in enumerate(curve.thresholds):
        acc = d <= t
        tp, fp = int((acc & correct).sum()), int((acc & ~correct).sum())
        fn = int((~acc & correct).sum())
        p, r = tp / (tp + fp), tp / (tp + fn)
        assert (curve.tp[i], curve.fp[i], curve.fn[i]) == (tp, fp, fn)
        assert curve.f1[i] == pytest.approx(2 * p * r / (p + r) if p + r else 0)
    best = max(curve.f1)
    assert optimal_index(curve) == max(i for i, v in enumerate(curve.f1) if v == best)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_leave_one_out_never_returns_the_sample_itself():
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(200, 8)).astype(np.float32))
    x[100] = x[101]  # an exact duplicate pair
    idx, dist = nearest_other(x, batch=64)
    assert (idx != np.arange(200)).all()
    assert idx[100] == 101 and idx[101] == 100 and dist[100] < 1e-6
    full = 1 - x @ x.T
    np.fill_diagonal(full, np.inf)
    assert np.allclose(dist, full.min(axis=1), atol=1e-5)


def test_labelled_calibration_and_open_set():
    rng = np.random.default_rng(2)
    centers = _unit(rng.normal(size=(6, 16)))
    labels = np.repeat(np.arange(6), 30)
    x = _unit(centers[labels] + 0.15 * rng.normal(size=(180, 16))).astype(np.float32)
    closed = calibrate_labels(x, labels, method="f1")
    assert closed.metric_values["precision"] == pytest.approx(1.0)
    # Every query is correct: F1 is best when everything is accepted.
    assert closed.threshold == pytest.approx(closed.curve.thresholds.max())
    opened = calibrate_labels(x, labels, method="f1", unknown_classes=[4, 5])
    assert opened.unknown_classes == [4, 5]
    assert opened.threshold < closed.threshold  # rejecting unknowns now counts
    strict = calibrate_labels(x, labels, method="precision", target=0.99, unknown_classes=[5])
    assert strict.metric_values["precision"] >= 0.99


def test_bad_input():
    x = _unit(np.random.default_rng(3).normal(size=(10, 4)))
    with pytest.raises(CalibrationError, match="only one class"):
        calibrate_labels(x, ["a"] * 10)
    with pytest.raises(CalibrationError, match="at least 2"):
        calibrate_labels(x[:1], ["a"])
    with pytest.raises(CalibrationError, match="needs a target"):
        calibrate_labels(x, ["a", "b"] * 5, method="precision")
    with pytest.raises(CalibrationError, match="every class is held out"):
        calibrate_labels(x, ["a", "b"] * 5, unknown_classes=["a", "b"])
    with pytest.raises(CalibrationError, match="between 0 and 100"):
        calibrate_percentile(x, 100)


def test_label_free_percentile():
    x = _unit(np.random.default_rng(4).normal(size=(100, 6)))
    cal = calibrate_percentile(x, 90, duplicate_percentile=2)
    _, nn = nearest_other(x)
    assert cal.threshold == pytest.approx(np.percentile(nn, 90))
    assert cal.metric_values["duplicate_threshold"] == pytest.approx(np.percentile(nn, 2))
    assert "no labels" in cal.note
