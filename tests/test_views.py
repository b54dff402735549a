"""Curation honours the view it is given, as fiftyone-brain's methods do."""

import fiftyone as fo
import numpy as np
import pytest

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.core.errors import LookalikeError

DIM = 8


@pytest.fixture
def ds(dataset_name, demo_records):
    """Pairs of near-identical vectors: in the whole dataset nothing is isolated."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(10, DIM))
    vectors = [c + 0.01 * rng.normal(size=DIM) for c in centres for _ in range(2)]
    dataset = fo.Dataset(dataset_name)
    dataset.add_samples([fo.Sample(filepath=r["filepath"], pair=n // 2,
                                   ground_truth=fo.Classification(label=str(n // 2 % 2)))
                         for n, r in enumerate(demo_records[:20])])
    dataset.set_values("emb", [np.asarray(v, np.float32) for v in vectors])
    dataset.persistent = True
    ls.build_index(dataset, "emb", "sim")
    return dataset


def test_outliers_are_isolated_within_the_view(ds):
    assert lc.flag_outliers(ds, "sim", threshold=0.05).num_outliers == 0
    # Keep one member of pairs 0-2: within this view those three match nothing.
    view = ds.exclude([ds.match(fo.ViewField("pair") == p).first().id for p in range(3)])
    assert len(view) == 17
    report = lc.flag_outliers(view, "sim", threshold=0.05)
    assert report.num_outliers == 3
    assert set(ds.select(report.outlier_ids).values("pair")) == {0, 1, 2}


def test_calibration_counts_and_measures_only_the_view(ds):
    whole = lc.calibrate_threshold(ds, "sim")
    half = lc.calibrate_threshold(ds.match(fo.ViewField("pair") < 5), "sim")
    assert whole.num_indexed == 20 and half.num_indexed == 10
    assert half.num_queries == 10


@pytest.mark.parametrize("call", [
    lambda v: lc.calibrate_threshold(v, "sim"),
    lambda v: lc.find_duplicates(v, "sim", threshold=0.05),
    lambda v: lc.flag_outliers(v, "sim", threshold=0.05),
    lambda v: lc.evaluate_retrieval(v, "sim", "ground_truth"),
    lambda v: lc.visualize_embeddings(v, "emb", method="pca"),
    lambda v: ls.build_index(v, "emb", "sim2"),
])
def test_an_empty_view_is_one_clear_error(ds, call):
    with pytest.raises(LookalikeError) as e:
        call(ds.limit(0))
    message = str(e.value)
    assert "\n" not in message
    assert "empty" in message or "no samples" in message or message.startswith("0 ")
