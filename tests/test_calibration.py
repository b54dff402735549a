"""The threshold sweep equals a direct computation; the choice follows TF Similarity's rules."""

import numpy as np
import pytest

from lookalike.curation.sweep import choose, threshold_sweep
from lookalike.core.errors import CalibrationError


def test_hand_checked_sweep():
    curve = threshold_sweep([0.1, 0.2, 0.2, 0.3, 0.5], [True, True, False, True, False])
    assert curve.thresholds.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.5])
    assert curve.tp.tolist() == [1, 2, 3, 3] and curve.fp.tolist() == [0, 1, 1, 2]
    assert curve.fn.tolist() == [2, 1, 0, 0] and curve.tn.tolist() == [2, 1, 1, 0]
    assert curve.precision.tolist() == pytest.approx([1, 2 / 3, 3 / 4, 3 / 5])
    assert curve.recall.tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert curve.f1.tolist() == pytest.approx([0.5, 2 / 3, 6 / 7, 0.75])
    assert curve.thresholds[choose(curve, "f1")] == pytest.approx(0.3)
    # precision >= 0.75 holds at 0.1 and 0.3: the largest distance wins
    assert curve.thresholds[choose(curve, "precision", 0.75)] == pytest.approx(0.3)
    assert curve.thresholds[choose(curve, "recall", 0.6)] == pytest.approx(0.2)
    with pytest.raises(CalibrationError, match="precision 1.01 is never reached"):
        choose(curve, "precision", 1.01)


def test_last_argmax_on_a_tie():
    # F1 is 2/3 at 0.1 and again at 0.4: the optimum is the largest distance.
    curve = threshold_sweep([0.1, 0.2, 0.3, 0.4], [True, False, False, True])
    assert curve.f1.tolist() == pytest.approx([2 / 3, 0.5, 0.4, 2 / 3])
    assert curve.thresholds[choose(curve, "f1")] == pytest.approx(0.4)


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
    assert choose(curve, "f1") == max(i for i, v in enumerate(curve.f1) if v == best)
