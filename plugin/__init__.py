"""FiftyOne plugin of lookalike: its operators (forms and view changes only) and registration.

Each operator declares its config, form title and outputs, builds its form
from the shared inputs of :mod:`.forms` and does its work in one call into the
``lookalike`` package; the match workflow's two are in :mod:`.match_operators`.
FiftyOne re-executes this module on every App request, so it imports nothing
heavy at module level: Paddle and TensorFlow load only inside operators that
need them.
"""

import os

import fiftyone.operators.types as types
from fiftyone.operators.types import RiskLevel

from lookalike.core.errors import LookalikeError, UsageError, one_line

from . import forms
from .panel import LookalikePanel


def _one_line_errors(operator_cls):
    """``operator_cls`` whose execute shows our errors in the App as their one-line reason.

    FiftyOne sends ``str(exception)`` as the run's ``error_message`` (the App's error
    notification) and the traceback beside it; our reason is folded to one line and
    raised without the chain of exceptions under it. A run that an operator's
    ``check_run`` refuses (one estimated past the limit of immediate runs) never starts.
    """
    check_run = getattr(operator_cls, "check_run", None)  # not on the panel

    def execute(self, ctx):
        try:
            if check_run is not None:
                check_run(self, ctx)
            result = operator_cls.execute(self, ctx)
        except LookalikeError as e:
            raise Exception(one_line(e)) from None
        # The index a run used is the one every form offers first next time.
        if isinstance(ctx.params.get("brain_key"), str) and ctx.params["brain_key"] in (
                _our_keys(ctx)):
            forms.remember_index(ctx, ctx.params["brain_key"])
        return result

    return type(operator_cls.__name__, (operator_cls,),
                {"execute": execute, "__module__": operator_cls.__module__})


def _our_keys(ctx):
    import lookalike.similarity as ls

    return ls.our_brain_keys(ctx.dataset) if ctx.dataset is not None else []


class _RegisteringWithOneLineErrors:
    """FiftyOne's plugin context, registering every class through :func:`_one_line_errors`."""

    def __init__(self, plugin):
        self._plugin = plugin

    def register(self, operator_cls):
        self._plugin.register(_one_line_errors(operator_cls))


def _unreadable_image_reason(path):
    """Why ``path`` cannot be a query image (one line), or None when it can."""
    from lookalike.images.decode import open_image

    try:
        open_image(path).close()
    except LookalikeError as e:
        return one_line(e)
    return None


class ImportImages(forms.BackgroundOperator):
    # High: "Replace a dataset of that name" deletes one, with no undo.
    options = dict(name="import_images", label="Lookalike: import a folder of images",
                   description="Create a dataset from every readable image under a folder",
                   view_target=False, risk_level=RiskLevel.HIGH)
    title = "Import images"
    outputs = (("str", "dataset_name", "Dataset"), ("int", "imported", "Imported images"),
               ("table", "skipped", "Skipped files", forms.file_columns("Skipped file")))

    def form(self, inputs, ctx):
        inputs.str("directory", label="Folder of images", required=True,
                   description="A folder on the machine running FiftyOne; searched recursively")
        inputs.str("dataset_name", label="New dataset name", required=True)
        inputs.bool("recursive", label="Include sub-folders", default=True)
        inputs.bool("labels_from_folders", label="Use sub-folder names as labels", default=False)
        inputs.bool("overwrite", label="Replace a dataset of that name", default=False)
        forms.execution_notice(inputs, self, ctx)

    def execute(self, ctx):
        from lookalike.images.folder_import import import_images

        report = import_images(
            ctx.params["directory"],
            ctx.params["dataset_name"],
            recursive=ctx.params.get("recursive", True),
            overwrite=ctx.params.get("overwrite", False),
            labels_from_folders=ctx.params.get("labels_from_folders", False),
            progress=forms.progress(ctx),
        )
        msg = f"Imported {report.imported} images into '{report.dataset_name}'"
        if report.failures:
            msg += f"; skipped {len(report.failures)} unreadable files"
        ctx.ops.notify(msg, variant="success")
        return {
            "dataset_name": report.dataset_name,
            "imported": report.imported,
            "skipped": forms.file_rows(report.failures),
        }


KIND_LABELS = {
    "autoencoder": "Autoencoder (Paddle, no labels)",
    "metric": "Metric learning (TensorFlow Similarity, needs labels)",
    "contrastive": "Contrastive (TensorFlow, no labels; best for near-duplicates)",
}
# The options the form offers for each kind, each one the kind's training takes
# (learning_rate only from Python: the form leaves it at the kind's default).
KIND_OPTIONS = {
    "autoencoder": ("embedding", "width", "learning_rate"),
    "metric": ("embedding_size", "loss", "classes_per_batch", "examples_per_class_per_batch",
               "learning_rate"),
    "contrastive": ("embedding_size", "loss", "learning_rate"),
}
EMBEDDING_LABELS = {
    "gap": "gap: 256-d global average pool (any size)",
    "flatten": "flatten: the seed's full feature map (large)",
}


class TrainEncoder(forms.BackgroundOperator):
    # Immediate runs time out after 600 s and training often takes longer: Schedule first.
    options = dict(name="train_encoder", label="Lookalike: train an encoder",
                   description="Train an image encoder on this view (Schedule runs it in a "
                   "worker: `fiftyone delegated launch`)",
                   dynamic=True, default_choice_to_delegated=True, risk_level=RiskLevel.MEDIUM)
    title = "Train an encoder"
    outputs = (("str", "summary", "Encoder"), ("str", "path", "Saved to"),
               ("table", "skipped", "Skipped images", forms.file_columns("Skipped image")))

    def form(self, inputs, ctx):
        from lookalike.encoders import DEFAULT_IMAGE_SIZE, KINDS, autoencoder, contrastive, metric

        kind = forms.choice_input(inputs, ctx, "kind", forms.labelled_choices(KINDS, KIND_LABELS),
                                  "Encoder kind", default="autoencoder", view=types.RadioGroup,
                                  required=True)
        saved = forms.encoder_choices()
        if saved:
            inputs.view("saved", types.Notice(
                label="Saved encoders: " + "; ".join(desc for _, desc in saved[:8])))
        inputs.str("name", label="Encoder name", required=True, default=f"{kind}-v1",
                   description="Letters, digits, '.', '_' or '-'")
        offered = KIND_OPTIONS[kind]
        if kind == "metric":
            forms.label_field_input(
                inputs, ctx,
                missing="This dataset has no Classification field: metric learning needs labels")
        if "loss" in offered:
            losses = {"metric": metric.LOSSES, "contrastive": contrastive.LOSSES}[kind]
            forms.choice_input(inputs, ctx, "loss", [(loss, loss) for loss in losses], "Loss")
        if "classes_per_batch" in offered:
            inputs.int("classes_per_batch", label="Classes per batch", min=2, required=False)
            inputs.int("examples_per_class_per_batch", label="Examples per class per batch",
                       min=2, default=4)
        if "embedding_size" in offered:
            inputs.int("embedding_size", label="Embedding size", min=2, default=256)
        if "embedding" in offered:
            forms.choice_input(inputs, ctx, "embedding",
                               forms.labelled_choices(autoencoder.EMBEDDINGS, EMBEDDING_LABELS),
                               "Embedding")
            inputs.float("width", label="Channel width (1.0 = the seed's)", min=0.05, default=1.0)
        inputs.int("image_size", label="Input size (px)", min=8, default=DEFAULT_IMAGE_SIZE[kind])
        inputs.int("epochs", label="Epochs", min=1, default=10)
        inputs.int("batch_size", label="Batch size", min=1, required=False)
        inputs.bool("overwrite", label="Replace an encoder of that name", default=False)
        forms.execution_notice(inputs, self, ctx)
        inputs.view_target(ctx)

    def estimated_seconds(self, ctx):
        from lookalike.encoders import estimate_seconds

        params = ctx.params
        kind = params.get("kind", "autoencoder")
        view = ctx.target_view()
        if kind == "metric":  # it trains on the labelled samples only
            view = view.exists(params["label_field"]) if params.get("label_field") else view
        width = params.get("width") if "width" in KIND_OPTIONS[kind] else None
        return estimate_seconds(kind, "train", view.count(), image_size=params.get("image_size"),
                                epochs=params.get("epochs") or 10, width=width or 1.0)

    def execute(self, ctx):
        from lookalike.encoders import describe, train_encoder

        params = ctx.params
        kind = params.get("kind", "autoencoder")
        extra = {k: params[k] for k in KIND_OPTIONS[kind] if params.get(k) is not None}

        result = train_encoder(
            ctx.target_view(), kind, params["name"], image_size=params.get("image_size"),
            epochs=params.get("epochs", 10), batch_size=params.get("batch_size"),
            label_field=params.get("label_field"), overwrite=params.get("overwrite", False),
            progress=forms.progress(ctx), **extra,
        )
        ctx.ops.notify(f"Trained {describe(result.manifest)}", variant="success")
        return {
            "path": result.path,
            "summary": describe(result.manifest),
            "epochs": result.manifest["epochs"],
            "final_loss": (result.manifest.get("final_metrics") or {}).get("loss"),
            "skipped": forms.file_rows(result.failures),
        }


FORMAT_LABELS = {
    "auto": "told from the path",
    "lookalike": "a lookalike encoder folder",
    "paddle-inference": "a Paddle Inference export folder",
    "keras": "a Keras .keras file",
}


class LoadEncoder(forms.Operator):
    options = dict(name="load_encoder", label="Lookalike: load an encoder",
                   description="Check a saved encoder, or add an encoder directory to the model "
                   "store", dynamic=True, view_target=False, risk_level=RiskLevel.MEDIUM)
    title = "Load an encoder"
    outputs = (("str", "summary", "Encoder"), ("str", "path", "Directory"),
               ("str", "version", "Version"), ("str", "left_behind", "Not copied"))

    def form(self, inputs, ctx):
        from lookalike.encoders import MODEL_FORMATS
        from lookalike.encoders.foreign import NORMALIZATIONS

        saved = forms.encoder_choices()
        inputs.str("path", label="Model to add (optional)", required=False,
                   description="A lookalike encoder folder (with manifest.json), a Paddle "
                   "Inference export folder (PaddleClas, PP-ShiTu) or a Keras .keras file")
        if ctx.params.get("path"):
            kind = forms.choice_input(inputs, ctx, "format",
                                      forms.labelled_choices(MODEL_FORMATS, FORMAT_LABELS),
                                      "Format")
            foreign = kind not in ("auto", "lookalike")
            inputs.str("name", label="Store it as", required=foreign)
            if kind != "lookalike":
                inputs.int("image_size", label="Input size (pixels)", min=8, max=1024,
                           description="The square input the model expects (PP-ShiTu: 224); "
                           "a Keras model says its own")
                forms.choice_input(inputs, ctx, "normalize",
                                   [("", "the format's usual (Paddle: ImageNet, Keras: none)")]
                                   + [(n, n) for n in NORMALIZATIONS], "Input normalisation",
                                   default="")
        elif saved:
            forms.choice_input(inputs, ctx, "name", saved, "Saved encoder", required=False)
        else:
            inputs.view("none", types.Notice(label="No saved encoders yet: train one first"))
        inputs.bool("overwrite", label="Replace an encoder of that name", default=False)

    def execute(self, ctx):
        import numpy as np

        from lookalike.encoders import describe, import_model, load_encoder, read_manifest

        path, name = ctx.params.get("path"), ctx.params.get("name")
        note = ""
        if path:
            imported = import_model(path, name=name, format=ctx.params.get("format") or "auto",
                                    image_size=ctx.params.get("image_size"),
                                    normalization=ctx.params.get("normalize") or None,
                                    overwrite=ctx.params.get("overwrite", False))
            encoder, note = load_encoder(imported.path), imported.note
        elif name:
            encoder = load_encoder(name)
            encoder.embed(np.zeros((1, encoder.image_size, encoder.image_size, 3), np.uint8))
        else:
            raise UsageError("choose a saved encoder or give the path of an encoder directory")
        manifest = read_manifest(encoder.path)
        ctx.ops.notify(f"Encoder ready: {describe(manifest)}" + (f"; {note}" if note else ""),
                       variant="success")
        return {"name": manifest["name"], "path": encoder.path, "summary": describe(manifest),
                "kind": manifest["kind"], "embedding_size": manifest["embedding_size"],
                "image_size": manifest["image_size"], "version": encoder.version,
                "left_behind": note}


class ComputeEmbeddings(forms.BackgroundOperator):
    options = dict(name="compute_embeddings", label="Lookalike: compute embeddings",
                   description="Embed this view's images with a saved encoder into a vector "
                   "field", dynamic=True, risk_level=RiskLevel.MEDIUM)
    title = "Compute embeddings"
    outputs = (("str", "field", "Field"), ("int", "embedded", "Embedded"),
               ("int", "skipped_existing", "Already embedded"),
               ("table", "failures", "Unreadable images", forms.file_columns("Unreadable image")))

    def form(self, inputs, ctx):
        from lookalike.embeddings.compute import default_field_name
        from lookalike.encoders.base import variant_name

        name = forms.encoder_input(inputs, ctx)
        inputs.bool("flip_average", label="Average with the mirror image", default=False,
                    description="A left-right flipped copy then gets the same vector "
                                "(twice the time)")
        if name:
            name = variant_name(name, ctx.params.get("flip_average"))
        inputs.str("embeddings_field", label="Embeddings field", default=default_field_name(name),
                   required=True)
        inputs.int("batch_size", label="Batch size", min=1, default=64)
        inputs.bool("overwrite", label="Recompute existing embeddings", default=False)
        forms.shards_input(inputs)
        forms.execution_notice(inputs, self, ctx)
        inputs.view_target(ctx)

    def _queue_shards(self, ctx, shards):
        from lookalike.encoders.base import variant_name
        from lookalike.embeddings.shards import queue_embeddings

        if not forms.background_jobs_enabled():
            raise UsageError(f"shards need workers. {forms.NO_WORKER}")
        encoder = variant_name(ctx.params["encoder"], ctx.params.get("flip_average"))
        ids = queue_embeddings(ctx.target_view(), encoder, ctx.params.get("embeddings_field"),
                               shards=shards, batch_size=ctx.params.get("batch_size", 64),
                               overwrite=ctx.params.get("overwrite", False))
        ctx.ops.notify(f"{len(ids)} embedding jobs in the queue (shards queued already are "
                       "kept): workers run them (lookalike jobs lists them)", variant="success")
        return {"field": ctx.params.get("embeddings_field"), "embedded": 0,
                "skipped_existing": 0, "failures": [], "queued": ids}

    def estimated_seconds(self, ctx):
        from lookalike.embeddings.compute import default_field_name
        from lookalike.encoders import estimate_seconds, read_manifest, resolve_path

        name = ctx.params.get("encoder")
        if not name or int(ctx.params.get("shards") or 1) > 1:  # shards: it only queues
            return None
        manifest = read_manifest(resolve_path(name), verify_files=False)
        from lookalike.encoders.base import variant_name

        view = ctx.target_view()
        flip = bool(ctx.params.get("flip_average"))
        field = ctx.params.get("embeddings_field") or default_field_name(variant_name(name, flip))
        if not ctx.params.get("overwrite"):
            view = view.exists(field, False)  # the rest are skipped
        seconds = estimate_seconds(manifest["kind"], "embed", view.count(),
                                   image_size=manifest["image_size"],
                                   width=(manifest.get("architecture") or {}).get("width", 1.0))
        return seconds and seconds * (2 if flip else 1)  # the mirror image is embedded too

    def execute(self, ctx):
        from lookalike.embeddings.compute import compute_embeddings

        shards = int(ctx.params.get("shards") or 1)
        if shards > 1:  # fan out: one queued job per slice, for any number of workers
            return self._queue_shards(ctx, shards)
        with forms.shard_lease(ctx, "compute_embeddings"):  # one slice (lookalike.embeddings.shards)
            report = compute_embeddings(
                ctx.target_view(), ctx.params["encoder"], ctx.params.get("embeddings_field"),
                batch_size=ctx.params.get("batch_size", 64),
                overwrite=ctx.params.get("overwrite", False), progress=forms.progress(ctx),
                flip_average=bool(ctx.params.get("flip_average")),
                chunk_size=int(ctx.params.get("chunk_size") or 1024))
        ctx.ops.reload_dataset()
        ctx.ops.notify(report.summary(), variant="warning" if report.failures else "success")
        return {"field": report.field, "embedded": report.embedded,
                "skipped_existing": report.skipped_existing,
                "failures": forms.file_rows(report.failures)}


ENGINE_LABELS = {
    "exact": "exact: in memory, exact distances",
    "approximate": "approximate: faiss IVF, for hundreds of thousands of images",
    "compressed": "compressed: 8-bit codes in memory, exact re-ranking from disk, for "
                  "millions of images",
    "auto": "auto: approximate from {:,} embeddings, compressed beyond memory",
}


class BuildIndex(forms.BackgroundOperator):
    options = dict(name="build_index", label="Lookalike: build similarity index",
                   description="Index an embeddings field for the App's 'sort by similarity'",
                   dynamic=True, view_target=False, risk_level=RiskLevel.MEDIUM)
    title = "Build similarity index"

    def form(self, inputs, ctx):
        from lookalike.similarity import default_brain_key
        from lookalike.similarity.engine import AUTO_APPROXIMATE_FROM, ENGINES

        field = forms.embeddings_field_input(inputs, ctx)
        inputs.str("brain_key", label="Brain key", default=default_brain_key(field), required=True)
        engine = forms.choice_input(inputs, ctx, "engine",
                                    [(e, ENGINE_LABELS[e].format(AUTO_APPROXIMATE_FROM))
                                     for e in ENGINES],
                                    "Search engine", default="auto")
        if engine in ("approximate", "compressed"):
            inputs.int("nprobe", label="Lists searched per query (empty: tuned to 99% recall)",
                       min=1, required=False)
        forms.execution_notice(inputs, self, ctx)

    def execute(self, ctx):
        import lookalike.similarity as ls

        field = ctx.params["embeddings_field"]
        key = ctx.params.get("brain_key") or ls.default_brain_key(field)
        index = ls.build_index(ctx.dataset, field, key, engine=ctx.params.get("engine", "auto"),
                               nprobe=ctx.params.get("nprobe"))
        ctx.ops.reload_dataset()
        msg = f"Indexed {index.total_index_size} samples as '{key}'"
        if index.num_missing:
            msg += f" ({index.num_missing} without an embedding left out)"
        ctx.ops.notify(msg, variant="success")
        return {"brain_key": key, "size": index.total_index_size, "missing": index.num_missing}


DIST_FIELD = "similarity_dist"


class SortBySimilarity(forms.Operator):
    options = dict(name="sort_by_similarity", label="Lookalike: find similar images",
                   description="Show the samples most similar to the selected ones or to an "
                   "image file", dynamic=True, view_target=False, risk_level=RiskLevel.LOW)
    title = "Find similar images"

    def resolve_placement(self, ctx):
        return types.Placement(types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
                               types.Button(label="Find similar", icon=forms.ICON,
                                            prompt=True))

    def form(self, inputs, ctx):
        forms.brain_key_input(inputs, ctx, queries=ctx.selected or None)
        inputs.int("k", label="Number of results", min=1, default=25)
        n = len(ctx.selected or [])
        path = ctx.params.get("query_path")
        # Checked here, so the form says why before Execute (execution refuses it too).
        reason = _unreadable_image_reason(path) if path else None
        inputs.str("query_path", label="Query image file (optional)", required=n == 0,
                   description=(f"{n} selected sample(s) will be the query" if n else
                                "No sample selected: give the path of an image file"),
                   invalid=reason is not None, error_message=reason)
        inputs.str("dist_field", label="Distance field", default=DIST_FIELD,
                   description="Shown on each tile of the results")
        if n <= 1:
            inputs.bool("verify", label="Re-rank by local features", default=False,
                        description="The same object or scene seen again first: results "
                        "with enough geometric inliers (field 'similarity_inliers') lead")

    def execute(self, ctx):
        import lookalike.similarity as ls

        verify = bool(ctx.params.get("verify"))
        dist_field = ctx.params.get("dist_field") or DIST_FIELD
        view = ls.sort_by_similarity(
            ctx.dataset, ctx.params["brain_key"], query_ids=ctx.selected,
            query_path=ctx.params.get("query_path"), k=ctx.params.get("k", 25),
            dist_field=dist_field, verify=verify)
        ctx.ops.set_view(view)
        # The distances (and inliers) on the tiles, beside the labels already shown.
        shown = ["tags", dist_field] + (["similarity_inliers"] if verify else [])
        ctx.ops.set_active_fields(shown + forms.label_fields(ctx.dataset))
        paths = view.values("filepath")
        dists = view.values(dist_field)
        inliers = view.values("similarity_inliers") if verify else [None] * len(paths)
        rows = [{"path": p, "distance": d, "inliers": i}
                for p, d, i in zip(paths, dists, inliers)]
        return {"count": len(view), "results": rows}


CALIBRATION_LABELS = {
    "f1": "f1: the best F1 (largest such distance)",
    "precision": "precision: reach a precision target",
    "isolated": "isolated: only samples whose nearest neighbour is unusually far (no labels)",
    "percentile": "percentile of nearest-neighbour distances (no labels)",
}


class CalibrateThreshold(forms.BackgroundOperator):
    options = dict(name="calibrate_threshold", label="Lookalike: calibrate distance thresholds",
                   description="Match and duplicate thresholds from labels (TF Similarity's "
                   "procedure) or from the nearest-neighbour distances; saved with the index",
                   dynamic=True, risk_level=RiskLevel.MEDIUM)
    title = "Calibrate thresholds"
    outputs = (("float", "threshold", "No-match threshold"),
               ("float", "duplicate_threshold", "Duplicate threshold"), ("str", "note", "Method"),
               ("str", "duplicate_rule", "Duplicate threshold from"),
               ("bool", "duplicate_separable", "Duplicate threshold separates copies"),
               ("str", "duplicate_warning", "Warning"),
               ("str", "not_invariant", "Encoder not invariant to"),
               ("int", "min_inliers", "Inliers that verify a pair"),
               ("str", "inlier_rule", "Inlier threshold from"),
               ("float", "at_precision", "Precision at the threshold"),
               ("float", "at_recall", "Recall at the threshold"),
               ("float", "at_f1", "F1 at the threshold"))

    def form(self, inputs, ctx):
        from lookalike.curation.calibrate import LABEL_FREE_METHODS, LABEL_METHODS
        from lookalike.curation.isolation import DEFAULT_K

        forms.brain_key_input(inputs, ctx)
        labelled = bool(forms.label_field_input(inputs, ctx, none_choice="(none: label-free)"))
        methods = forms.labelled_choices(LABEL_METHODS if labelled else LABEL_FREE_METHODS,
                                         CALIBRATION_LABELS)
        method = forms.choice_input(inputs, ctx, "method", methods, "Method")
        if method == "precision":
            inputs.float("target", label="Precision target", min=0.0, max=1.0, default=0.95)
        elif method == "isolated":
            inputs.float("target", label="Robust standard deviations (k)", min=0.5, max=10.0,
                         default=DEFAULT_K,
                         description="Samples whose nearest neighbour is farther than k robust "
                         "standard deviations above the typical distance are no-match outliers "
                         "(none where nothing stands out)")
        elif method == "percentile":
            inputs.float("target", label="Outlier percentile", min=1.0, max=99.9, default=95.0,
                         description="Samples farther from their nearest neighbour than this "
                         "percentile are no-match outliers (95: the most isolated 5%)")
        if labelled:
            inputs.float("unknown_fraction", label="Share of classes held out as unknown",
                         min=0.0, max=0.9, default=0.2,
                         description="Open set: rejecting unknown classes counts (0: closed set)")
        forms.execution_notice(inputs, self, ctx)
        forms.dataset_target(inputs, ctx, "Calibrate")

    def execute(self, ctx):
        import lookalike.curation as lc

        calibration = lc.calibrate_threshold(
            ctx.target_view(), ctx.params["brain_key"],
            label_field=ctx.params.get("label_field") or None,
            method=ctx.params.get("method"), target=ctx.params.get("target"),
            unknown_fraction=ctx.params.get("unknown_fraction", 0.2),
            progress=forms.progress(ctx))
        message = (f"Index '{calibration.brain_key}': no-match threshold "
                   f"{calibration.threshold:.4f} ({calibration.method}), duplicate threshold "
                   f"{calibration.duplicate_threshold:.4f}")
        if calibration.duplicate_warning:
            message += f". Warning: {calibration.duplicate_warning}"
        ctx.ops.notify(message, variant="warning" if calibration.duplicate_warning else "success")
        out = {k: getattr(calibration, k) for k in (
            "brain_key", "method", "threshold", "duplicate_threshold", "duplicate_rule", "note",
            "duplicate_separable", "duplicate_warning", "not_invariant", "excluded_edits",
            "candidate_threshold", "min_inliers", "inlier_rule", "num_queries",
            "num_missing_labels", "unknown_classes")}
        out.update({f"at_{k}": v for k, v in (calibration.metric_values or {}).items()
                    if k != "thresholds"})
        return forms.rounded(out)


class FlagOutliers(forms.BackgroundOperator):
    options = dict(name="flag_outliers", label="Lookalike: flag no-match outliers",
                   description="Tag the samples farther than the threshold from every other "
                   "sample and show them, most isolated first", dynamic=True,
                   risk_level=RiskLevel.MEDIUM)
    title = "Flag no-match outliers"
    outputs = (("int", "num_outliers", "Outliers"), ("int", "num_searched", "Samples checked"),
               ("float", "threshold", "Threshold"))

    def form(self, inputs, ctx):
        from lookalike.curation.outliers import DEFAULT_TAG

        key = forms.brain_key_input(inputs, ctx)
        forms.threshold_input(inputs, ctx, key, "threshold")
        inputs.str("tag", label="Tag", default=DEFAULT_TAG)
        forms.execution_notice(inputs, self, ctx)
        forms.dataset_target(inputs, ctx, "Flag outliers in")

    def execute(self, ctx):
        import lookalike.curation as lc

        from lookalike.curation.outliers import DEFAULT_TAG

        view = ctx.target_view()
        tag = ctx.params.get("tag") or DEFAULT_TAG
        report = lc.flag_outliers(view, ctx.params["brain_key"],
                                  threshold=ctx.params.get("threshold"), tag=tag,
                                  progress=forms.progress(ctx))
        if not ctx.delegated:
            forms.show_outliers(ctx, lc.outliers_view(ctx.dataset))
        ctx.ops.notify(f"{report.summary()} (tagged '{tag}')", variant="success")
        return forms.rounded(report.to_record())


KEEP_LABELS = {
    "first": "first in the view",
    "largest": "largest (pixels)",
    "sharpest": "sharpest (variance of the Laplacian)",
}


class FindDuplicates(forms.BackgroundOperator):
    options = dict(name="find_duplicates", label="Lookalike: find near-duplicates",
                   description="Group near-duplicate and byte-identical images, tag all but one "
                   "per group", dynamic=True, risk_level=RiskLevel.MEDIUM)
    title = "Find near-duplicates"
    outputs = (("int", "num_groups", "Groups"), ("int", "num_duplicates", "Tagged 'duplicate'"),
               ("int", "num_exact_pairs", "Byte-identical pairs"),
               ("int", "num_verified_pairs", "Pairs added by verification"),
               ("float", "threshold", "Threshold"),
               ("table", "groups", "Groups", (("group", "Group"), ("size", "Images"),
                                              ("kept", "Kept"))))

    def form(self, inputs, ctx):
        from lookalike.curation.keep import KEEP_POLICIES

        key = forms.brain_key_input(inputs, ctx, none_choice="(none: byte-identical files only)")
        if key:
            forms.threshold_input(inputs, ctx, key, "duplicate_threshold")
        forms.choice_input(inputs, ctx, "keep", forms.labelled_choices(KEEP_POLICIES, KEEP_LABELS),
                           "Keep in each group", default="first")
        if key:
            forms.choice_input(inputs, ctx, "verify", forms.verify_choices(),
                               "Geometric verification", default="auto", description=(
                                   "Local features (SIFT) confirm the same object or scene "
                                   "seen again, from another viewpoint too; the inliers go to "
                                   "'dup_inliers' and each member's reason to 'dup_reason'"))
        forms.execution_notice(inputs, self, ctx)
        forms.dataset_target(inputs, ctx, "Search")

    def execute(self, ctx):
        import lookalike.curation as lc

        verify = forms.verify_param(ctx)
        report = lc.find_duplicates(ctx.target_view(), ctx.params.get("brain_key") or None,
                                    threshold=ctx.params.get("threshold"),
                                    keep=ctx.params.get("keep", "first"), verify=verify,
                                    progress=forms.progress(ctx))
        if not ctx.delegated:
            forms.show_duplicates(ctx, lc.duplicates_view(ctx.dataset))
        ctx.ops.notify(report.summary(), variant="warning" if report.warning else "success")
        out = forms.rounded(report.to_record())
        out["groups"] = [{"group": n, "size": len(g),
                          "kept": os.path.basename(report.files[g[0]])}
                         for n, g in enumerate(report.groups[:200], 1)]
        return out


class DeleteDuplicates(forms.Operator):
    options = dict(name="delete_duplicates", label="Lookalike: delete tagged duplicates",
                   description="Delete the tagged members of the published duplicate groups "
                   "whose kept sample still exists (not the files; undo with 'undelete')",
                   dynamic=True, risk_level=RiskLevel.HIGH)
    title = "Delete duplicates"

    def form(self, inputs, ctx):
        from lookalike.curation.deletion import deletion_plan
        from lookalike.curation.duplicates import DEFAULT_TAG

        tag = ctx.params.get("tag") or DEFAULT_TAG
        inputs.str("tag", label="Tag", default=DEFAULT_TAG)
        if not ctx.dataset:
            raise forms.FormEnds
        try:
            # The same plan the deletion executes: the form's count is what goes.
            plan = deletion_plan(ctx.dataset, tag=tag)
            plan.check(ctx.dataset.name)
        except LookalikeError as e:
            forms.end_form(inputs, "refused", types.Error(label="Nothing can be deleted now",
                                                          description=str(e)))
        left = (f" {plan.unexplained} samples tagged '{tag}' that no published group explains "
                "are left alone." if plan.unexplained else "")
        if plan.count == 0:
            forms.end_form(inputs, "nothing", types.Notice(
                label=f"No member of a published duplicate group is tagged '{tag}'.{left}"))
        inputs.view("warning", types.Warning(
            label=f"This deletes {plan.count} samples tagged '{tag}' from {plan.num_groups} "
            "groups (each keeps its kept sample)",
            description="Their image files stay on disk. The deleted samples are journaled "
            f"first: 'Lookalike: undelete samples' restores them. Calibrations made with "
            f"them become stale: recalibrate after deleting (undelete makes them fresh "
            f"again).{left}"))
        # Execute stays disabled until the box is ticked (an invalid form cannot run).
        ticked = bool(ctx.params.get("confirm"))
        inputs.bool("confirm", label=f"Yes, delete {plan.count} samples", default=False,
                    invalid=not ticked,
                    error_message=None if ticked else
                    f"tick 'Yes, delete {plan.count} samples' to delete them")

    def execute(self, ctx):
        import lookalike.curation as lc
        from lookalike.curation.deletion import delete_planned
        from lookalike.curation.duplicates import DEFAULT_TAG

        tag = ctx.params.get("tag") or DEFAULT_TAG
        if not ctx.params.get("confirm"):  # the form refuses it first; a direct call too
            count = lc.delete_duplicates(ctx.dataset, tag=tag, dry_run=True).count
            raise UsageError(f"nothing deleted: {count} samples would be; confirm=True deletes them")
        result = delete_planned(ctx.dataset, tag=tag)
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"Deleted {result.count} samples tagged '{tag}'"
                       + (" (undo: 'Lookalike: undelete samples')" if result.journal else ""),
                       variant="success")
        return {"deleted": result.count, "would_delete": result.count}


class Undelete(forms.Operator):
    options = dict(name="undelete", label="Lookalike: undelete samples",
                   description="Restore the samples of a deletion journal, with their ids, "
                   "fields and tags", dynamic=True, risk_level=RiskLevel.MEDIUM)
    title = "Undelete samples"
    outputs = (("int", "restored", "Restored"), ("int", "already_there", "Still there"),
               ("str", "journal", "Journal"))

    def form(self, inputs, ctx):
        from lookalike.curation import journal

        entries = [e for e in journal.list_journals(ctx.dataset)
                   if e.restored_at is None] if ctx.dataset else []
        if not entries:
            forms.end_form(inputs, "nothing",
                           types.Notice(label="No deletion journal left to restore"))
        forms.choice_input(inputs, ctx, "journal",
                           [(e.path, e.label())
                            for e in entries], "Deletion to undo", required=True)

    def execute(self, ctx):
        from lookalike.curation import journal

        result = journal.restore(ctx.dataset, path=ctx.params["journal"])
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"Restored {result.restored} samples"
                       + (f" ({result.already_there} were still there)"
                          if result.already_there else ""), variant="success")
        return {"restored": result.restored, "already_there": result.already_there,
                "journal": result.path}


class EvaluateRetrieval(forms.BackgroundOperator):
    # Medium: the figures are saved with the index (the panel shows them).
    options = dict(name="evaluate_retrieval", label="Lookalike: evaluate retrieval",
                   description="recall@1, precision@k, mAP@k (leave-one-out) and the match / "
                   "no-match confusion matrix against a label field", dynamic=True,
                   risk_level=RiskLevel.MEDIUM)
    title = "Evaluate retrieval"
    outputs = (("float", "recall_at_1", "recall@1"), ("float", "precision_at_k", "precision@k"),
               ("float", "map_at_k", "mAP@k"),
               ("float", "match_accuracy", "Match / no-match accuracy"))

    def form(self, inputs, ctx):
        forms.brain_key_input(inputs, ctx)
        forms.label_field_input(inputs, ctx, missing="No Classification field to evaluate against")
        inputs.int("k", label="k", min=1, default=10)
        forms.execution_notice(inputs, self, ctx)
        inputs.view_target(ctx)

    def execute(self, ctx):
        import lookalike.curation as lc

        ev = lc.evaluate_retrieval(ctx.target_view(), ctx.params["brain_key"],
                                   ctx.params["label_field"], k=ctx.params.get("k", 10),
                                   progress=forms.progress(ctx))
        ctx.ops.notify(f"recall@1 {ev.recall_at_1:.3f}, mAP@{ev.k} {ev.map_at_k:.3f}",
                       variant="success")
        return {k: getattr(ev, k) for k in ("recall_at_1", "precision_at_k", "map_at_k", "k",
                                            "num_queries", "match_accuracy", "confusion")}


PROJECTION_LABELS = {"umap": "UMAP (first use compiles: ~20 s)", "tsne": "t-SNE", "pca": "PCA"}


class VisualizeEmbeddings(forms.BackgroundOperator):
    options = dict(name="visualize_embeddings", label="Lookalike: 2-D projection of embeddings",
                   description="A UMAP projection for the App's Embeddings panel", dynamic=True,
                   risk_level=RiskLevel.MEDIUM)
    title = "Visualize embeddings"

    def form(self, inputs, ctx):
        from lookalike.curation.projection import METHODS, default_projection_key

        field = forms.embeddings_field_input(inputs, ctx)
        method = forms.choice_input(inputs, ctx, "method",
                                    forms.labelled_choices(METHODS, PROJECTION_LABELS), "Method",
                                    default="umap")
        inputs.str("brain_key", label="Brain key", default=default_projection_key(field, method),
                   required=True)
        forms.execution_notice(inputs, self, ctx)

    def execute(self, ctx):
        import lookalike.curation as lc

        results = lc.visualize_embeddings(ctx.dataset, ctx.params["embeddings_field"],
                                          brain_key=ctx.params.get("brain_key"),
                                          method=ctx.params.get("method", "umap"),
                                          progress=forms.progress(ctx))
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"Saved '{results.key}': open the Embeddings panel", variant="success")
        return {"brain_key": results.key, "points": len(results.points)}


def register(p):
    # The App and workers that load this plugin offer backend="lookalike" to
    # fiftyone-brain (its forms, compute_similarity) with no brain config.
    from lookalike.similarity.registration import register as register_brain_backend

    register_brain_backend()
    p = _RegisteringWithOneLineErrors(p)
    p.register(ImportImages)
    p.register(TrainEncoder)
    p.register(LoadEncoder)
    p.register(ComputeEmbeddings)
    p.register(BuildIndex)
    p.register(SortBySimilarity)
    p.register(CalibrateThreshold)
    p.register(FlagOutliers)
    p.register(FindDuplicates)
    p.register(DeleteDuplicates)
    p.register(Undelete)
    p.register(EvaluateRetrieval)
    p.register(VisualizeEmbeddings)
    from .match_operators import MatchImages, MatchLabels

    p.register(MatchLabels)
    p.register(MatchImages)
    from .leak_operators import FindLeaks

    p.register(FindLeaks)
    from .feature_operators import ExtractFeatures

    p.register(ExtractFeatures)
    from .dedupe_operators import CurateDataset

    p.register(CurateDataset)
    p.register(LookalikePanel)
