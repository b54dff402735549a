"""An external vector database (LanceDB, embedded) indexes the same field with the same distances.

So thresholds calibrated on lookalike's index apply to a fiftyone-brain external
backend too (:mod:`lookalike.curation.other_backends`). LanceDB needs no server, so it can be tested here; Qdrant and
Milvus need one (fiftyone-brain 0.25's Qdrant backend passes only a server URL).
"""

import subprocess
import sys

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest

import lookalike.similarity as ls

lancedb = pytest.importorskip("lancedb", reason="lancedb is in the [test] extra")


def test_lancedb_backend_agrees_with_ours(dataset_name, tmp_path):
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nowhere/{i}.jpg") for i in range(300)])
    rng = np.random.default_rng(0)
    ds.set_values("emb", list(rng.normal(size=(300, 16)).astype(np.float32)))
    ours = ls.build_index(ds, "emb", "ours")
    external = fob.compute_similarity(ds, embeddings="emb", brain_key="lance", backend="lancedb",
                                      metric="cosine", uri=str(tmp_path / "lancedb"))
    ids = ds.values("id")
    for i in (0, 17, 123):
        a_ids, _, a_d = ours._kneighbors(ids[i], k=10, return_dists=True)
        b_ids, _, b_d = external._kneighbors(ids[i], k=10, return_dists=True)
        assert a_ids == b_ids
        assert np.allclose(a_d, b_d, atol=1e-5)  # both 1 - cos: one threshold scale


def test_a_lancedb_index_answers_with_the_calibrated_thresholds_of_the_same_field(
        dataset_name, demo_records, copies_encoder, tmp_path, subprocess_env):
    """Past one machine: fiftyone-brain's LanceDB backend (embedded) over our field, our thresholds."""
    import lookalike.curation as lc
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.core.errors import SimilarityIndexError
    from lookalike.curation.other_backends import lookup

    photos = [r for r in demo_records if r["source"] == "photo"]
    # A JPEG copy: an edit the encoder is invariant to within its two-sided threshold.
    held_out = next(r for r in photos if r["gt_edit"] == "jpeg")
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in photos if r is not held_out])
    ds.persistent = True
    compute_embeddings(ds, copies_encoder, "emb")
    ls.build_index(ds, "emb", "emb_sim")
    record = lc.calibrate_threshold(ds, "emb_sim")
    fob.compute_similarity(ds, backend="lancedb", embeddings="emb", brain_key="emb_lance",
                           uri=str(tmp_path / "lance"), table_name="photos", metric="cosine")
    # Query by a new image file: embedded with the field's encoder, searched by LanceDB.
    found = lookup(ds, "emb_lance", query_path=held_out["filepath"], k=10)
    ids, dists = ls.nearest(ds, "emb_sim", query_path=held_out["filepath"], k=10)
    assert [n.sample_id for n in found][:3] == list(ids)[:3]
    np.testing.assert_allclose([n.distance for n in found], dists, atol=1e-5)
    group_of = {r["filepath"]: r["gt_group"] for r in photos}
    assert group_of[ds[found[0].sample_id].filepath] == held_out["gt_group"]  # a copy of it
    assert found[0].decision == "duplicate"
    for n in found:  # our thresholds on their distances; label-free: a duplicate or new
        assert n.decision == ("duplicate" if n.distance <= record.duplicate_threshold else "new")
    assert {n.decision for n in found} >= {"new"}
    # The CLI's search takes the other backend's key the same way. The URI is
    # a connection setting that fiftyone-brain does not save with the run: a
    # process without it is told so in one line.
    search = [sys.executable, "-m", "lookalike.cli", "search", "--dataset", ds.name,
              "--brain-key", "emb_lance", "--image", held_out["filepath"], "-k", "3"]
    out = subprocess.run(search, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "FIFTYONE_BRAIN_SIMILARITY_LANCEDB_URI" in out.stderr
    assert "Traceback" not in out.stderr
    env = dict(subprocess_env, FIFTYONE_BRAIN_SIMILARITY_LANCEDB_URI=str(tmp_path / "lance"))
    out = subprocess.run(search, env=env, capture_output=True, text=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(lines) == 3, out.stderr[-2000:]
    assert lines[0].split()[1] == found[0].decision
    assert lines[0].endswith(ds[found[0].sample_id].filepath)
    # Query by a sample: itself first, at distance 0, a duplicate of itself.
    some_id = ds.first().id
    first = lookup(ds, "emb_lance", query_ids=[some_id], k=3)[0]
    assert first.sample_id == some_id and first.distance < 1e-5 and first.decision == "duplicate"
    # Distances that are not cosine distances are refused in one line.
    fob.compute_similarity(ds, backend="lancedb", embeddings="emb", brain_key="emb_l2",
                           uri=str(tmp_path / "lance"), table_name="photos_l2", metric="euclidean")
    with pytest.raises(SimilarityIndexError, match="measures euclidean distance; lookalike's "
                                                   "thresholds are cosine distances"):
        lookup(ds, "emb_l2", query_ids=[some_id], k=3)
