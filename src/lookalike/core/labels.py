"""Label fields: which fields hold labels, where their values are, and the labelled samples.

The one rule: a label field is a ``fo.Classification`` field (its values are
``<field>.label``) or a string field (its values are the field itself).
Calibration, evaluation and matching read labels through :func:`label_path`
and :func:`indexed_labels`; metric learning, which needs classes it can learn,
takes Classification fields only (:func:`labelled_view`).

FiftyOne-aware, TensorFlow-free: the training code validates its labels here
before any framework is imported.
"""

import warnings
from collections import Counter

import numpy as np

from lookalike.core import fo_adapter
from lookalike.core.errors import CalibrationError, TrainingConfigError, UsageError


def _is_classification(field):
    import fiftyone as fo

    return isinstance(field, fo.EmbeddedDocumentField) and issubclass(
        field.document_type, fo.Classification)


def classification_fields(samples):
    """Names of the Classification fields of ``samples``, sorted."""
    import fiftyone as fo

    return sorted(samples.get_field_schema(embedded_doc_type=fo.Classification))


# FiftyOne's own string fields: the media's path and type, never labels.
NOT_LABELS = {"filepath": "the media's path", "media_type": "the media's type"}


def label_fields(samples):
    """Names of the label fields of ``samples`` (Classification or string fields), sorted."""
    import fiftyone as fo

    schema = samples.get_field_schema()
    return sorted(name for name, field in schema.items() if _is_classification(field) or (
        isinstance(field, fo.StringField) and name not in NOT_LABELS))


def label_path(samples, label_field, error=UsageError):
    """The path of ``label_field``'s values (``<field>.label`` for a Classification field).

    Raises ``error`` (the caller's kind of bad input) in one line naming the
    field and the label fields there are, when it is missing or holds no labels.
    """
    import fiftyone as fo

    field = samples.get_field_schema().get(label_field)
    if _is_classification(field):
        return f"{label_field}.label"
    if isinstance(field, fo.StringField) and label_field not in NOT_LABELS:
        return label_field
    if label_field in NOT_LABELS and field is not None:
        what = f"'{label_field}' holds {NOT_LABELS[label_field]}, not a label"
    elif field is None:
        what = f"'{fo_adapter.root_dataset(samples).name}' has no field '{label_field}'"
    elif isinstance(field, fo.EmbeddedDocumentField):
        what = f"'{label_field}' holds {field.document_type.__name__} labels"
    else:
        what = f"'{label_field}' is a {type(field).__name__}"
    choices = ", ".join(label_fields(samples)) or "none in this dataset"
    raise error(f"{what}; a label field is a Classification or a string field "
                f"(label fields: {choices})")


def check_label_field(samples, label_field, error=UsageError):
    """``label_field``'s path (:func:`label_path`) once its values look like labels.

    A Classification field is taken as it is; a string field must name classes
    that repeat: most of its values (over ``samples``) must be shared by at
    least 2 samples, so a field of one-off values (names, paths, ids) is refused
    in one line naming the field and why, before anything is computed on it.
    """
    path = label_path(samples, label_field, error)
    if path != label_field:
        return path  # a Classification field
    counts = {v: n for v, n in samples.count_values(path).items() if v not in (None, "")}
    single = sum(1 for n in counts.values() if n < 2)
    if counts and 2 * single > len(counts):
        choices = ", ".join(f for f in label_fields(samples) if f != label_field)
        raise error(
            f"'{label_field}' does not hold labels: {single} of its {len(counts)} values name a "
            "single sample each (labels are classes shared by several samples); choose a "
            f"Classification or a string field of classes (label fields: "
            f"{choices or 'no other in this dataset'})")
    return path


def indexed_labels(samples, index, label_field, error=UsageError):
    """``(index rows, labels, missing)``: the indexed samples of ``samples`` that have a label.

    Labels are strings; ``missing`` counts the indexed samples without one.
    """
    ids, labels = samples.values(["id", label_path(samples, label_field, error)])
    position = {sid: i for i, sid in enumerate(index.sample_ids)}
    rows, kept, missing = [], [], 0
    for sid, label in zip(ids, labels):
        if sid not in position:
            continue  # not embedded: not in the index
        if label is None or label == "":
            missing += 1
            continue
        rows.append(position[sid])
        kept.append(str(label))
    return np.asarray(rows, dtype=int), np.asarray(kept, dtype=object), missing


def pick_unknown_classes(classes, fraction, seed):
    """A seeded share of the classes to hold out (at least one when ``fraction`` > 0)."""
    if not fraction:
        return []
    if len(classes) < 2:
        raise CalibrationError(
            f"only one class ({classes[0]!r}): open-set calibration needs at least 2 "
            "(pass unknown_fraction=0 for closed-set)")
    n = min(len(classes) - 1, max(1, int(round(fraction * len(classes)))))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(sorted(classes), n, replace=False).tolist())


def labelled_view(samples, label_field):
    """``(view of the labelled samples, their labels as strings)``, for metric learning.

    ``label_field`` must be a ``fo.Classification`` field. Samples without a
    label are left out (with a warning); every class needs at least two
    examples, because metric learning compares examples of the same class.
    """
    if not label_field:
        raise TrainingConfigError(
            "metric learning needs labels: pass label_field, the name of a Classification "
            "field (or train a 'contrastive' or 'autoencoder' encoder, which need none)")
    field = samples.get_field(label_field)
    if not _is_classification(field):
        choices = ", ".join(classification_fields(samples)) or "none in this dataset"
        what = "does not exist" if field is None else f"is a {type(field).__name__}"
        raise TrainingConfigError(
            f"label field '{label_field}' {what}; metric learning needs a Classification "
            f"field (Classification fields: {choices})")
    labelled = samples.exists(f"{label_field}.label")
    total = fo_adapter.exact_count(samples)
    missing = total - len(labelled)
    labels = [str(label) for label in labelled.values(f"{label_field}.label")]
    if missing and labels:
        warnings.warn(f"{missing} of {total} samples have no '{label_field}' label and "
                      "are left out of training")
    check_labels(labels, f"label field '{label_field}'", missing=missing)
    return labelled, labels


def check_labels(labels, what="the labels", missing=0):
    """Raises :class:`TrainingConfigError` unless there are >= 2 classes with >= 2 examples each."""
    counts = Counter(labels)
    if not counts:
        extra = f" ({missing} samples have no label)" if missing else ""
        raise TrainingConfigError(f"no labelled samples in {what}{extra}: nothing to learn from")
    if len(counts) < 2:
        raise TrainingConfigError(
            f"{what} has only one class ({next(iter(counts))!r}): metric learning needs at "
            "least two classes to tell apart")
    single = sorted(c for c, n in counts.items() if n < 2)
    if single:
        shown = ", ".join(repr(c) for c in single[:10]) + (", ..." if len(single) > 10 else "")
        raise TrainingConfigError(
            f"{len(single)} classes in {what} have a single example ({shown}): metric learning "
            "needs at least 2 examples per class; label more samples or leave those out")
    return counts
