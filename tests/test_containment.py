"""One picture found inside another, for photos without usable local features (issue #28).

Real photos of ``skimage/data`` that SIFT cannot verify even against an edited copy
of themselves (a chessboard, a colour chart, a motion-blurred clock, a silhouette),
cropped to 30% of their area, some also turned; and the pairs of different photos
that come closest by chance (measured: a colour chart inside a photographed page).
"""

import numpy as np
import pytest
from PIL import Image

from lookalike.images import containment
from lookalike.images.decode import to_rgb

T = Image.Transpose
FEATURELESS = ("chessboard_RGB", "color", "clock_motion", "horse", "cell")


@pytest.fixture(scope="module")
def photos():
    from lookalike.demo.dataset import skimage_photo_paths

    return skimage_photo_paths()


def _crop(path, box, out, how=None):
    with Image.open(path) as f:
        img = to_rgb(f)
    w, h = img.size
    img = img.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    if how is not None:
        img = img.transpose(how)
    img.save(out)
    return str(out)


def test_these_photos_are_the_ones_local_features_cannot_judge(photos):
    """Else the tests below would test a fallback nobody reaches."""
    from lookalike.images.local_features import recognises_itself

    judged = recognises_itself([photos[n] for n in FEATURELESS], 12)
    assert not judged.any(), dict(zip(FEATURELESS, judged))


def test_a_crop_of_30_percent_is_found_inside_its_photo_in_any_orientation(photos, tmp_path):
    box = (0.2, 0.15, 0.75, 0.7)  # 0.55 x 0.55: 30% of the area
    paths, pairs = {}, []
    for n, name in enumerate(FEATURELESS):
        how = (None, T.ROTATE_90, T.TRANSPOSE, None, T.ROTATE_180)[n]
        paths[name] = photos[name]
        paths[name + "_crop"] = _crop(photos[name], box, tmp_path / f"{name}.png", how)
        pairs += [(name + "_crop", name), (name, name + "_crop")]  # either order
    scores = containment.pair_scores(paths, pairs)
    assert (scores >= containment.MIN_SCORE).all(), dict(zip(pairs, scores.round(3)))


def test_different_photos_are_not_found_inside_each_other(photos, tmp_path):
    # The closest pairs of different photos there (the colour chart and the page, both
    # smooth gradients; the stereo pair is another shot, not a crop), and each
    # featureless photo against a 30% crop of every other photo.
    names = sorted(photos)
    paths = dict(photos)
    pairs = [("color", "page"), ("cell", "color"), ("clock_motion", "page")]
    for name in names:
        paths[name + "_crop"] = _crop(photos[name], (0.2, 0.15, 0.75, 0.7),
                                      tmp_path / f"{name}.png")
    pairs += [(f, o + "_crop") for f in FEATURELESS for o in names if o != f]
    scores = containment.pair_scores(paths, pairs)
    over = {p: round(float(s), 3) for p, s in zip(pairs, scores) if s >= containment.MIN_SCORE}
    assert not over, over
    assert np.median(scores) < 0.8


def test_an_unreadable_or_flat_file_is_found_inside_nothing(photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    flat = tmp_path / "flat.png"
    Image.new("RGB", (200, 150), (120, 120, 120)).save(flat)
    paths = {"broken": str(broken), "flat": str(flat), "horse": photos["horse"]}
    scores = containment.pair_scores(paths, [("broken", "horse"), ("flat", "horse")])
    assert scores.tolist() == [-1.0, -1.0]


def test_a_tiny_picture_is_found_inside_nothing(photos, tmp_path):
    """A digit's 8 x 8 pixels blown up correlate with any blob: too little to tell."""
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    paths = {}
    for n in (0, 10):  # two zeros
        img = Image.fromarray((digits.images[n] * 16).astype(np.uint8))
        paths[n] = str(tmp_path / f"digit{n}.png")
        img.save(paths[n])
    assert containment.pair_scores(paths, [(0, 10)]).tolist() == [-1.0]
