"""Results computed from image files, kept across runs: a rerun after new images arrive
computes only what concerns them (pairs of local features matched, turned embeddings).

A result is a row of ``width`` numbers keyed by what it was computed from: the name
of the computation (with every setting that changes it) and the files it read, each
named by :func:`file_identity` (path, size, modification time) or a name that holds
it. A file edited in place gets a new name, so its old results are never read
again. Results never change once computed, so writers need no lock: a run adds
what it computed as one *shard*, written whole under a temporary name and then
renamed in, and readers read every shard. Past :data:`MAX_SHARDS` shards a run
merges them into one (written whole, then the merged ones removed); a reader that
finds a shard gone skips it, and two merges at once write the same results twice,
never lose one. Damaged shards are skipped: what is missing is computed again.
"""

import hashlib
import os
import uuid

import numpy as np

_MAGIC = {np.dtype("<i4"): b"LKRESi4\0", np.dtype("<f4"): b"LKRESf4\0"}
_HEADER = np.dtype([("count", "<i8"), ("width", "<i4")])
KEY_BYTES = 16
MAX_SHARDS = 16
FOLDER = "results"
_WHAT = "the results cache"


def result_key(name, *parts):
    """The key of computation ``name`` on ``parts`` (file names, in order: a measure of a
    pair need not be symmetric)."""
    return hashlib.blake2b("|".join((name,) + tuple(parts)).encode(),
                           digest_size=KEY_BYTES).digest()


def file_identity(path):
    """``path`` with its size and modification time, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


class ResultCache:
    """The saved results of computation ``name``, rows of ``width`` values of ``dtype``
    (int32 or float32), under ``directory`` (a dataset's features cache,
    :func:`lookalike.images.local_features.cache_dir`). ``name`` must change whenever
    what the computation returns would."""

    def __init__(self, directory, name, width, dtype=np.int32):
        self.folder = os.path.join(directory, FOLDER, name)
        self.name = name
        self.width = int(width)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype not in _MAGIC:
            raise ValueError(f"results are int32 or float32, not {dtype}")
        self._known = None

    def _shards(self):
        try:
            return sorted(e for e in os.listdir(self.folder) if e.endswith(".bin"))
        except OSError:
            return []

    def _read(self, name):
        """``(keys, values)`` of a shard; ValueError when damaged or of another shape, OSError
        when gone."""
        with open(os.path.join(self.folder, name), "rb") as f:
            data = f.read()
        magic = _MAGIC[self.dtype]
        start = len(magic) + _HEADER.itemsize
        if not data.startswith(magic) or len(data) < start:
            raise ValueError("not a results shard of this type")
        count, width = np.frombuffer(data, _HEADER, 1, len(magic))[0].tolist()
        if width != self.width or count < 0 or len(data) != start + count * (
                KEY_BYTES + self.dtype.itemsize * width):
            raise ValueError("a truncated results shard")
        body = data[start:start + count * KEY_BYTES]
        keys = [body[n:n + KEY_BYTES] for n in range(0, len(body), KEY_BYTES)]
        values = np.frombuffer(data, self.dtype, count * width, start + count * KEY_BYTES)
        return keys, values.reshape(count, width)

    def _write(self, keys, values):
        from lookalike.core import paths

        values = np.ascontiguousarray(values, self.dtype).reshape(len(keys), self.width)
        data = (_MAGIC[self.dtype] + np.array([(len(keys), self.width)], _HEADER).tobytes()
                + b"".join(keys) + values.tobytes())
        paths.write_file(os.path.join(self.folder, f"{uuid.uuid4().hex}.bin"), data, _WHAT,
                         durable=False)

    def _load(self):
        if self._known is None:
            self._known = {}
            for name in self._shards():
                try:
                    self._known.update(zip(*self._read(name)))
                except (OSError, ValueError):
                    continue  # merged away meanwhile, or damaged: computed again
        return self._known

    def get(self, keys):
        """The saved row for each key, or None where there is none (or the key is None)."""
        known = self._load()
        return [None if k is None else known.get(k) for k in keys]

    def add(self, keys, values):
        """Saves ``values`` (rows of ``width``) under ``keys`` (None keys are skipped) as one
        shard; a shard that cannot be written is skipped (the results are in hand)."""
        from lookalike.core import paths
        from lookalike.core.errors import FileWriteError

        rows = [(k, np.asarray(v, self.dtype).reshape(self.width))
                for k, v in zip(keys, values) if k is not None]
        if not rows:
            return
        self._load().update(rows)
        try:
            paths.make_folder(self.folder, _WHAT)
            self._write([k for k, _ in rows], np.stack([v for _, v in rows]))
            shards = self._shards()
            if len(shards) > MAX_SHARDS:
                self._merge(shards)
        except FileWriteError:
            pass

    def _merge(self, shards):
        """One shard of everything in ``shards`` (and this object's results), then those
        removed: only now, when every result they held is in the merged shard."""
        merged = dict(self._known)
        for name in shards:
            try:
                merged.update(zip(*self._read(name)))
            except (OSError, ValueError):
                continue
        self._write(list(merged), np.stack(list(merged.values())))
        for name in shards:
            try:
                os.remove(os.path.join(self.folder, name))
            except OSError:
                pass
