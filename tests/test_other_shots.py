"""Another shot of the same scene is its own relation, not a duplicate (issue #28).

Rendered rooms (:mod:`lookalike.demo.scenes`: box rooms papered with the skimage
photos, each shot twice by a camera that moved through the room) among the skimage
photos themselves (less the back walls' photos), a flat viewpoint copy of a photo, and
hard negatives: a room that shares only its back wall with another room (one backdrop,
another scene).
A real (small) encoder, label-free calibration, ``find_duplicates`` as a user runs it.
"""

import os
import random

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.curation.duplicate_pairs import SHOT, find_pairs
from lookalike.curation.duplicates import SHOT_GROUP_FIELD, SHOT_REASON_FIELD, SHOT_TAG
from lookalike.demo import scenes
from lookalike.embeddings.compute import compute_embeddings
from lookalike.images import local_features as V
from lookalike.images.edits import perspective

from cli_runner import run_cli

# Which of scenes.SHOTS shoots each room (the benchmark takes every room with every
# pair of shots: benchmarks/copies.py).
SHOT_OF = {"room_a": 0, "room_b": 1, "room_c": 2, "backdrop_a": 1}
ROOMS = {  # room: the photos on its faces, in scenes.FACES' order
    "room_a": ("astronaut", "chelsea", "coffee", "rocket", "brick", "camera", "ihc", "logo"),
    "room_b": ("page", "grass", "gravel", "coins", "text", "moon", "retina", "horse"),
    "room_c": ("page", "coins", "coffee", "phantom", "brick", "text", "ihc", "camera"),
}
# One backdrop, another scene: room_a's back wall (one plane, like a studio backdrop),
# the rest papered with photos no other room shows. (room_c shares three faces with
# room_a, a side wall among them, and its back wall, floor and box front with room_b's
# back wall, ceiling and floor: two more negatives.) Rooms that share two walls share a
# piece of 3-D scene: their parallax is real, and they may be called another shot.
BACKDROP_ROOMS = {
    "backdrop_a": ("astronaut", "motorcycle_right", "color", "hubble_deep_field",
                   "clock_motion", "chessboard_RGB", "cell", "microaneurysms"),
}


def _write_rooms(root, photos):
    files = {}
    for n, (room, names) in enumerate({**ROOMS, **BACKDROP_ROOMS}.items()):
        first, second = scenes.SHOTS[SHOT_OF[room]]
        for shot, which in ((first, "1"), (second, "2")):
            path = str(root / f"{room}_{which}.png")
            Image.fromarray(scenes.render(scenes.room(photos, names), shot,
                                          seed=2 * n + int(which))).save(path)
            files[f"{room}_{which}"] = path
    return files


@pytest.fixture(scope="module")
def shots(copies_encoder, tmp_path_factory):
    from lookalike.demo.dataset import skimage_photo_paths

    root = tmp_path_factory.mktemp("shots")
    photos = scenes.skimage_photos()
    # The photos on the back walls are left out: a shot of a room is a duplicate of the
    # photo that fills most of it (a photo of a poster, like a screenshot).
    back_walls = {names[0] for names in {**ROOMS, **BACKDROP_ROOMS}.values()}
    records = [dict(filepath=p, scene=n.replace("motorcycle_right", "motorcycle_left"))
               for n, p in skimage_photo_paths().items() if n not in back_walls]
    for name, path in _write_rooms(root, photos).items():
        records.append(dict(filepath=path, scene=name.rsplit("_", 1)[0]))
    flat = root / "chelsea_viewpoint.png"
    perspective(Image.fromarray(photos["chelsea"]), random.Random(5)).save(flat)
    records.append(dict(filepath=str(flat), scene="chelsea"))
    ds = fo.Dataset("test-other-shots", overwrite=True)
    ds.add_samples([fo.Sample(**r) for r in records])
    compute_embeddings(ds, copies_encoder, "emb")
    ls.build_index(ds, "emb", "sim")
    lc.calibrate_threshold(ds, "sim")
    yield ds
    fo.delete_dataset("test-other-shots")


def _names(ds, ids):
    name = dict(zip(ds.values("id"), (os.path.splitext(os.path.basename(p))[0]
                                      for p in ds.values("filepath"))))
    return [sorted(name[s] for s in g) for g in ids]


def test_parallax_tells_a_moved_camera_from_a_flat_copy_and_a_shared_backdrop():
    """The measurement under the rule, on the rendered rooms: two shots of one room have
    matches off the main plane on their epipolar lines; a flat viewpoint copy and a room
    that only shares the backdrop do not."""
    photos = scenes.skimage_photos()

    def dense(image):
        return V.extract(image, V.DENSE_KEYPOINTS)

    def shot(names, which, seed):
        return Image.fromarray(scenes.render(scenes.room(photos, names), which, seed=seed))

    def judged(a, b):
        return bool(V.shows_parallax(V.parallax(a, b), V.MIN_SHOT_INLIERS_FLOOR,
                                     V.MIN_PARALLAX_FLOOR))

    first, second = scenes.SHOTS[0]
    a1, a2 = shot(ROOMS["room_a"], first, 1), shot(ROOMS["room_a"], second, 2)
    inliers, off_plane = V.parallax(dense(a1), dense(a2))
    assert inliers >= 5 * V.MIN_SHOT_INLIERS_FLOOR and off_plane >= 2 * V.MIN_PARALLAX_FLOOR
    assert judged(dense(a1), dense(a2))
    # A homography cannot explain the two shots (verification says no).
    assert V.inliers(V.extract(a1), V.extract(a2)) < V.DEFAULT_MIN_INLIERS
    # The same backdrop, another room: many epipolar inliers, nearly all on the backdrop.
    backdrop = dense(shot(BACKDROP_ROOMS["backdrop_a"], second, 2))
    inliers, off_plane = V.parallax(dense(a1), backdrop)
    assert inliers >= V.MIN_SHOT_INLIERS_FLOOR and not judged(dense(a1), backdrop)
    # A flat viewpoint copy: a homography holds every match.
    chelsea = Image.fromarray(photos["chelsea"])
    flat = dense(perspective(chelsea, random.Random(5)))
    assert V.parallax(dense(chelsea), flat)[0] >= 100 and not judged(dense(chelsea), flat)
    # Two different photos under one meme caption: the captions match, on two lines a
    # fundamental matrix fits, but the plane they lie on does not hold the pictures.
    def captioned(name):
        from PIL import ImageDraw, ImageFont

        img = Image.fromarray(photos[name]).copy()
        draw, font = ImageDraw.Draw(img), ImageFont.load_default(size=44)
        for y, line in ((12, "WHEN THE MONDAY"), (440, "HITS DIFFERENT")):
            draw.text((16, y), line, font=font, fill="white", stroke_width=3,
                      stroke_fill="black")
        return dense(img)

    meme = V.parallax(captioned("astronaut"), captioned("camera"))
    assert meme[0] >= V.MIN_SHOT_INLIERS_FLOOR and meme[1] == 0, meme
    # Noise and a blank picture: noise matches nothing, a blank picture has no features.
    rng = np.random.default_rng(3)
    noise = [dense(Image.fromarray(rng.integers(0, 256, (480, 640, 3), np.uint8)))
             for _ in range(2)]
    assert V.parallax(*noise) == (0, 0) and V.parallax(noise[0], dense(a1)) == (0, 0)
    blank = dense(Image.new("RGB", (640, 480), (128, 128, 128)))
    assert blank is None and V.parallax(blank, dense(a1)) == (0, 0)
    assert not V.inliers_and_parallax(blank, dense(a1))[0]
    # Unrelated photos: no fundamental matrix at all.
    assert V.parallax(dense(chelsea), dense(Image.fromarray(photos["astronaut"]))) == (0, 0)


def test_other_shots_are_grouped_apart_from_duplicates_and_tagged(shots):
    cal = lc.get_calibration(shots, "sim")
    assert cal.min_shot_inliers >= V.MIN_SHOT_INLIERS_FLOOR
    assert cal.min_parallax >= V.MIN_PARALLAX_FLOOR
    assert "another shot" in cal.shot_rule and "another shot" in cal.summary().lower()

    report = lc.find_duplicates(shots, "sim")
    shot_groups = _names(shots, report.shot_groups)
    for room in ROOMS:
        assert [f"{room}_1", f"{room}_2"] in shot_groups, (room, shot_groups)
    # No two rendered shots are duplicates of each other (a shot may be a duplicate of a
    # photo that fills a face of it: a photo of a poster), and nothing is another shot
    # across rooms, the one with only the backdrop in common included.
    pairs = find_pairs(shots, "sim")
    name = _names(shots, [[s] for s in pairs.ids])
    rendered = [n[0].startswith(("room_", "backdrop_")) for n in name]
    for a, b, kind in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.kinds.tolist()):
        if rendered[a] and rendered[b]:
            same_room = name[a][0].rsplit("_", 1)[0] == name[b][0].rsplit("_", 1)[0]
            assert kind == SHOT and same_room, (name[a], name[b], kind)
    # The flat viewpoint copy is a duplicate (a homography maps it), not another shot.
    assert ["chelsea", "chelsea_viewpoint"] in _names(shots, report.groups)
    assert report.num_shot_pairs >= len(ROOMS)
    assert "other shots of one scene" in report.summary()

    view = lc.shots_view(shots)
    assert len(view) == sum(map(len, report.shot_groups))
    for tags, reason, group in zip(view.values("tags"), view.values(SHOT_REASON_FIELD),
                                   view.values(SHOT_GROUP_FIELD)):
        assert SHOT_TAG in tags and group >= 1
        assert reason.startswith("another shot of the same scene as ")
        assert "epipolar inliers" in reason and "off one plane" in reason
    assert shots.match_tags(SHOT_TAG).count() == len(view)
    # The panel's line and the CLI's listing say the same, apart from the duplicates.
    from lookalike.app import panel_rows

    assert panel_rows.shot_line(shots).startswith(
        f"{len(view)} images in {len(report.shot_groups)} groups are another shot")
    ran = run_cli("duplicates", "--dataset", shots.name, "--brain-key", "sim")
    assert ran.returncode == 0, ran.stderr
    listing = ran.stdout.split("other shots of one scene, not duplicates")[1]
    assert "room_a_1.png  (another shot of the same scene as room_a_2.png (" in listing

    # Without the relation the rooms are nothing (the shots do not verify as duplicates).
    before = lc.find_duplicates(shots, "sim", other_shots=False)
    assert not before.shot_groups
    for room in ROOMS:
        assert not [g for g in _names(shots, before.groups)
                    if {f"{room}_1", f"{room}_2"} <= set(g)], room
    assert len(lc.shots_view(shots)) == 0  # the rerun cleared the fields and the tag
    assert not shots.match_tags(SHOT_TAG).count()


def test_another_shot_across_splits_is_a_leak_with_its_reason(shots):
    files = [os.path.splitext(os.path.basename(p))[0] for p in shots.values("filepath")]
    shots.set_values("tags", [["test" if f.endswith("_2") else "train"] for f in files])
    try:
        report = lc.find_leaks(shots, "sim")
    finally:
        shots.set_values("tags", [[] for _ in files])
    reasons = {tuple(sorted(_names(shots, [[a, b]])[0])): why for a, b, why in report.pairs}
    for room in ROOMS:
        assert reasons[(f"{room}_1", f"{room}_2")].startswith("another shot of the same scene")
    assert report.num_shot_pairs >= len(ROOMS)
    assert "another shot of the same scene" in report.summary()
    assert not [(a, b) for a, b in reasons if a.startswith("backdrop_") != b.startswith(
        "backdrop_")]
    assert np.all([len(p) == 3 for p in report.pairs])
