"""Reading an embeddings field from MongoDB into one float32 matrix of unit rows, streamed.

``samples.values(["id", field])`` decodes every vector into its own numpy
array (FiftyOne stores a ``VectorField`` value as zlib-compressed ``.npy``
bytes and parses each one's text header), keeps them all in a Python list and
then stacks them: at 1M x 256 that is about three copies of the matrix and a
minute of header parsing. Here the documents come through one cursor in
batches; each value is decompressed and copied straight into its row of a
preallocated matrix, the ``.npy`` header parsed once per distinct header, and
the rows normalised in place. Peak memory: the matrix, its ids and one batch
(``benchmarks/index.py --read``). The matrix may be a memory map of a file
(``allocate``): the compressed engine's build then holds only a batch in
memory, whatever the field's size.

Values may also be plain lists of numbers (fields written by other tools).
Bad vectors fail as :func:`lookalike.similarity.engine.as_unit_matrix` says.
"""

import io
import zlib

import numpy as np

from lookalike.core import faults, fo_adapter
from lookalike.core.errors import InvalidEmbeddingsError, UsageError
from lookalike.core.progress import report

BATCH = 2000  # documents per cursor batch: about 2.5 MB of 256-d float32 vectors


def check_embeddings_field(samples, field, error=UsageError):
    """The one rule for a field named as embeddings (to index, project, curate): a field of
    the dataset that holds vectors (:func:`field_holds`). Else raises ``error`` in one line
    naming the field and what it holds.
    """
    dataset = fo_adapter.root_dataset(samples)
    schema = dataset.get_field_schema()
    if field not in schema:
        raise error(f"dataset '{dataset.name}' has no field '{field}': compute embeddings first")
    holds = field_holds(schema[field])
    if holds != "vectors":
        raise error(f"field '{field}' holds {holds}, not embeddings: give a field of vectors "
                    "(lookalike embed writes one)")


def field_holds(field):
    """What a FiftyOne field holds, in words: "vectors" for a vector or array field, a list
    of numbers or an untyped list (vectors written by other tools); else "strings",
    "ImageMetadata documents", "lists of strings", ..."""
    import fiftyone as fo

    from lookalike.embeddings.compute import is_vector_field

    if is_vector_field(field):
        return "vectors"
    if isinstance(field, fo.ListField):
        inner = field.field
        if inner is None or isinstance(inner, (fo.FloatField, fo.IntField)):
            return "vectors"
        return f"lists of {field_holds(inner)}"
    kinds = ((fo.StringField, "strings"), (fo.BooleanField, "true/false values"),
             ((fo.IntField, fo.FloatField), "single numbers"), (fo.ObjectIdField, "ids"),
             ((fo.DateTimeField, fo.DateField), "dates"), (fo.DictField, "dicts"))
    for cls, kind in kinds:
        if isinstance(field, cls):
            return kind
    if isinstance(field, fo.EmbeddedDocumentField):
        return f"{field.document_type.__name__} documents"
    return f"{type(field).__name__} values"


class _Rows:
    """A growing float32 matrix and the 12-byte ObjectIds of its rows."""

    def __init__(self, capacity, allocate):
        self.capacity = max(int(capacity), 1)
        self._allocate = allocate
        self.matrix = None
        self.ids = np.empty(self.capacity, "S12")
        self.size = 0

    def append(self, oid, vector):
        if self.matrix is None:
            self.matrix = self._allocate(self.capacity, len(vector))
        elif len(vector) != self.matrix.shape[1]:
            raise InvalidEmbeddingsError(
                f"have mixed shapes [({self.matrix.shape[1]},), ({len(vector)},)]: they come "
                "from different encoders; recompute them with one encoder")
        if self.size == self.capacity:  # written to meanwhile: grow (in memory)
            self.capacity *= 2
            grown = np.empty((self.capacity, self.matrix.shape[1]), np.float32)
            grown[:self.size] = self.matrix[:self.size]
            self.matrix = grown
            self.ids = np.resize(self.ids, self.capacity)
        self.matrix[self.size] = vector
        self.ids[self.size] = oid
        self.size += 1

    def finish(self):
        if self.matrix is None:
            return np.zeros((0, 0), np.float32), np.zeros(0, "U24")
        matrix = self.matrix[:self.size]
        if self.size < self.capacity:  # fewer than counted (deleted meanwhile)
            matrix = np.array(matrix)  # in memory: a map keeps its file's shape
        hexed = self.ids[:self.size].tobytes().hex().encode("ascii")
        return matrix, np.frombuffer(hexed, "S24").astype("U24")


class _NpyDecoder:
    """Decodes FiftyOne's serialised arrays, parsing each distinct ``.npy`` header once."""

    def __init__(self):
        self._headers = {}

    def __call__(self, value):
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = zlib.decompress(value)
            # .npy: magic (6), version (2), header length (2 bytes in v1, 4 in v2/v3), header.
            width = 2 if raw[6] == 1 else 4
            start = 8 + width
            end = start + int.from_bytes(raw[8:start], "little")
            header = raw[:end]
            layout = self._headers.get(header)
            if layout is None:
                array = np.load(io.BytesIO(raw), allow_pickle=False)
                layout = self._headers[header] = (array.dtype, array.shape)
            dtype, shape = layout
            if len(shape) != 1:
                raise InvalidEmbeddingsError(f"must be 1-D vectors, got shape {shape}")
            return np.frombuffer(raw, dtype, count=shape[0], offset=end)
        vector = np.asarray(value, np.float32)
        if vector.ndim != 1:
            raise InvalidEmbeddingsError(f"must be 1-D vectors, got shape {vector.shape}")
        return vector


def in_memory(rows, dim):
    return np.empty((rows, dim), np.float32)


def read_unit_vectors(samples, field, progress=None, batch=BATCH, allocate=in_memory):
    """``(unit matrix, sample ids as str)`` of the samples of ``samples`` with a vector in ``field``.

    Rows come in the order of the sample ids (:func:`lookalike.core.fo_adapter.project`). ``progress``: ``progress(fraction, label)``.
    ``allocate(rows, dim)``: the float32 array to fill, called once with the
    number of vectors counted and their dimension (if more arrive than counted,
    or fewer, the matrix returned is in memory instead).
    Raises :class:`~lookalike.core.errors.InvalidEmbeddingsError` (naming ``field``)
    for mixed dimensions, NaN or inf, or all-zero vectors.
    """
    expected = samples.exists(field).count()
    rows = _Rows(expected, allocate)
    decode = _NpyDecoder()
    what = f"'{field}' embeddings"
    path, cursor = fo_adapter.project(samples, field, batch)
    try:
        for doc in cursor:
            value = _get(doc, path)
            if value is None:
                continue
            rows.append(doc["_id"].binary, decode(value))
            if rows.size == 1 or rows.size % batch == 0:
                faults.point("field.reading")  # the matrix (maybe a staged file) half written
            if rows.size % (25 * batch) == 0:
                report(progress, rows.size, expected, f"read {rows.size}/{expected} vectors")
    except InvalidEmbeddingsError as e:
        raise InvalidEmbeddingsError(f"{what} {e}") from None
    matrix, ids = rows.finish()
    report(progress, rows.size, rows.size, f"read {rows.size} vectors")
    return normalise_rows(matrix, what), ids


def normalise_rows(matrix, what="embeddings", chunk=65536):
    """Scales the rows of ``matrix`` (float32) to unit length in place, or raises on bad rows."""
    bad_rows, zero_rows = [], []
    for start in range(0, len(matrix), chunk):
        part = matrix[start:start + chunk]
        finite = np.isfinite(part).all(axis=1)
        bad_rows.extend((start + np.flatnonzero(~finite)).tolist())
        norms = np.sqrt(np.einsum("ij,ij->i", part, part, dtype=np.float64))
        zero_rows.extend((start + np.flatnonzero(finite & (norms == 0))).tolist())
        norms[norms == 0] = 1.0
        part /= norms.astype(np.float32)[:, np.newaxis]
    if bad_rows:
        raise InvalidEmbeddingsError(
            f"{len(bad_rows)} of {len(matrix)} {what} contain NaN or inf (rows {bad_rows[:5]})")
    if zero_rows:
        raise InvalidEmbeddingsError(
            f"{len(zero_rows)} of {len(matrix)} {what} are all zeros: cosine distance is undefined")
    return matrix


def _get(doc, path):
    for key in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc
