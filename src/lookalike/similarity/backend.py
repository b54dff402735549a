"""Lookalike's FiftyOne Brain similarity backend (exact cosine distances that never drift).

fiftyone-brain loads a run's classes by import path in every process (App
server, delegated workers), so they live here in the installed package, and
the run class name is the config name minus "Config". The App lists a brain run
for "sort by similarity" only when the config class path contains "Similarity".

Use it through :func:`lookalike.similarity.build_index`, or directly::

    fob.compute_similarity(ds, embeddings="emb", brain_key="emb_sim",
                           backend=LookalikeSimilarityConfig)

The vectors are read from the embeddings field once and cached as ``.npy``
artefacts next to the run; a new process maps them instead of reading every
embedding from MongoDB, and rebuilds them from the field when they are stale
(by the rule in :mod:`lookalike.similarity.artefacts`). Near-duplicate groups
come from the one pair search, :mod:`lookalike.similarity.pairs`.
"""

import logging
import numbers
import uuid

import numpy as np
from fiftyone.brain.similarity import (
    DuplicatesMixin,
    Similarity,
    SimilarityConfig,
    SimilarityIndex,
)

from lookalike.core import faults, fo_adapter
from lookalike.core.errors import (
    EmptyViewError,
    FileWriteError,
    IncompleteIndexError,
    IndexSettingsError,
    SimilarityIndexError,
)
from lookalike.similarity import artefacts
from lookalike.similarity.distance import cosine_distance
from lookalike.similarity.field_vectors import in_memory, read_unit_vectors
from lookalike.similarity.engine import (
    InvalidEmbeddingsError,
    as_unit_matrix,
    check_engine,
    make_engine,
    resolve_engine,
)
from lookalike.similarity.pairs import groups_within

logger = logging.getLogger(__name__)
FEW_QUERY_IDS = 16  # up to this many query ids are looked up without the whole id map,
ARRAY_LOOKUPS = 64  # by the first this many queries


class LookalikeSimilarityConfig(SimilarityConfig):
    """Config of a lookalike similarity index.

    Args:
        metric ("cosine"): the only metric: distances are ``1 - cos`` in [0, 2]
        engine ("exact"): "exact" (BLAS), "approximate" (faiss IVF, for large
            datasets), "compressed" (faiss IVF over 8-bit codes, re-ranked
            exactly from the vectors mapped from disk: for more vectors than
            memory holds) or "auto" (approximate from 200,000 vectors,
            compressed when they would not fit in memory)
        nprobe (None): the approximate engine's search breadth; None tunes it
            to ``recall_target`` at build time
        recall_target (0.99): recall@25 against exact search that tuning aims for
        encoder (None): name of the lookalike encoder that wrote the embeddings
            (used to embed query images that are not in the dataset)
        encoder_version (None): that encoder's version
        build_id (None): names the run's artefacts directory; set when the run
            is registered, and kept when the run is renamed
    """

    def __init__(self, metric="cosine", engine="exact", encoder=None, encoder_version=None,
                 nprobe=None, recall_target=0.99, build_id=None, **kwargs):
        if metric != "cosine":
            raise IndexSettingsError(f"lookalike indexes use cosine distance, not {metric!r}")
        check_engine(engine)
        if kwargs.get("patches_field") is not None:
            raise IndexSettingsError("lookalike indexes do not support patches yet")
        if nprobe is not None and (isinstance(nprobe, bool) or not isinstance(nprobe, numbers.Integral)
                                   or nprobe < 1):
            raise IndexSettingsError(f"nprobe must be a whole number of at least 1, got {nprobe!r}")
        if (isinstance(recall_target, bool) or not isinstance(recall_target, numbers.Real)
                or not 0 < recall_target <= 1):
            raise IndexSettingsError(f"recall target must be in (0, 1], got {recall_target!r}")
        super().__init__(**kwargs)
        self.metric = metric
        self.engine = engine
        self.encoder = encoder
        self.encoder_version = encoder_version
        self.nprobe = nprobe
        self.recall_target = recall_target
        self.build_id = build_id

    @property
    def method(self):
        return "lookalike"

    @property
    def max_k(self):
        return None

    @property
    def supports_least_similarity(self):
        return True

    @property
    def supported_aggregations(self):
        return ("mean",)


class LookalikeSimilarity(Similarity):
    def register_run(self, samples, key, overwrite=True, cleanup=True):
        """Registers the run, then saves a stand-in that reads as "incomplete".

        FiftyOne registers a run with no results and writes them at the end; a
        build killed in between left a run whose results load as None, which
        the App's sort then dereferences (AttributeError). The stand-in makes
        every load of such a run raise :class:`IncompleteIndexError` instead.
        """
        if key is not None and not self.config.build_id:
            self.config.build_id = f"{artefacts.BUILD_PREFIX}{uuid.uuid4().hex}"
        if self.config.encoder is None and self.config.embeddings_field:
            # fob.compute_similarity(backend="lookalike") names no encoder: record the
            # field's, as build_index does, so that query images can be embedded.
            from lookalike.embeddings.compute import field_record

            record = field_record(samples, self.config.embeddings_field) or {}
            self.config.encoder = record.get("encoder")
            self.config.encoder_version = record.get("version")
        super().register_run(samples, key, overwrite=overwrite, cleanup=cleanup)
        if key is None:
            return
        faults.point("index.registered")
        self.save_run_results(samples, key, PendingSimilarityIndex(samples, self.config, key,
                                                                   backend=self), cache=False)

    def initialize(self, samples, brain_key):
        faults.point("index.initialize")
        return LookalikeSimilarityIndex(samples, self.config, brain_key, backend=self)

    def cleanup(self, samples, brain_key):
        artefacts.remove(samples, self.config.build_id or brain_key)
        super().cleanup(samples, brain_key)

    def rename(self, samples, brain_key, new_key):
        # fiftyone's rename_brain_run hook: the artefacts follow the run.
        artefacts.rename(fo_adapter.root_dataset(samples), brain_key, new_key)
        super().rename(samples, brain_key, new_key)


def incomplete_message(samples, brain_key, field=None):
    dataset = fo_adapter.root_dataset(samples)
    return (f"index '{brain_key}' is incomplete: rebuild it with lookalike index --dataset "
            f"{dataset.name} --field {field or '<field>'} --brain-key {brain_key}")


class PendingSimilarityIndex(SimilarityIndex):
    """The results of a run whose build has not finished: loading it raises."""

    def attributes(self):
        return ["cls"]

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        raise IncompleteIndexError(incomplete_message(samples, brain_key,
                                                      config.embeddings_field))


class LookalikeSimilarityIndex(SimilarityIndex, DuplicatesMixin):
    """A similarity index over an embeddings field, searched exactly in memory."""

    def __init__(self, samples, config, brain_key, backend=None, matrix=None, sample_ids=None,
                 reading=False):
        self._dataset = fo_adapter.root_dataset(samples)
        # Loaded to answer queries (a search, the App's sort): the artefacts it
        # writes are a cache, skipped when they cannot be written (a full disk,
        # another process saving them); a build must write them, or fail.
        self._reading = reading
        # The samples the run was built on (its stored view): read, and checked
        # for staleness, instead of the whole dataset.
        self._source = samples
        # Set early: _brain_key reads it before SimilarityIndex.__init__ sets it again.
        self._key = brain_key
        self._ids_to_inds = None
        self._curr_ids_to_inds = None
        self.num_missing = 0
        # Calibration, evaluation, ... saved with the run (see lookalike.similarity.records).
        self.curation = {}
        faiss_index, cached = None, False
        if matrix is None:
            matrix, sample_ids, faiss_index, cached = self._load(config, brain_key)
        self._config_for_engine = config
        self._sample_ids = np.asarray(sample_ids, dtype=str)
        # An exact engine loaded from fresh artefacts has nothing new to save.
        self._engine = self._make_engine(matrix, faiss_index, save=not cached)
        SimilarityIndex.__init__(self, samples, config, brain_key, backend=backend)
        DuplicatesMixin.__init__(self)
        self._reading = False  # later changes (add_to_index, reload) are writes

    @property
    def _brain_key(self):
        # The key fiftyone keeps on the results: rename_brain_run updates it on a
        # loaded index, so later saves go to the renamed run's artefacts.
        return self._key

    # -- data -------------------------------------------------------------------
    def _load(self, config, brain_key):
        field = config.embeddings_field
        if field is None:
            return np.zeros((0, 0), np.float32), [], None, False
        if brain_key is not None:
            name = config.build_id or brain_key
            # An approximate engine's vectors stay on disk, mapped: a fresh App server or
            # worker answers its first query without reading a gigabyte at 1M (the
            # engine searches its faiss lists; edits copy the matrix first).
            mapped = artefacts.saved_engine(self._source, name) in ("compressed", "ivf")
            cached = artefacts.load(self._source, name, field, mmap=mapped)
            if cached is not None:
                matrix, ids = cached
                faiss_index = artefacts.load_faiss(self._source, name, len(ids))
                # An approximate engine without its saved faiss index is rebuilt and saved.
                exact = resolve_engine(config.engine, len(ids)) == "exact"
                return matrix, ids, faiss_index, exact or faiss_index is not None
        matrix, ids, missing = self._read_field(config, config.build_id or brain_key)
        self.num_missing = missing
        return matrix, ids, None, False

    def _read_field(self, config, name):
        """``read_field``; for a compressed engine of a saved run, straight into a staged file."""
        staged = []

        def allocate(rows, dim):
            if name is not None and resolve_engine(config.engine, rows, dim=dim) == "compressed":
                try:
                    staged.append(artefacts.stage_vectors(self._source, name, (rows, dim)))
                except FileWriteError as e:
                    if not self._reading:
                        raise
                    logger.info("reading '%s' into memory: %s", config.embeddings_field, e)
                    return in_memory(rows, dim)
                return staged[-1]
            return in_memory(rows, dim)

        try:
            matrix, ids, missing = read_field(self._source, config.embeddings_field, allocate)
        except BaseException:
            for stage in staged:
                artefacts.discard_stage(stage)
            raise
        if staged and artefacts.memory_map_of(matrix) is None:  # came out in memory instead
            artefacts.discard_stage(staged[0])
        return matrix, ids, missing

    def _make_engine(self, matrix, faiss_index=None, save=True):
        config = self._config_for_engine
        params = {}
        if faiss_index is not None:
            index, nprobe, mapped = faiss_index
            params = dict(faiss_index=index, nprobe=config.nprobe or nprobe, index_mapped=mapped)
        elif config.nprobe:
            params = dict(nprobe=config.nprobe)
        if config.engine != "exact" and len(matrix):
            params.setdefault("recall_target", config.recall_target)
        persisted = self._brain_key is not None and config.embeddings_field
        if persisted and faiss_index is None and (artefacts.is_staged(matrix) or (
                artefacts.memory_map_of(matrix) is None
                and resolve_engine(config.engine, len(matrix), dim=matrix.shape[1]) == "compressed")):
            # The compressed engine re-ranks from the vectors on disk: write
            # them first (or move the staged file read into place), then search
            # a memory map of them; a reader that cannot write them searches
            # them in memory.
            if artefacts.save(self._source, self._artefacts_name, config.embeddings_field,
                              matrix, self._sample_ids, optional=self._reading):
                matrix = artefacts.map_vectors(self._source, self._artefacts_name)
            elif artefacts.is_staged(matrix):
                stage, matrix = matrix, np.array(matrix)
                artefacts.discard_stage(stage)
        engine = make_engine(config.engine, matrix, **params)
        if save and persisted:
            self._save_artefacts(engine)
        return engine

    def _save_artefacts(self, engine=None):
        engine = engine or self._engine
        if self._brain_key is not None and self.config_embeddings_field is not None:
            artefacts.save(self._source, self._artefacts_name, self.config_embeddings_field,
                           engine.matrix, self._sample_ids, engine=engine,
                           optional=self._reading)

    @property
    def _artefacts_name(self):
        return self._config_for_engine.build_id or self._brain_key

    @property
    def config_embeddings_field(self):
        return self._config_for_engine.embeddings_field

    @property
    def is_external(self):
        return self.config.embeddings_field is None

    @property
    def sample_ids(self):
        return self._sample_ids

    @property
    def label_ids(self):
        return None

    @property
    def total_index_size(self):
        return len(self._sample_ids)

    @property
    def engine(self):
        return self._engine

    def add_to_index(self, embeddings, sample_ids, label_ids=None, overwrite=True,
                     allow_existing=True, warn_existing=False, reload=True):
        """Adds (or replaces) vectors without rebuilding anything else."""
        sample_ids = np.asarray(sample_ids, dtype=str)
        matrix = as_unit_matrix(embeddings)
        if self._engine.size and matrix.shape[1] != self._engine.dim:
            raise InvalidEmbeddingsError(
                f"embeddings of dimension {matrix.shape[1]} cannot join an index of "
                f"dimension {self._engine.dim}")
        index = self._get_ids_to_inds(full=True)
        existing = np.array([i in index for i in sample_ids], dtype=bool)
        if existing.any() and not allow_existing:
            raise SimilarityIndexError(f"{int(existing.sum())} sample IDs are already in the index")
        if overwrite and existing.any():
            self._engine.replace([index[i] for i in sample_ids[existing]], matrix[existing])
        new = ~existing
        if self._engine.size == 0:
            self._engine = self._make_engine(matrix[new])
        else:
            self._engine.add(matrix[new])
        self._sample_ids = np.concatenate([self._sample_ids, sample_ids[new]]).astype(str)
        if self.config.embeddings_field is not None:
            write_vectors(self._dataset, self.config.embeddings_field,
                          sample_ids[new | (existing & overwrite)],
                          np.asarray(embeddings, np.float32)[new | (existing & overwrite)])
        self._changed(reload)

    def remove_from_index(self, sample_ids=None, label_ids=None, allow_missing=True,
                          warn_missing=False, reload=True):
        if sample_ids is None:
            return
        rm = np.sort(self._positions(sample_ids, allow_missing))
        if rm.size == 0:
            return
        removed = self._sample_ids[rm]
        self._engine.remove(rm)
        self._sample_ids = np.delete(self._sample_ids, rm)
        if self.config.embeddings_field is not None:
            # The field is the index's source of truth (as in fiftyone-brain's
            # own backends): clear it so that a reload agrees.
            write_vectors(self._dataset, self.config.embeddings_field, removed,
                          [None] * len(removed))
        self._changed(reload)

    def _changed(self, reload):
        self._ids_to_inds = None
        self._curr_ids_to_inds = None
        self._save_artefacts()
        if reload:
            SimilarityIndex.reload(self)

    def use_view(self, *args, **kwargs):
        self._curr_ids_to_inds = None
        return super().use_view(*args, **kwargs)

    def reload(self):
        if self.config.embeddings_field is not None:
            matrix, ids, self.num_missing = self._read_field(self._config_for_engine,
                                                             self._artefacts_name)
            self._sample_ids = np.asarray(ids, dtype=str)
            self._engine = self._make_engine(matrix)
            self._ids_to_inds = None
            self._curr_ids_to_inds = None
        super().reload()

    def get_embeddings(self, sample_ids=None, label_ids=None, allow_missing=True,
                       warn_missing=False):
        """The stored unit vectors (not the raw field values) for ``sample_ids``."""
        if label_ids is not None:
            raise SimilarityIndexError("this index does not support label IDs")
        if sample_ids is None:
            return self._engine.matrix.copy(), self._sample_ids.copy(), None
        inds = self._positions(sample_ids, allow_missing)
        return self._engine.matrix[inds], self._sample_ids[inds], None

    def _positions(self, sample_ids, allow_missing=True):
        """Rows of ``sample_ids`` in the index (in the given order)."""
        if isinstance(sample_ids, str):
            sample_ids = [sample_ids]
        index = self._get_ids_to_inds(full=True)
        missing = [i for i in sample_ids if i not in index]
        if missing and not allow_missing:
            raise SimilarityIndexError(f"sample IDs {missing[:5]} are not in the index")
        return np.array([index[i] for i in sample_ids if i in index], dtype=int)

    def cleanup(self):
        if self._brain_key is not None:
            artefacts.remove(self._dataset, self._artefacts_name)

    def attributes(self):
        attrs = super().attributes()
        if self.config.embeddings_field is None:
            attrs.extend(["embeddings", "sample_ids"])
        if self.curation:
            attrs.append("curation")
        return attrs

    @property
    def embeddings(self):
        return self._engine.matrix

    @property
    def dataset(self):
        """The dataset the run belongs to (also when it was built on a view)."""
        return self._dataset

    # -- queries ----------------------------------------------------------------
    def nearest(self, query, k):
        """``(sample ids, distances)`` of the ``k`` nearest samples to ``query``.

        ``query``: a sample id, several (their mean vector) or a vector. The public
        name for what fiftyone-brain reaches through its private ``_kneighbors``.
        """
        if k < 1:
            raise IndexSettingsError(f"k must be at least 1, got {k}")
        ids, _, dists = self._kneighbors(query, k=min(k, self.total_index_size),
                                         aggregation="mean", return_dists=True)
        return list(ids), list(dists)

    def _kneighbors(self, query=None, k=None, reverse=False, aggregation=None,
                    return_dists=False):
        if aggregation not in (None, "mean"):
            raise IndexSettingsError(f"unsupported aggregation {aggregation!r}; use 'mean'")
        queries, full_index, single = self._unit_queries(query)
        if aggregation == "mean":
            if full_index:
                raise IndexSettingsError("full-index queries do not support aggregation")
            queries = as_unit_matrix(queries.mean(axis=0, keepdims=True), "query")
            single = True
        keep = self._current_inds
        if full_index:
            queries = self._engine.matrix if keep is None else self._engine.matrix[keep]
        if k is not None and k < 0:
            raise IndexSettingsError(f"k must be positive, got {k}")
        inds, dists = self._engine.knn(queries, k, keep=keep, reverse=reverse)
        if full_index:
            return (list(inds), list(dists)) if return_dists else list(inds)
        current = self.current_sample_ids
        ids = [[current[i] for i in row] for row in inds]
        dists = [[float(d) for d in row] for row in dists]
        if single:
            ids, dists = ids[0], dists[0]
        return (ids, None, dists) if return_dists else (ids, None)

    def _radius_neighbors(self, query=None, thresh=None, return_dists=False):
        queries, full_index, single = self._unit_queries(query)
        keep = self._current_inds
        if full_index:
            queries = self._engine.matrix if keep is None else self._engine.matrix[keep]
        inds, dists = self._engine.radius(queries, thresh, keep=keep)
        if full_index:
            return (inds, dists) if return_dists else inds
        current = self.current_sample_ids
        ids = [[current[i] for i in row] for row in inds]
        dists = [list(map(float, row)) for row in dists]
        if single:
            ids, dists = ids[0], dists[0]
        return (ids, None, dists) if return_dists else (ids, None)

    # -- near-duplicates ----------------------------------------------------------
    def find_duplicates(self, thresh=None, fraction=None):
        """Near-duplicate groups as :func:`lookalike.curation.find_duplicates` forms them.

        fiftyone-brain's own version (and so ``fob.compute_near_duplicates(...,
        similarity_index=<this run>)``, which calls this) keeps samples greedily
        and attaches each duplicate to its nearest kept sample, so a chain
        a~b~c yields {a, b} and {c}. Here, as in lookalike's curation: pairs at
        cosine distance ``1 - cos <= thresh`` are joined into connected groups
        (same pair search, same groups), the first sample of each group in the
        index's current view order is kept (``keep="first"``), the others are
        ``duplicate_ids``, and ``neighbors_map`` maps each kept id to its
        ``(duplicate id, distance to the kept sample)`` -- the ``dup_distance``
        that curation writes. So ``duplicates_view()`` lists the same groups.

        ``thresh=None`` uses the run's calibrated ``duplicate_threshold``;
        ``fraction`` bisects the threshold until that share of the samples are
        duplicates. Unlike lookalike's curation this writes nothing (no fields,
        no tags), does not pair byte-identical files without vectors and does
        not verify pairs geometrically: its groups are curation's with
        ``verify=False, exact_files=False`` (both cut single bridging pairs).
        """
        from lookalike.similarity import records

        ids = np.asarray(self.current_sample_ids, dtype=str)
        keep = self._current_inds
        vectors = self._engine.matrix if keep is None else self._engine.matrix[keep]
        reuse = self._engine if keep is None else None
        if fraction is not None:
            thresh = self._threshold_for_fraction(vectors, fraction, reuse)
        thresh = records.threshold(self, "duplicate_threshold", thresh)
        # Groups ascending in the current view's order: the first is the kept one.
        groups = groups_within(vectors, thresh, reuse=reuse)
        neighbors_map, duplicates = {}, set()
        for group in groups:
            kept, rest = group[0], group[1:]
            dists = cosine_distance(vectors[rest] @ vectors[kept])
            neighbors_map[ids[kept]] = sorted(
                zip(ids[rest].tolist(), map(float, dists)), key=lambda t: t[1])
            duplicates.update(rest)
        self._thresh = thresh
        self._duplicate_ids = [ids[p] for p in sorted(duplicates)]
        self._unique_ids = [ids[p] for p in range(len(ids)) if p not in duplicates]
        self._neighbors_map = neighbors_map

    @staticmethod
    def _threshold_for_fraction(vectors, fraction, reuse=None):
        if not 0.0 <= float(fraction) <= 1.0:
            raise IndexSettingsError(f"fraction must be in [0, 1], got {fraction!r}")
        wanted = len(vectors) - int(round((1.0 - float(fraction)) * len(vectors)))
        low, high = 0.0, 2.0
        for _ in range(30):  # duplicates only grow with the threshold
            mid = 0.5 * (low + high)
            found = sum(len(g) - 1 for g in groups_within(vectors, mid, reuse=reuse))
            if found == wanted:
                return mid
            low, high = (mid, high) if found < wanted else (low, mid)
        return high

    def _unit_queries(self, query):
        """-> (unit query matrix or None, full_index, single_query)."""
        if query is None:
            return None, True, False
        if isinstance(query, str):
            query, single = [query], True
        else:
            arr = np.asarray(query)
            if np.issubdtype(arr.dtype, np.number):
                single = arr.ndim == 1
                arr = arr[np.newaxis, :] if single else arr
                if self._engine.size and arr.shape[1] != self._engine.dim:
                    raise InvalidEmbeddingsError(
                        f"query vectors have dimension {arr.shape[1]}; this index holds "
                        f"{self._engine.dim}-d embeddings")
                return as_unit_matrix(arr, "query vectors"), False, single
            query, single = list(arr), False
        self._array_lookups = getattr(self, "_array_lookups", 0) + 1
        if (self._ids_to_inds is None and len(query) <= FEW_QUERY_IDS
                and self._array_lookups <= ARRAY_LOOKUPS):
            # A few ids are found by comparing arrays (17 ms at 1M rows): building the
            # id -> row map of a 1M-row index takes 1.4 s, which the first query of a
            # fresh App server would pay. Past ARRAY_LOOKUPS queries the map is built.
            found = {i: np.flatnonzero(self._sample_ids == i) for i in set(query)}
            index = {i: int(rows[0]) for i, rows in found.items() if len(rows)}
        else:
            index = self._get_ids_to_inds(full=True)
        unknown = [i for i in query if i not in index]
        if unknown:
            raise SimilarityIndexError(
                f"query IDs {unknown[:5]} are not in this index (no embedding, or outside the "
                "view it was built on)")
        return self._engine.matrix[[index[i] for i in query]], False, single

    def _get_ids_to_inds(self, full=False):
        if full:
            if self._ids_to_inds is None:
                self._ids_to_inds = {i: n for n, i in enumerate(self._sample_ids)}
            return self._ids_to_inds
        if self._curr_ids_to_inds is None:
            self._curr_ids_to_inds = {i: n for n, i in enumerate(self.current_sample_ids)}
        return self._curr_ids_to_inds

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        matrix = d.get("embeddings")
        ids = d.get("sample_ids")
        if matrix is not None:
            index = cls(samples, config, brain_key, matrix=as_unit_matrix(np.array(matrix)),
                        sample_ids=np.array(ids))
        else:
            index = cls(samples, config, brain_key, reading=True)
        index.curation = d.get("curation") or {}
        return index


def describe_samples(samples):
    """"'name'" for a dataset, "a view of 'name'" for a view (in messages)."""
    dataset = fo_adapter.root_dataset(samples)
    return f"'{dataset.name}'" if samples is dataset else f"a view of '{dataset.name}'"


def read_field(samples, field, allocate=in_memory):
    """(unit matrix, sample ids, number without a vector) of an embeddings field over ``samples``.

    ``allocate``: see :func:`lookalike.similarity.field_vectors.read_unit_vectors`.
    """
    matrix, ids = read_unit_vectors(samples, field, allocate=allocate)
    missing = fo_adapter.exact_count(samples) - len(ids)
    if missing:
        logger.warning("%d of %d samples have no '%s' embedding and are left out of the index",
                       missing, missing + len(ids), field)
    if not len(ids):
        raise no_embeddings(samples, field)
    return matrix, ids, missing


def no_embeddings(samples, field):
    """The one error for an index over samples none of which holds a vector in ``field``."""
    return EmptyViewError(f"no sample of {describe_samples(samples)} has an embedding in "
                          f"'{field}': compute embeddings first")


def write_vectors(dataset, field, sample_ids, vectors):
    if len(sample_ids):
        dataset.set_values(field, dict(zip(map(str, sample_ids), list(vectors))), key_field="id")


# Whoever loads our backend classes can also name it: backend="lookalike".
from lookalike.similarity.registration import register as _register_backend  # noqa: E402

_register_backend()
