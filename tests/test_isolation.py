"""Label-free outliers ("isolated", the default without labels) against the percentile rule."""

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.curation.isolation import isolation_threshold
from lookalike.embeddings.compute import compute_embeddings


def _groups_and_loners(rng, groups=40, size=5, loners=3, dim=64):
    """Unit vectors: ``groups`` tight groups of copies (each its own spread), then ``loners``."""
    centres = rng.normal(size=(groups, dim))
    spread = np.exp(rng.uniform(np.log(0.002), np.log(0.03), size=groups))  # easy to hard copies
    copies = (centres[:, None, :] + spread[:, None, None] * rng.normal(size=(groups, size, dim)))
    return np.concatenate([copies.reshape(-1, dim), rng.normal(size=(loners, dim))])


def test_isolated_flags_exactly_the_loners_and_nothing_among_copies(dataset_name, demo_records):
    vectors = _groups_and_loners(np.random.default_rng(15))
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in demo_records[:len(vectors)]])
    ds.set_values("emb", [v.astype(np.float32) for v in vectors])
    ds.set_values("loner", [i >= 200 for i in range(len(vectors))])
    ls.build_index(ds, "emb", "sim")

    cal = lc.calibrate_threshold(ds, "sim")  # no labels: "isolated" is the default
    assert cal.method == "isolated" and cal.target == 2.5
    assert cal.note.startswith("no labels: 3 of 203 samples are isolated")
    report = lc.flag_outliers(ds, "sim")
    loners = ds.match(F("loner") == True).values("id")  # noqa: E712
    assert sorted(report.outlier_ids) == sorted(loners)

    copies = ds.match(F("loner") == False)  # noqa: E712
    lc.calibrate_threshold(copies, "sim")
    assert lc.flag_outliers(copies, "sim").num_outliers == 0
    # The percentile rule, when asked, still flags its share whatever the data.
    cal = lc.calibrate_threshold(copies, "sim", method="percentile", target=95)
    assert cal.method == "percentile" and cal.target == 95 and "5% of the samples" in cal.note
    assert lc.flag_outliers(copies, "sim").num_outliers == 10


def test_the_rule_ignores_exact_copies_and_never_goes_below_its_floor():
    rng = np.random.default_rng(4)
    spacing = np.exp(rng.normal(np.log(0.1), 0.2, size=100))
    # As many exact copies (distance 0) as spaced samples: the threshold is the
    # spacing's own median + 2.5 MAD (log scale), as if the copies were not there.
    logs = np.log(spacing)
    mad = np.median(np.abs(logs - np.median(logs)))
    threshold, centre = isolation_threshold(np.concatenate([spacing, np.zeros(100)]))
    assert threshold == pytest.approx(np.exp(np.median(logs) + 2.5 * 1.4826 * mad))
    assert centre == pytest.approx(np.exp(np.median(logs)))
    # A loner stands out, a higher k asks more; the floor bounds it below, 2 (cosine) above.
    alone, _ = isolation_threshold(spacing)
    assert isolation_threshold(np.append(spacing, 0.9))[0] < 0.9
    assert isolation_threshold(spacing, k=4)[0] > alone
    assert isolation_threshold(spacing, floor=1.5)[0] == 1.5
    assert isolation_threshold(spacing, k=100)[0] == 2.0
    # No spread at all: nobody is farther than the threshold, nothing is flagged.
    assert isolation_threshold(np.full(10, 0.5))[0] == 0.5
    with pytest.raises(lc.CalibrationError, match="must be > 0, got 0"):
        isolation_threshold(spacing, k=0)


def test_demo_photos_copies_only_flag_nothing_with_a_real_encoder(dataset_name, demo_records,
                                                                   copies_encoder, monkeypatch):
    import lookalike.curation.calibrate as calibration

    ds = fo.Dataset(dataset_name)
    photos = [r for r in demo_records if r["source"] == "photo"]
    ds.add_samples([fo.Sample(filepath=r["filepath"], gt_unique=r["gt_unique"],
                              gt_edit=r["gt_edit"]) for r in photos])
    compute_embeddings(ds, copies_encoder, "emb")
    ls.build_index(ds, "emb", "sim")
    copies_only = ds.match((F("gt_unique") == False)  # noqa: E712
                           & (F("gt_edit") != "other_view"))

    first = lc.calibrate_threshold(copies_only, "sim")
    assert lc.flag_outliers(copies_only, "sim").num_outliers == 0
    # Another method on the same view and embeddings: the slow duplicate part is reused.
    computed, compute = [], calibration.duplicate_threshold
    monkeypatch.setattr(calibration, "duplicate_threshold",
                        lambda *a, **k: computed.append(1) or compute(*a, **k))
    second = lc.calibrate_threshold(copies_only, "sim", method="percentile")
    assert computed == [] and second.method == "percentile"
    dup = {k: v for k, v in first.to_record().items() if k.startswith(("duplicate", "min_",
                                                                        "candidate"))}
    assert dup and all(second.to_record()[k] == v for k, v in dup.items())
    # The most isolated 5%, less those geometric verification shows to have a copy.
    report = lc.flag_outliers(copies_only, "sim")
    assert report.num_outliers + report.num_verified_copies == round(0.05 * len(copies_only))
    # On all the photos, what it flags are photos without a copy, the most isolated first.
    lc.calibrate_threshold(ds, "sim")
    assert computed == [1]  # another view: computed again
    flagged = lc.flag_outliers(ds, "sim").outlier_ids
    assert flagged and set(ds.select(flagged).values("gt_unique")) == {True}


def test_the_duplicate_part_is_reused_only_when_nothing_it_depends_on_changed(
        dataset_name, demo_records, monkeypatch):
    """Same view, same neighbours, same settings: reused. Other settings, labels, a view
    without one sample, an index rebuilt on other vectors: computed again, and equal to
    what a calibration from scratch gives."""
    import lookalike.curation.calibrate as calibration

    paths = [r["filepath"] for r in demo_records if r["source"] == "photo"][:16]
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p, gt=fo.Classification(label="ab"[n % 2]))
                    for n, p in enumerate(paths)])
    ds.set_values("emb", list(np.random.default_rng(5).normal(size=(16, 8)).astype(np.float32)))
    ls.build_index(ds, "emb", "sim")
    computed, compute = [], calibration.duplicate_threshold
    monkeypatch.setattr(calibration, "duplicate_threshold",
                        lambda *a, **k: computed.append(1) or compute(*a, **k))
    first = lc.calibrate_threshold(ds, "sim")
    again = lc.calibrate_threshold(ds, "sim", method="percentile", target=90)
    assert len(computed) == 1 and again.duplicate_threshold == first.duplicate_threshold
    for n, change in enumerate([dict(duplicate_recall=0.9), dict(false_pair_target=0.01),
                                dict(exclude_exact_duplicates=True), dict(seed=52),
                                dict(label_field="gt", method="percentile")], start=2):
        lc.calibrate_threshold(ds, "sim", **change)
        assert len(computed) == n, change
    lc.calibrate_threshold(ds.skip(1), "sim")  # a view without one sample
    assert len(computed) == 7
    ds.set_values("emb", list(np.random.default_rng(6).normal(size=(16, 8)).astype(np.float32)))
    ls.build_index(ds, "emb", "sim")
    rebuilt = lc.calibrate_threshold(ds, "sim")
    assert len(computed) == 8
    # A reused part equals the part computed from scratch on a twin index.
    reused = lc.calibrate_threshold(ds, "sim", method="percentile")
    ls.build_index(ds, "emb", "twin")
    fresh = lc.calibrate_threshold(ds, "twin", method="percentile")
    assert len(computed) == 9
    keys = rebuilt.to_record()["duplicate_extra_keys"] + ["duplicate_threshold", "duplicate_rule"]
    def named(value):  # the texts name their index
        return value.replace("'twin'", "'sim'") if isinstance(value, str) else value

    differ = {k: (reused.to_record()[k], fresh.to_record()[k]) for k in keys
              if reused.to_record()[k] != named(fresh.to_record()[k])}
    assert not differ, differ
