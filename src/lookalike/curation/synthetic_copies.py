"""Synthetic copies: how far an edited copy of an image lands from it, for this encoder.

A label-free duplicate threshold should say "a copy is anything within the
distance that crop, resize, rotation, flip, JPEG, brightness, grayscale and a
text overlay move an image". So: take a seeded sample of the indexed images,
make one edited copy per edit kind (:mod:`lookalike.images.edits`), embed originals and
copies with the run's own encoder and keep the distances. The threshold is the
percentile of them that keeps the chosen share of copies.
"""

import random

import numpy as np

from lookalike.images.edits import EDITS, edited_copy
from lookalike.similarity.distance import cosine_distance

EDIT_HEADROOM = 4  # the edits shrink an image to 0.4 of its side at most


def copy_distances(index, num_images=64, seed=51, edits=EDITS, progress=None):
    """``{edit: [distances]}`` between sampled indexed images and their edited copies."""
    from lookalike.encoders.preprocessing import load_decoded, load_input, to_input
    from lookalike.images.decode import UnreadableImageError
    from lookalike.similarity import encoder_of

    encoder = encoder_of(index)
    ids = list(index.sample_ids)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ids), min(num_images, len(ids)), replace=False)
    chosen_ids = [ids[i] for i in chosen]
    paths = dict(zip(*index.dataset.select(chosen_ids).values(["id", "filepath"])))
    edit_rng = random.Random(seed)
    out = {e: [] for e in edits}
    for n, sid in enumerate(chosen_ids, 1):
        try:
            # The original exactly as its indexed vector was made; the copies are edited
            # from a decode with room for the edits that shrink it (resize to 0.4), so
            # each is resized down to the input as a copy's own file would be.
            if sid in paths:
                original = load_input(paths[sid], encoder.manifest)
                img = load_decoded(paths[sid], encoder.manifest, headroom=EDIT_HEADROOM)
            else:
                img = None
        except UnreadableImageError:
            img = None  # deleted, truncated, over the pixel limit...: the others still count
        if img is None:
            if progress:
                progress(n, len(chosen_ids))
            continue
        # The preprocessing the encoder's manifest records, as for every embedded file.
        copies = [to_input(edited_copy(img, e, edit_rng), encoder.manifest) for e in edits]
        # A copy the encoder sees unchanged (grayscale of a gray photo) is at distance 0
        # whatever the encoder: no evidence of invariance, so it is not counted.
        changed = [e for e, c in zip(edits, copies) if not np.array_equal(c, original)]
        if changed:
            arrays = np.stack([original] + [c for e, c in zip(edits, copies) if e in changed])
            emb = encoder.embed(arrays)
            dist = cosine_distance(emb[1:] @ emb[0])
            for e, d in zip(changed, dist):
                out[e].append(float(d))
        if progress:
            progress(n, len(chosen_ids))
    return out


# Images no real photo is a copy of: noise, flat colours, smooth gradients,
# stripes and checkerboards. Their nearest samples are negatives of the
# duplicate threshold (never a duplicate) and of the label match threshold
# (never a match).
JUNK_KINDS = ("noise", "coarse_noise", "blurred_noise", "black", "white", "gray", "colour",
              "gradient", "stripes", "checker")
# More of some kinds: noise at 4 grain sizes (an encoder sees it shrunk to its input:
# fine noise averages to gray), flat colours around the hue circle at 2 strengths.
_PER_KIND = {"noise": 2, "colour": 6}


def junk_images(size=128, seed=51, per_kind=2):
    """``[(kind, RGB PIL image)]``: ``per_kind`` images of each of :data:`JUNK_KINDS`
    (:data:`_PER_KIND` times as many of some), random where the kind allows."""
    import colorsys

    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for kind in JUNK_KINDS:
        for n in range(per_kind * _PER_KIND.get(kind, 1)):
            if kind == "noise":
                grain = 2 ** (n % 4)
                a = np.kron(rng.integers(0, 256, (size // grain, size // grain, 3)),
                            np.ones((grain, grain, 1)))
            elif kind in ("coarse_noise", "blurred_noise"):  # blobs rather than pixels
                cell = int(rng.integers(8, 24))
                small = rng.integers(0, 256, (max(2, size // cell),) * 2 + (3,)).astype(np.uint8)
                resample = (Image.Resampling.NEAREST if kind == "coarse_noise"
                            else Image.Resampling.BICUBIC)
                a = np.asarray(Image.fromarray(small, "RGB").resize((size, size), resample))
            elif kind in ("black", "white", "gray"):
                level = {"black": 8, "white": 247, "gray": 128}[kind] + 4 * n
                a = np.full((size, size, 3), level)
            elif kind == "colour":
                count = per_kind * _PER_KIND[kind]
                hue = (n % (count // 2) + rng.uniform(-0.2, 0.2)) / (count // 2)
                strong = n < count // 2
                rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.7, 1) if strong else
                                          rng.uniform(0.3, 0.7), rng.uniform(0.75, 1) if strong
                                          else rng.uniform(0.4, 0.75))
                a = np.broadcast_to(np.round(255 * np.array(rgb)), (size, size, 3))
            elif kind == "gradient":
                ramp = np.linspace(0, 255, size)
                a = np.repeat((ramp[None, :] if n % 2 == 0 else ramp[:, None])[..., None], 3,
                              axis=2)
                a = np.broadcast_to(a, (size, size, 3))
            else:  # stripes (one direction) or a checkerboard, of a random period
                period = int(rng.integers(3, 16))
                y, x = np.indices((size, size)) // period
                bits = (x if n % 2 == 0 else y) % 2 if kind == "stripes" else (x + y) % 2
                a = np.repeat((bits * 255)[..., None], 3, axis=2)
            out.append((kind, Image.fromarray(np.ascontiguousarray(a).astype(np.uint8), "RGB")))
    return out


def junk_distances(index, rows=None, k=10, seed=51):
    """Distances from each junk image to its ``k`` nearest samples (``rows``: of the view)."""
    from lookalike.encoders.preprocessing import to_input
    from lookalike.similarity import encoder_of

    encoder = encoder_of(index)
    arrays = np.stack([to_input(img, encoder.manifest) for _, img in junk_images(seed=seed)])
    emb = np.asarray(encoder.embed(arrays), np.float32)
    keep = None if rows is None else np.sort(np.asarray(rows, int))
    size = index.engine.size if keep is None else len(keep)
    _, dists = index.engine.knn(emb, min(k, size), keep=keep)
    dists = np.asarray(dists, float)
    return dists[np.isfinite(dists)]
