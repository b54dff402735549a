"""Forms that refuse before Execute (issue #27, cases 1 and 7): the App keeps Execute
disabled on an invalid form, and the form says why, so no refusal reaches the App as an
operator error (which showed a traceback and broke our panel)."""

import asyncio

import fiftyone as fo
import numpy as np
import pytest
from fiftyone.operators.executor import resolve_type
from fiftyone.operators.registry import OperatorRegistry
from PIL import Image

import lookalike.similarity as ls

PLUGIN = "@lookalike/similarity"
N, DIM = 12, 8


def _form(operator, dataset, params, selected=()):
    """The input form as the App asks for it (POST /operators/resolve-type)."""
    uri = f"{PLUGIN}/{operator}"
    request = {"operator_uri": uri, "target": "inputs", "dataset_name": dataset.name,
               "params": params, "selected": list(selected)}
    return asyncio.run(resolve_type(OperatorRegistry(), uri, request)).to_json()["type"]["properties"]


def _refusal(props):
    """The one invalid property of a form, with the reason it gives (None: valid)."""
    invalid = [(name, p) for name, p in props.items() if p.get("invalid")]
    assert len(invalid) <= 1, invalid
    return (invalid[0][0], invalid[0][1]["error_message"]) if invalid else None


@pytest.fixture
def ds(dataset_name, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for n in range(N):
        paths.append(str(tmp_path / f"{n}.png"))
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(paths[-1])
    dataset = fo.Dataset(dataset_name)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    dataset.set_values("emb", list(vectors))
    ls.build_index(dataset, "emb", "all_sim")
    ls.build_index(dataset.limit(6), "emb", "half_sim")
    return dataset


def test_find_similar_offers_the_indexes_holding_the_query_and_refuses_the_others(ds):
    outside = ds.skip(6).first().id  # not in half_sim
    props = _form("sort_by_similarity", ds, {}, selected=[outside])
    assert props["brain_key"]["default"] == "all_sim"
    assert _refusal(props) is None
    props = _form("sort_by_similarity", ds, {"brain_key": "half_sim"}, selected=[outside])
    name, why = _refusal(props)
    assert name == "not_covered" and "Index 'half_sim' does not hold the selected sample" in why
    inside = ds.first().id
    assert _refusal(_form("sort_by_similarity", ds, {"brain_key": "half_sim"},
                          selected=[inside])) is None


def test_find_leaks_without_splits_is_refused_in_the_form(ds):
    name, why = _refusal(_form("find_leaks", ds, {"brain_key": "all_sim"}))
    assert name == "no_splits" and "holds no split of the split tags train, val, test" in why
    ds.take(4, seed=1).tag_samples("train")
    name, why = _refusal(_form("find_leaks", ds, {"brain_key": "all_sim"}))
    assert "only the split 'train'" in why
    ds.skip(6).limit(3).tag_samples("test")
    assert _refusal(_form("find_leaks", ds, {"brain_key": "all_sim"})) is None


def test_the_delete_form_is_invalid_until_the_confirmation_is_ticked(ds):
    import lookalike.curation as lc

    pairs = ds.values("emb")
    pairs[1] = pairs[0] + 1e-4  # one near-duplicate pair
    ds.set_values("emb", pairs)
    ls.build_index(ds, "emb", "all_sim")
    lc.find_duplicates(ds, "all_sim", threshold=0.001, verify=False)
    name, why = _refusal(_form("delete_duplicates", ds, {}))
    assert name == "confirm" and why == "tick 'Yes, delete 1 samples' to delete them"
    assert _refusal(_form("delete_duplicates", ds, {"confirm": True})) is None
