"""2-D projections of an embeddings field, saved as a FiftyOne visualization run.

The App's Embeddings panel lists visualization runs and colours their points
by any field, so this stores a regular ``fob.compute_visualization`` run made
from our stored vectors (UMAP by default; numba compiles UMAP on first use in
a process, about 20 s).
"""

from lookalike.core import fo_adapter
from lookalike.core.errors import CurationError

METHODS = ("umap", "tsne", "pca")


def default_projection_key(embeddings_field, method):
    """The brain key of a projection unless told: ``<field>_<method>``."""
    return f"{embeddings_field}_{method}"


def visualize_embeddings(samples, embeddings_field, brain_key=None, method="umap", seed=51,
                         overwrite=True, progress=None):
    """Computes and saves a 2-D projection of ``embeddings_field``; returns the results.

    Distances are cosine (as in the similarity index) for UMAP and t-SNE.
    """
    import fiftyone.brain as fob
    from fiftyone import ViewField as F

    from lookalike.similarity.engine import as_unit_matrix
    from lookalike.similarity.field_vectors import check_embeddings_field

    if method not in METHODS:
        raise CurationError(f"unknown method {method!r}; choose from {METHODS}")
    dataset = fo_adapter.root_dataset(samples)
    check_embeddings_field(dataset, embeddings_field, CurationError)
    view = samples.match(F(embeddings_field) != None)  # noqa: E711
    if len(view) < 3:
        raise CurationError(f"{len(view)} samples have '{embeddings_field}' embeddings: a "
                         "projection needs at least 3")
    brain_key = brain_key or default_projection_key(embeddings_field, method)
    if brain_key in dataset.list_brain_runs():
        if not overwrite:
            raise CurationError(f"a brain run '{brain_key}' exists (pass overwrite=True)")
        if dataset.get_brain_info(brain_key).config.type != "visualization":
            raise CurationError(f"brain key '{brain_key}' belongs to another kind of run")
        dataset.delete_brain_run(brain_key)
    if progress:
        progress(0.05, f"projecting {len(view)} embeddings with {method}"
                 + (" (numba compiles UMAP on first use: ~20 s)" if method == "umap" else ""))
    # Checked here, so that bad vectors fail with our message, not deep in UMAP.
    as_unit_matrix(view.values(embeddings_field), f"'{embeddings_field}' embeddings")
    kwargs = {} if method == "pca" else {"seed": seed, "metric": "cosine"}
    if method == "umap":
        kwargs["n_neighbors"] = int(min(15, len(view) - 1))
    results = fob.compute_visualization(view, embeddings=embeddings_field, brain_key=brain_key,
                                        method=method, num_dims=2, progress=False, **kwargs)
    if progress:
        progress(1.0, f"saved visualization '{brain_key}'")
    return results
