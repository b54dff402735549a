"""Cosine distance, the one distance of lookalike: ``1 - cos`` in [0, 2].

Every vector lookalike compares is a unit vector (see
:func:`lookalike.similarity.engine.as_unit_matrix`), so the cosine similarity
of two of them is their dot product; the functions here turn dot products into
distances and distance thresholds into similarity cut-offs, for the k-NN
engines, the pair search and curation alike.
"""

import numpy as np

# Float32 rounding can put a dot product of unit vectors a hair below the
# cut-off a pair within the threshold would have; searches by similarity widen
# it by this much and then keep only distances <= the threshold.
SIMILARITY_MARGIN = 1e-6


def cosine_distance(similarities, out=None):
    """Cosine distances ``1 - s`` from dot products ``s`` of unit vectors (array or scalar).

    Clipped to [0, 2]: float rounding puts the product of a vector with itself
    (or an identical copy) a hair above 1 and opposite vectors below -1, and a
    copy must be at distance 0 (never -1e-7), so that ``d <= threshold`` holds
    at threshold 0 and no distance exceeds 2. ``out``: the array to write into
    (``similarities`` itself spares a copy of a large tile).
    """
    if out is None:
        return np.clip(1.0 - similarities, 0.0, 2.0)
    np.subtract(1.0, similarities, out=out)
    return np.clip(out, 0.0, 2.0, out=out)


def similarity_cutoff(threshold):
    """The dot product that pairs within cosine distance ``threshold`` reach, less the margin."""
    return float(1.0 - threshold - SIMILARITY_MARGIN)
