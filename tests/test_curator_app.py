"""What a curator meets in the App, below the browser (issue #27): delete then undelete
leaves every result as it was, the panel says what a delete left, tiles and rows say their
numbers in words, and the panel leads with the next useful step.

Undelete puts each sample back where it was in the dataset's order (the App's grid shows
the same first page), and the index reads its rows in the order of the sample ids, so no
result depends on where samples are stored (case 2).
"""

import numpy as np
import pytest

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.curation import journal
from lookalike.curation.deletion import delete_planned

from test_deletion import N, ds  # noqa: F401 (the fixture: 4 groups of 3 copies, 4 loners)


@pytest.mark.parametrize("method", ["isolated", "percentile"])
def test_delete_then_undelete_gives_the_same_index_rows_and_calibration(ds, method):  # noqa: F811
    lc.find_duplicates(ds, "sim", threshold=0.01)
    before = ls.load_index(ds, "sim")
    rows_before = list(before.sample_ids)
    calibration_before = lc.calibrate_threshold(ds, "sim", method=method)
    order_before = ds.values("id")

    assert delete_planned(ds).count == 8
    journal.restore(ds, last=True)
    assert ds.values("id") == order_before  # the grid's order, as before the delete

    after = ls.build_index(ds, "emb", "sim")
    assert list(after.sample_ids) == rows_before
    assert ls.load_index(ds, "sim").sample_ids.tolist() == rows_before
    calibration_after = lc.calibrate_threshold(ds, "sim", method=method)
    for name in ("threshold", "duplicate_threshold"):
        assert getattr(calibration_after, name) == getattr(calibration_before, name), name
    assert np.array_equal(after.engine.matrix, before.engine.matrix)
    assert len(ds) == N


def test_the_panel_says_what_a_delete_left_and_undelete_brings_it_back(ds):  # noqa: F811
    from lookalike.app import panel_rows

    lc.find_duplicates(ds, "sim", threshold=0.01)
    lc.calibrate_threshold(ds, "sim", method="percentile")
    lines = panel_rows.run_summary(ds, "sim")["lines"]
    assert not lines[0].startswith("STALE") and "deleted since" not in lines[-1]
    assert len(panel_rows.duplicate_group_rows(ds)) == 4

    delete_planned(ds)
    lines = panel_rows.run_summary(ds, "sim")["lines"]
    assert lines[0].startswith("STALE, recalibrate: ")
    assert lines[-1].startswith("Duplicates: 4 groups, 8 tagged (8 of them deleted since: "
                                "0 groups left; undelete restores them)")
    assert panel_rows.duplicate_group_rows(ds) == []  # resolved groups are not listed

    journal.restore(ds, last=True)
    lines = panel_rows.run_summary(ds, "sim")["lines"]
    assert not lines[0].startswith("STALE") and "deleted since" not in lines[-1]
    assert len(panel_rows.duplicate_group_rows(ds)) == 4


def test_the_undelete_form_names_each_deletion_in_words(ds):  # noqa: F811
    lc.find_duplicates(ds, "sim", threshold=0.01)
    delete_planned(ds)
    entry = journal.list_journals(ds)[0]
    label = entry.label()
    assert label.endswith(" UTC: 8 samples (delete_duplicates)"), label
    assert "." not in label.split(" UTC")[0] and "T" not in label.split(" UTC")[0]


def test_group_tiles_and_rows_say_their_numbers_in_words(ds):  # noqa: F811
    from lookalike.app import panel_rows
    from lookalike.curation.duplicates import tile_label

    lc.find_duplicates(ds, "sim", threshold=0.01)
    labels = lc.duplicates_view(ds).values("dup_label")
    assert labels[0] == "group 1: kept"
    assert all(label.startswith("group ") for label in labels)
    assert sum(label.startswith("group 1: distance ") for label in labels) == 2
    assert tile_label(2, False, 3.6e-6, 142) == "group 2: distance < 0.0001, 142 inliers"
    assert tile_label(2, False, 0.0, None) == "group 2: distance 0"
    rows = panel_rows.duplicate_group_rows(ds)
    assert [r["fewest_inliers"] for r in rows] == ["-"] * 4  # verification did not run


def test_the_panel_leads_with_the_next_useful_step(ds):  # noqa: F811
    from lookalike.app import panel_rows

    def step():
        runs = panel_rows.run_rows(ds)
        return panel_rows.next_step(ds, [], runs, panel_rows.duplicate_group_rows(ds))

    assert step().startswith("Calibrate an index")
    lc.find_duplicates(ds, "sim", threshold=0.01)
    assert step().startswith("Review the 4 duplicate groups below (Show), then Delete")
    delete_planned(ds)
    assert step().endswith("Undelete restores the 8 samples deleted last.")
    journal.restore(ds, last=True)
    assert "Undelete" not in step()


def test_an_index_loaded_before_a_delete_follows_the_delete_and_the_undelete(ds):  # noqa: F811
    """The App server keeps the index it loaded: after a delete and an undelete it must
    hold the restored samples again (it kept the rows of the deleted state, the
    calibration read STALE and the restored samples were never found)."""
    from lookalike.app import panel_rows

    lc.find_duplicates(ds, "sim", threshold=0.01)
    lc.calibrate_threshold(ds, "sim", method="percentile")
    assert ls.load_index(ds, "sim").total_index_size == N
    gone = delete_planned(ds).plan.delete_ids
    assert ls.load_index(ds, "sim").total_index_size == N - 8
    journal.restore(ds, last=True)
    index = ls.load_index(ds, "sim")
    assert index.total_index_size == N and set(gone) <= set(index.sample_ids)
    assert not panel_rows.run_summary(ds, "sim")["lines"][0].startswith("STALE")
