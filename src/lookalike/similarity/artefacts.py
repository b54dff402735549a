"""Index artefacts on disk: the unit vectors and their sample ids, next to the brain run.

A new process (the App server, a worker) loads ``vectors.npy`` instead of
reading and decoding every embedding from MongoDB. ``meta.json`` records which
samples held a vector (their count and smallest and largest id) and the encoder
version that wrote the field (see :mod:`lookalike.embeddings.compute`); when any of
these differs now, the artefacts are stale and the index is rebuilt from the
field. Lookalike's own writes refresh the artefacts at once. Edits made
outside lookalike that keep all three (vectors overwritten in place, one
sample's vector swapped for another's) are not detected: call
``index.reload()`` after such edits.

Location: ``<data dir>/indexes/<dataset id>/<build id>/`` (see
:func:`lookalike.core.paths.default_data_dir`). The build id is recorded in the run's
config, so renaming a run (as :func:`lookalike.similarity.build_index` does when
it swaps a new index in) keeps its artefacts without moving anything. Runs made
before build ids use their brain key as the directory name.

The staleness state is computed over the samples the index was built on (the
view stored with the run), not the whole dataset.
"""

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil

import numpy as np

from lookalike.core import faults, fo_adapter, leases, paths
from lookalike.core.paths import default_data_dir

logger = logging.getLogger(__name__)


BUILD_PREFIX = "build-"
STAGE_PREFIX = "vectors.staged-"  # + <process tag>-<token>.npy: a field read straight to disk


def dataset_directory(samples):
    return os.path.join(default_data_dir(), "indexes", fo_adapter.dataset_id(samples))


def build_path(samples, name):
    """The artefacts directory ``name`` (a build id, or a legacy run's brain key)."""
    return os.path.join(dataset_directory(samples), name)


def directory(samples, brain_key):
    """The artefacts directory of the brain run ``brain_key``."""
    return build_path(samples, run_directory_name(samples, brain_key))


def run_directory_name(samples, brain_key):
    dataset = fo_adapter.root_dataset(samples)
    if brain_key in dataset.list_brain_runs():
        build_id = getattr(dataset.get_brain_info(brain_key).config, "build_id", None)
        if build_id:
            return build_id
    return brain_key


def remove_unreferenced_builds(dataset):
    """Deletes build directories that no brain run names (left by killed builds).

    The directories are listed before the runs: a build registers its run
    (with its build id) before it creates its directory, so a directory listed
    here whose run is being built is always seen as referenced.
    """
    root = dataset_directory(dataset)
    try:
        names = [n for n in os.listdir(root) if n.startswith(BUILD_PREFIX)]
    except OSError:
        return
    fo_adapter.refresh_runs(dataset)
    referenced = {run_directory_name(dataset, k) for k in dataset.list_brain_runs()}
    # Runs a rebuild replaced are kept a while for readers, their artefacts with them.
    referenced |= {config.get("build_id") or key
                   for _, key, config in fo_adapter.detached_brain_runs(dataset)}
    for name in names:
        if name not in referenced:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def field_state(samples, field):
    # Which samples hold a vector -- their count and id range, one server-side
    # aggregation instead of reading 100k ids (0.5 s) -- and which encoder wrote
    # them. Not last_modified_at: writing any other field (the distance field of
    # "sort by similarity", a tag) would make every cache look stale.
    import fiftyone as fo

    from lookalike.embeddings.compute import field_record

    count, first, last = samples.exists(field).aggregate(
        [fo.Count(), fo.Min("_id"), fo.Max("_id")])
    record = field_record(fo_adapter.root_dataset(samples), field) or {}
    return {"count": int(count), "ids": [str(first), str(last)], "version": record.get("version")}


def quick_state(samples):
    """What any change FiftyOne makes to a whole dataset's samples changes, read from its
    indexes in milliseconds: the count MongoDB keeps, the first and last sample id and
    the latest ``last_modified_at`` (FiftyOne indexes it and sets it on every edit). None
    for a view (whose members may depend on more than its samples' documents).

    Saved beside :func:`field_state` (before it: a change between the two makes the
    saved quick state the older one); while it is unchanged the field's samples are too,
    so loading skips :func:`field_state`'s pass over every document (2.3 s at 1M)."""
    if fo_adapter.view_stages(samples):
        return None
    collection = fo_adapter.sample_collection(samples)

    def edge(key, direction):
        doc = collection.find_one({}, {key: 1}, sort=[(key, direction)])
        return None if doc is None else str(doc.get(key))

    return {"count": int(collection.estimated_document_count()), "first": edge("_id", 1),
            "last": edge("_id", -1), "modified": edge("last_modified_at", -1)}


def _fresh(samples, field, meta):
    """Whether artefacts whose ``meta`` was saved then are fresh for ``samples`` now."""
    from lookalike.embeddings.compute import field_record

    quick = meta.get("quick")
    if quick is not None and quick == quick_state(samples):
        record = field_record(fo_adapter.root_dataset(samples), field) or {}
        return meta.get("version") == record.get("version")
    return {k: meta.get(k) for k in ("count", "ids", "version")} == field_state(samples, field)


WHAT = "index artefacts"  # how a write error names what it was writing
LEASE_WAIT_S = 120.0  # a save waits this long for another process saving the same artefacts


def save(samples, name, field, matrix, sample_ids, engine=None, optional=False):
    """Writes the artefacts ``name``: vectors, ids, meta (and the engine's faiss index).

    Each file is written whole under a temporary name of this process and
    renamed into place (:mod:`lookalike.core.paths`), under a lease on the
    artefacts (:mod:`lookalike.core.leases`): two processes refreshing one stale
    run save one after the other, never into each other's files. Every file is
    written before the first is renamed into place: a save that fails (a full
    disk: one :class:`~lookalike.core.errors.FileWriteError` line naming the
    folder) leaves no temporary and the artefacts on disk as they were.

    ``optional``: a cache for a reader (loading an index to search): returns
    False, having written nothing, instead of raising when the folder cannot be
    written or another process is saving them now. Returns True once saved.
    """
    from lookalike.core.errors import FileWriteError, LeaseHeldError

    path = build_path(samples, name)
    created = not os.path.isdir(path)
    try:
        paths.make_folder(path, WHAT)
        with leases.hold(fo_adapter.root_dataset(samples), f"artefacts:{name}",
                         job="save_index_artefacts", wait=0.0 if optional else LEASE_WAIT_S,
                         label=f"index artefacts {path}"):
            _save(samples, path, field, matrix, sample_ids, engine)
    except (FileWriteError, LeaseHeldError) as e:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only if empty: a folder it made for nothing
        if not optional:
            raise
        logger.info("index artefacts not saved (searching without them): %s", e)
        return False
    return True


def _save(samples, path, field, matrix, sample_ids, engine):
    _remove_abandoned_stages(path)
    paths.remove_abandoned_temporaries(path)
    vectors = os.path.join(path, "vectors.npy")
    # A compressed engine's matrix is a map of vectors.npy itself: nothing to
    # write; or a map of a staged file (see stage_vectors): moved into place.
    mapped = is_mapped_from(matrix, vectors)
    staged = _staged_file(matrix, path)
    quick = quick_state(samples)  # first: see quick_state
    meta = dict(field=field, dim=int(matrix.shape[1]) if matrix.ndim == 2 else 0,
                size=int(len(sample_ids)), **field_state(samples, field), quick=quick)
    with contextlib.ExitStack() as stack:
        # Every file written whole under a temporary name first: a full disk fails
        # here, with the artefacts on disk untouched.
        def stage(name, write, mode="wb"):
            file = stack.enter_context(paths.StagedFile(os.path.join(path, name), WHAT))
            with file.open(mode) as f:
                write(f)
            return file

        new = []
        if staged:
            memory_map_of(matrix).flush()
        elif not mapped:
            new.append(stage("vectors.npy",
                             lambda f: np.save(f, np.ascontiguousarray(matrix, np.float32))))
        new.append(stage("ids.npy", lambda f: np.save(f, np.asarray(sample_ids, dtype="U24"))))
        if engine is not None and getattr(engine, "index", None) is not None:
            new.append(stage("ivf.faiss", lambda f: _write_faiss(engine.index, f)))
            new.append(stage("ivf.json", lambda f: json.dump(
                {"nprobe": engine.nprobe, "ntotal": int(engine.index.ntotal),
                 "engine": engine.name}, f), mode="w"))
        marker = stage("meta.json", lambda f: json.dump(meta, f), mode="w")
        faults.point("artefacts.written")
        # Then renamed into place (no space needed). meta.json goes first and comes
        # back last: a kill in between leaves no meta, read as missing (rebuilt from
        # the field), never vectors of one save with ids of another.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(path, "meta.json"))
        if staged:
            paths.replace_file(staged, vectors, WHAT)
        for file in new:
            file.commit()
        if engine is None or getattr(engine, "index", None) is None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, "ivf.faiss"))
        marker.commit()


def _write_faiss(index, f):
    import faiss

    writer = faiss.PyCallbackIOWriter(f.write)  # a full disk raises OSError through it
    try:
        faiss.write_index(index, writer)
    finally:
        del writer


def stage_vectors(samples, name, shape):
    """A new float32 ``.npy`` file of ``shape`` in the artefacts ``name``, memory-mapped to write.

    Reading a field into it (see :mod:`lookalike.similarity.field_vectors`) holds only
    a batch in memory; :func:`save` moves it into place as ``vectors.npy``, and
    :func:`discard_stage` removes one that is not saved. Files staged by dead
    processes of this host (killed while reading) are removed here and by
    :func:`load`.
    """
    path = paths.make_folder(build_path(samples, name), WHAT)
    _remove_abandoned_stages(path)
    file = os.path.join(path, f"{STAGE_PREFIX}{leases.process_tag()}{secrets.token_hex(4)}.npy")
    try:
        matrix = np.lib.format.open_memmap(file, mode="w+", dtype=np.float32, shape=tuple(shape))
        # The whole file claimed now: a disk too small fails here, in one line, not
        # with SIGBUS when a write through the map finds no room.
        _claim_space(file)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(file)
        raise paths.write_error(e, path, WHAT) from e
    return matrix


def _claim_space(file):
    """Allocates every block of ``file`` (where the system and file system can)."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(file, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def is_staged(matrix):
    """Whether ``matrix`` is (a view of) a map of a file from :func:`stage_vectors`."""
    filename = getattr(memory_map_of(matrix), "filename", None)
    return bool(filename) and os.path.basename(filename).startswith(STAGE_PREFIX)


def discard_stage(matrix):
    """Removes the staged file under ``matrix``, if it is one."""
    if is_staged(matrix):
        with contextlib.suppress(FileNotFoundError):
            os.remove(memory_map_of(matrix).filename)


def _staged_file(matrix, path):
    """The file under ``matrix`` if it was staged in the directory ``path``, else None."""
    if is_staged(matrix):
        filename = memory_map_of(matrix).filename
        if os.path.dirname(filename) == os.path.abspath(path) and os.path.exists(filename):
            return filename
    return None


def _remove_abandoned_stages(path):
    for name in os.listdir(path):
        if name.startswith(STAGE_PREFIX) and leases.abandoned(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, name))


def memory_map_of(matrix):
    """The ``np.memmap`` under ``matrix`` (itself or what it views), or None."""
    base = matrix
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    return base


def is_mapped_from(matrix, path):
    """Whether ``matrix`` is (a view of) a memory map of the file ``path``."""
    filename = getattr(memory_map_of(matrix), "filename", None)
    return bool(filename) and os.path.exists(path) and os.path.samefile(filename, path)


def saved_engine(samples, name):
    """The engine that saved the artefacts ``name`` ("ivf", "compressed"), or None."""
    try:
        with open(os.path.join(build_path(samples, name), "ivf.json")) as f:
            return json.load(f).get("engine", "ivf")
    except (OSError, ValueError):
        return None


def map_vectors(samples, name):
    """The saved vectors of ``name`` as a read-only memory map."""
    return np.load(os.path.join(build_path(samples, name), "vectors.npy"), mmap_mode="r",
                   allow_pickle=False)


def load(samples, name, field, mmap=False):
    """``(matrix, sample_ids)`` from disk, or None when missing or stale for ``samples``.

    ``mmap``: the matrix is a read-only memory map of the file (for the
    compressed engine), not read into memory.
    """
    path = build_path(samples, name)
    with contextlib.suppress(OSError):
        _remove_abandoned_stages(path)
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        if meta.get("field") != field:
            return None
        if not _fresh(samples, field, meta):
            logger.info("index artefacts %s are stale: rebuilding from '%s'", path, field)
            return None
        matrix = np.load(os.path.join(path, "vectors.npy"), allow_pickle=False,
                         mmap_mode="r" if mmap else None)
        ids = np.load(os.path.join(path, "ids.npy"), allow_pickle=False)
    except (OSError, ValueError):
        return None
    if len(ids) != meta["size"] or matrix.shape != (meta["size"], meta["dim"]):
        return None
    return matrix, ids


def load_faiss(samples, name, size):
    """``(faiss index, nprobe, mapped)`` saved with fresh artefacts of ``size`` rows, or None.

    A float IVF index (the approximate engine's) is mapped from its file, not read
    (3 s and a gigabyte at 1M): ``mapped`` True; its engine makes an index of its own
    before any edit (:meth:`lookalike.similarity.engine.IVFEngine._writable`). A
    replaced file keeps the mapping valid (files are renamed into place, never
    rewritten)."""
    path = build_path(samples, name)
    try:
        with open(os.path.join(path, "ivf.json")) as f:
            meta = json.load(f)
        if meta["ntotal"] != size or not os.path.exists(os.path.join(path, "ivf.faiss")):
            return None
        import faiss

        file = os.path.join(path, "ivf.faiss")
        flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
        mapped = flag is not None and meta.get("engine", "ivf") == "ivf"
        return (faiss.read_index(file, flag) if mapped else faiss.read_index(file),
                int(meta["nprobe"]), mapped)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


def remove(samples, name):
    shutil.rmtree(build_path(samples, name), ignore_errors=True)


def rename(dataset, brain_key, new_key):
    """Keeps a run's artefacts when ``dataset.rename_brain_run`` renames it.

    Called through the run's ``rename`` hook, before FiftyOne renames the run
    document. A run with a build id needs nothing (its directory is named by
    the id). A legacy run's directory, named by its key, is moved (one
    directory rename); a process killed in between leaves the run without
    artefacts, which it then rebuilds from its samples (nothing lost).
    """
    name = run_directory_name(dataset, brain_key)
    if name != brain_key:
        return
    src, dst = build_path(dataset, brain_key), build_path(dataset, new_key)
    if not os.path.isdir(src):
        return
    shutil.rmtree(dst, ignore_errors=True)  # no run holds new_key (FiftyOne checks)
    os.rename(src, dst)
