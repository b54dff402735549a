"""Fields and files lookalike must not trust (issue #26): an embeddings field that is not one,
a model manifest that names files outside its folder, a label field that holds no labels.

Real parts throughout: the test database, the demo's photos, a small contrastive encoder
trained on them, small Keras and Paddle models built and imported here.
"""

import json
import os
import shutil

import fiftyone as fo
import numpy as np
import pytest

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike import cli
from lookalike.core import frameworks
from lookalike.embeddings.compute import compute_embeddings, field_record
from lookalike.encoders import import_encoder, import_keras, import_paddle_inference, load_encoder
from lookalike.encoders.store import sha256
from lookalike.core.errors import (
    CalibrationError,
    EmbeddingFieldError,
    EncoderStoreError,
    LookalikeError,
)

SIZE = 32


def _one_line(error):
    text = str(error.value)
    assert isinstance(error.value, LookalikeError)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# -- 1. compute_embeddings writes embeddings, never another kind of field --------------------

@pytest.fixture
def photos(dataset_name, demo_records):
    """8 demo photos with tags, metadata and a Classification field."""
    records = [r for r in demo_records if r["source"] == "photo"][:8]
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"], tags=["photo", r["gt_edit"]],
                              gt=fo.Classification(label=r["label"])) for r in records])
    ds.compute_metadata()
    ds.persistent = True
    return ds


def _state(ds):
    return dict(
        filepath=ds.values("filepath"), tags=ds.values("tags"), gt=ds.values("gt.label"),
        metadata=[m.to_dict() if m else None for m in ds.values("metadata")],
        schema={k: type(v).__name__ for k, v in ds.get_field_schema().items()})


@pytest.mark.parametrize("field", ["filepath", "tags", "metadata", "gt"])
def test_embedding_into_a_field_that_holds_no_embeddings_is_refused(photos, copies_encoder,
                                                                    field):
    before = _state(photos)
    assert all(before["filepath"]) and all(before["metadata"]) and all(before["gt"])
    for overwrite in (True, False):
        with pytest.raises(EmbeddingFieldError) as error:
            compute_embeddings(photos, copies_encoder, field, overwrite=overwrite)
        text = _one_line(error)
        assert f"field '{field}' is not an embeddings field" in text, text
    photos.reload()
    assert _state(photos) == before  # every sample's value, and no new field
    assert field_record(photos, field) is None


def test_a_vector_field_of_someone_else_is_replaced_only_with_overwrite(photos, copies_encoder):
    photos.set_values("theirs", [np.ones(5, np.float32)] * len(photos))
    assert isinstance(photos.get_field("theirs"), fo.VectorField)
    with pytest.raises(EmbeddingFieldError, match="not written by lookalike"):
        compute_embeddings(photos, copies_encoder, "theirs")
    report = compute_embeddings(photos, copies_encoder, "theirs", overwrite=True)
    assert report.embedded == len(photos)
    assert {len(v) for v in photos.values("theirs")} == {load_encoder("copies").embedding_size}


def test_an_error_field_that_is_not_ours_is_refused(photos, copies_encoder):
    photos.set_values("vec_error", ["a note of the user's"] * len(photos))
    with pytest.raises(EmbeddingFieldError) as error:
        compute_embeddings(photos, copies_encoder, "vec")
    assert "'vec_error'" in _one_line(error)
    assert photos.values("vec_error") == ["a note of the user's"] * len(photos)
    assert "vec" not in photos.get_field_schema()


def test_the_cli_refuses_filepath_in_one_line(photos, copies_encoder, capsys):
    before = _state(photos)
    code = cli.main(["embed", "--dataset", photos.name, "--encoder", copies_encoder,
                     "--field", "filepath", "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("lookalike embed: error: field 'filepath' is not an embeddings "
                               "field (StringField)"), lines
    photos.reload()
    assert _state(photos) == before


# -- 2. every file a manifest names lies inside its folder, listed and checked ----------------

def _keras_file(path, seed):
    tf = frameworks.tensorflow()
    tf.random.set_seed(seed)
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.Rescaling(1 / 255)(inputs)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    tf.keras.Model(inputs, tf.keras.layers.Dense(20)(x)).save(str(path))
    return str(path)


@pytest.fixture
def keras_encoder(tmp_path, store_dir):
    """``(encoder folder, another model's .keras file outside it)``."""
    result = import_keras(_keras_file(tmp_path / "mine.keras", 3), "mine", store_dir=store_dir)
    outside = _keras_file(tmp_path / "outside.keras", 4)
    return result.path, outside


def _edit_manifest(folder, **architecture):
    path = os.path.join(folder, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest["architecture"].update(architecture)
    with open(path, "w") as f:
        json.dump(manifest, f)
    return manifest


def _refused(name_or_path, store_dir, *words):
    with pytest.raises(EncoderStoreError) as error:
        load_encoder(name_or_path, store_dir=store_dir)
    text = _one_line(error)
    for word in words:
        assert word in text, text
    return text


@pytest.mark.parametrize("where", ["absolute", "dotdot", "unlisted", "link", "listed-link"])
def test_a_keras_manifest_naming_a_file_outside_or_unchecked_is_refused(keras_encoder,
                                                                        store_dir, where):
    folder, outside = keras_encoder
    assert load_encoder("mine", store_dir=store_dir).embedding_size == 20
    if where == "absolute":
        value = outside
    elif where == "dotdot":
        shutil.copy(outside, os.path.join(store_dir, "outside.keras"))
        value = "../outside.keras"
    elif where == "unlisted":  # inside the folder, but with no checksum in the manifest
        shutil.copy(outside, os.path.join(folder, "other.keras"))
        value = "other.keras"
    else:
        os.symlink(outside, os.path.join(folder, "link.keras"))
        value = "link.keras"
    manifest = _edit_manifest(folder, file=value)
    if where == "listed-link":  # listed with the target's checksum: a link is still refused
        manifest["files"]["link.keras"] = sha256(outside)
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(manifest, f)
        _refused("mine", store_dir, "link.keras", "symbolic link")
    else:
        _refused("mine", store_dir, "architecture.file", repr(value))


def test_importing_a_folder_whose_manifest_points_outside_is_refused(keras_encoder, store_dir,
                                                                     tmp_path):
    folder, outside = keras_encoder
    shared = tmp_path / "shared"
    shutil.copytree(folder, shared)
    _edit_manifest(shared, file=outside)
    with pytest.raises(EncoderStoreError) as error:
        import_encoder(str(shared), name="shared", store_dir=store_dir)
    assert "architecture.file" in _one_line(error) and outside in str(error.value)
    assert not os.path.exists(os.path.join(store_dir, "shared"))


def test_a_listed_file_with_other_bytes_is_refused_by_its_checksum(keras_encoder, store_dir):
    folder, outside = keras_encoder
    shutil.copy(outside, os.path.join(folder, "model.keras"))  # another model, same name
    _refused("mine", store_dir, "model.keras", "checksum")


def test_a_listed_file_replaced_by_a_link_is_refused_in_the_store(copies_encoder, store_dir,
                                                                  tmp_path):
    """Our own kinds too: the store's copy of a trained encoder, its weights made a link to
    the same bytes outside (the checksum alone would pass)."""
    trained = os.path.join(_session_store(), copies_encoder)
    folder = os.path.join(store_dir, "linked")
    shutil.copytree(trained, folder)
    outside = tmp_path / "weights.h5"
    shutil.move(os.path.join(folder, "model.weights.h5"), outside)
    os.symlink(outside, os.path.join(folder, "model.weights.h5"))
    _refused("linked", store_dir, "model.weights.h5", "symbolic link")


def _session_store():
    # The session's store (tests/conftest.py: <its tmp>/models, beside LOOKALIKE_DATA_DIR),
    # where copies_encoder was trained before store_dir replaced LOOKALIKE_MODELS_DIR.
    return os.path.join(os.path.dirname(os.environ["LOOKALIKE_DATA_DIR"]), "models")


@pytest.mark.parametrize("key", ["program", "params"])
@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_a_paddle_manifest_naming_a_file_outside_is_refused(tmp_path, store_dir, key, where):
    paddle = frameworks.paddle()
    paddle.seed(7)
    model = paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 8, 3, stride=2, padding=1), paddle.nn.ReLU(),
        paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten(), paddle.nn.Linear(8, 12))
    model.eval()
    export = tmp_path / "export"
    export.mkdir()
    spec = [paddle.static.InputSpec([None, 3, SIZE, SIZE], "float32", name="x")]
    paddle.jit.save(model, str(export / "inference"), input_spec=spec)
    folder = import_paddle_inference(str(export), "pp", SIZE, store_dir=store_dir).path
    assert load_encoder("pp", store_dir=store_dir).embedding_size == 12
    with open(os.path.join(folder, "manifest.json")) as f:
        rel = json.load(f)["architecture"][key]
    if where == "absolute":
        value = str(export / rel)  # the very same bytes, outside the folder
    else:
        shutil.copy(export / rel, os.path.join(store_dir, rel))
        value = f"../{rel}"
    _edit_manifest(folder, **{key: value})
    _refused("pp", store_dir, f"architecture.{key}", repr(value))


# -- 3. a label field must hold labels; a failed calibration never replaces a good one -------

@pytest.fixture
def indexed_photos(dataset_name, demo_records, copies_encoder):
    """The photos of 8 of the demo's groups (with their edited copies), embedded and indexed."""
    groups = sorted({r["gt_group"] for r in demo_records if r["source"] == "photo"})[:8]
    records = [r for r in demo_records if r["source"] == "photo" and r["gt_group"] in groups]
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"], gt=fo.Classification(label=r["label"]),
                              group=r["gt_group"], name=os.path.basename(r["filepath"]))
                    for r in records])
    ds.persistent = True
    compute_embeddings(ds, copies_encoder, "emb")
    ls.build_index(ds, "emb", "sim")
    return ds


def _thresholds(ds):
    cal = lc.get_calibration(ds, "sim")
    return cal.to_record()


@pytest.mark.parametrize("field", ["filepath", "name"])
def test_a_field_of_one_off_values_is_refused_and_the_calibration_kept(indexed_photos, field):
    good = lc.calibrate_threshold(indexed_photos, "sim", label_field="gt")
    assert good.metric_values["f1"] > 0
    before = _thresholds(indexed_photos)
    with pytest.raises(CalibrationError) as error:
        lc.calibrate_threshold(indexed_photos, "sim", label_field=field)
    text = _one_line(error)
    assert f"'{field}'" in text, text
    assert _thresholds(indexed_photos) == before
    # A string field of classes that repeat is a label field.
    assert lc.calibrate_threshold(indexed_photos, "sim", label_field="group").threshold >= 0


def test_the_cli_refuses_filepath_as_labels_in_one_line(indexed_photos, capsys):
    lc.calibrate_threshold(indexed_photos, "sim", label_field="gt")
    before = _thresholds(indexed_photos)
    code = cli.main(["calibrate", "--dataset", indexed_photos.name, "--brain-key", "sim",
                     "--label-field", "filepath"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "'filepath'" in lines[0], err
    assert _thresholds(indexed_photos) == before


def test_a_calibration_that_finds_no_threshold_never_replaces_the_saved_one(
        dataset_name, demo_records):
    # Unit vectors on a circle, every 10 degrees, labels alternating: every sample's nearest
    # neighbour has the other label, so F1 is 0 at every threshold.
    paths = [r["filepath"] for r in demo_records][:12]
    angles = np.deg2rad(np.arange(12) * 10.0)
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.set_values("emb", [np.array([np.cos(a), np.sin(a)], np.float32) for a in angles])
    ds.set_values("alternating", [fo.Classification(label="ab"[i % 2]) for i in range(12)])
    ds.set_values("halves", [fo.Classification(label="ab"[i // 6]) for i in range(12)])
    ds.persistent = True
    ls.build_index(ds, "emb", "sim")
    with pytest.raises(CalibrationError, match="F1 0.000.*nothing was saved"):
        lc.calibrate_threshold(ds, "sim", label_field="alternating", unknown_fraction=0)
    good = lc.calibrate_threshold(ds, "sim", label_field="halves", unknown_fraction=0)
    assert good.metric_values["f1"] > 0.9
    before = _thresholds(ds)
    with pytest.raises(CalibrationError) as error:
        lc.calibrate_threshold(ds, "sim", label_field="alternating", unknown_fraction=0)
    assert "the calibration saved before is kept" in _one_line(error)
    assert _thresholds(ds) == before
