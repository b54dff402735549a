"""Embedding a view's images into a vector field: resumable, attributable, nothing lost.

Which encoder filled a field is recorded in ``dataset.info["lookalike_embeddings"]``
(encoder name, version, dimension) before the first vector is written, so a
field never mixes two encoders. Samples that already hold a vector from the same
encoder version are skipped unless ``overwrite``; vectors are written chunk by
chunk, so a job that dies keeps what it finished and a rerun does the rest.
Unreadable images are listed and marked on the sample (``<field>_error``).

Concurrency: a job holds the lease ``field:<name>`` (:mod:`lookalike.core.leases`)
from before it reads the field's record until its last write, shared only with
jobs of the same encoder version, so two encoders can never both pass the
record check. Each field's record is its own key, written with one atomic
``$set``, so jobs on two fields never overwrite each other's record.
"""

from dataclasses import dataclass, field

import numpy as np

from lookalike.core import faults, fo_adapter, leases
from lookalike.core.errors import EmbeddingFieldError  # noqa: F401 (re-exported)
from lookalike.core.progress import report

INFO_KEY = "lookalike_embeddings"


@dataclass
class EmbeddingReport:
    field: str
    encoder: str
    embedded: int
    skipped_existing: int
    failures: list = field(default_factory=list)  # lookalike.images.decode.ImageFailure, with sample_id

    def summary(self):
        """One line, for the CLI and the App."""
        unreadable = f", {len(self.failures)} unreadable" if self.failures else ""
        return (f"embedded {self.embedded} images into '{self.field}' "
                f"({self.skipped_existing} already done) with {self.encoder}{unreadable}")


def field_records(dataset):
    """``{field: record}`` of every field lookalike embedded, as the database holds it now."""
    return dict(fo_adapter.read_info_key(dataset, INFO_KEY) or {})


def field_record(dataset, field_name):
    """The record of the encoder that filled ``field_name`` (or None), read from the
    database so another process's write is seen."""
    return field_records(dataset).get(field_name)


def _set_record(dataset, field_name, record):
    fo_adapter.set_info_key(dataset, f"{INFO_KEY}.{field_name}", record)


def default_field_name(encoder):
    """The field an encoder's embeddings go to unless told: ``emb_<name>``, FiftyOne-safe.

    ``encoder``: a loaded encoder or its name. FiftyOne reads "." in a field name
    as a path into an embedded document, so every character but letters,
    digits and "_" becomes "_" (``ae.v2`` -> ``emb_ae_v2``).
    """
    import re

    return "emb_" + re.sub(r"\W", "_", getattr(encoder, "name", encoder))


def _check_field_name(field_name):
    # The name becomes a key of the record and a top-level sample field.
    if not field_name or "." in field_name or field_name.startswith(("$", "_")):
        raise EmbeddingFieldError(
            f"field '{field_name}': an embeddings field name must be non-empty and must not "
            "contain '.' or start with '$' or '_'")


# FiftyOne's own sample fields: never an embeddings field, whatever ``overwrite`` says.
RESERVED_FIELDS = frozenset({
    "id", "_id", "filepath", "tags", "metadata", "media_type", "_media_type", "created_at",
    "last_modified_at", "media_reference", "frames", "_rand", "_dataset_id", "_sample_id",
})
# The kinds of field a vector can be stored in: what compute_embeddings declares
# (VectorField), or what FiftyOne infers for arrays set by others.
VECTOR_FIELD_TYPES = ("VectorField", "ArrayField")


def _reserved_fields():
    return RESERVED_FIELDS.union(fo_adapter.sample_document_fields())


def is_vector_field(field):
    import fiftyone as fo

    return isinstance(field, (fo.VectorField, fo.ArrayField))


def check_writable(dataset, field_name, record=None, overwrite=False):
    """Refuses, before any write, a field that compute_embeddings must not write.

    Only a field that does not exist yet, or a vector field (``VectorField`` /
    ``ArrayField``), may take embeddings: ``overwrite`` replaces embeddings
    (another encoder's, or vectors lookalike did not write), never another kind
    of field, and never one of FiftyOne's own sample fields (``filepath``,
    ``tags``, ``metadata``, ...). The field where unreadable images are noted
    (``<field>_error``) must be a string field of ours, or not exist yet.
    Raises :class:`EmbeddingFieldError` in one line naming the field.
    """
    schema = dataset.get_field_schema()
    field = schema.get(field_name)
    kind = f" ({type(field).__name__})" if field is not None else ""
    if field_name in _reserved_fields():
        raise EmbeddingFieldError(
            f"field '{field_name}' is not an embeddings field{kind}: it is one of FiftyOne's "
            "own sample fields, which embeddings never replace: choose another --field")
    if field is not None and not is_vector_field(field):
        raise EmbeddingFieldError(
            f"field '{field_name}' is not an embeddings field{kind}: overwrite replaces "
            "embeddings, never another kind of field: choose another --field")
    error_field = f"{field_name}_error"
    error = schema.get(error_field)
    if error is not None:
        import fiftyone as fo

        if not isinstance(error, fo.StringField) or record is None:
            raise EmbeddingFieldError(
                f"field '{error_field}' ({type(error).__name__}), where the unreadable images "
                f"of '{field_name}' would be noted, exists and was not written by lookalike: "
                "choose another --field")


def _declare_fields(dataset, field_name, error_field):
    import fiftyone as fo

    # FiftyOne saves a dataset's whole field list: jobs on two fields take turns
    # so that neither's new field is written over by the other's list.
    with leases.hold(dataset, "schema", job="compute_embeddings", wait=120,
                     label=f"the field list of dataset '{dataset.name}'"):
        dataset.reload()
        schema = dataset.get_field_schema()
        if field_name not in schema:
            dataset.add_sample_field(field_name, fo.VectorField)
        if error_field not in schema:
            dataset.add_sample_field(error_field, fo.StringField)


def compute_embeddings(samples, encoder, embeddings_field=None, batch_size=64, overwrite=False,
                       chunk_size=1024, progress=None, flip_average=False):
    """Embeds the images of ``samples`` with ``encoder`` into ``embeddings_field``.

    Args:
        samples: a FiftyOne dataset or view
        encoder: an encoder name, directory or loaded :class:`Encoder`
        embeddings_field: the vector field (default :func:`default_field_name`)
        overwrite: recompute vectors that exist; with another encoder than the
            field's, the field is cleared on the whole dataset first (a field
            never mixes encoders)
        progress: optional ``progress(fraction, label)`` (:mod:`lookalike.core.progress`)
        flip_average: average each embedding with its mirror image's (the
            encoder becomes ``<name>+flip``, its default field ``emb_<name>_flip``;
            twice the compute): a left-right flipped copy gets the same vector

    Returns:
        an :class:`EmbeddingReport`

    Raises:
        EmbeddingFieldError: the field holds another encoder's vectors, or
            vectors lookalike did not write
        LeaseHeldError: another job is writing the field with another encoder
    """
    from lookalike.encoders import load_encoder
    from lookalike.encoders.base import Encoder

    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder, flip_average=flip_average)
    elif flip_average and not encoder.flip_average:
        import copy

        encoder = copy.copy(encoder)  # the caller's encoder stays as it was
        encoder.flip_average = True
    dataset = fo_adapter.root_dataset(samples)
    field_name = embeddings_field or default_field_name(encoder)
    _check_field_name(field_name)
    if fo_adapter.exact_count(samples) == 0:
        raise EmbeddingFieldError("the view is empty: there is nothing to embed")
    with leases.hold(dataset, f"field:{field_name}", job="compute_embeddings",
                     same=encoder.version, label=f"field '{field_name}'"):
        return _embed_holding_lease(samples, dataset, encoder, field_name, batch_size,
                                    overwrite, chunk_size, progress)


def claim_field(samples, encoder, embeddings_field=None, overwrite=False):
    """Writes ``encoder``'s record on the field (checked as :func:`compute_embeddings` checks
    it) before any vector, so that jobs sharing the field only check it; returns the field.

    ``lookalike.embeddings.shards`` calls it once before queueing the shards of one embedding.
    """
    from lookalike.encoders import load_encoder
    from lookalike.encoders.base import Encoder

    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder)
    dataset = fo_adapter.root_dataset(samples)
    field_name = embeddings_field or default_field_name(encoder)
    _check_field_name(field_name)
    with leases.hold(dataset, f"field:{field_name}", job="compute_embeddings",
                     same=encoder.version, label=f"field '{field_name}'"):
        _claim_held(dataset, encoder, field_name, overwrite)
    return field_name


def _claim_held(dataset, encoder, field_name, overwrite):
    """The field's record checked against ``encoder`` (and written where it differs), the
    vector and error fields declared; the caller holds the field's lease."""
    error_field = f"{field_name}_error"
    dataset.reload()  # another process may have added the field since we loaded it
    record = field_record(dataset, field_name)
    mine = dict(encoder=encoder.name, version=encoder.version, dim=encoder.embedding_size,
                kind=encoder.kind, image_size=encoder.image_size)
    check_writable(dataset, field_name, record, overwrite)  # before anything is written
    exists = field_name in dataset.get_field_schema()
    if exists and record is None and not overwrite:
        raise EmbeddingFieldError(
            f"field '{field_name}' exists and was not written by lookalike: choose another "
            "field or pass overwrite=True")
    if record is not None and record.get("version") != encoder.version:
        if not overwrite:
            raise EmbeddingFieldError(
                f"field '{field_name}' holds embeddings of encoder {record.get('version')}; "
                f"refusing to mix in {encoder.version}: choose another field or pass "
                "overwrite=True to replace them all")
        # Cleared before the new record is written: a kill in between leaves the
        # old record over (some of) its own vectors, never the new one over old ones.
        # (A job killed between its record and its field list leaves no field to clear.)
        if exists:
            dataset.set_field(field_name, None).save()  # on the whole dataset: no mixing
    elif exists and record is None:
        dataset.set_field(field_name, None).save()
    if record != mine:
        _set_record(dataset, field_name, mine)
    faults.point("embed.after_record")
    _declare_fields(dataset, field_name, error_field)


def _embed_holding_lease(samples, dataset, encoder, field_name, batch_size, overwrite,
                         chunk_size, progress):
    error_field = f"{field_name}_error"
    _claim_held(dataset, encoder, field_name, overwrite)
    if overwrite:
        todo = samples
    else:
        todo = samples.exists(field_name, False)
    skipped = fo_adapter.exact_count(samples) - fo_adapter.exact_count(todo)
    ids, paths = todo.values(["id", "filepath"]) if fo_adapter.exact_count(todo) else ([], [])
    embedded, done, failures = 0, 0, []
    for start in range(0, len(ids), chunk_size):
        c_ids, c_paths = ids[start:start + chunk_size], paths[start:start + chunk_size]

        values, errors = {}, {}
        for ok, emb, failed in encoder.iter_embed_paths(c_paths, batch_size=batch_size,
                                                        sample_ids=c_ids):
            if emb is not None:
                values.update((c_ids[i], vec) for i, vec in zip(ok, emb.astype(np.float32)))
                errors.update((c_ids[i], None) for i in ok)
            errors.update((f.sample_id, f.reason) for f in failed)
            failures.extend(failed)
            done += len(ok) + len(failed)
            report(progress, done, len(ids), f"embedded {done}/{len(ids)}")
        if start + chunk_size >= len(ids):
            faults.point("embed.before_final_write")
        leases.check_held()
        if values:
            dataset.set_values(field_name, values, key_field="id")
        dataset.set_values(error_field, errors, key_field="id")
        embedded += len(values)
        faults.point("embed.after_chunk")
    return EmbeddingReport(field=field_name, encoder=encoder.version, embedded=embedded,
                           skipped_existing=skipped, failures=failures)
