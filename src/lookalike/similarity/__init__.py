"""Similarity indexes over embedding fields, usable by the App's own "sort by similarity".

    import lookalike.similarity as ls
    index = ls.build_index(dataset, "emb_ae", brain_key="emb_ae_sim")
    view = dataset.sort_by_similarity(sample_id, brain_key="emb_ae_sim", k=25, dist_field="dist")
    view = ls.sort_by_similarity(dataset, "emb_ae_sim", query_path="/some/new/image.jpg")
"""

import numpy as np

BACKEND_CLS = "lookalike.similarity.backend.LookalikeSimilarityConfig"


from lookalike.errors import IncompleteIndexError, NotOurIndexError  # noqa: F401


def is_ours(dataset, brain_key):
    if brain_key not in dataset.list_brain_runs():
        return False
    return dataset.get_brain_info(brain_key).config.cls == BACKEND_CLS


def our_brain_keys(dataset):
    return [k for k in dataset.list_brain_runs() if is_ours(dataset, k)]


def build_index(samples, embeddings_field, brain_key=None, engine="auto", overwrite=True,
                nprobe=None, recall_target=0.98):
    """Creates (or replaces) a lookalike similarity index over ``embeddings_field``.

    ``engine``: "exact", "approximate" (faiss IVF; ``nprobe`` or tuned to
    ``recall_target``) or "auto" (approximate from 200,000 vectors). Samples
    without an embedding are left out (and counted in ``index.num_missing``). A
    brain key used by another kind of run is never replaced.
    """
    import fiftyone.brain as fob

    from lookalike.embeddings import field_record
    from lookalike.similarity.backend import LookalikeSimilarityConfig

    dataset = samples._root_dataset
    brain_key = brain_key or f"{embeddings_field}_sim"
    if brain_key in dataset.list_brain_runs():
        if not is_ours(dataset, brain_key):
            raise NotOurIndexError(
                f"brain key '{brain_key}' belongs to another kind of run: choose another key")
        if not overwrite:
            raise NotOurIndexError(f"an index '{brain_key}' exists (pass overwrite=True)")
        dataset.delete_brain_run(brain_key)
    if embeddings_field not in dataset.get_field_schema():
        raise ValueError(f"dataset '{dataset.name}' has no field '{embeddings_field}': "
                         "compute embeddings first")
    record = field_record(dataset, embeddings_field) or {}
    return fob.compute_similarity(
        samples, embeddings=embeddings_field, brain_key=brain_key,
        backend=LookalikeSimilarityConfig, engine=engine,
        encoder=record.get("encoder"), encoder_version=record.get("version"),
        nprobe=nprobe, recall_target=recall_target,
    )


def load_index(dataset, brain_key):
    if not is_ours(dataset, brain_key):
        known = ", ".join(our_brain_keys(dataset)) or "none"
        raise NotOurIndexError(
            f"'{brain_key}' is not a lookalike similarity index of '{dataset.name}' "
            f"(its lookalike indexes: {known})")
    return dataset.load_brain_results(brain_key)


def encoder_of(index):
    """The encoder that wrote the index's embeddings (same version), or ValueError."""
    from lookalike.encoders import load_encoder

    name = index.config.encoder
    if not name:
        raise ValueError("this index does not record which encoder made its embeddings, "
                         "so it cannot embed a new image: rebuild it from a lookalike field")
    encoder = load_encoder(name)
    if index.config.encoder_version and encoder.version != index.config.encoder_version:
        raise ValueError(
            f"encoder '{name}' changed since the index was built ({encoder.version} vs "
            f"{index.config.encoder_version}): recompute the embeddings")
    return encoder


def embed_query_image(index, path):
    """Embeds an image file (not necessarily in the dataset) with the index's encoder."""
    from lookalike.encoders.data import decode_resized

    encoder = encoder_of(index)
    return encoder.embed(decode_resized(path, encoder.image_size)[np.newaxis])[0]


def _query(index, query_ids, query_path):
    if query_path:
        return embed_query_image(index, query_path)
    if query_ids:
        query = list(query_ids)
        known = set(index.sample_ids)
        missing = [i for i in query if i not in known]
        if missing:
            raise ValueError(f"{len(missing)} selected samples have no embedding in this index")
        return query[0] if len(query) == 1 else query
    raise ValueError("select at least one sample or give a query image path")


def nearest(dataset, brain_key, query_ids=None, query_path=None, k=10):
    """``(sample_ids, distances)`` of the ``k`` nearest neighbours; writes nothing."""
    index = load_index(dataset, brain_key)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    query = _query(index, query_ids, query_path)
    ids, _, dists = index._kneighbors(query, k=min(k, index.total_index_size),
                                      aggregation="mean", return_dists=True)
    return list(ids), list(dists)


def sort_by_similarity(samples, brain_key, query_ids=None, query_path=None, k=25,
                       dist_field=None, reverse=False):
    """The ``k`` samples most similar to ``query_ids`` (mean of their vectors) or an image file."""
    dataset = samples._root_dataset
    index = load_index(dataset, brain_key)
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    query = _query(index, query_ids, query_path)
    if k is not None:
        k = min(k, index.total_index_size)
    return samples.sort_by_similarity(query, k=k, reverse=reverse, brain_key=brain_key,
                                      dist_field=dist_field)
