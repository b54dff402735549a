"""Candidate pairs from local features alone, independent of any embedding.

An embedding puts a 30% crop, a quarter turn or a screenshot of a photo far from
it; the photo's SIFT keypoints are still there. Each image's descriptors
(:mod:`lookalike.images.local_features`, at most 500 per image), as RootSIFT (L1-normalised,
square-rooted: Euclidean distance then compares them as the Hellinger kernel
does), are quantised to a visual vocabulary learnt from the images themselves
(faiss k-means, no outside data); an inverted file (a sparse image x word matrix)
lets every image vote for the images sharing its words, each word weighted by
its rarity (idf, words counted once per image: a repeated texture does not
outvote a shared object). An image's best-voted others are its candidates; the
spatial verification of :mod:`.local_features` decides. SIFT is invariant to
rotation and scale, so a rotated, cropped or rescaled copy is voted for wherever
its embedding lands.

On in ``find_duplicates`` for views of up to :data:`VOTE_UP_TO` images
(``feature_votes="auto"``): votes need the local features of every image, not
only of the candidate pairs (about 20 ms per image on 2 cores, cached). The votes
also bring different photos under one caption or window frame together:
verification's agreement check turns those down
(:func:`lookalike.images.local_features.agreement`; ``benchmarks/copies.py``,
``docs/benchmarks.md``). The vocabulary and the votes are computed per call
from the cached features.
"""

import numpy as np

VOTE_CANDIDATES = 5  # best-voted others per image that verification checks
VOTE_UP_TO = 5_000  # feature_votes="auto": views up to this size (every image's features)
MIN_WORDS, MAX_WORDS = 1024, 16384
DESCRIPTORS_PER_WORD = 16  # vocabulary size: descriptors / this, a power of 2 in the bounds
TRAIN_PER_WORD = 64  # k-means sample: this many descriptors per word at most
COARSE_WORDS = 64  # the vocabulary tree's first level (see Vocabulary)
# Words in more images than this share (and than COMMON_MIN images) are ignored: stop words.
COMMON_SHARE, COMMON_MIN = 0.05, 5


def rootsift(descriptors):
    """SIFT descriptors (N, 128) -> RootSIFT: L1-normalised, square-rooted (unit L2)."""
    d = np.asarray(descriptors, np.float32)
    d = d / np.maximum(d.sum(axis=1, keepdims=True), 1e-12)
    return np.sqrt(d)


def num_words(num_descriptors):
    """The vocabulary size for ``num_descriptors``: a power of 2 in [MIN_WORDS, MAX_WORDS]."""
    target = max(1, num_descriptors // DESCRIPTORS_PER_WORD)
    return int(np.clip(2 ** int(np.round(np.log2(target))), MIN_WORDS, MAX_WORDS))


class Vocabulary:
    """Visual words in two levels (a vocabulary tree): :data:`COARSE_WORDS` k-means
    centroids, each cell split again by a k-means of its own descriptors.

    A flat k-means of 8,192 words costs descriptors x words per iteration (24 s
    for the 98,000 descriptors of ``benchmarks/copies.py`` on 2 cores); two levels
    cost descriptors x (64 + 128), and quantising searches 64 + 128 centroids
    instead of 8,192. Word ids are ``offsets[cell] + fine word``.
    """

    def __init__(self, coarse, fine):
        self.coarse = coarse  # (C, D) centroids
        self.fine = fine  # per cell: (k, D) centroids
        sizes = [len(f) for f in fine]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.size = int(sum(sizes))

    def __len__(self):
        return self.size

    def words(self, descriptors):
        """The word of each descriptor (an int64 array)."""
        d = np.ascontiguousarray(descriptors, np.float32)
        cells = _nearest(self.coarse, d)
        out = np.empty(len(d), np.int64)
        for c in np.unique(cells):
            members = np.flatnonzero(cells == c)
            out[members] = self.offsets[c] + _nearest(self.fine[c], d[members])
        return out


def _nearest(centroids, points):
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    return index.search(points, 1)[1][:, 0].astype(np.int64)


def _kmeans(points, k, seed):
    import faiss

    if len(points) <= k:  # every point its own word
        return np.ascontiguousarray(points, np.float32)
    kmeans = faiss.Kmeans(points.shape[1], k, niter=12, seed=seed, verbose=False,
                          max_points_per_centroid=TRAIN_PER_WORD, min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(points, np.float32))
    return kmeans.centroids


def vocabulary(descriptor_sets, words=None, seed=51):
    """A :class:`Vocabulary` of about ``words`` words (default :func:`num_words`) learnt
    from ``descriptor_sets`` (RootSIFT arrays), or None when they hold fewer
    descriptors than twice the words."""
    total = sum(len(d) for d in descriptor_sets)
    words = words or num_words(total)
    if total < 2 * words:
        words = max(16, 2 ** int(np.log2(max(total // 4, 16))))
    if total < 2 * words:
        return None
    rng = np.random.default_rng(seed)
    limit = TRAIN_PER_WORD * words
    if total > limit:  # an even sample of every image's descriptors
        keep = limit / total
        sample = np.concatenate([d[rng.random(len(d)) < keep] for d in descriptor_sets])
    else:
        sample = np.concatenate(descriptor_sets)
    sample = np.ascontiguousarray(sample, np.float32)
    cells = min(COARSE_WORDS, words)
    coarse = _kmeans(sample, cells, seed)
    assigned = _nearest(coarse, sample)
    per_cell = max(1, words // cells)
    fine = [_kmeans(sample[assigned == c], per_cell, seed + c) if (assigned == c).any()
            else coarse[c:c + 1] for c in range(len(coarse))]
    return Vocabulary(coarse, fine)


def image_words(vocab, descriptor_sets):
    """Each image's set of visual words (a sorted int array), all descriptors quantised at once."""
    sizes = [len(d) for d in descriptor_sets]
    if not sum(sizes):
        return [np.zeros(0, np.int64) for _ in sizes]
    nearest = vocab.words(np.concatenate(descriptor_sets))
    out, start = [], 0
    for n in sizes:
        out.append(np.unique(nearest[start:start + n]))
        start += n
    return out


def vote_pairs(features, k=VOTE_CANDIDATES, seed=51, rows=None):
    """Candidate pairs ``(i, j, score)`` (``i < j``, positions in ``features``) from votes.

    ``features``: a list of :class:`~lookalike.images.local_features.Features` or
    None (no features: no votes). Each image's ``k`` best-voted others (tf-idf
    cosine of its word set with theirs, above zero) are its candidates. ``rows``:
    positions that ask for candidates (None: all); every image can be voted for.
    """
    from scipy import sparse

    have = [n for n, f in enumerate(features) if f is not None and len(f)]
    empty = np.zeros(0, np.int64)
    if len(have) < 2:
        return empty, empty, np.zeros(0, np.float32)
    descriptors = [rootsift(features[n].descriptors) for n in have]
    vocab = vocabulary(descriptors, seed=seed)
    if vocab is None:
        return empty, empty, np.zeros(0, np.float32)
    words = image_words(vocab, descriptors)
    cols = np.concatenate(words)
    row_of = np.repeat(np.arange(len(have)), [len(w) for w in words])
    x = sparse.csr_matrix((np.ones(len(cols), np.float32), (row_of, cols)),
                          shape=(len(have), len(vocab)))
    df = np.asarray(x.sum(axis=0)).ravel()
    common = df > max(COMMON_MIN, COMMON_SHARE * len(have))
    idf = np.where(common | (df == 0), 0.0, np.log(len(have) / np.maximum(df, 1))).astype(
        np.float32)
    x = sparse.csr_matrix(x.multiply(idf[None, :]))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = sparse.csr_matrix(x.multiply(1 / np.maximum(norms, 1e-12)[:, None]))
    askers = np.arange(len(have)) if rows is None else np.flatnonzero(
        np.isin(np.asarray(have), np.asarray(rows)))
    xt = x.T.tocsr()
    out_i, out_j, out_s = [], [], []
    for start in range(0, len(askers), 1024):
        block = askers[start:start + 1024]
        scores = (x[block] @ xt).toarray()
        scores[np.arange(len(block)), block] = 0
        kk = min(k, scores.shape[1] - 1)
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        s = np.take_along_axis(scores, top, axis=1)
        ok = s > 0
        out_i.append(np.repeat(block, kk)[ok.ravel()])
        out_j.append(top.ravel()[ok.ravel()])
        out_s.append(s.ravel()[ok.ravel()])
    have = np.asarray(have)
    a, b = have[np.concatenate(out_i)], have[np.concatenate(out_j)]
    s = np.concatenate(out_s).astype(np.float32)
    i, j = np.minimum(a, b), np.maximum(a, b)
    codes, first = np.unique(i * np.int64(len(features)) + j, return_index=True)
    return codes // len(features), codes % len(features), s[first]
