"""Copies by relation kind: what ``find_duplicates`` finds, and its false pairs (issue #28).

    .venv/bin/python benchmarks/copies.py              # everything (about 10 minutes, 2 cores)
    .venv/bin/python benchmarks/copies.py --no-options   # only the modes (about 8 minutes)

Images: the photos shipped in ``skimage/data`` (nothing downloaded). Each photo
with copies gets one copy of every kind of :data:`KINDS` (the parameters seeded
per photo; where a kind names two edits, photos alternate between them); 4 photos
get none (distractors only); ``motorcycle_right`` is the real other shot of
``motorcycle_left`` (a stereo pair: a camera moved in 3-D). Rendered rooms
(:func:`write_scenes`, :mod:`lookalike.demo.scenes`, papered with posters drawn here)
are scenes shot by six cameras each, with a backdrop room per room that shares only
its back wall: another shot of a scene is its own relation (``shot_groups``), scored
apart from the duplicates. Every image is a distractor for every other group: a
*false pair* is a predicted group holding two images of different photos or scenes.

Encoder: the tests' small contrastive encoder (``copies_encoder`` of
``tests/conftest.py``, taken from the tests' encoder cache, trained on the demo
photos, which are these photos: the figures are on images it has seen, as in the
tests). The pipeline is the product's: ``compute_embeddings``, ``build_index``,
``calibrate_threshold`` (label-free), then ``find_duplicates`` with its default
verification, in the modes of :data:`MODES` (same run, same index, same
calibration; each mode starts from an empty feature cache, so its time includes
its local features).

Then the orientation options at the candidate level (is the copy's original among
the pairs that verification checks?): nothing, each image's turned embeddings
queried (:mod:`lookalike.curation.orientations`), a canonical orientation
(each image embedded once, turned so that its brightest quadrant is top-left, its
brighter neighbour top-right), and local-feature votes
(:mod:`lookalike.images.feature_votes`); and the cost per image, extrapolated to
100,000 images.
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "tests"))

ORIENTATION_KINDS = ("rot90", "rot180", "rot270", "transpose", "transverse")
KINDS = ORIENTATION_KINDS + (
    "crop70", "crop50", "crop30",  # share of the area kept
    "letterbox_border", "onebit_posterise", "blur_jpeg10", "text_sticker", "screenshot",
    "combination",  # crop 50% + quarter turn + JPEG q30 / border + posterise + text
    "perspective",  # another shot of a plane (synthetic: edits.perspective)
)
# find_duplicates' arguments; "agreement": the agreement check's minimum (0: off);
# "containment": False turns off the search for crops of featureless images
MODES = {
    "no verification": dict(verify=False),
    "before (no orientations, no votes)": dict(orientations=False, feature_votes=False,
                                               agreement=0.0, containment=False,
                                               other_shots=False),
    "+orientations (stop 34 default)": dict(feature_votes=False, agreement=0.0,
                                            containment=False, other_shots=False),
    "+orientations +agreement": dict(feature_votes=False, containment=False,
                                     other_shots=False),
    "+orientations +votes, no agreement": dict(feature_votes=True, agreement=0.0,
                                               containment=False, other_shots=False),
    "+orientations +votes +agreement (stop 35 default)": dict(containment=False,
                                                               other_shots=False),
    "+containment (stop 37 default)": dict(other_shots=False),
    "default (+other shots)": dict(),
}
# Rendered scenes (lookalike.demo.scenes, papered with posters drawn here): each room shot
# by the 6 cameras of scenes.SHOTS (15 pairs of another shot per room), and a backdrop
# room per room that shares only its back wall (one plane, like a studio backdrop: a
# hard negative), shot twice.
NUM_ROOMS = 3


# -- the copies -------------------------------------------------------------------
def _font(size):
    from PIL import ImageFont

    return ImageFont.load_default(size=max(10, int(size)))


def _crop(img, share, rng):
    w, h = img.size
    r = rng.uniform(0.85, 1.15)
    cw = min(w, int(round(w * np.sqrt(share) * r)))
    ch = min(h, int(round(w * h * share / cw)))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((left, top, left + cw, top + ch))


def _jpeg(img, quality):
    from lookalike.images.edits import reencode_jpeg

    return reencode_jpeg(img, quality)


def _text(img, rng):
    from PIL import ImageDraw

    img = img.copy()
    w, h = img.size
    draw = ImageDraw.Draw(img)
    font = _font(h / 9)
    for y, line in ((h * 0.04, "WHEN THE MONDAY"), (h * 0.78, "HITS DIFFERENT")):
        draw.text((w * 0.05, y), line, fill=(255, 255, 255), font=font,
                  stroke_width=max(1, h // 90), stroke_fill=(0, 0, 0))
    return img


def _sticker(img, rng):
    from PIL import ImageDraw

    img = img.copy()
    w, h = img.size
    draw = ImageDraw.Draw(img)
    side = int(np.sqrt(0.12 * w * h))
    x, y = rng.randint(0, w - side), rng.randint(0, h - side)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    draw.ellipse((x, y, x + side, y + side), fill=colour, outline=(255, 255, 255),
                 width=max(2, side // 20))
    draw.text((x + side * 0.18, y + side * 0.35), "SALE", fill=(255, 255, 255),
              font=_font(side / 4))
    return img


def _letterbox(img, rng):
    from PIL import Image

    w, h = img.size
    if w / h > 1.2:  # landscape: bars above and below, to a square
        size = (w, w)
    else:  # to 16:9, bars left and right
        size = (max(w, int(h * 16 / 9)), h)
    out = Image.new("RGB", size, (0, 0, 0))
    out.paste(img, ((size[0] - w) // 2, (size[1] - h) // 2))
    return out


def _border(img, rng):
    from PIL import ImageOps

    w, h = img.size
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    return ImageOps.expand(img, border=int(0.1 * max(w, h)), fill=colour)


def _screenshot(img, rng):
    """The photo in a window: title bar with buttons, a toolbar, a side panel, a status bar."""
    from PIL import Image, ImageDraw

    w, h = img.size
    scale = rng.uniform(0.6, 0.8)
    photo = img.resize((max(16, int(w * scale)), max(16, int(h * scale))))
    pw, ph = photo.size
    side, title, tool, status = int(0.3 * pw), int(0.07 * ph), int(0.09 * ph), int(0.05 * ph)
    out = Image.new("RGB", (pw + side + 20, ph + title + tool + status + 20), (236, 236, 236))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, out.width, title), fill=(52, 56, 64))
    for n, c in enumerate(((237, 95, 87), (245, 190, 79), (98, 197, 84))):
        r = title // 4
        draw.ellipse((10 + n * 3 * r, title // 2 - r, 10 + n * 3 * r + 2 * r, title // 2 + r),
                     fill=c)
    draw.text((out.width // 3, title // 4), "IMG_2041.JPG - Photos", fill=(230, 230, 230),
              font=_font(title / 2))
    for n in range(6):
        x = 10 + n * (tool + 8)
        draw.rounded_rectangle((x, title + 6, x + tool, title + tool - 2), radius=4,
                               fill=(200, 205, 215))
    draw.rectangle((0, title + tool, side, out.height - status), fill=(222, 226, 232))
    for n in range(8):
        y = title + tool + 14 + n * max(12, ph // 12)
        draw.text((12, y), f"Album {n + 1}", fill=(60, 60, 60), font=_font(max(10, ph / 28)))
    out.paste(photo, (side + 10, title + tool + 10))
    draw.rectangle((0, out.height - status, out.width, out.height), fill=(210, 210, 210))
    draw.text((10, out.height - status), f"{w} x {h}  100%", fill=(40, 40, 40),
              font=_font(status * 0.8))
    return out


def make_copy(img, kind, n, rng):
    """``(image, extension)``: the copy of ``kind`` of the ``n``-th photo (RGB PIL image)."""
    from PIL import Image, ImageFilter, ImageOps

    from lookalike.images.edits import perspective

    t = Image.Transpose
    even = n % 2 == 0
    if kind in ORIENTATION_KINDS:
        how = {"rot90": t.ROTATE_90, "rot180": t.ROTATE_180, "rot270": t.ROTATE_270,
               "transpose": t.TRANSPOSE, "transverse": t.TRANSVERSE}[kind]
        return img.transpose(how), ".png"
    if kind.startswith("crop"):
        return _crop(img, int(kind[4:]) / 100, rng), ".png"
    if kind == "letterbox_border":
        return (_letterbox if even else _border)(img, rng), ".png"
    if kind == "onebit_posterise":
        if even:
            return img.convert("1").convert("RGB"), ".png"
        return ImageOps.posterize(img, 2), ".png"
    if kind == "blur_jpeg10":
        if even:
            return img.filter(ImageFilter.GaussianBlur(max(img.size) / 100)), ".png"
        return img, ".jpg10"
    if kind == "text_sticker":
        return (_text if even else _sticker)(img, rng), ".png"
    if kind == "screenshot":
        return _screenshot(img, rng), ".png"
    if kind == "combination":
        if even:
            return _jpeg(_crop(img, 0.5, rng).transpose(t.ROTATE_90), 30), ".png"
        return _text(ImageOps.posterize(_border(img, rng), 3), rng), ".png"
    if kind == "perspective":
        return perspective(img, rng), ".png"
    raise ValueError(kind)


def write_copies(root, seed=51):
    """Writes the originals and their copies under ``root``; one record per image."""
    from PIL import Image

    from lookalike.demo.dataset import OTHER_VIEWS, UNIQUE_PHOTOS, skimage_photo_paths
    from lookalike.images.decode import to_rgb

    records = []
    for n, (name, src) in enumerate(sorted(skimage_photo_paths().items())):
        group = OTHER_VIEWS.get(name, name)
        dst = os.path.join(root, os.path.basename(src))
        shutil.copyfile(src, dst)
        edit = "other_shot" if name in OTHER_VIEWS else "original"
        records.append(dict(filepath=dst, gt_group=group, gt_edit=edit,
                            gt_unique=name in UNIQUE_PHOTOS))
        if name in UNIQUE_PHOTOS or name in OTHER_VIEWS:
            continue
        with Image.open(src) as f:
            img = to_rgb(f)
        for kind in KINDS:
            rng = random.Random(f"{seed}-{name}-{kind}")
            out, ext = make_copy(img, kind, n, rng)
            path = os.path.join(root, f"{name}_{kind}.{'jpg' if ext.startswith('.jpg') else 'png'}")
            if ext == ".jpg10":
                out.save(path, quality=10)
            else:
                out.save(path)
            records.append(dict(filepath=path, gt_group=group, gt_edit=kind, gt_unique=False))
    return records + write_scenes(root)


def write_scenes(root):
    """The rendered rooms and their backdrop rooms (see :data:`NUM_ROOMS`)."""
    from PIL import Image

    from lookalike.demo import scenes

    faces = len(scenes.FACES)
    posters = {f"p{n}": scenes.drawn_texture(1000 + n) for n in range(2 * NUM_ROOMS * faces)}
    cameras = [shot for pair in scenes.SHOTS for shot in pair]
    records = []
    for r in range(NUM_ROOMS):
        rooms = {f"room{r}": [f"p{2 * r * faces + k}" for k in range(faces)]}
        rooms[f"backdrop{r}"] = rooms[f"room{r}"][:1] + [f"p{(2 * r + 1) * faces + k}"
                                                          for k in range(1, faces)]
        for name, papers in rooms.items():
            shots = cameras if name.startswith("room") else scenes.SHOTS[r % len(scenes.SHOTS)]
            for n, camera in enumerate(shots):
                path = os.path.join(root, f"{name}_shot{n}.png")
                Image.fromarray(scenes.render(scenes.room(posters, papers), camera,
                                              seed=n)).save(path)
                records.append(dict(filepath=path, gt_group=name,
                                    gt_edit="original" if n == 0 else "other_shot",
                                    gt_unique=False))
    return records


# -- the encoder, the dataset ---------------------------------------------------------
def copies_encoder(tmp):
    """The tests' ``copies_encoder`` (from the tests' encoder cache; trained if absent)."""
    from encoder_cache import cached_encoder

    from lookalike.demo.dataset import write_demo_images
    from lookalike.encoders import contrastive
    from lookalike.encoders.data import load_images
    from lookalike.encoders.preprocessing import input_manifest

    records = write_demo_images(os.path.join(tmp, "demo"), max_digits=1)
    photos = [r["filepath"] for r in records if r["source"] == "photo"]
    settings = dict(image_size=32, epochs=10, batch_size=64, width=0.5)

    def train(store_dir):
        images = load_images(photos, input_manifest("contrastive", 32)).images
        contrastive.train(images, "copies", store_dir=store_dir, **settings)

    return cached_encoder("copies", dict(settings, photos=[os.path.basename(p) for p in photos]),
                          train)


def false_pairs(ds, groups):
    """``[(file, file)]`` of images of different photos in one predicted group."""
    truth = dict(zip(ds.values("id"), ds.values("gt_group")))
    files = dict(zip(ds.values("id"), ds.values("filepath")))
    out = []
    for g in groups:
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                if truth[g[a]] != truth[g[b]]:
                    out.append((os.path.basename(files[g[a]]), os.path.basename(files[g[b]])))
    return out


def _files(ds, pairs):
    name = dict(zip(ds.values("id"), (os.path.basename(p) for p in ds.values("filepath"))))
    return [(name[a], name[b]) for a, b in pairs]


def shot_pair_scores(ds, shot_groups):
    """Precision and recall of another-shot pairs: a predicted pair (two images in one shot
    group) is right when both show one scene (one ``gt_group``: a crop of the left stereo
    view is another shot of the right one); the true pairs are those of a scene's original
    and its other shots, and of two other shots of one scene."""
    from lookalike.demo.steps import SHOT_RELATIONS

    ids, groups, edits = ds.values(["id", "gt_group", "gt_edit"])
    scene, edit = dict(zip(ids, groups)), dict(zip(ids, edits))
    predicted = {(a, b) for g in shot_groups for a in g for b in g if a < b}
    right = {p for p in predicted if scene[p[0]] == scene[p[1]]}
    shown = [s for s in ids if edit[s] in ("original",) + SHOT_RELATIONS]
    true = {(a, b) for a in shown for b in shown if a < b and scene[a] == scene[b]
            and (edit[a] in SHOT_RELATIONS or edit[b] in SHOT_RELATIONS)}
    return {"precision": len(right) / len(predicted) if predicted else 1.0,
            "recall": len(true & predicted) / len(true) if true else 1.0,
            "missed": sorted(true - predicted)}


# -- candidate-level orientation options ---------------------------------------------
def canonical(images):
    """Each (S, S, 3) array turned (of the 8 turns and mirrors) so that its brightest
    quadrant is top-left and the brighter of that quadrant's two neighbours top-right."""
    from lookalike.curation.orientations import turn

    variants = [images, turn(images, "rot90"), turn(images, "rot180"),
                np.ascontiguousarray(np.rot90(images, 3, axes=(1, 2)))]
    variants += [np.ascontiguousarray(v.transpose(0, 2, 1, 3)) for v in variants]
    s = images.shape[1] // 2
    keys = []
    for v in variants:
        g = v.astype(np.float32).mean(axis=3)
        q = np.stack([g[:, :s, :s].mean((1, 2)), g[:, :s, s:].mean((1, 2)),
                      g[:, s:, :s].mean((1, 2))], axis=1)
        keys.append(q[:, 0] * 1e6 + q[:, 1] * 1e3 - q[:, 2])  # TL, then TR over BL
    best = np.argmax(np.stack(keys, axis=1), axis=1)
    return np.stack([variants[b][n] for n, b in enumerate(best)])


def knn_pairs(vectors, queries, k, within):
    """Pairs (a, b), a < b, of each query row's ``k`` nearest other rows within ``within``."""
    sims = queries @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    d = 1 - np.take_along_axis(sims, top, axis=1)
    a = np.repeat(np.arange(len(vectors)), k)
    ok = d.ravel() <= within
    return {(min(x, y), max(x, y)) for x, y in zip(a[ok], top.ravel()[ok])}


def candidate_recall(pairs, edits, groups, kinds):
    original = {g: n for n, (g, e) in enumerate(zip(groups, edits)) if e == "original"}
    out = {}
    for n, (g, e) in enumerate(zip(groups, edits)):
        if e in kinds:
            o = original[g]
            found, total = out.get(e, (0, 0))
            out[e] = (found + int((min(n, o), max(n, o)) in pairs), total + 1)
    return out


def false_candidates(pairs, groups):
    return sum(groups[a] != groups[b] for a, b in pairs)


def orientation_options(ds, index, cal, out):
    from lookalike.curation.orientations import ORIENTATION_CANDIDATES, TURNS, turn
    from lookalike.encoders.data import iter_batches
    from lookalike.images import local_features as V
    from lookalike.images.feature_votes import VOTE_CANDIDATES, vote_pairs
    from lookalike.similarity import encoder_of

    encoder = encoder_of(index)
    paths, groups, edits = ds.values("filepath"), ds.values("gt_group"), ds.values("gt_edit")
    rows = {s: r for r, s in enumerate(index.sample_ids)}
    plain = index.engine.matrix[[rows[s] for s in ds.values("id")]]
    within, k = cal.candidate_threshold, 10
    t = time.perf_counter()
    inputs = np.concatenate([im for _, im, _ in iter_batches(paths, encoder.manifest, 64)])
    decode_s = time.perf_counter() - t
    t = time.perf_counter()
    encoder.embed(inputs)
    embed_s = time.perf_counter() - t
    options = {}
    options["nothing (k=10 nearest)"] = (knn_pairs(plain, plain, k, within), 0.0)
    t = time.perf_counter()
    turned = {h: encoder.embed(turn(inputs, h)) for h in TURNS}
    turn_s = time.perf_counter() - t + decode_s
    query = set(options["nothing (k=10 nearest)"][0])
    for v in turned.values():
        query |= knn_pairs(plain, v, ORIENTATION_CANDIDATES, within)
    options[f"+ turned queries ({len(TURNS)} turns, k={ORIENTATION_CANDIDATES})"] = (query,
                                                                                     turn_s)
    t = time.perf_counter()
    canon = encoder.embed(canonical(inputs))
    canon_s = time.perf_counter() - t + decode_s
    options["canonical orientation instead (k=10)"] = (knn_pairs(canon, canon, k, within),
                                                        canon_s)
    features, _ = V.compute_features(paths)
    t = time.perf_counter()
    vi, vj, _ = vote_pairs(features, VOTE_CANDIDATES)
    vote_s = time.perf_counter() - t
    votes = set(zip(vi.tolist(), vj.tolist()))
    options[f"+ feature votes (k={VOTE_CANDIDATES})"] = (
        options["nothing (k=10 nearest)"][0] | votes, vote_s)
    options["feature votes alone"] = (votes, vote_s)
    kinds = ORIENTATION_KINDS + ("crop30", "crop50", "screenshot", "combination")
    head = "| option | " + " | ".join(kinds) + " | candidate pairs | of different photos | extra s |"
    out.append("\nOrientation options, candidate level: copies whose original is among the "
               f"pairs verification checks (candidate threshold {within:.4f}); "
               f"{len(paths)} images; plain embedding of all: {embed_s:.2f} s + decode "
               f"{decode_s:.2f} s\n")
    out.append(head)
    out.append("|---" * (len(kinds) + 4) + "|")
    for name, (pairs, seconds) in options.items():
        rec = candidate_recall(pairs, edits, groups, kinds)
        out.append(f"| {name} | " + " | ".join("{}/{}".format(*rec[x]) for x in kinds)
                   + f" | {len(pairs)} | {false_candidates(pairs, groups)} | {seconds:.2f} |")
    print("\n".join(out[-len(options) - 3:]), flush=True)
    return dict(decode=decode_s, embed=embed_s, turned=turn_s, votes=vote_s,
                features=features)


def costs(ds, timings, out):
    from lookalike.images import local_features as V
    from lookalike.images.feature_votes import (
        VOTE_CANDIDATES, image_words, num_words, rootsift, vocabulary, vote_pairs)

    paths = ds.values("filepath")
    n = len(paths)
    t = time.perf_counter()
    features, _ = V.compute_features(paths)
    feat_s = time.perf_counter() - t
    have = [f for f in features if f is not None]
    desc = [rootsift(f.descriptors) for f in have]
    total = sum(len(d) for d in desc)
    t = time.perf_counter()
    vocab = vocabulary(desc)
    vocab_s = time.perf_counter() - t
    t = time.perf_counter()
    words = image_words(vocab, desc)
    assign_s = time.perf_counter() - t
    t = time.perf_counter()
    vote_pairs(features, VOTE_CANDIDATES)
    vote_s = max(0.0, time.perf_counter() - t - vocab_s - assign_s)  # the product and top k
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, n, 600), rng.integers(0, n, 600)
    t = time.perf_counter()
    V.verify_pairs(features, i, j)
    pair_s = (time.perf_counter() - t) / len(i)
    K, big = num_words(total), 100_000
    per_image_desc = total / len(have)
    big_k = num_words(int(per_image_desc * big))
    mean_words = np.mean([len(w) for w in words])
    # Votes: a sparse product; each image meets the images sharing each of its words:
    # about words/image * (images * words/image / vocabulary) postings.
    df_big = big * mean_words / big_k
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out.append(f"\nCost ({cores} cores, wall clock, {n} images, {per_image_desc:.0f} "
               f"descriptors per image, vocabulary {K} words):\n")
    out.append("| step | per image (ms) | at 100,000 images |")
    out.append("|---|---|---|")
    rows = [
        ("local features (SIFT, cached after)", 1000 * feat_s / n, big * feat_s / n),
        ("turned embeddings (4 turns, this 32-px encoder; decode included)",
         1000 * timings["turned"] / n, big * timings["turned"] / n),
        ("plain embedding, for scale (this encoder)", 1000 * timings["embed"] / n,
         big * timings["embed"] / n),
        ("vocabulary (two-level k-means, sample capped at 64 per word)", 1000 * vocab_s / n,
         None),
        ("quantising descriptors (64 cells, then the words of one cell)", 1000 * assign_s / n,
         big * assign_s / n * (64 + big_k / 64) / (64 + K / 64)),
        ("votes (sparse tf-idf product, top 5)", 1000 * vote_s / n,
         big * vote_s / n * df_big / max(1, n * mean_words / K)),
        ("verification per candidate pair (ms per pair)", 1000 * pair_s, None),
    ]
    for name, ms, at in rows:
        out.append(f"| {name} | {ms:.2f} | "
                   + ("" if at is None else f"{at / 60:.1f} min") + " |")
    out.append(f"\nAt 100,000 images the vocabulary would have {big_k} words (two-level "
               f"k-means on {64 * big_k:,} sampled descriptors: measure it, not extrapolated "
               "here); the "
               "quantising line scales with the words, the votes line with the postings each "
               f"image meets (about {df_big:.0f} images per word). Verification: each image's "
               "new candidates (up to 8 from turns, 5 from votes) at the per-pair cost above.")
    print("\n".join(out[-len(rows) - 5:]), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--keep", action="store_true", help="keep the image folder")
    parser.add_argument("--no-options", action="store_true",
                        help="only the modes' table: not the orientation options and costs")
    args = parser.parse_args()

    import conftest  # the tests' isolated mongod and model store

    conftest._start_isolated_database()
    from lookalike.core.database import quiet_mongodb_version_warning

    quiet_mongodb_version_warning()
    import fiftyone as fo

    import lookalike.curation as lc
    import lookalike.similarity as ls
    from lookalike.demo.steps import group_of, pair_scores, relation_recall
    from lookalike.demo.steps import true_groups
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.curation import duplicate_pairs
    from lookalike.images import local_features as V

    tmp = tempfile.mkdtemp(prefix="lookalike-bench-copies-")
    try:
        encoder = copies_encoder(tmp)
        root = os.path.join(tmp, "copies")
        os.makedirs(root)
        records = write_copies(root)
        ds = fo.Dataset("bench-copies", overwrite=True)
        ds.add_samples([fo.Sample(**r) for r in records])
        t = time.perf_counter()
        compute_embeddings(ds, encoder, "emb")
        ls.build_index(ds, "emb", "sim")
        cal = lc.calibrate_threshold(ds, "sim")
        print(f"{len(ds)} images; embedded, indexed and calibrated in "
              f"{time.perf_counter() - t:.0f} s: duplicate threshold "
              f"{cal.duplicate_threshold:.4f}, candidate threshold "
              f"{cal.candidate_threshold:.4f}, min inliers {cal.min_inliers}", flush=True)
        ids, groups, edits = ds.values(["id", "gt_group", "gt_edit"])
        truth = true_groups(ds)
        rows, out = [], []
        default_agreement = V.MIN_AGREEMENT
        default_contained = duplicate_pairs._contained_edges
        for mode in args.modes:
            shutil.rmtree(V.cache_dir(ds), ignore_errors=True)
            t = time.perf_counter()
            settings = dict(MODES[mode])
            V.MIN_AGREEMENT = settings.pop("agreement", default_agreement)
            duplicate_pairs._contained_edges = (default_contained if settings.pop(
                "containment", True) else lambda *args: None)
            report = lc.find_duplicates(ds, "sim", **settings)
            seconds = time.perf_counter() - t
            predicted = group_of(ids, report.groups)
            scores = pair_scores(predicted, truth)
            wrong = false_pairs(ds, report.groups)
            shot_groups = group_of(ids, report.shot_groups)
            shots = shot_pair_scores(ds, report.shot_groups)
            wrong_shots = false_pairs(ds, report.shot_groups)
            v = report.verification or {}
            rows.append((mode, relation_recall(ds, predicted, shot_groups), scores, wrong,
                         seconds, v.get("num_candidates", 0), shots, wrong_shots))
            print(f"  {mode}: {seconds:.1f} s, {v.get('num_candidates', 0)} candidates, "
                  f"{v.get('num_blind')} blind, {v.get('num_containment_checked')} checked inside, "
                  f"{v.get('num_shot_checked')} judged densely for parallax, "
                  f"P {scores['precision']:.3f} R {scores['recall']:.3f}, "
                  f"{len(wrong)} false pairs {wrong[:6]}; other shots P "
                  f"{shots['precision']:.3f} R {shots['recall']:.3f}, {len(wrong_shots)} false "
                  f"{wrong_shots[:6]}, missed {_files(ds, shots['missed'][:6])}", flush=True)
        kinds = list(KINDS)
        out.append(f"\n{len(ds)} images ({len(KINDS)} kinds x 20 photos, 25 originals); "
                   f"duplicate threshold {cal.duplicate_threshold:.4f}, candidate threshold "
                   f"{cal.candidate_threshold:.4f}, min inliers {cal.min_inliers} "
                   "(label-free calibration)\n")
        out.append("| kind | " + " | ".join(r[0] for r in rows) + " |")
        out.append("|---" * (len(rows) + 1) + "|")
        for kind in kinds:
            out.append(f"| {kind} | " + " | ".join(
                "{}/{}".format(*r[1].get(kind, (0, 0))) for r in rows) + " |")
        out.append("| **pair precision / recall** | " + " | ".join(
            f"{r[2]['precision']:.3f} / {r[2]['recall']:.3f}" for r in rows) + " |")
        out.append("| **false pairs** | " + " | ".join(str(len(r[3])) for r in rows) + " |")
        out.append("| *another shot (not duplicates):* stereo pair, rendered rooms | " + " | ".join(
            "{}/{}".format(*r[1].get("other_shot", (0, 0))) for r in rows) + " |")
        out.append("| another-shot pair precision / recall | " + " | ".join(
            f"{r[6]['precision']:.3f} / {r[6]['recall']:.3f}" for r in rows) + " |")
        out.append("| false another-shot pairs | " + " | ".join(str(len(r[7])) for r in rows)
                   + " |")
        out.append("| candidate pairs verified | " + " | ".join(str(r[5]) for r in rows) + " |")
        out.append("| find_duplicates, s (features from an empty cache) | " + " | ".join(
            f"{r[4]:.1f}" for r in rows) + " |")
        V.MIN_AGREEMENT, duplicate_pairs._contained_edges = default_agreement, default_contained
        print("\n".join(out), flush=True)
        if args.no_options:
            return
        index = ls.load_index(ds, "sim")
        timings = orientation_options(ds, index, cal, out)
        costs(ds, timings, out)
        print("\n\n=== all tables ===\n" + "\n".join(out))
        fo.delete_dataset("bench-copies")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
