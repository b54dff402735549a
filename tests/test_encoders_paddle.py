"""The Paddle autoencoder: trains on real images, saves, reloads anywhere, embeds fast, resumes."""

import json
import os

import fiftyone as fo
import numpy as np
import pytest

import imagefiles as files
from processes import embed_in_fresh_process
from lookalike.encoders import (
    EncoderStoreError,
    TrainingConfigError,
    TrainingStopped,
    load_encoder,
    read_manifest,
    request_stop,
    train_encoder,
)
from lookalike.encoders import autoencoder as ae
from lookalike.encoders.data import EmptyViewError, load_images
from lookalike.encoders.preprocessing import input_manifest

SMALL = dict(image_size=32, width=0.25, batch_size=8)  # 16/32/64 channels: seconds, not minutes


@pytest.fixture(scope="module")
def photos(demo_records):
    records = demo_records
    paths = [r["filepath"] for r in records if r["source"] == "photo"][:24]
    return paths, load_images(paths, input_manifest("autoencoder", 32)).images


def test_trains_saves_and_reloads_in_a_fresh_process(photos, store_dir, subprocess_env, tmp_path):
    paths, images = photos
    seen = []
    path = ae.train(images, "ae-small", epochs=2, store_dir=store_dir, preview_images=images[:3],
                    on_epoch=lambda e, n, m: seen.append((e, n, m["loss"])), **SMALL)
    assert [(e, n) for e, n, _ in seen] == [(1, 2), (2, 2)]
    assert all(np.isfinite(loss) and loss > 0 for _, _, loss in seen)
    manifest = read_manifest(path)
    assert manifest["kind"] == "autoencoder" and manifest["framework"] == "paddle"
    assert manifest["image_size"] == 32 and manifest["embedding_size"] == 64
    assert manifest["epochs"] == 2 and manifest["final_metrics"]["loss"] == pytest.approx(seen[-1][2])
    assert {"encoder.json", "encoder.pdiparams", "autoencoder.npz"} <= set(manifest["files"])
    assert len([f for f in manifest["files"] if f.startswith("previews/")]) == 3
    assert not os.path.exists(os.path.join(store_dir, ".ae-small.partial"))

    encoder = load_encoder("ae-small")
    emb = encoder.embed(images)
    assert emb.shape == (len(images), 64) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # The fast path (Paddle Inference, oneDNN) equals the dynamic graph.
    assert np.abs(emb - encoder.embed_dynamic(images)).max() < 1e-4

    fresh, stdout = embed_in_fresh_process(path, images, tmp_path, subprocess_env)
    assert np.abs(fresh - emb).max() < 1e-5
    assert "LOADED ['paddle']" in stdout  # a Paddle encoder does not pull in TensorFlow


def test_embed_paths_skips_unreadable_files(photos, store_dir, tmp_path):
    paths, images = photos
    path = ae.train(images[:8], "ae-paths", epochs=1, store_dir=store_dir, **SMALL)
    encoder = load_encoder(path)
    bad = files.write_truncated_jpeg(str(tmp_path / "cut.jpg"))
    gone = str(tmp_path / "gone.png")
    emb, ok, failures = encoder.embed_paths([paths[0], bad, gone, paths[1]], batch_size=2)
    assert ok == [0, 3] and emb.shape == (2, 64)
    assert [f.path for f in failures] == [bad, gone]
    assert "truncated" in failures[0].reason and "not found" in failures[1].reason
    assert np.abs(emb - encoder.embed(images[:2])).max() < 1e-5


def test_interrupted_training_resumes_where_it_stopped(photos, store_dir):
    _, images = photos
    images = images[:16]
    reference = ae.train(images, "ae-ref", epochs=3, store_dir=store_dir, **SMALL)

    calls = {"n": 0}

    def stop_in_second_epoch():
        calls["n"] += 1
        return calls["n"] > 3  # 2 batches per epoch: stops inside epoch 2

    with pytest.raises(TrainingStopped, match="1 epochs are saved"):
        ae.train(images, "ae-resumed", epochs=3, store_dir=store_dir,
                 should_stop=stop_in_second_epoch, **SMALL)
    partial = os.path.join(store_dir, ".ae-resumed.partial")
    with open(os.path.join(partial, "state.json")) as f:
        assert [h["epoch"] for h in json.load(f)["history"]] == [1]

    epochs_run = []
    path = ae.train(images, "ae-resumed", epochs=3, store_dir=store_dir,
                    on_epoch=lambda e, n, m: epochs_run.append(e), **SMALL)
    assert epochs_run == [2, 3]  # epoch 1 was not redone
    assert [h["epoch"] for h in read_manifest(path)["history"]] == [1, 2, 3]
    # Weights and optimiser state were restored exactly: same result as never stopping.
    a, b = load_encoder(reference).embed(images), load_encoder(path).embed(images)
    assert np.abs(a - b).max() < 1e-4


def test_stop_file_and_changed_settings(photos, store_dir):
    _, images = photos
    with pytest.raises(TrainingStopped):
        ae.train(images[:8], "ae-stop", epochs=2, store_dir=store_dir,
                 on_epoch=lambda e, n, m: request_stop("ae-stop", store_dir), **SMALL)
    with pytest.raises(TrainingConfigError, match="other settings"):
        ae.train(images[:8], "ae-stop", epochs=5, store_dir=store_dir, **SMALL)
    path = ae.train(images[:8], "ae-stop", epochs=5, store_dir=store_dir, resume=False, **SMALL)
    assert read_manifest(path)["epochs"] == 5


def test_bad_settings_and_names(photos, store_dir):
    _, images = photos
    with pytest.raises(TrainingConfigError, match="multiple of 8"):
        ae.train(load_images([], input_manifest("autoencoder", 30)).images, "x", image_size=30, store_dir=store_dir)
    with pytest.raises(TrainingConfigError, match="embedding must be one of"):
        ae.train(images[:2], "x", embedding="mean", store_dir=store_dir, **SMALL)
    with pytest.raises(TrainingConfigError, match="expected images of shape"):
        ae.train(images[:2], "x", store_dir=store_dir, image_size=64, width=0.25)
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(EncoderStoreError, match="invalid encoder name"):
            ae.train(images[:2], bad, store_dir=store_dir, **SMALL)
    ae.train(images[:4], "taken", epochs=1, store_dir=store_dir, **SMALL)
    with pytest.raises(EncoderStoreError, match="already exists"):
        ae.train(images[:4], "taken", epochs=1, store_dir=store_dir, **SMALL)
    path = ae.train(images[:4], "taken", epochs=1, store_dir=store_dir, overwrite=True, **SMALL)
    assert read_manifest(path)["epochs"] == 1


def test_flatten_embedding_warns_with_its_size(photos, store_dir):
    _, images = photos
    with pytest.warns(UserWarning, match=r"4\.1 KB per image at 32 px \(4\.1 GB per million"):
        path = ae.train(images[:4], "ae-flat", epochs=1, embedding="flatten", store_dir=store_dir,
                        **SMALL)
    encoder = load_encoder(path)
    assert encoder.embedding_size == 64 * 4 * 4
    assert encoder.embed(images[:2]).shape == (2, 1024)


def test_load_refuses_what_is_not_a_good_encoder(photos, store_dir, tmp_path):
    _, images = photos
    path = ae.train(images[:4], "ae-check", epochs=1, store_dir=store_dir, **SMALL)
    with pytest.raises(EncoderStoreError, match="trained at 32 px"):
        load_encoder("ae-check", image_size=64)

    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(EncoderStoreError, match="not a lookalike encoder"):
        load_encoder(str(tmp_path / "random"))
    with pytest.raises(EncoderStoreError, match="no such model directory"):
        load_encoder(str(tmp_path / "nowhere"))

    import shutil

    broken = str(tmp_path / "broken")
    shutil.copytree(path, broken)
    with open(os.path.join(broken, "encoder.pdiparams"), "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe\xfd")
    with pytest.raises(EncoderStoreError, match="encoder.pdiparams is corrupt"):
        load_encoder(broken)
    os.remove(os.path.join(broken, "encoder.pdiparams"))
    with pytest.raises(EncoderStoreError, match="encoder.pdiparams is missing"):
        load_encoder(broken)

    old = str(tmp_path / "old")
    shutil.copytree(path, old)
    manifest_path = os.path.join(old, "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest["framework_version"] = "2.6.0"
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(EncoderStoreError, match="cannot read it"):
        load_encoder(old)
    manifest["format"] = "something-else"
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(EncoderStoreError, match="not a lookalike encoder manifest"):
        load_encoder(old)


def test_train_encoder_on_a_view_with_odd_and_broken_images(store_dir, tmp_path, dataset_name):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = [
        files.write_jpeg(str(folder / "a.jpg")),
        files.write_png16(str(folder / "b16.png")),
        files.write_rgba_png(str(folder / "c.png")),
        files.write_palette_gif(str(folder / "d.gif")),
        files.write_cmyk_jpeg(str(folder / "e.jpg")),
    ]
    tiny = str(folder / "tiny.png")
    files.photo("chelsea").convert("RGB").resize((12, 9)).save(tiny)  # smaller than 32 px
    cut = files.write_truncated_jpeg(str(folder / "cut.jpg"))
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in good + [tiny, cut, str(folder / "gone.jpg")]])

    result = train_encoder(ds, "autoencoder", "ae-view", epochs=1, batch_size=4, image_size=32,
                           width=0.25, store_dir=store_dir)
    assert result.manifest["num_training_images"] == 6
    assert sorted(os.path.basename(f.path) for f in result.failures) == ["cut.jpg", "gone.jpg"]
    assert result.manifest["training_data"]["dataset"] == dataset_name

    with pytest.raises(EmptyViewError, match="view is empty"):
        train_encoder(ds.limit(0), "autoencoder", "ae-empty", store_dir=store_dir)
    only_bad = ds.match(fo.ViewField("filepath").is_in([cut]))
    with pytest.raises(EmptyViewError, match="none of the 1 images could be read"):
        train_encoder(only_bad, "autoencoder", "ae-bad", store_dir=store_dir)
    with pytest.raises(TrainingConfigError, match="unknown encoder kind"):
        train_encoder(ds, "vae", "x", store_dir=store_dir)
