"""The TensorFlow encoders (metric and contrastive): train on real images, save, reload anywhere,
resume, and refuse bad labels and bad model directories with clear messages."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import fiftyone as fo
import numpy as np
import pytest

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
from lookalike.encoders import contrastive, keras_models as keras, metric, store
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import input_manifest
from lookalike.core.labels import labelled_view

SMALL = dict(image_size=32, width=0.25, embedding_size=32)  # 16/32/64/64 channels: seconds
METRIC = dict(SMALL, steps_per_epoch=2, classes_per_batch=4, examples_per_class_per_batch=4)
CLASSES = ["0", "1", "2", "3"]


@pytest.fixture(scope="module")
def demo(demo_records):
    # the first 120 digits, as this module was written for
    digits = [r for r in demo_records if r["source"] == "digit"][:120]
    return [r for r in demo_records if r["source"] == "photo"] + digits


@pytest.fixture(scope="module")
def digits(demo):
    """About 50 real digit images of 4 classes, with their labels and paths."""
    records = [r for r in demo if r["source"] == "digit" and r["label"] in CLASSES]
    paths = [r["filepath"] for r in records]
    return load_images(paths, input_manifest("metric", 32)).images, [r["label"] for r in records], paths


@pytest.fixture(scope="module")
def photos(demo):
    paths = [r["filepath"] for r in demo if r["source"] == "photo"][:16]
    return load_images(paths, input_manifest("metric", 32)).images


def test_importing_the_tf_encoders_imports_no_framework(subprocess_env):
    code = textwrap.dedent("""
        import sys
        import lookalike.encoders.metric, lookalike.encoders.contrastive
        print("HEAVY", [m for m in ("paddle", "tensorflow", "tf_keras", "tensorflow_similarity")
                        if m in sys.modules])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=subprocess_env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout


def test_metric_trains_saves_and_reloads_in_a_fresh_process(digits, store_dir, subprocess_env,
                                                           tmp_path):
    images, labels, _ = digits
    seen = []
    path = metric.train(images, labels, "metric-small", epochs=2, store_dir=store_dir,
                        on_epoch=lambda e, n, m: seen.append((e, n, m)), **METRIC)
    assert [(e, n) for e, n, _ in seen] == [(1, 2), (2, 2)]
    for _, _, m in seen:
        assert np.isfinite(m["loss"]) and np.isfinite(m["val_loss"]) and m["images_per_s"] > 0

    manifest = read_manifest(path)
    assert manifest["kind"] == "metric" and manifest["framework"] == "tensorflow"
    assert manifest["architecture"]["name"] == "tfsim_seed_convnet"
    assert manifest["architecture"]["channels"] == [16, 32, 64, 64]
    assert manifest["classes"] == CLASSES and manifest["embedding_size"] == 32
    assert manifest["image_size"] == 32 and manifest["metric"] == "cosine"
    assert manifest["loss"] == "multisimilarity" and manifest["batch_size"] == 16
    assert manifest["sampler"]["classes_per_batch"] == 4
    assert manifest["num_training_images"] + manifest["validation"]["num_images"] == len(images)
    assert [h["epoch"] for h in manifest["history"]] == [1, 2]
    assert list(manifest["files"]) == ["model.weights.h5"]
    assert manifest["files"]["model.weights.h5"] == store.sha256(
        os.path.join(path, "model.weights.h5"))
    assert not os.path.exists(os.path.join(store_dir, ".metric-small.partial"))

    encoder = load_encoder("metric-small")  # by name, from $LOOKALIKE_MODELS_DIR
    emb = encoder.embed(images)
    assert emb.shape == (len(images), 32) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.abs(emb - encoder.embed_keras(images)).max() < 1e-5  # tf.function == predict
    assert np.abs(emb[:5] - encoder.embed(images[:5])).max() < 1e-5  # batch size does not matter
    fresh, stdout = embed_in_fresh_process(path, images, tmp_path, subprocess_env)
    assert np.abs(fresh - emb).max() < 1e-5
    # Embedding builds a plain Keras network: TensorFlow Similarity is for training only.
    assert "tensorflow_similarity" not in stdout and "'tensorflow'" in stdout
    trained = keras.build(32, 32, 0.25)  # the network as training builds it
    trained.load_weights(os.path.join(path, keras.WEIGHTS))
    assert np.abs(trained.predict(images.astype(np.float32), verbose=0) - emb).max() < 1e-5


@pytest.mark.parametrize("loss", ["triplet", "circle", "pn"])
def test_metric_losses(digits, store_dir, loss):
    images, labels, _ = digits
    path = metric.train(images, labels, f"metric-{loss}", epochs=1, loss=loss, store_dir=store_dir,
                        **dict(METRIC, steps_per_epoch=1))
    manifest = read_manifest(path)
    assert manifest["loss"] == loss and np.isfinite(manifest["final_metrics"]["loss"])


def test_metric_batch_size_and_early_stopping(digits, store_dir):
    images, labels, _ = digits
    path = metric.train(images, labels, "metric-es", epochs=6, batch_size=8, patience=1,
                        store_dir=store_dir, **SMALL)
    manifest = read_manifest(path)
    assert manifest["sampler"]["classes_per_batch"] == 2  # 8 // 4 examples per class
    val = [h["val_loss"] for h in manifest["history"]]
    best = int(np.argmin(val))
    # Stops one epoch after the best one, or runs all 6 while it keeps improving.
    assert manifest["stopped_early"] == (len(val) < 6)
    assert len(val) == 6 or len(val) == best + 2
    assert manifest["validation"]["best_epoch"] == best + 1


def test_contrastive_trains_on_photos_and_reloads(photos, store_dir, tmp_path):
    losses = []
    path = contrastive.train(photos, "contrastive-small", epochs=2, batch_size=8,
                             store_dir=store_dir, on_epoch=lambda e, n, m: losses.append(m["loss"]),
                             **SMALL)
    assert len(losses) == 2 and all(np.isfinite(losses))
    manifest = read_manifest(path)
    assert manifest["kind"] == "contrastive" and manifest["loss"] == "simclr"
    assert manifest["architecture"] == keras.architecture(32, 0.25)  # the metric network
    assert manifest["augmentations"]["jpeg"]["quality"] == [20, 90]
    assert manifest["num_training_images"] == 16 and manifest["steps_per_epoch"] == 2

    encoder = load_encoder(path)
    assert isinstance(encoder, keras.KerasEncoder) and encoder.kind == "contrastive"
    emb = encoder.embed(photos)
    assert emb.shape == (16, 32)
    again = load_encoder(path, flip_average=True)
    # Built once per process for these files: a second load shares the network.
    assert again.model is encoder.model and again.flip_average and not encoder.flip_average
    assert np.abs(emb - load_encoder(path).embed(photos)).max() < 1e-5
    assert np.abs(emb - encoder.embed_keras(photos)).max() < 1e-5
    assert np.ptp(emb, axis=0).max() > 1e-3  # not one point for every image
    # New weights under the same name: a new network, never the one built before.
    contrastive.train(photos, "contrastive-small", epochs=1, batch_size=8, store_dir=store_dir,
                      overwrite=True, seed=3, **SMALL)
    retrained = load_encoder(path)
    assert retrained.model is not encoder.model
    assert np.abs(retrained.embed(photos) - emb).max() > 1e-4

    path = contrastive.train(photos, "contrastive-ms", epochs=1, batch_size=8,
                             loss="multisimilarity", store_dir=store_dir, **SMALL)
    assert np.isfinite(read_manifest(path)["final_metrics"]["loss"])


def test_contrastive_augmentations_follow_the_seed(photos):
    augment = contrastive.make_augment(32)
    params = contrastive.draw_params(np.random.default_rng(1), 16)
    a, b = augment(photos, params).numpy(), augment(photos, params).numpy()
    assert a.dtype == np.uint8 and a.shape == photos.shape
    assert (a == b).all() and (a != photos).any()


def test_interrupted_metric_training_resumes_where_it_stopped(digits, store_dir):
    images, labels, _ = digits
    reference = metric.train(images, labels, "metric-ref", epochs=3, store_dir=store_dir, **METRIC)

    calls = {"n": 0}

    def stop_after_first_epoch():
        calls["n"] += 1
        return calls["n"] > 2  # polled before each of the 2 batches per epoch

    with pytest.raises(TrainingStopped, match="1 epochs are saved"):
        metric.train(images, labels, "metric-resumed", epochs=3, store_dir=store_dir,
                     should_stop=stop_after_first_epoch, **METRIC)
    partial = os.path.join(store_dir, ".metric-resumed.partial")
    with open(os.path.join(partial, "state.json")) as f:
        assert [h["epoch"] for h in json.load(f)["history"]] == [1]

    epochs_run = []
    path = metric.train(images, labels, "metric-resumed", epochs=3, store_dir=store_dir,
                        on_epoch=lambda e, n, m: epochs_run.append(e), **METRIC)
    assert epochs_run == [2, 3]
    history = read_manifest(path)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # Weights, Adam's moments and the batches all continue exactly: same as never stopping.
    ref_history = read_manifest(reference)["history"]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in ref_history], rel=1e-4)
    a, b = load_encoder(reference).embed(images), load_encoder(path).embed(images)
    assert np.abs(a - b).max() < 1e-4


def test_stopped_contrastive_training_resumes_like_an_uninterrupted_one(photos, store_dir):
    settings = dict(SMALL, epochs=3, batch_size=8, store_dir=store_dir)
    reference = contrastive.train(photos, "c-ref", **settings)
    with pytest.raises(TrainingStopped):
        contrastive.train(photos, "c-stop",
                          on_epoch=lambda e, n, m: request_stop("c-stop", store_dir), **settings)
    with pytest.raises(TrainingConfigError, match="other settings"):
        contrastive.train(photos, "c-stop", **dict(settings, epochs=4))
    path = contrastive.train(photos, "c-stop", **settings)
    assert [h["epoch"] for h in read_manifest(path)["history"]] == [1, 2, 3]
    a, b = load_encoder(reference).embed(photos), load_encoder(path).embed(photos)
    assert np.abs(a - b).max() < 1e-4


def _digit_dataset(name, digits, labels):
    _, _, paths = digits
    ds = fo.Dataset(name)
    samples = []
    for path, label in zip(paths, labels):
        sample = fo.Sample(filepath=path, source="digit")
        if label is not None:
            sample["ground_truth"] = fo.Classification(label=label)
        samples.append(sample)
    ds.add_samples(samples)
    return ds


def test_labelled_view_refuses_unusable_labels(digits, dataset_name):
    _, labels, _ = digits
    with_missing = [None, None] + labels[2:]
    ds = _digit_dataset(dataset_name, digits, with_missing)

    with pytest.warns(UserWarning, match=f"2 of {len(labels)} samples have no 'ground_truth' label"):
        view, got = labelled_view(ds, "ground_truth")
    assert len(view) == len(labels) - 2 and got == labels[2:]
    assert all(isinstance(label, str) for label in got)

    with pytest.raises(TrainingConfigError, match="needs labels: pass label_field"):
        labelled_view(ds, None)
    with pytest.raises(TrainingConfigError, match="'nope' does not exist.*ground_truth"):
        labelled_view(ds, "nope")
    with pytest.raises(TrainingConfigError, match="'source' is a StringField"):
        labelled_view(ds, "source")
    with pytest.raises(TrainingConfigError, match="only one class \\('0'\\)"):
        labelled_view(ds.match(fo.ViewField("ground_truth.label") == "0"), "ground_truth")
    one_three = ds.match(fo.ViewField("ground_truth.label") == "3").limit(1)
    zeros = ds.match(fo.ViewField("ground_truth.label") == "0")
    mixed = ds.select(zeros.values("id") + one_three.values("id"))
    with pytest.raises(TrainingConfigError, match="1 classes in .* a single example \\('3'\\)"):
        labelled_view(mixed, "ground_truth")
    unlabelled = ds.match(fo.ViewField("ground_truth") == None)  # noqa: E711
    with pytest.raises(TrainingConfigError, match="no labelled samples .*2 samples have no label"):
        labelled_view(unlabelled, "ground_truth")


def test_metric_train_refuses_bad_settings(digits, store_dir):
    images, labels, _ = digits
    with pytest.raises(TrainingConfigError, match="1 classes in the labels have a single example \\('9'\\)"):
        metric.train(images[:6], ["0", "0", "1", "1", "1", "9"], "x", store_dir=store_dir, **SMALL)
    with pytest.raises(TrainingConfigError, match=r"\d+ images but 3 labels"):
        metric.train(images, labels[:3], "x", store_dir=store_dir, **SMALL)
    with pytest.raises(TrainingConfigError, match="loss must be one of"):
        metric.train(images, labels, "x", loss="arcface", store_dir=store_dir, **SMALL)
    with pytest.raises(TrainingConfigError, match="at least 24"):
        metric.train(load_images([], input_manifest("metric", 16)).images, [], "x", store_dir=store_dir,
                     **dict(SMALL, image_size=16))
    with pytest.raises(TrainingConfigError, match="at least 2 images"):
        contrastive.train(images[:1], "x", store_dir=store_dir, **SMALL)
    with pytest.raises(TrainingConfigError, match="loss must be one of"):
        contrastive.train(images, "x", loss="byol", store_dir=store_dir, **SMALL)


def test_train_encoder_metric_on_a_view(digits, dataset_name, store_dir):
    _, labels, _ = digits
    ds = _digit_dataset(dataset_name, digits, [None] + labels[1:])
    with pytest.warns(UserWarning, match="1 of"):
        result = train_encoder(ds, "metric", "metric-view", epochs=1, label_field="ground_truth",
                               store_dir=store_dir, **METRIC)
    manifest = result.manifest
    assert manifest["kind"] == "metric" and manifest["classes"] == CLASSES
    assert manifest["training_data"]["label_field"] == "ground_truth"
    assert sum(manifest["class_counts"].values()) == len(labels) - 1
    with pytest.raises(TrainingConfigError, match="needs labels"):
        train_encoder(ds, "metric", "metric-nolabels", store_dir=store_dir)


def test_load_refuses_what_is_not_a_good_encoder(digits, store_dir, tmp_path):
    images, labels, _ = digits
    path = metric.train(images, labels, "metric-check", epochs=1, store_dir=store_dir,
                        **dict(METRIC, steps_per_epoch=1))
    with pytest.raises(EncoderStoreError, match="trained at 32 px"):
        load_encoder("metric-check", image_size=64)

    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "model.weights.h5").write_bytes(b"\0" * 10)
    with pytest.raises(EncoderStoreError, match="not a lookalike encoder"):
        load_encoder(str(tmp_path / "random"))

    broken = str(tmp_path / "broken")
    shutil.copytree(path, broken)
    load_encoder(broken)  # built and kept in this process: corrupted below, never served
    weights = os.path.join(broken, "model.weights.h5")
    with open(weights, "r+b") as f:
        f.seek(os.path.getsize(weights) // 2)
        f.write(b"\xff\xfe\xfd\xfc")
    with pytest.raises(EncoderStoreError, match="model.weights.h5 is corrupt"):
        load_encoder(broken)
    os.remove(weights)
    with pytest.raises(EncoderStoreError, match="model.weights.h5 is missing"):
        load_encoder(broken)

    def edited_copy(dirname, **changes):
        copy = str(tmp_path / dirname)
        shutil.copytree(path, copy)
        manifest_path = os.path.join(copy, "manifest.json")
        with open(manifest_path) as f:
            manifest = json.load(f)
        for key, value in changes.items():
            manifest[key] = value(manifest[key]) if callable(value) else value
        with open(manifest_path, "w") as f:
            json.dump(manifest, f)
        return copy

    with pytest.raises(EncoderStoreError, match="saved with tensorflow 1.15.0.*cannot read it"):
        load_encoder(edited_copy("old", framework_version="1.15.0"))
    # Intact weights that do not fit the network the manifest describes.
    wrong = edited_copy("wrong", architecture=lambda a: dict(a, embedding_size=64),
                        embedding_size=64)
    with pytest.raises(EncoderStoreError, match="cannot load model.weights.h5"):
        load_encoder(wrong)
    with pytest.raises(EncoderStoreError, match="unknown architecture 'resnet'"):
        load_encoder(edited_copy("other", architecture=lambda a: dict(a, name="resnet")))
