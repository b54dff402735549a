"""Quarter turns and transposes: candidate pairs from each image's turned embeddings.

An encoder trained on upright photos puts a photo turned by 90 degrees far from
it (a new arrangement of the same pixels). Each image is embedded again turned
by 90 and 180 degrees and mirrored about both diagonals (transpose, transverse);
a turned embedding's nearest neighbours in the run are candidates for
geometric verification (SIFT is rotation-invariant; a transposed copy is also a
mirror image, so those pairs are retried mirrored). These four cover every
quarter turn and transpose of a pair, either way: a copy turned by 270 degrees
is found by turning it by 90. The turns act on the encoder's input array, which
is the file resized to a square, so a turned input is exactly the input of the
turned file.

Measured options (``benchmarks/copies.py``, ``docs/benchmarks.md``): this
query-side search, a canonical orientation per image, and local-feature votes
(:mod:`lookalike.images.feature_votes`).
"""

import numpy as np

TURNS = ("rot90", "rot180", "transpose", "transverse")
MIRRORED_TURNS = ("transpose", "transverse")  # a mirror image: verify mirrored too
ORIENTATION_CANDIDATES = 2  # nearest neighbours of each turned embedding


def turn(images, how):
    """(N, H, W, C) arrays turned: ``how`` one of :data:`TURNS`."""
    if how == "rot90":
        return np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    if how == "rot180":
        return np.ascontiguousarray(images[:, ::-1, ::-1])
    if how == "transpose":
        return np.ascontiguousarray(images.transpose(0, 2, 1, 3))
    if how == "transverse":
        return np.ascontiguousarray(images[:, ::-1, ::-1].transpose(0, 2, 1, 3))
    raise ValueError(f"unknown turn {how!r}")


def _cache_name(encoder, turns):
    """What the results cache calls this encoder's turned embeddings: its weights, the
    decode and resize its manifest records, and the turns."""
    import hashlib
    import json

    what = json.dumps([encoder.version, encoder.manifest.get("preprocessing"),
                       encoder.image_size, list(turns)], sort_keys=True, default=str)
    return f"turned-{hashlib.sha1(what.encode()).hexdigest()[:16]}"


def turned_vectors(encoder, paths, turns=TURNS, batch_size=64, progress=None, cache=None):
    """``(vectors, ok)``: ``{turn: (len(ok), D) unit vectors}`` of the files in ``paths``
    that decode (positions ``ok``), each turned as :func:`turn` says.

    ``cache``: a dataset's features cache folder: each file's turned embeddings are
    kept there (:mod:`lookalike.images.result_cache`), so a rerun embeds only the files
    that are new or changed since."""
    from lookalike.encoders.data import iter_batches
    from lookalike.images.result_cache import ResultCache, file_identity, result_key

    dim = encoder.embedding_size
    rows, saved, keys = {}, None, None
    if cache:
        saved = ResultCache(cache, _cache_name(encoder, turns), len(turns) * dim, np.float32)
        identities = [file_identity(p) for p in paths]
        keys = [None if i is None else result_key(saved.name, i) for i in identities]
        rows = {n: v for n, v in enumerate(saved.get(keys)) if v is not None}
    todo = [n for n in range(len(paths)) if n not in rows]
    new = {}
    for idx, images, _ in iter_batches([paths[n] for n in todo], encoder.manifest, batch_size):
        if not len(idx):
            continue
        x = np.asarray(images)
        got = np.concatenate([encoder.embed(turn(x, t)) for t in turns], axis=1)
        new.update((todo[m], row) for m, row in zip(idx, got))
        if progress:
            done = len(rows) + len(new)
            progress(done / max(len(paths), 1), f"turned embeddings of {done} images")
    if saved is not None and new:
        saved.add([keys[n] for n in new], list(new.values()))
    rows.update(new)
    ok = np.array(sorted(rows), np.int64)
    both = (np.stack([rows[n] for n in ok]).astype(np.float32) if len(ok)
            else np.zeros((0, len(turns) * dim), np.float32))
    return ({t: np.ascontiguousarray(both[:, k * dim:(k + 1) * dim])
             for k, t in enumerate(turns)}, ok)


def orientation_pairs(index, rows, paths, k, within, progress=None, cache=None):
    """``(i, j, mirrored, distance, turned)``: positions in ``rows`` of each image's turned
    embeddings' ``k`` nearest neighbours in ``index`` (rows ``rows``, files ``paths``)
    within ``within``; ``mirrored``: found by a mirrored turn (verify mirrored too);
    ``distance``: of the turned embedding (of ``i`` or ``j``) to the other; ``turned``:
    the turn (one of :data:`TURNS`). A pair found by several turns keeps its nearest.
    ``cache``: see :func:`turned_vectors`.
    An index whose encoder cannot embed a new image (a field lookalike did not
    write, an encoder changed since) gets no turned pairs."""
    from lookalike.core.errors import LookalikeError
    from lookalike.similarity import encoder_of

    empty = np.zeros(0, np.int64)
    nothing = (empty, empty, np.zeros(0, bool), np.zeros(0, np.float32), np.zeros(0, "<U10"))
    try:
        encoder = encoder_of(index)
    except LookalikeError:
        return nothing
    vectors, ok = turned_vectors(encoder, paths, progress=progress, cache=cache)
    whole = len(rows) == index.total_index_size
    position = np.full(index.total_index_size, -1, np.int64)
    position[rows] = np.arange(len(rows))
    kk = min(k + 1, len(rows))
    i, j, mirrored, distance, turned = [], [], [], [], []
    for t, v in vectors.items():
        if not len(v):
            continue
        inds, dists = index.engine.knn(v, kk, keep=None if whole else np.asarray(rows))
        inds = np.asarray(inds, np.int64)
        b = (np.where(inds >= 0, position[np.clip(inds, 0, None)], -1) if whole
             else inds)
        a = np.repeat(ok[:, None], kk, axis=1)
        good = (b >= 0) & (b != a) & (np.asarray(dists) <= within)
        # the k nearest that are someone else
        rank = np.cumsum(good, axis=1)
        good &= rank <= k
        i.append(a[good])
        j.append(b[good])
        mirrored.append(np.full(int(good.sum()), t in MIRRORED_TURNS))
        distance.append(np.asarray(dists, np.float32)[good])
        turned.append(np.full(int(good.sum()), t, "<U10"))
    if not i:
        return nothing
    i, j, mirrored, distance, turned = (np.concatenate(x)
                                        for x in (i, j, mirrored, distance, turned))
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((distance, hi, lo))  # each pair's nearest turn first
    lo, hi, mirrored, distance, turned = (x[order] for x in (lo, hi, mirrored, distance, turned))
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    # A pair is retried mirrored when any of its turns was a mirror image.
    codes = lo * np.int64(len(rows)) + hi
    any_mirrored = np.isin(codes, codes[mirrored])
    return lo[first], hi[first], any_mirrored[first], distance[first], turned[first]
