"""Similarity indexes over embedding fields, usable by the App's own "sort by similarity".

    import lookalike.similarity as ls
    index = ls.build_index(dataset, "emb_ae", brain_key="emb_ae_sim")
    view = dataset.sort_by_similarity(sample_id, brain_key="emb_ae_sim", k=25, dist_field="dist")
    view = ls.sort_by_similarity(dataset, "emb_ae_sim", query_path="/some/new/image.jpg")
"""

import numpy as np

from lookalike.core import faults, fo_adapter, leases
from lookalike.core.errors import (  # noqa: F401 (IncompleteIndexError, NotOurIndexError re-exported)
    EmptyViewError,
    IncompleteIndexError,
    IndexSettingsError,
    LeaseHeldError,
    NotOurIndexError,
    SimilarityIndexError,
    UsageError,
)
from lookalike.similarity.registration import BACKEND_CLS  # noqa: F401 (re-exported)

# A build writes its run under this suffix and renames it only once complete.
BUILDING_SUFFIX = "__lookalike_build"


def building_key(brain_key):
    return f"{brain_key}{BUILDING_SUFFIX}"


def default_brain_key(embeddings_field):
    """The brain key of an index over ``embeddings_field`` unless told: ``<field>_sim``."""
    return f"{embeddings_field}_sim"


def is_ours(dataset, brain_key):
    if brain_key not in dataset.list_brain_runs():
        return False
    return dataset.get_brain_info(brain_key).config.cls == BACKEND_CLS


def our_brain_keys(dataset):
    return [k for k in dataset.list_brain_runs()
            if is_ours(dataset, k) and not k.endswith(BUILDING_SUFFIX)]


def build_index(samples, embeddings_field, brain_key=None, engine="auto", overwrite=True,
                nprobe=None, recall_target=0.99):
    """Creates (or replaces) a lookalike similarity index over ``embeddings_field`` of ``samples``.

    The index holds exactly the samples of ``samples`` (a dataset or a view)
    that have an embedding; queries on the dataset with this brain key return
    only those. ``engine``: "exact", "approximate" (faiss IVF; ``nprobe`` or
    tuned to ``recall_target``), "compressed" (the same over 8-bit codes,
    re-ranked exactly from the vectors mapped from disk) or "auto"
    (approximate from 200,000 vectors, compressed when the floats would not
    fit in memory: :func:`lookalike.similarity.engine.memory_budget`).
    Samples without an embedding are left out (and counted in
    ``index.num_missing``). A brain key used by another kind of run is never
    replaced.

    The new index is built under a temporary key and swapped in only when
    complete: a build killed at any point leaves the previous index answering
    (or the new one), and the next build clears what it left. A second build
    of the same key while one runs is refused (:class:`LeaseHeldError`).
    """
    from lookalike.embeddings.compute import field_record
    from lookalike.similarity import artefacts
    from lookalike.similarity.backend import LookalikeSimilarityConfig
    from lookalike.similarity.field_vectors import check_embeddings_field

    dataset = fo_adapter.root_dataset(samples)
    brain_key = brain_key or default_brain_key(embeddings_field)
    if (not isinstance(brain_key, str) or not brain_key.isidentifier()
            or brain_key.endswith(BUILDING_SUFFIX)):
        raise UsageError(f"brain key {brain_key!r} is not usable: use letters, digits and "
                         "underscores, not starting with a digit")
    check_embeddings_field(dataset, embeddings_field)
    record = field_record(dataset, embeddings_field) or {}
    config = LookalikeSimilarityConfig(
        embeddings_field=embeddings_field, engine=engine, encoder=record.get("encoder"),
        encoder_version=record.get("version"), nprobe=nprobe, recall_target=recall_target)
    _check_replaceable(dataset, brain_key, overwrite)
    _check_has_embeddings(samples, embeddings_field)
    with leases.hold(dataset, f"index:{brain_key}", job="build_index",
                     label=f"index '{brain_key}' of '{dataset.name}'"):
        fo_adapter.refresh_runs(dataset)  # another process may have built it meanwhile
        _check_replaceable(dataset, brain_key, overwrite)
        tmp = building_key(brain_key)
        if tmp in dataset.list_brain_runs():
            if not is_ours(dataset, tmp):
                raise NotOurIndexError(f"brain key '{tmp}' belongs to another kind of run: "
                                       "choose another key")
            dataset.delete_brain_run(tmp)  # left by a killed build
        delete_superseded(dataset)
        artefacts.remove_unreferenced_builds(dataset)
        try:
            index = _build(samples, config, tmp)
        except BaseException:
            _discard_failed_build(dataset, tmp)
            raise
        faults.point("index.built")
        _swap_in(dataset, tmp, brain_key, index)
    return index


def _discard_failed_build(dataset, tmp):
    """A build that raised leaves no ``<key>__lookalike_build`` run behind (the App would
    list it); a killed one is cleared by the next build."""
    try:
        fo_adapter.refresh_runs(dataset)
        if tmp in dataset.list_brain_runs():
            dataset.delete_brain_run(tmp)
    except Exception:
        pass  # the error that ended the build is the one to report


def _check_replaceable(dataset, brain_key, overwrite):
    if brain_key in dataset.list_brain_runs():
        if not is_ours(dataset, brain_key):
            raise NotOurIndexError(
                f"brain key '{brain_key}' belongs to another kind of run: choose another key")
        if not overwrite:
            raise NotOurIndexError(f"an index '{brain_key}' exists (pass overwrite=True)")


def _check_has_embeddings(samples, field):
    from lookalike.similarity.backend import describe_samples, no_embeddings

    if fo_adapter.exact_count(samples) == 0:
        raise EmptyViewError(f"{describe_samples(samples)} has no samples: nothing to index")
    if samples.count(field) == 0:
        raise no_embeddings(samples, field)


def _build(samples, config, brain_key):
    """Registers the run on ``samples`` (FiftyOne stores a view's stages), reads, saves."""
    method = config.build()
    method.ensure_requirements()
    method.register_run(samples, brain_key, overwrite=False)
    index = method.initialize(samples, brain_key)  # reads the vectors, writes the artefacts
    faults.point("index.artefacts_written")
    leases.check_held()
    method.save_run_results(samples, brain_key, index)
    return index


# How long a run that a rebuild replaced is kept for readers that read the old mapping
# (the App keeps a dataset's document in memory between requests).
SUPERSEDED_GRACE_S = 120.0


def _swap_in(dataset, tmp, brain_key, index):
    """Makes ``brain_key`` name the complete run ``tmp``, in one atomic write.

    Readers in other processes see the old index or the new one at every instant:
    the old run is detached, not deleted, and :func:`delete_superseded` removes it
    (and its artefacts) once no reader can still be using it. A kill before the
    swap leaves the old index (the next build clears ``tmp``); after it, the new one.
    """
    leases.check_held()
    faults.point("index.swap.before")
    fo_adapter.swap_brain_run(dataset, tmp, brain_key, index)
    faults.point("index.swap.done")
    delete_superseded(dataset)


def delete_superseded(dataset, grace_s=None):
    """Deletes the runs (and artefacts) that rebuilds replaced over ``grace_s`` seconds ago."""
    from lookalike.similarity import artefacts

    grace_s = SUPERSEDED_GRACE_S if grace_s is None else grace_s
    for run_id, key, config in fo_adapter.detached_brain_runs(dataset, older_than_s=grace_s):
        artefacts.remove(dataset, config.get("build_id") or key)  # legacy: named by its key
        fo_adapter.delete_run_document(run_id)


def load_index(samples, brain_key):
    """The lookalike index ``brain_key`` of the dataset of ``samples`` (a dataset or a view)
    as it is in the database now, or a one-line error."""
    dataset = fo_adapter.root_dataset(samples)
    fo_adapter.refresh_runs(dataset)
    if brain_key not in dataset.list_brain_runs():
        index = _finish_interrupted_swap(dataset, brain_key)
        if index is not None:
            return index
    if not is_ours(dataset, brain_key):
        known = ", ".join(our_brain_keys(dataset)) or "none"
        raise NotOurIndexError(
            f"'{brain_key}' is not a lookalike similarity index of '{dataset.name}' "
            f"(its lookalike indexes: {known})")
    return _load_results(dataset, brain_key, brain_key)


def _load_results(dataset, key, named):
    """The results of run ``key``; IncompleteIndexError (naming index ``named``) if none."""
    from lookalike.similarity.backend import incomplete_message

    config = dataset.get_brain_info(key).config
    try:
        index = dataset.load_brain_results(key)
        if index is not None and (getattr(index.config, "build_id", None) != config.build_id
                                  or _behind(index)):
            # Cached in this process, but another process has replaced the run since, or
            # samples were deleted or restored since (the field is the index's source).
            fo_adapter.forget_brain_results(dataset, key)
            index = dataset.load_brain_results(key)
    except IncompleteIndexError:
        index = None
    if index is None:
        raise IncompleteIndexError(incomplete_message(dataset, named, config.embeddings_field))
    return index


def _behind(index):
    """True when the index's field now holds vectors for another number of samples than
    the index has rows (one count on the server)."""
    field = index.config.embeddings_field
    if field is None:
        return False
    return fo_adapter.exact_count(index.samples.exists(field)) != index.total_index_size


def _finish_interrupted_swap(dataset, brain_key):
    """The new index of a build killed between its delete and rename, renamed; or None."""
    tmp = building_key(brain_key)
    if not is_ours(dataset, tmp):
        return None
    try:
        lease = leases.acquire(dataset, f"index:{brain_key}", job="load_index")
    except LeaseHeldError:
        # A live build is swapping it in now: answer from the new index as it is.
        return _load_results(dataset, tmp, brain_key)
    try:
        fo_adapter.refresh_runs(dataset)
        if brain_key in dataset.list_brain_runs() or not is_ours(dataset, tmp):
            return None
        index = _load_results(dataset, tmp, brain_key)
        dataset.rename_brain_run(tmp, brain_key)
        return index
    finally:
        lease.release()


def encoder_of(index):
    """The encoder that wrote the index's embeddings (same version), or a SimilarityIndexError."""
    from lookalike.encoders import load_encoder

    name = index.config.encoder
    if not name:
        raise SimilarityIndexError(
            f"index '{index.key}' does not record which encoder made its embeddings, so it "
            "cannot embed a new image: query by sample id, or rebuild it over a field that "
            "lookalike embed wrote")
    encoder = load_encoder(name)
    if index.config.encoder_version and encoder.version != index.config.encoder_version:
        raise SimilarityIndexError(
            f"encoder '{name}' changed since the index was built ({encoder.version} vs "
            f"{index.config.encoder_version}): recompute the embeddings")
    return encoder


def embed_query_image(index, path):
    """Embeds an image file (not necessarily in the dataset) with the index's encoder."""
    from lookalike.encoders.preprocessing import load_input

    encoder = encoder_of(index)
    return encoder.embed(load_input(path, encoder.manifest)[np.newaxis])[0]


def _query(index, query_ids, query_path):
    if query_path:
        return embed_query_image(index, query_path)
    if query_ids:
        query = list(query_ids)
        known = set(index.sample_ids)
        missing = [i for i in query if i not in known]
        if missing:
            raise SimilarityIndexError(
                f"{len(missing)} selected samples have no embedding in this index (or lie "
                "outside the view it was built on)")
        return query[0] if len(query) == 1 else query
    raise UsageError("select at least one sample or give a query image path")


def nearest(samples, brain_key, query_ids=None, query_path=None, k=10):
    """``(sample_ids, distances)`` of the ``k`` nearest neighbours; writes nothing."""
    index = load_index(samples, brain_key)
    if k < 1:
        raise IndexSettingsError(f"k must be at least 1, got {k}")
    return index.nearest(_query(index, query_ids, query_path), k)


def sort_by_similarity(samples, brain_key, query_ids=None, query_path=None, k=25,
                       dist_field=None, reverse=False, verify=False,
                       inliers_field="similarity_inliers"):
    """The ``k`` samples most similar to ``query_ids`` (mean of their vectors) or an image file.

    ``verify``: re-rank the ``k`` by geometric verification against the query
    image (one selected sample or ``query_path``): verified results first, most
    inliers first, then the others in distance order; each result's inliers go
    to ``inliers_field`` (see :func:`lookalike.images.local_features.rerank`).
    A query file's results come as a selection of the ``k`` samples in order.
    """
    index = load_index(samples, brain_key)
    if k is not None and k < 1:
        raise IndexSettingsError(f"k must be at least 1, got {k}")
    query = _query(index, query_ids, query_path)
    if k is not None:
        k = min(k, index.total_index_size)
    view = samples.sort_by_similarity(query, k=k, reverse=reverse, brain_key=brain_key,
                                      dist_field=dist_field)
    if not verify:
        # A file's query is a vector, which the App's view bar would show as an encoded
        # blob: the results, in order, read better (their distances are in dist_field).
        return samples.select(view.values("id"), ordered=True) if query_path else view
    if not query_path and len(query_ids) != 1:
        raise UsageError("verified re-ranking compares images: select one sample or give a "
                         "query image file")
    return _verified(samples, index, view, query_path or index.dataset[query_ids[0]].filepath,
                     inliers_field)


VERIFY_WAIT_S = 60.0  # how long a verified sort waits for another writing its inliers field


def verify_results(index, query_path, paths):
    """``(order, inliers)``: search results (image ``paths``) checked against the query image.

    ``inliers`` of each result with the image at ``query_path`` (features of
    the results are cached per dataset); ``order``: positions, verified first
    (at least the run's calibrated ``min_inliers``), see
    :func:`lookalike.images.local_features.rerank`.
    """
    from lookalike.images import local_features as verification

    query, reason = verification.extract_file(query_path)
    if query is None and reason != verification.FEATURELESS:
        raise UsageError(f"{query_path}: {reason}")
    features, _ = verification.compute_features(paths, verification.cache_dir(index.dataset))
    counts = verification.verify_pairs({"query": query, **dict(enumerate(features))},
                                       ["query"] * len(paths), list(range(len(paths))))
    calibration = (index.curation or {}).get("calibration") or {}
    return verification.rerank(counts, calibration.get("min_inliers")
                               or verification.DEFAULT_MIN_INLIERS), counts


def _verified(samples, index, view, query_path, inliers_field):
    """``view`` re-ranked by inliers with the image at ``query_path``; counts in ``inliers_field``."""
    import fiftyone as fo

    dataset = fo_adapter.root_dataset(samples)
    ids, paths = view.values(["id", "filepath"])
    order, counts = verify_results(index, query_path, paths)
    # Two sorts at once take turns to write their counts: the field never holds a mix of
    # two queries' writes; the second waits for the first (a short write) or refuses.
    faults.point("verified_sort.before_lease")
    with leases.hold(dataset, f"field:{inliers_field}", job="sort_by_similarity",
                     wait=VERIFY_WAIT_S, label=f"field '{inliers_field}'"):
        if inliers_field not in dataset.get_field_schema():
            # FiftyOne saves a dataset's whole field list: take turns with other jobs.
            with leases.hold(dataset, "schema", job="sort_by_similarity", wait=120,
                             label=f"the field list of dataset '{dataset.name}'"):
                dataset.reload()
                if inliers_field not in dataset.get_field_schema():
                    dataset.add_sample_field(inliers_field, fo.IntField)
        faults.point("verified_sort.writing")
        leases.check_held()
        view.set_values(inliers_field, dict(zip(ids, counts.tolist())), key_field="id")
    return samples.select([ids[n] for n in order], ordered=True)
