"""An external vector database (LanceDB, embedded) indexes the same field with the same distances.

So thresholds calibrated on lookalike's index apply to a fiftyone-brain external
backend too. LanceDB needs no server, so it can be tested here; Qdrant and
Milvus need one (fiftyone-brain 0.25's Qdrant backend passes only a server URL).
"""

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
