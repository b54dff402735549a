"""The offline demo dataset: real images, planted copies, ground truth that adds up."""

import os
import subprocess
import sys

import fiftyone as fo
import pytest
from fiftyone import ViewField as F

from lookalike.demo.dataset import EDITS, UNIQUE_PHOTOS, build_demo_dataset, skimage_photo_paths, summarize
from lookalike.images.decode import load_image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    name = "test-demo"
    ds = build_demo_dataset(name=name, data_dir=str(tmp_path_factory.mktemp("demo")),
                            max_digits=60)
    yield ds
    fo.delete_dataset(name)


def test_counts_and_ground_truth(demo):
    photos = skimage_photo_paths()
    originals_with_copies = len(photos) - len(UNIQUE_PHOTOS) - 1  # motorcycle_right joins a group
    counts = summarize(demo)
    assert counts["photo_groups_with_copies"] == originals_with_copies
    assert counts["planted_copies"] == originals_with_copies * len(EDITS) + 1
    assert counts["photos"] == len(photos) + originals_with_copies * len(EDITS)
    assert counts["unique_photos"] == len(UNIQUE_PHOTOS)
    assert counts["digits"] == 60 and counts["digit_classes"] == 10
    assert demo.persistent
    schema = demo.get_field_schema()
    for field in ("source", "ground_truth", "gt_group", "gt_edit", "gt_unique", "metadata"):
        assert field in schema


def test_each_group_holds_its_original_and_every_edit(demo):
    photos = demo.match(F("source") == "photo")
    for group in photos.distinct("gt_group"):
        edits = sorted(photos.match(F("gt_group") == group).values("gt_edit"))
        if group in UNIQUE_PHOTOS:
            assert edits == ["original"]
        elif group == "motorcycle_left":
            assert edits == sorted(["original", "other_view", *EDITS])
        else:
            assert edits == sorted(["original", *EDITS])
    labels = photos.values("ground_truth.label")
    assert labels == photos.values("gt_group")


def test_every_image_decodes_and_lives_outside_the_plugin_dir(demo):
    for path, width, height in zip(*demo.values(["filepath", "metadata.width", "metadata.height"])):
        img = load_image(path)
        assert img.size == (width, height)
        assert not os.path.abspath(path).startswith(REPO_ROOT + os.sep)
    digit = demo.match(F("source") == "digit").first()
    assert load_image(digit.filepath).size == (32, 32)
    assert digit.ground_truth.label == os.path.basename(os.path.dirname(digit.filepath))


def test_edits_really_differ_from_their_original(demo):
    import numpy as np

    group = demo.match(F("gt_group") == "chelsea")
    by_edit = dict(zip(*group.values(["gt_edit", "filepath"])))
    original = np.asarray(load_image(by_edit["original"]), dtype=float)
    flipped = np.asarray(load_image(by_edit["hflip"]), dtype=float)
    assert np.abs(flipped[:, ::-1] - original).max() == 0
    assert np.abs(flipped - original).mean() > 5
    gray = load_image(by_edit["grayscale"])
    assert gray.size == load_image(by_edit["original"]).size
    assert demo.match(F("filepath") == by_edit["grayscale"]).first().image_mode == "L"
    assert by_edit["jpeg"].endswith(".jpg")


def test_rebuilding_replaces_the_dataset(tmp_path):
    ds = build_demo_dataset(name="test-demo-rebuild", data_dir=str(tmp_path), max_digits=10)
    first = len(ds)
    ds = build_demo_dataset(name="test-demo-rebuild", data_dir=str(tmp_path), max_digits=20)
    assert len(fo.load_dataset("test-demo-rebuild")) == first + 10
    fo.delete_dataset("test-demo-rebuild")


def test_lookalike_demo_command(subprocess_env, tmp_path):
    """The main job end to end, with tiny encoders (--quick); a rerun reuses them."""
    env = dict(subprocess_env, LOOKALIKE_MODELS_DIR=str(tmp_path / "models"))
    cmd = [sys.executable, "-m", "lookalike.cli", "demo", "--dataset", "test-demo-cli",
           "--data-dir", str(tmp_path / "data"), "--max-digits", "40", "--quick"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        assert "dataset 'test-demo-cli'" in out.stdout
        assert "digits:                40 in 10 classes" in out.stdout
        for name, kind in (("demo-autoencoder-quick", "autoencoder"),
                           ("demo-contrastive-quick", "contrastive"),
                           ("demo-metric-quick", "metric")):
            assert f"trained {name}: {kind}, 32 px" in out.stdout
            assert os.path.isfile(tmp_path / "models" / name / "manifest.json")
        assert "emb_contrastive: 205 embedded" in out.stdout
        assert "index 'emb_seed_autoencoder_sim' of 205 photos" in out.stdout
        assert "emb_contrastive_sim: " in out.stdout.split("near-duplicate retrieval")[1]
        curation = out.stdout.split("curation of the photos")[1]
        assert "duplicate threshold" in curation and "pairs precision" in curation
        assert "of the 4 unique photos" in curation
        # Recall per relation kind, the viewpoint copies among them; the real stereo pair
        # is another shot of the scene, not a duplicate.
        assert "copies found with their original: " in curation
        assert " perspective " in curation
        assert "another shot of the same scene, found apart from the duplicates: " \
            "other_view " in curation
        assert "geometric verification: " in curation
        assert "unknown digits rejected" in curation and "mAP@10" in curation
        query = out.stdout.split("the query set held back")[1]
        assert "new edited copies recognised as duplicates" in query
        assert "digits of the held-out classes called new" in query
        again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.count("reusing demo-") == 3 and "training" not in again.stdout
        assert "fiftyone app launch test-demo-cli" in out.stdout
        assert "oldest supported" not in out.stdout + out.stderr
        assert fo.load_dataset("test-demo-cli").persistent
        # The App opens on the best index's results, named, and offers that index first.
        from lookalike.app import panel_rows as overview

        ds = fo.load_dataset("test-demo-cli")
        for kind in ("duplicates", "outliers"):
            assert overview.result_origin(ds, kind)["brain_key"] == "emb_contrastive_sim"
        assert overview.preferred_index(ds) == "emb_contrastive_sim"
        # FiftyOne's own similarity search lists brain keys alphabetically, the first chosen.
        assert sorted(ds.list_brain_runs(type="similarity"))[0] == "emb_contrastive_sim"
    finally:
        if fo.dataset_exists("test-demo-cli"):
            fo.delete_dataset("test-demo-cli")
