"""Decisions a user can act on, for each encoder kind: noise, blank and unrelated images are
never a duplicate or a match, and an unknown is not a "duplicate" of what it resembles.

Real encoders trained small (the seed's autoencoder, the contrastive "copies"
encoder, a metric encoder on digits), real images, real calibrations, and the
folder match a user runs. The probe images differ from the ones calibration
draws its junk negatives from (other sizes, seeds and kinds), and the
unrelated photos are scikit-learn's, which the libraries do not hold.
"""

import os

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

import lookalike.curation as lc
import lookalike.similarity as ls
from encoder_cache import cached_encoder
from lookalike.embeddings.compute import compute_embeddings
from lookalike.core.errors import StaleRecordError

TRAINED = [str(c) for c in range(6)]  # the metric encoder's classes, labelled in the library
UNSEEN = ["7", "8", "9"]  # neither trained on nor in the library


def _probe_images(size=96, seed=1234):
    """``{file name: RGB image}``: noise, flat colours, stripes, a checkerboard, blurred noise."""
    rng = np.random.default_rng(seed)
    out = {"noise.png": rng.integers(0, 256, (size, size, 3)),
           "noise_gray.png": np.repeat(rng.integers(0, 256, (size, size, 1)), 3, axis=2),
           "red.png": np.broadcast_to(np.array([220, 30, 30]), (size, size, 3)),
           "blue.png": np.broadcast_to(np.array([20, 40, 200]), (size, size, 3)),
           "near_black.png": np.full((size, size, 3), 3),
           "stripes.png": np.repeat(((np.arange(size) // 6) % 2 * 255)[None, :, None], size,
                                    axis=0).repeat(3, axis=2),
           "checker.png": ((np.indices((size, size)).sum(0) // 12) % 2 * 255)[..., None]
           .repeat(3, axis=2)}
    coarse = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
    out = {k: Image.fromarray(np.ascontiguousarray(v).astype(np.uint8), "RGB")
           for k, v in out.items()}
    out["blurred_noise.png"] = Image.fromarray(coarse, "RGB").resize((size, size),
                                                                     Image.Resampling.BICUBIC)
    return out


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """A folder of junk and two unrelated real photos (scikit-learn's china and flower)."""
    import shutil

    import sklearn.datasets

    folder = tmp_path_factory.mktemp("probes")
    for name, img in _probe_images().items():
        img.save(folder / name)
    images = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    for name in ("china.jpg", "flower.jpg"):
        shutil.copyfile(os.path.join(images, name), folder / name)
    return str(folder)


def _never_duplicate_nor_match(ds, key, folder):
    report = lc.match_images(ds, key, folder)
    wrong = [(r.file, r.decision, round(r.distance, 4), os.path.basename(r.nearest_path or ""))
             for r in report.rows if r.decision != "new"]
    assert len(report.rows) == 10 and not wrong, (wrong, report.summary())
    return report


def _photo_library(name, demo_records, encoder):
    ds = fo.Dataset(name, overwrite=True)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in demo_records
                    if r["source"] == "photo"])
    compute_embeddings(ds, encoder, "emb")
    ls.build_index(ds, "emb", "sim")
    return ds, lc.calibrate_threshold(ds, "sim")


@pytest.fixture(scope="module")
def autoencoder(demo_records):
    """The seed's convolutional autoencoder (L1, no labels), trained small on the photos."""
    from lookalike.encoders import autoencoder as ae
    from lookalike.encoders.data import load_images
    from lookalike.encoders.preprocessing import input_manifest

    photos = [r["filepath"] for r in demo_records if r["source"] == "photo"]
    settings = dict(image_size=32, epochs=4, batch_size=16, width=0.25)

    def train(store_dir):
        images = load_images(photos, input_manifest("autoencoder", 32)).images
        ae.train(images, "decisions-ae", store_dir=store_dir, **settings)

    return cached_encoder("decisions-ae", dict(settings, photos=[os.path.basename(p)
                                                                 for p in photos]), train)


@pytest.mark.parametrize("kind", ["autoencoder", "contrastive"])
def test_label_free_photo_libraries_call_junk_and_unrelated_photos_new(
        kind, request, demo_records, probes, dataset_name, tmp_path):
    encoder = request.getfixturevalue("autoencoder" if kind == "autoencoder"
                                      else "copies_encoder")
    ds, cal = _photo_library(dataset_name, demo_records, encoder)
    print(f"\n{kind}: {cal.duplicate_rule}")
    assert cal.duplicate_rule_version == 2 and cal.false_pair_rate["junk"] == 0.0
    assert set(cal.recall_per_edit) >= {"crop", "jpeg", "hflip"}
    report = _never_duplicate_nor_match(ds, "sim", probes)
    assert report.counts["match"] == 0  # without labels there is nothing to match
    # A flat orange lay within the contrastive encoder's threshold of the crop of the
    # retina photo (an orange disc): a flat image is no photo's duplicate.
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (96, 96), (214, 78, 56)).save(flat / "orange.png")
    row = lc.match_images(ds, "sim", str(flat)).rows[0]
    assert row.decision == "new", row


def test_flat_means_no_structure():
    from lookalike.images.decode import is_flat, load_image

    rng = np.random.default_rng(0)
    assert is_flat(np.full((32, 32, 3), 200, np.uint8))
    assert is_flat(np.clip(128 + rng.normal(0, 1, (32, 32, 3)), 0, 255))  # JPEG noise
    import skimage.data

    photo = os.path.join(os.path.dirname(skimage.data.__file__), "retina.jpg")
    assert not is_flat(np.asarray(load_image(photo)))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits 0-5 labelled (the library), 7-9 as files the library has never seen."""
    from sklearn.datasets import load_digits

    from lookalike.encoders import metric

    root = tmp_path_factory.mktemp("decision-digits")
    unseen = root / "unseen"
    unseen.mkdir()
    data = load_digits()
    library, train_images, train_labels, taken = [], [], [], {}
    for i, (pixels, target) in enumerate(zip(data.images, data.target)):
        label = str(int(target))
        img = Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.BILINEAR)
        n = taken[label] = taken.get(label, 0) + 1
        if label in TRAINED and n <= 40:
            path = str(root / f"digit_{i:04d}_{label}.png")
            img.save(path)
            library.append(fo.Sample(filepath=path, gt=fo.Classification(label=label)))
        elif label in TRAINED and n <= 70:
            train_images.append(np.asarray(img.convert("RGB")))
            train_labels.append(label)
        elif label in UNSEEN and n <= 10:
            img.save(unseen / f"digit_{i:04d}_{label}.png")
    settings = dict(epochs=5, width=0.5, embedding_size=64, examples_per_class_per_batch=4,
                    classes_per_batch=6)

    def train(store_dir):
        metric.train(np.stack(train_images), train_labels, "decisions-metric",
                     store_dir=store_dir, **settings)

    encoder = cached_encoder("decisions-metric", dict(settings, n=len(train_images)), train)
    ds = fo.Dataset("test-decisions-digits", overwrite=True)
    ds.add_samples(library)
    compute_embeddings(ds, encoder, "emb")
    ls.build_index(ds, "emb", "sim")
    yield ds, str(unseen)
    fo.delete_dataset(ds.name)


def test_metric_encoder_with_labels_calls_junk_new_and_unknown_digits_never_duplicates(
        digits, probes):
    ds, unseen = digits
    cal = lc.calibrate_threshold(ds, "sim", label_field="gt")
    print(f"\nmetric: {cal.summary()}")
    # Labels bound the duplicate threshold: a duplicate is closer than two digits of a class.
    assert cal.sibling_distance_median is not None
    assert cal.duplicate_threshold < cal.sibling_distance_median
    assert "hflip" in cal.excluded_edits  # a mirrored digit is another glyph
    _never_duplicate_nor_match(ds, "sim", probes)
    report = lc.match_images(ds, "sim", unseen)
    calls = [r.decision for r in report.rows]
    assert len(calls) == 30 and calls.count("duplicate") <= 3, report.summary()
    assert calls.count("new") >= 15, report.summary()


def test_metric_encoder_without_labels_calls_junk_new(digits, probes):
    ds, unseen = digits
    cal = lc.calibrate_threshold(ds, "sim")
    assert cal.label_field is None and cal.false_pair_rate["junk"] == 0.0
    _never_duplicate_nor_match(ds, "sim", probes)
    calls = [r.decision for r in lc.match_images(ds, "sim", unseen).rows]
    assert calls.count("duplicate") <= 3 and set(calls) <= {"duplicate", "new"}


def test_a_record_from_before_the_two_sided_rule_asks_for_a_recalibration(digits, probes):
    from lookalike.similarity import records

    ds, _ = digits
    lc.calibrate_threshold(ds, "sim")
    index = ls.load_index(ds, "sim")
    old = dict(index.curation["calibration"])
    old.pop("duplicate_rule_version")
    records.commit(index, {"calibration": old})
    with pytest.raises(StaleRecordError, match="predates the two-sided duplicate threshold: "
                                               "run calibrate_threshold again"):
        lc.match_images(ds, "sim", probes)
    with pytest.raises(StaleRecordError, match="predates"):
        lc.find_duplicates(ds, "sim")
    # It still loads for reading (the App shows what it says).
    assert lc.get_calibration(ds, "sim", check_fresh=False).duplicate_rule_version is None



class _PixelHashModel:
    """A FiftyOne model whose embedding is a hash of the pixels spread over 16 dimensions:
    an encoder invariant to no edit at all (any change of a pixel moves it as far as
    another image), the extreme of a weak encoder."""

    media_type = "image"
    has_embeddings = True
    ragged_batches = False
    transforms = None
    preprocess = False

    def embed_all(self, images):
        import zlib

        return np.stack([np.random.default_rng(zlib.crc32(np.asarray(i).tobytes()))
                         .standard_normal(16) for i in images])


def test_a_threshold_that_cannot_separate_warns_every_job_that_acts_on_it(
        demo_records, probes, dataset_name):
    """Calibration says the encoder cannot separate copies from different images, and every
    job that then acts on that threshold repeats the warning: the API's reports, the
    CLI, and the App's forms before Execute."""
    import fiftyone.core.models as fom

    from cli_runner import run_cli
    from lookalike.encoders import register_model, unregister_model
    from test_operators_encoders import _form

    model = type("PixelHash", (_PixelHashModel, fom.Model, fom.EmbeddingsMixin), {})()
    register_model("pixel-hash", model, image_size=64, version="v1")
    try:
        ds, cal = _photo_library(dataset_name, demo_records, "fo:pixel-hash")
        assert cal.duplicate_separable is False, cal.duplicate_rule
        assert "invariant to none of the edits" in cal.duplicate_warning
        assert "Warning: cannot separate" in cal.summary()

        report = lc.find_duplicates(ds, "sim", verify=False)
        assert "'sim' is unreliable: cannot separate" in report.warning
        assert f"Warning: {report.warning}" in report.summary()
        assert report.to_record()["warning"] == report.warning
        folder = lc.match_images(ds, "sim", probes, verify=False)
        assert folder.warning == report.warning and "Warning:" in folder.summary()
        ds.take(len(ds) // 2, seed=1).tag_samples("train")
        ds.match_tags("train", bool=False).tag_samples("test")
        leaks = lc.find_leaks(ds, "sim", verify=False)
        assert leaks.warning == report.warning and "Warning:" in leaks.summary()
        # A threshold the user gives is theirs: no warning.
        assert lc.find_duplicates(ds, "sim", threshold=0.01, verify=False).warning is None

        ran = run_cli("duplicates", "--dataset", ds.name, "--brain-key", "sim", "--verify", "off")
        assert ran.returncode == 0 and "unreliable: cannot separate" in ran.stdout, ran
        # A job that ran with an index makes it the one offered first, in the App too.
        from lookalike.curation.index_choice import preferred_index, remembered_index

        assert remembered_index(ds) == "sim" and preferred_index(ds) == "sim"
        for operator in ("find_duplicates", "find_leaks", "match_images"):
            props = _form(operator, ds, {"brain_key": "sim"})["type"]["properties"]
            view = props["calibration_warning"]["view"]
            assert "unreliable" in view["label"], (operator, view)
            assert "invariant to none of the edits" in view["description"], (operator, view)
    finally:
        unregister_model("pixel-hash")
