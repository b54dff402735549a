"""The two-sided duplicate threshold and the one decision rule, on constructed distances.

Pure arithmetic (lookalike.curation.thresholds): copies per edit on one side,
distances between different images by kind on the other.
"""

import numpy as np
import pytest

from lookalike.curation.thresholds import (
    DuplicateRule,
    decide,
    match_threshold,
    rate_limit,
    two_sided_threshold,
)
from lookalike.core.errors import CalibrationError

RNG = np.random.default_rng(0)


def _negatives(low=0.2, high=0.9, n=2000):
    return {"neighbours": RNG.uniform(low, high, n), "random": RNG.uniform(0.5, 1.2, n)}


def test_separable_copies_keep_the_recall_asked_for_and_admit_no_negatives():
    copies = {"jpeg": RNG.uniform(0.0, 0.02, 200), "crop": RNG.uniform(0.01, 0.08, 200)}
    rule = two_sided_threshold(copies, _negatives(), recall=0.95)
    kept = np.concatenate(list(copies.values()))
    assert rule.separable and rule.limited_by == "copies" and not rule.excluded_edits
    assert rule.threshold == pytest.approx(np.percentile(kept, 95))
    assert rule.recall == pytest.approx(0.95, abs=0.01)
    assert rule.false_pair_rate == {"neighbours": 0.0, "random": 0.0}
    assert rule.recall_per_edit["jpeg"] == 1.0 and 0.8 < rule.recall_per_edit["crop"] < 1.0
    assert "keeps 95% of the copies" in rule.explain() and "cannot" not in rule.explain()


def test_an_edit_among_the_negatives_is_named_and_left_out():
    # A mirrored digit is another glyph: hflip copies lie where different images do.
    copies = {"jpeg": RNG.uniform(0.0, 0.02, 200), "hflip": RNG.uniform(0.3, 0.8, 200),
              "text_overlay": RNG.uniform(0.4, 0.9, 200)}
    one_sided = float(np.percentile(np.concatenate(list(copies.values())), 95))
    rule = two_sided_threshold(copies, _negatives())
    assert list(rule.excluded_edits) == ["hflip", "text_overlay"]  # nearest median first
    assert rule.threshold < 0.05 < one_sided  # not dragged out among the neighbours
    assert rule.recall_per_edit["jpeg"] >= 0.95 and rule.recall_per_edit["hflip"] == 0.0
    assert rule.separable and rule.false_pair_rate["neighbours"] == 0.0
    assert "not invariant to: hflip (median 0.5" in rule.explain()
    assert rule.not_invariant.startswith("hflip (median ") and ", text_overlay (0." in \
        rule.not_invariant


def test_overlapping_copies_and_negatives_cannot_separate_and_say_so():
    # Copies spread over the hard negatives: the false-pair target caps the threshold
    # far below the copies' reach.
    copies = {"crop": RNG.uniform(0.0, 0.15, 500), "rotate": RNG.uniform(0.0, 0.15, 500)}
    negatives = {"neighbours": RNG.uniform(0.05, 0.9, 3000)}
    rule = two_sided_threshold(copies, negatives, false_pair_target=0.001)
    assert not rule.excluded_edits  # medians short of the negatives' 5% quantile
    assert not rule.separable and rule.limited_by == "neighbours"
    assert rule.false_pair_rate["neighbours"] <= 0.001
    assert rule.recall < 0.5
    why = rule.why_not()
    assert why.startswith("cannot separate copies from different images") and "train" in why
    assert "needs 50%" in why and why in rule.explain()


def test_an_encoder_invariant_to_no_edit_cannot_separate():
    rule = two_sided_threshold({"hflip": RNG.uniform(0.5, 0.9, 100)}, _negatives())
    assert not rule.separable and rule.excluded_edits == {"hflip": pytest.approx(0.7, abs=0.05)}
    assert "invariant to none of the edits" in rule.why_not()


def test_the_false_pair_target_is_a_parameter_that_moves_the_threshold():
    copies = {"crop": RNG.uniform(0.0, 0.2, 1000)}
    negatives = {"neighbours": RNG.uniform(0.05, 1.5, 5000)}
    strict = two_sided_threshold(copies, negatives, false_pair_target=0.001)
    loose = two_sided_threshold(copies, negatives, false_pair_target=0.05)
    assert strict.threshold < loose.threshold
    assert strict.false_pair_rate["neighbours"] <= 0.001
    assert loose.false_pair_rate["neighbours"] <= 0.05
    assert strict.recall < loose.recall


def test_each_kind_of_negatives_caps_the_threshold_on_its_own():
    # Few junk probes close by (noise near a photo): they alone set the limit.
    copies = {"jpeg": RNG.uniform(0.0, 0.1, 200)}
    negatives = {"neighbours": RNG.uniform(0.3, 0.9, 2000), "junk": np.array([0.05, 0.6, 0.7])}
    rule = two_sided_threshold(copies, negatives)
    assert rule.limited_by == "junk" and rule.threshold < 0.05
    assert rule.false_pair_rate["junk"] == 0.0


def test_siblings_bound_the_threshold():
    copies = {"jpeg": RNG.uniform(0.0, 0.2, 200)}
    rule = two_sided_threshold(copies, _negatives(0.5), ceiling=0.06)
    assert rule.threshold < 0.06 and rule.limited_by == "siblings" and rule.ceiling == 0.06
    assert "a duplicate is closer than a sibling" in rule.notes[0]


def test_rate_limit_admits_at_most_the_target():
    negatives = np.sort(np.linspace(0.1, 1.0, 1000))
    limit = rate_limit(negatives, 0.01)  # 10 of 1000 allowed
    assert (negatives <= limit).sum() == 10
    assert rate_limit(negatives, 0.0001) < 0.1  # fewer than one allowed: below the nearest
    assert rate_limit(np.zeros(5), 0.001) == 0.0


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(CalibrationError, match="duplicate_recall"):
        two_sided_threshold({"a": [0.1]}, {"b": [0.5]}, recall=0)
    with pytest.raises(CalibrationError, match="false_pair_target"):
        two_sided_threshold({"a": [0.1]}, {"b": [0.5]}, false_pair_target=1)
    with pytest.raises(CalibrationError, match="no distances between different images"):
        two_sided_threshold({"a": [0.1]}, {"b": [np.nan]})
    with pytest.raises(CalibrationError, match="no synthetic copies"):
        two_sided_threshold({"a": []}, {"b": [0.5]})


def test_the_rule_round_trips_through_its_record():
    rule = two_sided_threshold({"jpeg": RNG.uniform(0, 0.02, 50)}, _negatives())
    assert DuplicateRule(**rule.to_record()) == rule


def test_decide_without_labels_is_duplicate_or_new():
    assert decide(0.01, 0.02) == "duplicate"
    assert decide(0.02, 0.02) == "duplicate"
    assert decide(0.03, 0.02) == "new"
    assert decide(None, 0.02) == "new" and decide(float("nan"), 0.02) == "new"
    # Without a label calibration there is nothing to match, however close.
    assert decide(0.03, 0.02, labelled=0.03, match_threshold=None) == "new"


def test_decide_with_labels_matches_within_the_match_threshold():
    assert decide(0.1, 0.02, labelled=0.1, match_threshold=0.2) == "match"
    assert decide(0.3, 0.02, labelled=0.3, match_threshold=0.2) == "new"
    assert decide(0.01, 0.02, labelled=0.5, match_threshold=0.2) == "duplicate"
    assert decide(0.05, 0.02, labelled=float("inf"), match_threshold=0.2) == "new"
    assert match_threshold({"threshold": 0.2, "label_field": "gt"}) == 0.2
    assert match_threshold({"threshold": 0.2, "label_field": None}) is None
