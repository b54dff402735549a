"""Embedding a view's images into a vector field: resumable, attributable, nothing lost.

Which encoder filled a field is recorded in ``dataset.info["lookalike_embeddings"]``
(encoder name, version, dimension) before the first vector is written, so a
field never mixes two encoders. Samples that already hold a vector from the same
encoder version are skipped unless ``overwrite``; vectors are written chunk by
chunk, so a job that dies keeps what it finished and a rerun does the rest.
Unreadable images are listed and marked on the sample (``<field>_error``).
"""

from dataclasses import dataclass, field

import numpy as np

INFO_KEY = "lookalike_embeddings"


from lookalike.errors import EmbeddingFieldError  # noqa: F401 (re-exported)


@dataclass
class EmbeddingReport:
    field: str
    encoder: str
    embedded: int
    skipped_existing: int
    failures: list = field(default_factory=list)  # (sample_id, path, reason)


def field_record(dataset, field_name):
    return (dataset.info.get(INFO_KEY) or {}).get(field_name)


def _set_record(dataset, field_name, record):
    info = dict(dataset.info.get(INFO_KEY) or {})
    info[field_name] = record
    dataset.info[INFO_KEY] = info
    dataset.save()


def compute_embeddings(samples, encoder, embeddings_field=None, batch_size=64, overwrite=False,
                       chunk_size=1024, progress=None):
    """Embeds the images of ``samples`` with ``encoder`` into ``embeddings_field``.

    Args:
        samples: a FiftyOne dataset or view
        encoder: an encoder name, directory or loaded :class:`Encoder`
        embeddings_field: the vector field (default ``emb_<encoder name>``)
        overwrite: recompute vectors that exist; with another encoder than the
            field's, the field is cleared on the whole dataset first (a field
            never mixes encoders)
        progress: optional ``callable(done, total)``

    Returns:
        an :class:`EmbeddingReport`
    """
    from lookalike.encoders import load_encoder
    from lookalike.encoders.base import Encoder

    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder)
    dataset = samples._root_dataset
    field_name = embeddings_field or f"emb_{encoder.name}".replace("-", "_").replace(".", "_")
    error_field = f"{field_name}_error"
    if len(samples) == 0:
        raise EmbeddingFieldError("the view is empty: there is nothing to embed")
    record = field_record(dataset, field_name)
    mine = dict(encoder=encoder.name, version=encoder.version, dim=encoder.embedding_size,
                kind=encoder.kind, image_size=encoder.image_size)
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
        dataset.set_field(field_name, None).save()  # on the whole dataset: no mixing
    elif exists and record is None:
        dataset.set_field(field_name, None).save()
    _set_record(dataset, field_name, mine)
    if error_field not in dataset.get_field_schema():
        import fiftyone as fo

        dataset.add_sample_field(error_field, fo.StringField)

    if overwrite or not exists:
        todo = samples
    else:
        todo = samples.exists(field_name, False)
    skipped = len(samples) - len(todo)
    ids, paths = todo.values(["id", "filepath"]) if len(todo) else ([], [])
    embedded, failures = 0, []
    for start in range(0, len(ids), chunk_size):
        c_ids, c_paths = ids[start:start + chunk_size], paths[start:start + chunk_size]

        def chunk_progress(done, total, start=start):
            if progress is not None:
                progress(start + done, len(ids))

        emb, ok, failed = encoder.embed_paths(c_paths, batch_size=batch_size,
                                              progress=chunk_progress)
        values = {c_ids[i]: vec for i, vec in zip(ok, emb.astype(np.float32))}
        errors = {c_ids[i]: None for i in ok}
        for i, reason in failed:
            errors[c_ids[i]] = reason
            failures.append((c_ids[i], c_paths[i], reason))
        if values:
            dataset.set_values(field_name, values, key_field="id")
        dataset.set_values(error_field, errors, key_field="id")
        embedded += len(values)
    return EmbeddingReport(field=field_name, encoder=encoder.version, embedded=embedded,
                           skipped_existing=skipped, failures=failures)
