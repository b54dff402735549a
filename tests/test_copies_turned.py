"""Quarter-turned and transposed copies, and crops, are duplicates by default (issue #28).

The skimage photos, a few of them turned, transposed or cropped to 40% or 30% of
their area, a real (small) encoder. An encoder trained on upright photos puts a turned
copy far from its original; ``find_duplicates`` also queries each image's turned
embeddings (``orientations``, on by default) and verifies what they find.
Local-feature votes (``feature_votes``) find crops the embedding puts far away;
crops of photos without local features are found inside them.
"""

import os

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.curation.orientations import turn
from lookalike.embeddings.compute import compute_embeddings
from lookalike.images.decode import to_rgb
from lookalike.images.feature_votes import vote_pairs
from lookalike.images import local_features as V

T = Image.Transpose
COPIES = {  # file: (original, how)
    "astronaut_rot90.png": ("astronaut", T.ROTATE_90),
    "chelsea_transpose.png": ("chelsea", T.TRANSPOSE),
    "coins_rot270.png": ("coins", T.ROTATE_270),
    "motorcycle_left_transverse.png": ("motorcycle_left", T.TRANSVERSE),
    # Motion blur: no local features to verify; its turned embedding is within the
    # duplicate threshold, and that is enough.
    "clock_motion_rot90.png": ("clock_motion", T.ROTATE_90),
    "camera_crop40.png": ("camera", (0.2, 0.25, 0.8, 0.92)),  # 0.6 x 0.67 = 40% of the area
    "chelsea_crop40.png": ("chelsea", (0.05, 0.3, 0.65, 0.97)),
    # No local features to verify (a colour chart, a silhouette): found inside their
    # photo instead (lookalike.images.containment). 0.55 x 0.55 = 30% of the area.
    "color_crop30.png": ("color", (0.2, 0.15, 0.75, 0.7)),
    "horse_crop30.png": ("horse", (0.2, 0.15, 0.75, 0.7)),
}
FEATURELESS_CROPS = ("color_crop30.png", "horse_crop30.png")


@pytest.fixture(scope="module")
def turned(copies_encoder, tmp_path_factory):
    from lookalike.demo.dataset import skimage_photo_paths

    root = tmp_path_factory.mktemp("turned")
    photos = skimage_photo_paths()
    records = [dict(filepath=p, gt_group=n.replace("motorcycle_right", "motorcycle_left"))
               for n, p in photos.items()]
    for name, (original, how) in COPIES.items():
        with Image.open(photos[original]) as f:
            img = to_rgb(f)
        if isinstance(how, tuple):
            w, h = img.size
            img = img.crop((int(how[0] * w), int(how[1] * h), int(how[2] * w), int(how[3] * h)))
        else:
            img = img.transpose(how)
        img.save(root / name)
        records.append(dict(filepath=str(root / name), gt_group=original))
    ds = fo.Dataset("test-copies-turned", overwrite=True)
    ds.add_samples([fo.Sample(**r) for r in records])
    compute_embeddings(ds, copies_encoder, "emb")
    ls.build_index(ds, "emb", "sim")
    lc.calibrate_threshold(ds, "sim")
    yield ds
    fo.delete_dataset("test-copies-turned")


def _grouped(ds, report):
    files = dict(zip(ds.values("id"), (os.path.basename(p) for p in ds.values("filepath"))))
    truth = dict(zip(ds.values("id"), ds.values("gt_group")))
    together = {files[s]: {files[o] for o in g} for g in report.groups for s in g}
    wrong = [(files[a], files[b]) for g in report.groups for a in g for b in g
             if a < b and truth[a] != truth[b]]
    return together, wrong


def test_turns_act_on_the_input_as_on_the_file():
    x = np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3)
    img = Image.fromarray(x[0].astype(np.uint8))
    for how, op in (("rot90", T.ROTATE_90), ("rot180", T.ROTATE_180),
                    ("transpose", T.TRANSPOSE), ("transverse", T.TRANSVERSE)):
        assert np.array_equal(turn(x, how)[0], np.asarray(img.transpose(op))), how


def test_turned_and_transposed_copies_are_duplicates_by_default(turned):
    report = lc.find_duplicates(turned, "sim")
    together, wrong = _grouped(turned, report)
    # Two different photos may share a group only through the plain embedding (grass
    # and gravel, textures a freshly trained 32-px encoder sometimes puts within its
    # threshold): never through a turned or verified pair.
    reason = {os.path.basename(report.files[s]): r for s, r in report.reasons.items()}
    assert all(reason[a].startswith("distance ") or reason[b].startswith("distance ")
               for a, b in wrong), [(a, b, reason[a], reason[b]) for a, b in wrong]
    for name, (original, how) in COPIES.items():
        if not isinstance(how, tuple):
            assert any(f.startswith(original + ".") for f in together.get(name, ())), \
                (name, together.get(name))
    reasons = {report.files[s]: r for s, r in report.reasons.items()}
    turned_copy = next(p for p in reasons if p.endswith("clock_motion_rot90.png"))
    assert reasons[turned_copy].startswith("turned a quarter, distance "), reasons[turned_copy]
    assert report.verification["num_turned"] >= 1
    # Without the turned queries the embedding alone does not bring them (nor do
    # local-feature votes, off here: they find turned copies too).
    plain = lc.find_duplicates(turned, "sim", orientations=False, feature_votes=False)
    together, _ = _grouped(turned, plain)
    missed = [n for n, (o, how) in COPIES.items() if not isinstance(how, tuple)
              and not any(f.startswith(o + ".") for f in together.get(n, ()))]
    assert missed, "the turned copies were found without turning: this test shows nothing"
    assert report.verification["num_other_candidates"] > 0
    assert plain.verification["orientations"] is False


def test_feature_votes_find_crops_of_40_percent_by_default(turned, monkeypatch):
    from lookalike.images import feature_votes

    report = lc.find_duplicates(turned, "sim")
    assert report.verification["feature_votes"] is True  # "auto", a small view
    together, wrong = _grouped(turned, report)
    reason = {os.path.basename(report.files[s]): r for s, r in report.reasons.items()}
    assert all(reason[a].startswith("distance ") or reason[b].startswith("distance ")
               for a, b in wrong), [(a, b, reason[a], reason[b]) for a, b in wrong]
    for name in ("camera_crop40.png", "chelsea_crop40.png"):
        original = COPIES[name][0]
        assert any(f.startswith(original + ".") for f in together.get(name, ())), \
            (name, together.get(name))
    # "auto" leaves them off above VOTE_UP_TO samples (every image's features).
    monkeypatch.setattr(feature_votes, "VOTE_UP_TO", len(turned) - 1)
    assert lc.find_duplicates(turned, "sim").verification["feature_votes"] is False
    with pytest.raises(lc.CurationError, match="feature_votes must be one of"):
        lc.find_duplicates(turned, "sim", feature_votes="yes")


def test_crops_of_photos_without_local_features_are_found_inside_them(turned, monkeypatch):
    from lookalike.curation import duplicate_pairs

    report = lc.find_duplicates(turned, "sim")
    together, wrong = _grouped(turned, report)
    reason = {os.path.basename(report.files[s]): r for s, r in report.reasons.items()}
    assert all(reason[a].startswith("distance ") or reason[b].startswith("distance ")
               for a, b in wrong), [(a, b, reason[a], reason[b]) for a, b in wrong]
    for name in FEATURELESS_CROPS:
        original = COPIES[name][0]
        partner = next((f for f in together.get(name, ()) if f.startswith(original + ".")),
                       None)
        assert partner, (name, together.get(name))
        why = reason[partner] if reason[name] == "kept" else reason[name]
        assert why.startswith("one found inside the other (correlation 0.9"), why
    assert report.verification["num_contained"] >= len(FEATURELESS_CROPS)
    assert "one picture was found inside the other" in report.summary()
    # Without the search the embedding and local features leave them apart.
    monkeypatch.setattr(duplicate_pairs, "_contained_edges", lambda *args: None)
    together, _ = _grouped(turned, lc.find_duplicates(turned, "sim"))
    for name in FEATURELESS_CROPS:
        assert not any(f.startswith(COPIES[name][0] + ".") for f in together.get(name, ())), \
            (name, together.get(name))


def test_a_turned_or_contained_copy_in_another_split_is_a_leak_with_its_reason(turned):
    """find_leaks counts the same pairs as find_duplicates, with their reasons (a turned
    pair across splits used to fail: its reason had no turn to name)."""
    files = [os.path.basename(p) for p in turned.values("filepath")]
    test = {"clock_motion_rot90.png", "color_crop30.png", "horse_crop30.png"}
    splits = ["test" if f in test else "train" for f in files]
    turned.set_values("tags", [[s] for s in splits])
    try:
        report = lc.find_leaks(turned, "sim")
    finally:
        turned.set_values("tags", [[] for _ in files])
    by_file = dict(zip(turned.values("id"), files))
    reasons = {frozenset((by_file[a], by_file[b])): r for a, b, r in report.pairs}
    assert reasons[frozenset(("clock_motion.png", "clock_motion_rot90.png"))].startswith(
        "turned a quarter, distance "), reasons
    for name in ("color_crop30.png", "horse_crop30.png"):
        pair = frozenset((name, COPIES[name][0] + ".png"))
        assert reasons[pair].startswith("one found inside the other"), reasons


def test_votes_rank_a_turned_crop_first():
    from lookalike.demo.dataset import skimage_photo_paths

    photos = skimage_photo_paths()
    names = sorted(photos)
    with Image.open(photos["astronaut"]) as f:
        img = to_rgb(f)
    copy = img.crop((100, 60, 420, 400)).transpose(T.ROTATE_90)
    features = [V.extract(to_rgb(Image.open(photos[n]))) for n in names] + [V.extract(copy)]
    i, j, _ = vote_pairs(features, k=1, rows=[len(names)])
    assert list(zip(i.tolist(), j.tolist())) == [(names.index("astronaut"), len(names))]


def test_a_close_turned_pair_that_verification_can_judge_and_rejects_is_no_duplicate(tmp_path):
    # The rule's "no": two unrelated photos with local features whose turned embeddings
    # happen to fall within a loose threshold (a weak encoder) are not a TURNED pair;
    # a featureless image's close turn is (verification cannot judge it).
    from lookalike.curation.duplicate_pairs import TURNED, Pairs, _turned_edges
    from lookalike.demo.dataset import skimage_photo_paths

    photos = skimage_photo_paths()
    flat = str(tmp_path / "flat.png")
    Image.new("RGB", (64, 64), (90, 90, 90)).save(flat)
    paths = [photos["astronaut"], photos["coffee"], flat]
    features, _ = V.compute_features(paths)
    assert features[0] is not None and features[1] is not None and features[2] is None
    out = Pairs(list("abc"), paths, None, None, None, 0.1, "exact")
    out.features = dict(enumerate(features))
    out.inliers_of = {(0, 1): V.inliers(features[0], features[1]), (0, 2): 0}
    assert out.inliers_of[(0, 1)] < 12
    edges = []
    close = (np.array([0, 0]), np.array([1, 2]), np.array(["rot90", "rot90"]),
             np.array([0.05, 0.05]))
    _turned_edges(out, edges, np.arange(3), close, 12, V)
    (a, b, kinds), = edges
    assert list(zip(a.tolist(), b.tolist())) == [(0, 2)] and set(kinds.tolist()) == {TURNED}
    assert out.num_turned == 1 and out.turned_of == {(0, 2): ("rot90", 0.05)}
