"""Models users already have: a Paddle Inference export and a Keras file, built and exported
here (nothing is downloaded), imported into the store, then used like our own encoders."""

import os
import subprocess
import sys

import numpy as np
import pytest

import lookalike.similarity as ls
import processes
from lookalike.core import frameworks
from lookalike.embeddings.compute import compute_embeddings
from lookalike.encoders import (
    describe,
    import_keras,
    import_paddle_inference,
    list_encoders,
    load_encoder,
)
from lookalike.encoders.foreign import IMAGENET, normalized
from lookalike.encoders.preprocessing import load_input
from lookalike.core.errors import EncoderStoreError

SIZE = 32


@pytest.fixture(scope="module")
def photo_paths(demo_records):
    return [r["filepath"] for r in demo_records
            if r["source"] == "photo" and r["gt_edit"] == "original"][:8]


def _cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _paddle_export(folder):
    """A small Paddle CNN (a stand-in for PP-ShiTu's extractor), exported for Paddle Inference
    the way PaddleClas exports; returns the dynamic-graph model."""
    paddle = frameworks.paddle()
    paddle.seed(7)
    model = paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 8, 3, stride=2, padding=1), paddle.nn.ReLU(),
        paddle.nn.Conv2D(8, 16, 3, stride=2, padding=1), paddle.nn.ReLU(),
        paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten(), paddle.nn.Linear(16, 24))
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, SIZE, SIZE], "float32", name="x")]
    paddle.jit.save(model, os.path.join(folder, "inference"), input_spec=spec)
    return model


def test_a_paddle_inference_export_embeds_like_its_own_model(tmp_path, store_dir, photo_paths,
                                                             dataset_name):
    folder = tmp_path / "ppshitu"
    folder.mkdir()
    model = _paddle_export(str(folder))
    (folder / "inference.yml").write_text("PreProcess: {}\n")
    (folder / "extra.pkl").write_bytes(b"\x80\x04N.")  # a pickle: never loaded, left behind
    result = import_paddle_inference(str(folder), "ppshitu", image_size=SIZE,
                                     store_dir=store_dir)
    assert "extra.pkl" in result.note and "inference.yml" in result.note
    encoder = load_encoder("ppshitu", store_dir=store_dir)
    manifest = encoder.manifest
    assert manifest["kind"] == "paddle-inference" and manifest["embedding_size"] == 24
    assert manifest["preprocessing"]["normalize"]["mean"] == list(IMAGENET["mean"])
    exported = {f for f in os.listdir(folder) if f.endswith((".json", ".pdmodel", ".pdiparams"))}
    assert set(manifest["files"]) == exported == set(os.listdir(result.path)) - {"manifest.json"}
    assert "imported from" in describe(manifest)
    # The same vectors as the exported model's own dynamic graph, on the same inputs.
    paddle = frameworks.paddle()
    arrays = np.stack([load_input(p, manifest) for p in photo_paths])
    with paddle.no_grad():
        expected = model(paddle.to_tensor(normalized(arrays, manifest["preprocessing"]))).numpy()
    got, ok, failures = encoder.embed_paths(photo_paths, normalize=False)
    assert ok == list(range(len(photo_paths))) and not failures
    assert np.abs(got - expected).max() < 1e-4
    # Then a field, an index and a query by an image file, as with our own encoders.
    import fiftyone as fo

    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in photo_paths])
    report = compute_embeddings(ds, encoder, "emb_pp")
    assert report.embedded == len(photo_paths)
    ls.build_index(ds, "emb_pp", "pp_sim")
    view = ls.sort_by_similarity(ds, "pp_sim", query_path=photo_paths[3], k=3,
                                 dist_field="d")
    assert view.first().filepath == photo_paths[3] and view.first().d < 1e-5
    # The App's view bar shows the results in order, not the query vector as a blob (#27).
    assert [type(stage).__name__ for stage in view._stages] == ["Select"]
    assert len(view) == 3 and view.values("d") == sorted(view.values("d"))
    # The label-free duplicate threshold from synthetic copies made through this model.
    import lookalike.curation as lc

    cal = lc.calibrate_threshold(ds, "pp_sim")
    assert cal.duplicate_rule.startswith("two-sided") and cal.copy_distance_median, \
        cal.duplicate_rule


def test_a_paddle_folder_with_a_link_or_no_export_is_refused(tmp_path, store_dir):
    folder = tmp_path / "linked"
    folder.mkdir()
    real = tmp_path / "elsewhere"
    real.mkdir()
    _paddle_export(str(real))
    for name in os.listdir(real):
        os.symlink(real / name, folder / name)
    with pytest.raises(EncoderStoreError, match="symbolic link"):
        import_paddle_inference(str(folder), "linked", image_size=SIZE, store_dir=store_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EncoderStoreError, match="no Paddle Inference export"):
        import_paddle_inference(str(empty), "empty", image_size=SIZE, store_dir=store_dir)
    with pytest.raises(EncoderStoreError, match="input size"):
        import_paddle_inference(str(real), "nosize", image_size=None, store_dir=store_dir)
    assert list_encoders(store_dir) == []  # nothing half-imported


def _keras_model(tf, lam=False):
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.Rescaling(1 / 255)(inputs)
    if lam:
        x = tf.keras.layers.Lambda(lambda t: t * 2)(x)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(20)(x))


def test_a_keras_file_embeds_like_its_own_model(tmp_path, store_dir, photo_paths):
    tf = frameworks.tensorflow()
    tf.random.set_seed(3)
    model = _keras_model(tf)
    path = str(tmp_path / "mine.keras")
    model.save(path)
    result = import_keras(path, "mine", store_dir=store_dir)
    encoder = load_encoder("mine", store_dir=store_dir)
    assert encoder.manifest["kind"] == "keras" and encoder.image_size == SIZE
    assert encoder.embedding_size == 20 and os.path.isfile(os.path.join(result.path, "model.keras"))
    arrays = np.stack([load_input(p, encoder.manifest) for p in photo_paths])
    expected = model.predict(arrays.astype(np.float32), verbose=0)
    got = encoder.embed(arrays, normalize=False)
    assert np.abs(got - expected).max() < 1e-4
    assert _cosines(got, expected).min() > 0.9999


def test_an_import_killed_before_it_is_published_leaves_no_encoder_and_a_rerun_imports_it(
        tmp_path, store_dir, subprocess_env):
    tf = frameworks.tensorflow()
    path = str(tmp_path / "mine.keras")
    _keras_model(tf).save(path)
    env = dict(subprocess_env, LOOKALIKE_MODELS_DIR=store_dir)

    def load(name):
        return [sys.executable, "-m", "lookalike.cli", "load", "--path", path, "--name", name]

    importer = processes.paused_at(load("mine"), env, "import.checked", tmp_path / "checked")
    try:
        # Checked and complete in its staging folder, but not in the store.
        [left] = [e for e in os.listdir(store_dir) if e.startswith(".mine.import-")]
        assert os.path.isfile(os.path.join(store_dir, left, "encoder", "model.keras"))
        assert list_encoders(store_dir) == []
        with pytest.raises(EncoderStoreError, match="mine"):
            load_encoder("mine", store_dir=store_dir)
        # Another import meanwhile leaves the live one's folder alone.
        other = subprocess.run(load("other"), env=env, capture_output=True, text=True,
                               timeout=300)
        assert other.returncode == 0, other.stderr[-2000:]
        assert left in os.listdir(store_dir)
    finally:
        processes.kill(importer)  # kill -9 before publishing
    assert [m["name"] for m in list_encoders(store_dir)] == ["other"]
    # The rerun imports it and clears what the dead process left.
    again = subprocess.run(load("mine"), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(os.listdir(store_dir)) == ["mine", "other"]
    assert load_encoder("mine", store_dir=store_dir).embedding_size == 20


def test_a_keras_file_with_code_or_the_wrong_input_is_refused(tmp_path, store_dir):
    tf = frameworks.tensorflow()
    path = str(tmp_path / "lam.keras")
    _keras_model(tf, lam=True).save(path)
    with pytest.raises(EncoderStoreError, match="safe mode"):
        import_keras(path, "lam", store_dir=store_dir)
    gray = tf.keras.Sequential([tf.keras.Input((SIZE, SIZE, 1)), tf.keras.layers.Flatten(),
                                tf.keras.layers.Dense(4)])
    gray_path = str(tmp_path / "gray.keras")
    gray.save(gray_path)
    with pytest.raises(EncoderStoreError, match=r"square RGB images"):
        import_keras(gray_path, "gray", store_dir=store_dir)
    link = tmp_path / "link.keras"
    os.symlink(gray_path, link)
    with pytest.raises(EncoderStoreError, match="symbolic link"):
        import_keras(str(link), "link", store_dir=store_dir)
    assert list_encoders(store_dir) == []


def test_bring_a_model_from_the_cli_and_the_app(tmp_path, store_dir, subprocess_env):
    import subprocess
    import sys

    import fiftyone.operators as foo

    folder = tmp_path / "export"
    folder.mkdir()
    _paddle_export(str(folder))
    env = dict(subprocess_env, LOOKALIKE_MODELS_DIR=store_dir)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lookalike.cli", "load", "--path",
                               str(folder), *args], capture_output=True, text=True, env=env,
                              timeout=300)

    out = cli()  # no name, no size: one line
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "give the name" in out.stderr
    out = cli("--name", "pp", "--image-size", str(SIZE))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("loaded pp: paddle-inference, 32 px, 24-d, imported from")
    assert "left behind" not in out.stdout or "pdiparams" not in out.stdout.split("left")[1]
    assert [m["name"] for m in list_encoders(store_dir)] == ["pp"]
    # The App's load form: a Keras file, told from its path.
    tf = frameworks.tensorflow()
    path = str(tmp_path / "app.keras")
    _keras_model(tf).save(path)
    result = foo.execute_operator("@lookalike/similarity/load_encoder",
                                  params={"path": path, "name": "from-app"})
    assert result.result["kind"] == "keras" and result.result["embedding_size"] == 20
    assert sorted(m["name"] for m in list_encoders(store_dir)) == ["from-app", "pp"]


class _TinyFiftyOneModel:
    """A FiftyOne model with embeddings (its own ``fiftyone.core.models.Model``): 8x8 grey
    thumbnails, as FiftyOne's image models take images (HWC uint8 arrays)."""

    media_type = "image"
    has_embeddings = True
    ragged_batches = False
    transforms = None
    preprocess = False

    def embed_all(self, images):
        from PIL import Image

        return np.stack([np.asarray(Image.fromarray(np.asarray(i)).convert("L").resize((8, 8)),
                                    np.float32).ravel() - 128 for i in images])


def test_a_fiftyone_model_is_the_encoder_of_a_field(dataset_name, demo_records, store_dir):
    import fiftyone as fo
    import fiftyone.core.models as fom

    import lookalike.curation as lc
    from lookalike.embeddings.compute import field_record
    from lookalike.encoders import register_model, unregister_model

    model = type("Tiny", (_TinyFiftyOneModel, fom.Model, fom.EmbeddingsMixin), {})()
    encoder = register_model("tiny", model, image_size=64, version="v1")
    assert encoder.name == "fo:tiny" and encoder.embedding_size == 64
    photos = [r["filepath"] for r in demo_records if r["source"] == "photo"][:40]
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in photos])
    try:
        report = compute_embeddings(ds, "fo:tiny")  # by name, as the CLI and App would
        assert report.field == "emb_fo_tiny" and report.embedded == 40
        assert field_record(ds, "emb_fo_tiny")["version"] == "fo:tiny@v1"
        ls.build_index(ds, "emb_fo_tiny", "tiny_sim")
        view = ls.sort_by_similarity(ds, "tiny_sim", query_path=photos[5], k=2, dist_field="d")
        assert view.first().filepath == photos[5] and view.first().d < 1e-5
        cal = lc.calibrate_threshold(ds, "tiny_sim")  # synthetic copies made through the model
        assert cal.duplicate_rule.startswith("two-sided") and cal.copy_distance_median, \
            cal.duplicate_rule
        # Registered again with other weights: the field refuses to mix them.
        register_model("tiny", model, image_size=64, version="v2")
        with pytest.raises(Exception, match="refusing to mix"):
            compute_embeddings(ds, "fo:tiny", "emb_fo_tiny")
    finally:
        unregister_model("tiny")
    # A process that has not registered it says so in one line.
    with pytest.raises(EncoderStoreError, match="register_model"):
        ls.sort_by_similarity(ds, "tiny_sim", query_path=photos[5], k=2)
    no_embeddings = type("NoEmb", (fom.Model,), {"media_type": "image"})()
    with pytest.raises(EncoderStoreError, match="computes no embeddings"):
        register_model("none", no_embeddings)
