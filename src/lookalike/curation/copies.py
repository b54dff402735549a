"""Synthetic copies: how far an edited copy of an image lands from it, for this encoder.

A label-free duplicate threshold should say "a copy is anything within the
distance that crop, resize, rotation, flip, JPEG, brightness, grayscale and a
text overlay move an image". So: take a seeded sample of the indexed images,
make one edited copy per edit kind (:mod:`lookalike.edits`), embed originals and
copies with the run's own encoder and keep the distances. The threshold is the
percentile of them that keeps the chosen share of copies.
"""

import random

import numpy as np

from lookalike.edits import EDITS, edited_copy
from lookalike.similarity.distance import cosine_distance

EDIT_HEADROOM = 4  # the edits shrink an image to 0.4 of its side at most


def copy_distances(index, num_images=64, seed=51, edits=EDITS, progress=None):
    """``{edit: [distances]}`` between sampled indexed images and their edited copies."""
    from lookalike.encoders.preprocessing import load_decoded, load_input, to_input
    from lookalike.images import UnreadableImageError
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
        arrays = np.stack([original] + [to_input(edited_copy(img, e, edit_rng), encoder.manifest)
                                        for e in edits])
        emb = encoder.embed(arrays)
        dist = cosine_distance(emb[1:] @ emb[0])
        for e, d in zip(edits, dist):
            out[e].append(float(d))
        if progress:
            progress(n, len(chosen_ids))
    return out
