"""Near-duplicates with geometric verification, on the demo photos and a real (small) encoder.

The demo holds each original with its edited copies, a synthetic viewpoint copy
(``perspective``) and the real stereo pair motorcycle_left / motorcycle_right;
two textures (grass, gravel) that a small encoder confuses. Verification must
find the viewpoint copies, keep the textures apart and say why each member is
in its group.
"""

import fiftyone as fo
import pytest
from fiftyone import ViewField as F

import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.embeddings.compute import compute_embeddings
from lookalike.core.errors import CurationError
from lookalike.demo.steps import group_of, pair_scores, relation_recall, true_groups


@pytest.fixture(scope="module")
def photos(demo_records, copies_encoder):
    name = "test-duplicates-verified"
    ds = fo.Dataset(name, overwrite=True)
    photos = [r for r in demo_records if r["source"] == "photo"]
    ds.add_samples([fo.Sample(filepath=r["filepath"], gt_group=r["gt_group"],
                              gt_edit=r["gt_edit"], gt_unique=r["gt_unique"]) for r in photos])
    compute_embeddings(ds, copies_encoder, "emb")
    ls.build_index(ds, "emb", "sim")
    yield ds
    fo.delete_dataset(name)


def _scores(ds, report):
    ids = ds.values("id")
    predicted = group_of(ids, report.groups)
    return pair_scores(predicted, true_groups(ds)), relation_recall(
        ds, predicted, group_of(ids, report.shot_groups))


def test_verification_finds_viewpoint_copies_and_splits_what_features_contradict(photos):
    cal = lc.calibrate_threshold(photos, "sim")
    # Label-free: twice the chance inliers of unrelated pairs, never below the floor.
    assert cal.min_inliers >= 12 and "unrelated pairs" in cal.inlier_rule
    assert cal.candidate_threshold >= cal.duplicate_threshold
    assert cal.viewpoint_inliers_median > 3 * cal.min_inliers

    plain = lc.find_duplicates(photos, "sim", verify=False)
    assert plain.verification == {"ran": False, "why_not": "turned off"}
    assert "dup_inliers" not in photos.first() or photos.first().dup_inliers is None
    plain_scores, _ = _scores(photos, plain)

    verified = lc.find_duplicates(photos, "sim")  # verify="auto": on for this size
    assert verified.verification["ran"] and verified.verification["num_candidates"] > 0
    scores, relations = _scores(photos, verified)
    # Measured with this encoder: see the closing numbers in the README's curation table.
    assert scores["precision"] >= 0.95 and scores["precision"] >= plain_scores["precision"]
    # The two-sided threshold admits no junk (a flat colour lies as near some photos as
    # their crops): what verification cannot confirm (synthetic images: cell, color,
    # clock_motion, chessboard) stays apart. Measured: P 1.000, R 0.892 with the encoder
    # CI trained until stop 34; R 0.849 with one trained on 2026-12-07 (pillow 13, numpy
    # 2.4: 0.840 without this stop's votes and agreement check).
    assert scores["recall"] >= 0.83, scores
    # Every viewpoint copy with local features is verified (15 of 20 photos); the other
    # five (cell, chessboard, clock_motion, color, phantom: 0-7 inliers with their own
    # copy) join only within the duplicate threshold: 0.0034 with the encoder trained on
    # 2026-12-07, which takes none of them (18-20 of 20 with stop 34's CI encoder).
    found, total = relations["perspective"]
    assert found >= 0.75 * total, relations
    # The real stereo pair is another shot of the scene, not a duplicate (parallax: the
    # camera moved), grouped apart with its own reason.
    assert relations["other_view"] == (1, 1), relations
    # The textures the encoder confuses stay apart.
    for group in verified.groups:
        truths = set(photos.select(group).values("gt_group"))
        assert len(truths) == 1 or not truths >= {"grass", "gravel"}, truths

    # Every member says why it is in its group; a viewpoint copy by its inliers.
    view = lc.duplicates_view(photos)
    reasons = dict(zip(view.values("id"), view.values("dup_reason")))
    assert set(reasons.values()) and all(reasons.values())
    stereo = photos.match(F("gt_edit") == "other_view").first()
    assert stereo.dup_group is None and stereo.shot_group is not None
    assert stereo.shot_reason.startswith("another shot of the same scene as motorcycle_left")
    assert "another_shot" in stereo.tags and "duplicate" not in stereo.tags
    right = view.match((F("gt_edit") == "perspective") & (F("dup_inliers") != None)).first()  # noqa: E711
    assert right.dup_inliers >= cal.min_inliers
    kept = view.match(~F("tags").contains("duplicate"))
    assert set(kept.values("dup_reason")) == {"kept"} and set(kept.values("dup_inliers")) == {None}
    assert any("inliers" in r for r in reasons.values())
    assert verified.reasons == {s: r for s, r in reasons.items()}
    # What the panel shows for a selected member: its group, kept one first, with
    # each member's distance and inliers to the kept one and why it is there.
    from lookalike.app import panel_rows as overview

    members = overview.group_member_rows(photos, right.id)
    assert members[0]["kept"] and members[0]["reason"] == "kept"
    assert len(members) == len(view.match(F("dup_group") == right.dup_group))
    mine = next(m for m in members if m["id"] == right.id)
    assert mine["inliers"] == right.dup_inliers and mine["reason"] == right.dup_reason
    assert mine["distance"] == round(right.dup_distance, 4)
    alone = photos.match(F("dup_group") == None).first()  # noqa: E711
    assert overview.group_member_rows(photos, alone.id) == []
    # The counts travel with the run.
    saved = ls.load_index(photos, "sim").curation["duplicates"]
    assert saved["num_verified_pairs"] == verified.num_verified_pairs
    assert saved["verification"]["min_inliers"] == cal.min_inliers
    assert "geometric verification of" in verified.summary()


def test_verification_settings_are_checked_in_one_line(photos, dataset_name):
    with pytest.raises(CurationError, match="needs a similarity run"):
        lc.find_duplicates(photos, None, verify=True)
    with pytest.raises(CurationError, match="verify must be one of"):
        lc.find_duplicates(photos, "sim", verify="yes")
    with pytest.raises(CurationError, match="min_inliers must be at least 4"):
        lc.find_duplicates(photos, "sim", verify=True, min_inliers=2)
    # A run never calibrated: "auto" says why it did not verify; True refuses.
    ds = photos.clone(dataset_name)
    ls.build_index(ds, "emb", "fresh")
    report = lc.find_duplicates(ds, "fresh", threshold=0.05)
    assert not report.verification["ran"]
    assert "run calibrate_threshold" in report.verification["why_not"]
    with pytest.raises(CurationError, match="cannot verify: run 'fresh' has no verification"):
        lc.find_duplicates(ds, "fresh", threshold=0.05, verify=True)


def test_find_similar_re_ranked_by_local_features(photos, tmp_path):
    import random

    from lookalike.app import panel_rows as overview
    from lookalike.images.edits import perspective
    from lookalike.images.decode import load_image

    if lc.get_calibration(photos, "sim", check_fresh=False).min_inliers is None:
        lc.calibrate_threshold(photos, "sim")
    min_inliers = lc.get_calibration(photos, "sim").min_inliers
    left = photos.match(F("filepath").ends_with("motorcycle_left.png")).first()
    view = ls.sort_by_similarity(photos, "sim", query_ids=[left.id], k=25,
                                 dist_field="dist", verify=True)
    inliers = view.values("similarity_inliers")
    assert len(view) == 25 and None not in inliers
    verified = [n >= min_inliers for n in inliers]
    # Verified first, most inliers first; then the rest, nearest first.
    assert verified == sorted(verified, reverse=True)
    top = inliers[:sum(verified)]
    assert top == sorted(top, reverse=True)
    rest = view.values("dist")[sum(verified):]
    assert rest == sorted(rest)
    edits = dict(zip(view.values("id"), view.values("gt_edit")))
    right = photos.match(F("gt_edit") == "other_view").first()
    assert right.id in edits and verified[list(edits).index(right.id)]

    # An image file that is not in the dataset: a new shot of the astronaut.
    original = photos.match(F("filepath").ends_with("astronaut.png")).first()
    query = str(tmp_path / "astronaut-again.png")
    perspective(load_image(original.filepath), random.Random(3)).save(query)
    view = ls.sort_by_similarity(photos, "sim", query_path=query, k=10, verify=True)
    assert set(view.values("gt_group")[:3]) == {"astronaut"}
    assert view.first().similarity_inliers >= min_inliers
    with pytest.raises(ls.UsageError, match="select one sample"):
        ls.sort_by_similarity(photos, "sim", query_ids=[left.id, right.id], verify=True)

    # The panel's neighbours of a selected sample carry their inliers, verified first.
    rows = overview.neighbour_rows(photos, "sim", left.id, k=5)
    assert [r["inliers"] >= min_inliers for r in rows] == sorted(
        [r["inliers"] >= min_inliers for r in rows], reverse=True)
    assert right.id in [r["id"] for r in rows] or rows[0]["inliers"] >= min_inliers


def test_leaks_across_splits_use_the_calibrated_threshold_and_verification(photos,
                                                                           dataset_name,
                                                                           subprocess_env):
    ds = photos.clone(dataset_name)
    ls.build_index(ds, "emb", "sim")
    lc.calibrate_threshold(ds, "sim")
    test = ds.match(F("gt_edit").is_in(["perspective", "crop"]))
    test.tag_samples("test")
    ds.match(~F("gt_edit").is_in(["perspective", "crop"])).tag_samples("train")
    report = lc.find_leaks(ds, "sim")
    assert report.splits == ["test", "train"] and report.num_leaks > 0
    split = dict(zip(ds.values("id"), ["test" if "test" in t else "train"
                                       for t in ds.values("tags")]))
    assert all(split[a] != split[b] for a, b, _ in report.pairs)
    leaked = set(report.leak_ids)
    views = test.match(F("gt_edit") == "perspective").values("id")
    assert sum(s in leaked for s in views) >= 0.75 * len(views)  # as in the test above
    assert not leaked & set(ds.match(F("gt_unique") == True).values("id"))  # noqa: E712
    view = lc.leaks_view(ds)
    assert len(view) == report.num_leaks == len(ds.match_tags("leak"))
    one = view.match_tags("test").first()
    assert "(train)" in one.leak_with and one.leak_reason
    assert "test / train" in report.summary()
    # Bad splits, in one line.
    ds.match_tags("test").limit(1).tag_samples("train")
    with pytest.raises(CurationError, match="more than one of the split tags"):
        lc.find_leaks(ds, "sim")
    with pytest.raises(CurationError, match="only the split 'train'"):
        lc.find_leaks(ds.match_tags("test", bool=False), "sim", splits=("train", "val"))
    with pytest.raises(CurationError, match="no field 'fold'"):
        lc.find_leaks(ds, "sim", splits="fold")

    # From the command line, the splits in a field this time.
    import subprocess
    import sys

    ds.set_values("fold", ["b" if e == "perspective" else "a" for e in ds.values("gt_edit")])
    ds.persistent = True

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lookalike.cli", "leaks", "--dataset",
                               ds.name, "--brain-key", "sim", *args], capture_output=True,
                              text=True, env=subprocess_env, timeout=300)

    out = cli("--split-field", "fold", "--show", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert "across the splits a, b (a / b:" in lines[0] and "tagged 'leak'" in lines[0]
    assert len([line for line in lines if " ~ " in line]) == 2 and "more pairs" in lines[-1]
    ds.reload()
    assert set(lc.leaks_view(ds).values("fold")) == {"a", "b"}
    out = cli("--split-field", "nope")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "no field 'nope'" in out.stderr
