"""Another engine's index with lookalike's thresholds: past one machine.

Beyond what one machine holds, a vector database takes over through
fiftyone-brain's own similarity backends (LanceDB, Qdrant, Milvus, ...):
``fob.compute_similarity(dataset, backend="lancedb", embeddings=<field>,
metric="cosine", ...)`` over the very field lookalike embedded. Its distances
are then lookalike's distance, ``1 - cos`` (:mod:`lookalike.similarity.distance`),
so the thresholds calibrated on a lookalike index over the same field apply to
them unchanged: :func:`lookup` answers "nearest, and is it a duplicate, a match
(with labels) or new" from the other engine, by the one decision rule. A run with another metric is refused in
one line (a euclidean distance is not a cosine distance unless every vector
is a unit vector, which nothing guarantees).

Connection settings are the backend's: fiftyone-brain does not save them with
the run, so every process (the App server, a worker, the CLI) needs them, e.g.
``FIFTYONE_BRAIN_SIMILARITY_LANCEDB_URI`` for LanceDB.
"""

from dataclasses import dataclass

import numpy as np

from lookalike.core import fo_adapter
from lookalike.core.errors import SimilarityIndexError, UsageError
from lookalike.similarity.distance import cosine_distance

DECISIONS = ("duplicate", "match", "new")  # thresholds.decide's


@dataclass
class Neighbour:
    sample_id: str
    distance: float  # cosine distance, 1 - cos
    decision: str  # one of DECISIONS, by the calibrated thresholds


def external_index(samples, brain_key):
    """The loaded similarity run ``brain_key`` of another backend, checked to measure cosine distance."""
    import lookalike.similarity as ls

    dataset = fo_adapter.root_dataset(samples)
    if brain_key not in dataset.list_brain_runs():
        raise SimilarityIndexError(f"dataset '{dataset.name}' has no brain run '{brain_key}'")
    if ls.is_ours(dataset, brain_key):
        raise UsageError(f"'{brain_key}' is a lookalike index: query it with nearest() or "
                         "sort_by_similarity()")
    config = dataset.get_brain_info(brain_key).config
    if getattr(config, "metric", None) != "cosine":
        raise SimilarityIndexError(
            f"index '{brain_key}' ({getattr(config, 'method', '?')}) measures "
            f"{getattr(config, 'metric', 'no')} distance; lookalike's thresholds are cosine "
            "distances: build it with metric='cosine'")
    if not getattr(config, "embeddings_field", None):
        raise SimilarityIndexError(
            f"index '{brain_key}' was not built from an embeddings field, so no lookalike "
            "calibration applies to it")
    index = dataset.load_brain_results(brain_key)
    if getattr(config, "method", None) == "lancedb" and index.table is None:
        # fiftyone-brain keeps the URI out of the run (it is a connection
        # setting), so every process must be told it.
        raise SimilarityIndexError(
            f"LanceDB table '{config.table_name}' of index '{brain_key}' is not at '{config.uri}': "
            "give every process the URI it was built with (FIFTYONE_BRAIN_SIMILARITY_LANCEDB_URI "
            "or the brain config's similarity_backends.lancedb.uri)")
    return index


def calibrated_index(samples, field, brain_key=None):
    """The lookalike index over ``field`` whose calibration applies (``brain_key``, or the preferred)."""
    import lookalike.similarity as ls
    from lookalike.curation.index_choice import preferred_index

    dataset = fo_adapter.root_dataset(samples)
    over_field = [k for k in ls.our_brain_keys(dataset)
                  if dataset.get_brain_info(k).config.embeddings_field == field]
    if brain_key is None:
        preferred = preferred_index(dataset)
        brain_key = preferred if preferred in over_field else (over_field or [None])[-1]
    if brain_key is None:
        raise SimilarityIndexError(
            f"no lookalike index over '{field}' holds a calibration: build one "
            f"(lookalike index --field {field}) and calibrate it")
    if brain_key not in over_field:
        raise SimilarityIndexError(f"'{brain_key}' is not a lookalike index over '{field}'")
    return ls.load_index(samples, brain_key)


def lookup(samples, brain_key, query_ids=None, query_path=None, k=10, calibrated_by=None):
    """The ``k`` nearest samples by the other backend's run ``brain_key``, each with its decision.

    ``query_ids``: one sample id; ``query_path``: an image file, embedded with
    the encoder that wrote the field (the same version). ``calibrated_by``: the
    lookalike index over the same field whose calibrated thresholds decide
    (default: the preferred one). A distance within the duplicate threshold is a
    "duplicate", within the match threshold of a calibration on labels a "match",
    else "new" (:func:`lookalike.curation.thresholds.decide`).
    """
    from lookalike.similarity import records
    from lookalike.similarity import embed_query_image

    index = external_index(samples, brain_key)
    field = index.config.embeddings_field
    ours = calibrated_index(samples, field, calibrated_by)
    from lookalike.curation.thresholds import decide, match_threshold

    dup_t = records.threshold(ours, "duplicate_threshold")
    match_t = match_threshold(records.load(ours, "calibration"))
    if query_path:
        query = np.asarray(embed_query_image(ours, query_path), np.float32)
    elif query_ids and len(query_ids) == 1:
        query = str(query_ids[0])
    else:
        raise UsageError("give one query sample or a query image file")
    ids, dists = fo_adapter.kneighbors(index, query, int(k))
    # Their cosine distance is 1 - cos; clipped to [0, 2] as lookalike's own.
    dists = cosine_distance(1.0 - np.asarray(dists, np.float64))
    return [Neighbour(str(i), float(d), decide(d, dup_t, d, match_t)) for i, d in zip(ids, dists)]
