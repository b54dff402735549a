"""compute_embeddings -> build_index -> sort_by_similarity, from Python and as operators."""

import os
import shutil

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest

import imagefiles as files
import lookalike.similarity as ls
from lookalike.embeddings.compute import EmbeddingFieldError, compute_embeddings, field_record
from lookalike.encoders import autoencoder as ae
from lookalike.encoders import load_encoder
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import input_manifest

PLUGIN = "@lookalike/similarity"
SMALL = dict(image_size=32, width=0.25, batch_size=8, epochs=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_records):
    """Two tiny autoencoders (different seeds) in a model store of their own."""
    path = str(tmp_path_factory.mktemp("models"))
    photos = [r["filepath"] for r in demo_records if r["source"] == "photo"][:8]
    images = load_images(photos, input_manifest("autoencoder", 32)).images
    ae.train(images, "tiny", store_dir=path, **SMALL)
    ae.train(images, "tiny-other", store_dir=path, seed=7, **SMALL)
    return path


@pytest.fixture
def photos(store, dataset_name, demo_records, monkeypatch, tmp_path):
    monkeypatch.setenv("LOOKALIKE_MODELS_DIR", store)
    paths = [r["filepath"] for r in demo_records if r["source"] == "photo"][:30]
    cut = files.write_truncated_jpeg(str(tmp_path / "cut.jpg"))
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in paths + [cut, str(tmp_path / "gone.png")]])
    return ds


def test_embeddings_are_written_recorded_and_resumable(photos, store):
    report = compute_embeddings(photos, "tiny", "emb", batch_size=8)
    assert report.embedded == 30 and report.skipped_existing == 0
    assert sorted(os.path.basename(f.path) for f in report.failures) == ["cut.jpg", "gone.png"]
    vectors = [v for v in photos.values("emb") if v is not None]
    assert len(vectors) == 30 and vectors[0].dtype == np.float32 and vectors[0].shape == (64,)
    assert np.allclose(np.linalg.norm(np.stack(vectors), axis=1), 1, atol=1e-5)
    errors = dict(zip(photos.values("filepath"), photos.values("emb_error")))
    assert "truncated" in errors[[p for p in errors if p.endswith("cut.jpg")][0]]
    assert sum(e is None for e in errors.values()) == 30
    assert field_record(photos, "emb")["version"] == load_encoder("tiny").version
    # Same as embedding directly.
    encoder = load_encoder("tiny")
    first = photos.first()
    direct, _, _ = encoder.embed_paths([first.filepath])
    assert np.abs(direct[0] - first.emb).max() < 1e-5

    again = compute_embeddings(photos, "tiny", "emb")
    assert again.embedded == 0 and again.skipped_existing == 30


def test_an_interrupted_job_keeps_its_finished_chunks(photos):
    calls = {"n": 0}

    def die_in_second_chunk(fraction, label):
        calls["n"] += 1
        if fraction > 8 / len(photos):
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        compute_embeddings(photos, "tiny", "emb", chunk_size=8, batch_size=4,
                           progress=die_in_second_chunk)
    kept = sum(v is not None for v in photos.values("emb"))
    assert kept == 8
    rest = compute_embeddings(photos, "tiny", "emb", chunk_size=8)
    assert rest.skipped_existing == 8 and rest.embedded == 22


def test_fields_never_mix_encoders(photos):
    compute_embeddings(photos, "tiny", "emb")
    with pytest.raises(EmbeddingFieldError, match="refusing to mix"):
        compute_embeddings(photos.limit(5), "tiny-other", "emb")
    assert field_record(photos, "emb")["encoder"] == "tiny"
    report = compute_embeddings(photos.limit(5), "tiny-other", "emb", overwrite=True)
    assert report.embedded == 5
    assert sum(v is not None for v in photos.values("emb")) == 5  # the rest was cleared
    photos.set_values("foreign", [np.ones(3)] * len(photos))
    with pytest.raises(EmbeddingFieldError, match="not written by lookalike"):
        compute_embeddings(photos, "tiny", "foreign")
    with pytest.raises(EmbeddingFieldError, match="view is empty"):
        compute_embeddings(photos.limit(0), "tiny", "emb")


def test_operators_end_to_end(photos, tmp_path):
    out = foo.execute_operator(f"{PLUGIN}/compute_embeddings", dataset=photos,
                               params={"encoder": "tiny", "embeddings_field": "emb"})
    assert out.result["embedded"] == 30 and len(out.result["failures"]) == 2
    out = foo.execute_operator(f"{PLUGIN}/build_index", dataset=photos,
                               params={"embeddings_field": "emb", "brain_key": "emb_sim"})
    assert out.result == {"brain_key": "emb_sim", "size": 30, "missing": 2}

    ids = photos.exists("emb").values("id")
    out = foo.execute_operator(f"{PLUGIN}/sort_by_similarity", dataset=photos,
                               selected=[ids[4]],
                               params={"brain_key": "emb_sim", "k": 5,
                                       "dist_field": "similarity_dist"})
    assert out.result["count"] == 5
    dists = [r["distance"] for r in out.result["results"]]
    assert dists[0] < 1e-6 and dists == sorted(dists)
    ops = [r["operator_uri"] for r in out.to_json()["executor"]["requests"]]
    assert "set_view" in ops

    # A query image that is not in the dataset: a copy of sample 4's file.
    query = str(tmp_path / "query.png")
    shutil.copyfile(photos[ids[4]].filepath, query)
    out = foo.execute_operator(f"{PLUGIN}/sort_by_similarity", dataset=photos,
                               params={"brain_key": "emb_sim", "k": 3, "query_path": query,
                                       "dist_field": "similarity_dist"})
    assert out.result["results"][0]["path"] == photos[ids[4]].filepath
    assert out.result["results"][0]["distance"] < 1e-5

    bad = files.write_truncated_jpeg(str(tmp_path / "bad.jpg"))
    with pytest.raises(foo.executor.ExecutionError, match="truncated"):
        foo.execute_operator(f"{PLUGIN}/sort_by_similarity", dataset=photos,
                             params={"brain_key": "emb_sim", "query_path": bad})
    with pytest.raises(foo.executor.ExecutionError, match="query_path.*Required property"):
        foo.execute_operator(f"{PLUGIN}/sort_by_similarity", dataset=photos,
                             params={"brain_key": "emb_sim", "query_path": ""})
    with pytest.raises(ValueError, match="select at least one sample"):
        ls.sort_by_similarity(photos, "emb_sim")


def test_flip_averaged_embeddings_give_a_mirror_copy_the_same_vector(photos, tmp_path):
    from PIL import Image, ImageOps

    plain, flip = load_encoder("tiny"), load_encoder("tiny", flip_average=True)
    assert flip.name == "tiny+flip" and flip.version == plain.version + "+flip"
    assert load_encoder("tiny+flip").version == flip.version  # as a field's record names it
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    mirrored = np.ascontiguousarray(x[:, :, ::-1])
    assert np.abs(flip.embed(x) - flip.embed(mirrored)).max() < 1e-5
    assert np.abs(plain.embed(x) - plain.embed(mirrored)).max() > 1e-2  # the plain one is not
    assert np.allclose(np.linalg.norm(flip.embed(x), axis=1), 1, atol=1e-5)

    # Through a field, an index and a query by a file outside the dataset.
    out = foo.execute_operator(f"{PLUGIN}/compute_embeddings", dataset=photos,
                               params={"encoder": "tiny", "flip_average": True,
                                       "embeddings_field": "emb_tiny_flip"})
    assert out.result["embedded"] == 30
    assert field_record(photos, "emb_tiny_flip")["version"] == flip.version
    with pytest.raises(EmbeddingFieldError, match="refusing to mix"):
        compute_embeddings(photos, "tiny", "emb_tiny_flip")  # plain vectors never join them
    index = ls.build_index(photos, "emb_tiny_flip", "flip_sim")
    original = photos.exists("emb_tiny_flip").first()
    query = str(tmp_path / "mirror.png")
    ImageOps.mirror(Image.open(original.filepath).convert("RGB")).save(query)
    ids, dists = index.nearest(ls.embed_query_image(index, query), k=1)
    assert ids[0] == original.id and dists[0] < 1e-4
    # The caller's loaded encoder is not changed by flip_average=True.
    report = compute_embeddings(photos.limit(3), plain, "emb_other", flip_average=True)
    assert report.encoder == flip.version and plain.flip_average is False


def test_cli_embed_index_search(photos, store, tmp_path, monkeypatch):
    from cli_runner import run_cli as cli  # in this process: the commands' output is the point

    photos.persistent = True
    monkeypatch.setenv("LOOKALIKE_MODELS_DIR", store)

    out = cli("embed", "--dataset", photos.name, "--encoder", "tiny", "--field", "emb")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "embedded 30 images into 'emb'" in out.stdout and "cut.jpg" in out.stdout
    out = cli("embed", "--dataset", photos.name, "--encoder", "tiny", "--flip-average")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "embedded 30 images into 'emb_tiny_flip'" in out.stdout and "+flip" in out.stdout
    out = cli("index", "--dataset", photos.name, "--field", "emb")
    assert "index 'emb_sim' over 'emb': 30 samples, 2 without an embedding" in out.stdout
    photos.reload()
    query = photos.exists("emb").first().filepath
    out = cli("search", "--dataset", photos.name, "--brain-key", "emb_sim", "--image", query,
              "-k", "3")
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].endswith(query) and lines[0].startswith("0.0000")
    out = cli("search", "--dataset", photos.name, "--brain-key", "missing", "--image", query)
    assert out.returncode == 2 and "not a lookalike similarity index" in out.stderr
