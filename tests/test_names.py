"""The default names each written once: an encoder's embeddings field, an index's brain key.

The bug that made them one rule: ``curate(encoder="ae.v2")`` wrote a field
named ``emb_ae.v2``, which FiftyOne reads as the path ``emb_ae`` -> ``v2``.
"""

import fiftyone as fo
import pytest
import numpy as np

from lookalike.curation import curate
from lookalike.embeddings.compute import default_field_name
from lookalike.encoders import autoencoder as ae
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import input_manifest
from lookalike.similarity import default_brain_key


def test_default_field_name_is_a_plain_top_level_field():
    assert default_field_name("ae.v2") == "emb_ae_v2"
    assert default_field_name("copies-2024") == "emb_copies_2024"
    assert default_field_name("plain_name") == "emb_plain_name"
    assert default_brain_key("emb_ae_v2") == "emb_ae_v2_sim"


def test_curate_with_a_dotted_encoder_name_writes_a_top_level_field(
        store_dir, dataset_name, demo_records):
    photos = [r["filepath"] for r in demo_records if r["source"] == "photo"][:12]
    ae.train(load_images(photos, input_manifest("autoencoder", 32)).images, "ae.v2", store_dir=store_dir,
             image_size=32, width=0.25, batch_size=8, epochs=1)
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in photos])

    report = curate(ds, encoder="ae.v2")

    assert report.embeddings_field == "emb_ae_v2"
    assert report.brain_key == "emb_ae_v2_sim"
    schema = ds.get_field_schema()
    assert "emb_ae_v2" in schema and "emb_ae" not in schema
    vectors = [v for v in ds.values("emb_ae_v2") if v is not None]
    assert len(vectors) == len(photos) and np.asarray(vectors).shape[1] > 0


def test_one_engine_choice_refused_in_one_line_by_index_and_duplicates(dataset_name):
    import lookalike.curation as lc
    import lookalike.similarity as ls
    from lookalike.core.errors import IndexSettingsError

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=f"/nowhere/{i}.png") for i in range(4)])
    ds.add_sample_field("emb", fo.VectorField)
    rng = np.random.default_rng(0)
    ds.set_values("emb", [v / np.linalg.norm(v) for v in rng.normal(size=(4, 8))])
    for call in (lambda: ls.build_index(ds, "emb", "k", engine="bogus"),
                 lambda: lc.find_duplicates(ds, None, engine="bogus")):
        with pytest.raises(IndexSettingsError, match="unknown engine 'bogus'; choose from auto"):
            call()
    assert "k" not in ds.list_brain_runs()
