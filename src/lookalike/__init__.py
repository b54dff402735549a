"""Lookalike: visual similarity search and dataset curation for FiftyOne.

One namespace for the main verbs, loaded on first use, so that ``import lookalike``
imports neither FiftyOne nor Paddle nor TensorFlow (the App re-executes plugin
modules on every request)::

    import lookalike as lk
    lk.import_images("/path/to/photos", "photos")
    lk.train_encoder(dataset, "contrastive", "my-encoder")
    lk.compute_embeddings(dataset, "my-encoder", "emb")
    lk.build_index(dataset, "emb", "emb_sim")
    view = lk.sort_by_similarity(dataset, "emb_sim", query_path="query.jpg")
    lk.calibrate_threshold(dataset, "emb_sim")
    report = lk.find_duplicates(dataset, "emb_sim")
    lk.delete_duplicates(dataset, dry_run=False); lk.undelete(dataset, last=True)

The layers, each importing only those below it (``tests/test_layers.py``):
``core`` (errors, progress, leases, the FiftyOne adapter) < ``images`` < ``encoders``
< ``embeddings`` < ``similarity`` < ``curation`` < ``demo``, ``app`` < ``cli``.
"""

from lookalike import _moved  # noqa: F401  (old module paths keep working, with a warning)

__version__ = "0.1.0"

# verb -> (module, attribute), resolved on first access.
_LAZY = {
    # images
    "import_images": ("lookalike.images.folder_import", "import_images"),
    "ImportReport": ("lookalike.images.folder_import", "ImportReport"),
    "ImageImportError": ("lookalike.images.folder_import", "ImageImportError"),
    "load_image": ("lookalike.images.decode", "load_image"),
    "UnreadableImageError": ("lookalike.images.decode", "UnreadableImageError"),
    # encoders
    "train_encoder": ("lookalike.encoders", "train_encoder"),
    "load_encoder": ("lookalike.encoders", "load_encoder"),
    "import_encoder": ("lookalike.encoders", "import_encoder"),
    "list_encoders": ("lookalike.encoders", "list_encoders"),
    "estimate_seconds": ("lookalike.encoders", "estimate_seconds"),
    # embeddings
    "compute_embeddings": ("lookalike.embeddings.compute", "compute_embeddings"),
    # similarity
    "build_index": ("lookalike.similarity", "build_index"),
    "load_index": ("lookalike.similarity", "load_index"),
    "sort_by_similarity": ("lookalike.similarity", "sort_by_similarity"),
    "nearest": ("lookalike.similarity", "nearest"),
    # curation
    "calibrate_threshold": ("lookalike.curation", "calibrate_threshold"),
    "get_calibration": ("lookalike.curation", "get_calibration"),
    "find_duplicates": ("lookalike.curation", "find_duplicates"),
    "duplicates_view": ("lookalike.curation", "duplicates_view"),
    "shots_view": ("lookalike.curation", "shots_view"),
    "outliers_view": ("lookalike.curation", "outliers_view"),
    "leaks_view": ("lookalike.curation", "leaks_view"),
    "no_match_view": ("lookalike.curation", "no_match_view"),
    "delete_duplicates": ("lookalike.curation", "delete_duplicates"),
    "undelete": ("lookalike.curation.journal", "restore"),
    "flag_outliers": ("lookalike.curation", "flag_outliers"),
    "match_images": ("lookalike.curation", "match_images"),
    "match_labels": ("lookalike.curation", "match_labels"),
    "find_leaks": ("lookalike.curation", "find_leaks"),
    "evaluate_retrieval": ("lookalike.curation", "evaluate_retrieval"),
    "visualize_embeddings": ("lookalike.curation", "visualize_embeddings"),
    "curate": ("lookalike.curation", "curate"),
    "dedupe": ("lookalike.curation", "dedupe"),
    # the demo
    "build_demo_dataset": ("lookalike.demo.dataset", "build_demo_dataset"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'lookalike' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
