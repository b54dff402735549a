"""FiftyOne plugin of lookalike: forms, progress and view changes only.

FiftyOne re-executes this module on every App request, so it imports nothing
heavy at module level: the work lives in the ``lookalike`` package, and Paddle
and TensorFlow load only inside operators that need them.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from lookalike.errors import LookalikeError, one_line

from .panel import LookalikePanel


def _one_line_errors(operator_cls):
    """``operator_cls`` whose execute shows our errors in the App as their one-line reason.

    FiftyOne sends ``str(exception)`` as the run's ``error_message`` (the App's error
    notification) and the traceback beside it; our reason is folded to one line and
    raised without the chain of exceptions under it.
    """
    def execute(self, ctx):
        try:
            return operator_cls.execute(self, ctx)
        except LookalikeError as e:
            raise Exception(one_line(e)) from None

    return type(operator_cls.__name__, (operator_cls,),
                {"execute": execute, "__module__": operator_cls.__module__})


class _RegisteringWithOneLineErrors:
    """FiftyOne's plugin context, registering every class through :func:`_one_line_errors`."""

    def __init__(self, plugin):
        self._plugin = plugin

    def register(self, operator_cls):
        self._plugin.register(_one_line_errors(operator_cls))


def _unreadable_image_reason(path):
    """Why ``path`` cannot be a query image (one line), or None when it can."""
    from lookalike.images import open_image

    try:
        open_image(path).close()
    except LookalikeError as e:
        return one_line(e)
    return None


def _file_table(outputs, name, label, column):
    """A table of files that were skipped, with the reason for each."""
    table = types.TableView()
    table.add_column("path", label=column)
    table.add_column("reason", label="Reason")
    outputs.list(name, types.Object(), label=label, view=table)


def _background_jobs_enabled():
    """Whether the App may queue jobs for `fiftyone delegated launch` (no orchestrator set up)."""
    import fiftyone as fo

    return bool(fo.config.allow_legacy_orchestrators)


def _delegate_input(inputs, label, recommended=False):
    if _background_jobs_enabled():
        inputs.bool("delegate", label=label, default=recommended)
    else:
        inputs.view("no_worker", types.Notice(
            label="Runs in the App server. To queue long jobs for a worker instead, start the "
            "App with FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true and run `fiftyone delegated "
            "launch` (`make app` and `make worker` do both)"))


def _delegated(ctx, recommended=False):
    return _background_jobs_enabled() and bool(ctx.params.get("delegate", recommended))


ICON = "/assets/icon.svg"


def _config(background=False, **kwargs):
    """Our operators' config: one icon; ``background`` ones may also run delegated."""
    if background:
        kwargs.update(allow_immediate_execution=True, allow_delegated_execution=True)
    return foo.OperatorConfig(icon=ICON, **kwargs)


class _BackgroundOperator(foo.Operator):
    """A long job: delegated to a worker when the user asks for it and one can take it."""

    delegate_by_default = False

    def resolve_delegation(self, ctx):
        return _delegated(ctx, recommended=self.delegate_by_default)


class ImportImages(foo.Operator):
    @property
    def config(self):
        return _config(
            name="import_images",
            label="Lookalike: import a folder of images",
            description="Create a dataset from every readable image under a folder",
            background=True,
            view_target=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str(
            "directory",
            label="Folder of images",
            description="A folder on the machine running FiftyOne; searched recursively",
            required=True,
        )
        inputs.str("dataset_name", label="New dataset name", required=True)
        inputs.bool("recursive", label="Include sub-folders", default=True)
        inputs.bool("labels_from_folders", label="Use sub-folder names as labels", default=False)
        inputs.bool("overwrite", label="Replace a dataset of that name", default=False)
        return types.Property(inputs, view=types.View(label="Import images"))

    def execute(self, ctx):
        from lookalike.importer import import_images

        def progress(done, total):
            ctx.set_progress(progress=done / max(total, 1), label=f"checked {done}/{total} files")

        report = import_images(
            ctx.params["directory"],
            ctx.params["dataset_name"],
            recursive=ctx.params.get("recursive", True),
            overwrite=ctx.params.get("overwrite", False),
            labels_from_folders=ctx.params.get("labels_from_folders", False),
            progress=progress,
        )
        msg = f"Imported {report.imported} images into '{report.dataset_name}'"
        if report.skipped:
            msg += f"; skipped {len(report.skipped)} unreadable files"
        ctx.ops.notify(msg, variant="success")
        return {
            "dataset_name": report.dataset_name,
            "imported": report.imported,
            "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped],
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("dataset_name", label="Dataset")
        outputs.int("imported", label="Imported images")
        _file_table(outputs, "skipped", "Skipped files", "Skipped file")
        return types.Property(outputs)


KIND_LABELS = {
    "autoencoder": "Autoencoder (Paddle, no labels)",
    "metric": "Metric learning (TensorFlow Similarity, needs labels)",
    "contrastive": "Contrastive (TensorFlow, no labels; best for near-duplicates)",
}
LOSSES = ("multisimilarity", "triplet", "circle", "pn")


def _classification_fields(dataset):
    import fiftyone as fo

    schema = dataset.get_field_schema(embedded_doc_type=fo.Classification)
    return sorted(schema)


def _saved_encoders():
    from lookalike.encoders import describe, list_encoders

    return [(m["name"], describe(m)) for m in list_encoders()]


class TrainEncoder(_BackgroundOperator):
    # Immediate operators time out after 600 s; training usually takes longer.
    delegate_by_default = True

    @property
    def config(self):
        return _config(
            name="train_encoder",
            label="Lookalike: train an encoder",
            description="Train an image encoder on this view (runs delegated by default: "
            "start a worker with `fiftyone delegated launch`)",
            dynamic=True,
            background=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        kinds = types.RadioGroup()
        for kind, label in KIND_LABELS.items():
            kinds.add_choice(kind, label=label)
        inputs.enum("kind", kinds.values(), label="Encoder kind", required=True,
                    default="autoencoder", view=kinds)
        kind = ctx.params.get("kind") or "autoencoder"
        saved = _saved_encoders()
        if saved:
            inputs.view("saved", types.Notice(
                label="Saved encoders: " + "; ".join(desc for _, desc in saved[:8])))
        inputs.str("name", label="Encoder name", required=True, default=f"{kind}-v1",
                   description="Letters, digits, '.', '_' or '-'")
        if kind == "metric":
            fields = _classification_fields(ctx.dataset) if ctx.dataset else []
            if not fields:
                inputs.view("no_labels", types.Warning(
                    label="This dataset has no Classification field: metric learning needs labels"))
            dd = types.Dropdown()
            for f in fields:
                dd.add_choice(f, label=f)
            inputs.enum("label_field", dd.values(), label="Label field", required=True,
                        default=fields[0] if fields else None, view=dd)
            losses = types.Dropdown()
            for loss in LOSSES:
                losses.add_choice(loss, label=loss)
            inputs.enum("loss", losses.values(), label="Loss", default="multisimilarity",
                        view=losses)
            inputs.int("classes_per_batch", label="Classes per batch", min=2, required=False)
            inputs.int("examples_per_class_per_batch", label="Examples per class per batch",
                       min=2, default=4)
        if kind in ("metric", "contrastive"):
            inputs.int("embedding_size", label="Embedding size", min=2, default=256)
        if kind == "autoencoder":
            emb = types.Dropdown()
            emb.add_choice("gap", label="gap: 256-d global average pool (any size)")
            emb.add_choice("flatten", label="flatten: the seed's full feature map (large)")
            inputs.enum("embedding", emb.values(), label="Embedding", default="gap", view=emb)
            inputs.float("width", label="Channel width (1.0 = the seed's)", min=0.05, default=1.0)
        default_size = {"autoencoder": 64, "metric": 32, "contrastive": 32}[kind]
        inputs.int("image_size", label="Input size (px)", min=8, default=default_size)
        inputs.int("epochs", label="Epochs", min=1, default=10)
        inputs.int("batch_size", label="Batch size", min=1, required=False)
        inputs.bool("overwrite", label="Replace an encoder of that name", default=False)
        _delegate_input(inputs, "Run delegated (recommended)", recommended=True)
        inputs.view_target(ctx)
        return types.Property(inputs, view=types.View(label="Train an encoder"))

    def execute(self, ctx):
        from lookalike.encoders import describe, train_encoder

        params = ctx.params
        kind = params.get("kind", "autoencoder")
        keys = {
            "autoencoder": ("embedding", "width", "learning_rate"),
            "metric": ("embedding_size", "loss", "classes_per_batch",
                       "examples_per_class_per_batch", "learning_rate"),
            "contrastive": ("embedding_size", "learning_rate"),
        }[kind]
        extra = {k: params[k] for k in keys if params.get(k) is not None}

        def on_epoch(epoch, epochs, metrics):
            ctx.set_progress(progress=epoch / epochs, label=(
                f"epoch {epoch}/{epochs}: loss {metrics['loss']:.4f}, "
                f"{metrics.get('images_per_s', 0):.0f} images/s"))

        def on_load(done, total):
            ctx.set_progress(progress=0.0, label=f"loading images {done}/{total}")

        result = train_encoder(
            ctx.target_view(), kind, params["name"], image_size=params.get("image_size"),
            epochs=params.get("epochs", 10), batch_size=params.get("batch_size"),
            label_field=params.get("label_field"), overwrite=params.get("overwrite", False),
            progress=on_epoch, load_progress=on_load, **extra,
        )
        ctx.ops.notify(f"Trained {describe(result.manifest)}", variant="success")
        return {
            "path": result.path,
            "summary": describe(result.manifest),
            "epochs": result.manifest["epochs"],
            "final_loss": (result.manifest.get("final_metrics") or {}).get("loss"),
            "skipped": [{"path": f.path, "reason": f.reason} for f in result.failures],
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Encoder")
        outputs.str("path", label="Saved to")
        _file_table(outputs, "skipped", "Skipped images", "Skipped image")
        return types.Property(outputs)


class LoadEncoder(foo.Operator):
    @property
    def config(self):
        return _config(
            name="load_encoder",
            label="Lookalike: load an encoder",
            description="Check a saved encoder, or add an encoder directory to the model store",
            dynamic=True,
            view_target=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        saved = _saved_encoders()
        dd = types.Dropdown()
        for name, desc in saved:
            dd.add_choice(name, label=desc)
        inputs.str("path", label="Encoder directory to add (optional)", required=False,
                   description="A directory written by lookalike (it holds manifest.json)")
        if ctx.params.get("path"):
            inputs.str("name", label="Store it as", required=False)
        elif saved:
            inputs.enum("name", dd.values(), label="Saved encoder", required=False,
                        default=saved[0][0], view=dd)
        else:
            inputs.view("none", types.Notice(label="No saved encoders yet: train one first"))
        inputs.bool("overwrite", label="Replace an encoder of that name", default=False)
        return types.Property(inputs, view=types.View(label="Load an encoder"))

    def execute(self, ctx):
        import numpy as np

        from lookalike.encoders import describe, import_encoder, load_encoder, read_manifest

        path, name = ctx.params.get("path"), ctx.params.get("name")
        note = ""
        if path:
            imported = import_encoder(path, name=name, overwrite=ctx.params.get("overwrite", False))
            encoder, note = load_encoder(imported.path), imported.note
        elif name:
            encoder = load_encoder(name)
            encoder.embed(np.zeros((1, encoder.image_size, encoder.image_size, 3), np.uint8))
        else:
            raise ValueError("choose a saved encoder or give the path of an encoder directory")
        manifest = read_manifest(encoder.path)
        ctx.ops.notify(f"Encoder ready: {describe(manifest)}" + (f"; {note}" if note else ""),
                       variant="success")
        return {"name": manifest["name"], "path": encoder.path, "summary": describe(manifest),
                "kind": manifest["kind"], "embedding_size": manifest["embedding_size"],
                "image_size": manifest["image_size"], "version": encoder.version,
                "left_behind": note}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Encoder")
        outputs.str("path", label="Directory")
        outputs.str("version", label="Version")
        outputs.str("left_behind", label="Not copied")
        return types.Property(outputs)


def _embedding_fields(dataset):
    from lookalike.embeddings import field_records

    # From the database: the App's dataset object misses fields a job embedded since.
    return sorted(field_records(dataset)) if dataset else []


def _dropdown(choices):
    dd = types.Dropdown()
    for value, label in choices:
        dd.add_choice(value, label=label)
    return dd


class ComputeEmbeddings(_BackgroundOperator):
    @property
    def config(self):
        return _config(
            name="compute_embeddings",
            label="Lookalike: compute embeddings",
            description="Embed this view's images with a saved encoder into a vector field",
            dynamic=True,
            background=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        saved = _saved_encoders()
        if not saved:
            inputs.view("none", types.Warning(label="No saved encoders: train one first"))
            return types.Property(inputs)
        dd = _dropdown(saved)
        inputs.enum("encoder", dd.values(), label="Encoder", required=True,
                    default=saved[0][0], view=dd)
        name = ctx.params.get("encoder") or saved[0][0]
        default_field = "emb_" + name.replace("-", "_").replace(".", "_")
        inputs.str("embeddings_field", label="Embeddings field", default=default_field,
                   required=True)
        inputs.int("batch_size", label="Batch size", min=1, default=64)
        inputs.bool("overwrite", label="Recompute existing embeddings", default=False)
        _delegate_input(inputs, "Run delegated (for large views)")
        inputs.view_target(ctx)
        return types.Property(inputs, view=types.View(label="Compute embeddings"))

    def execute(self, ctx):
        from lookalike.embeddings import compute_embeddings

        def progress(done, total):
            ctx.set_progress(progress=done / max(total, 1), label=f"embedded {done}/{total}")

        report = compute_embeddings(
            ctx.target_view(), ctx.params["encoder"], ctx.params.get("embeddings_field"),
            batch_size=ctx.params.get("batch_size", 64),
            overwrite=ctx.params.get("overwrite", False), progress=progress)
        ctx.ops.reload_dataset()
        msg = (f"Embedded {report.embedded} images into '{report.field}'"
               f" ({report.skipped_existing} already done, {len(report.failures)} unreadable)")
        ctx.ops.notify(msg, variant="warning" if report.failures else "success")
        return {"field": report.field, "embedded": report.embedded,
                "skipped_existing": report.skipped_existing,
                "failures": [{"path": p, "reason": r} for _, p, r in report.failures]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("field", label="Field")
        outputs.int("embedded", label="Embedded")
        outputs.int("skipped_existing", label="Already embedded")
        _file_table(outputs, "failures", "Unreadable images", "Unreadable image")
        return types.Property(outputs)


class BuildIndex(foo.Operator):
    @property
    def config(self):
        return _config(
            name="build_index",
            label="Lookalike: build similarity index",
            description="Index an embeddings field for the App's 'sort by similarity'",
            dynamic=True,
            view_target=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = _embedding_fields(ctx.dataset)
        if not fields:
            inputs.view("none", types.Warning(label="No lookalike embeddings yet: compute some first"))
            return types.Property(inputs)
        dd = _dropdown([(f, f) for f in fields])
        inputs.enum("embeddings_field", dd.values(), label="Embeddings field", required=True,
                    default=fields[0], view=dd)
        field = ctx.params.get("embeddings_field") or fields[0]
        inputs.str("brain_key", label="Brain key", default=f"{field}_sim", required=True)
        backends = _dropdown([
            ("exact", "exact: in memory, exact distances"),
            ("approximate", "approximate: faiss IVF, for hundreds of thousands of images"),
            ("auto", "auto: approximate from 200,000 embeddings"),
        ])
        inputs.enum("backend", backends.values(), label="Backend", default="auto", view=backends)
        if ctx.params.get("backend") == "approximate":
            inputs.int("nprobe", label="Lists searched per query (empty: tuned to 98% recall)",
                       min=1, required=False)
        return types.Property(inputs, view=types.View(label="Build similarity index"))

    def execute(self, ctx):
        import lookalike.similarity as ls

        field = ctx.params["embeddings_field"]
        key = ctx.params.get("brain_key") or f"{field}_sim"
        index = ls.build_index(ctx.dataset, field, key, engine=ctx.params.get("backend", "auto"),
                               nprobe=ctx.params.get("nprobe"))
        ctx.ops.reload_dataset()
        msg = f"Indexed {index.total_index_size} samples as '{key}'"
        if index.num_missing:
            msg += f" ({index.num_missing} without an embedding left out)"
        ctx.ops.notify(msg, variant="success")
        return {"brain_key": key, "size": index.total_index_size, "missing": index.num_missing}


class SortBySimilarity(foo.Operator):
    @property
    def config(self):
        return _config(
            name="sort_by_similarity",
            label="Lookalike: find similar images",
            description="Show the samples most similar to the selected ones or to an image file",
            dynamic=True,
            view_target=False,
        )

    def resolve_placement(self, ctx):
        return types.Placement(types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
                               types.Button(label="Find similar", icon=ICON,
                                            prompt=True))

    def resolve_input(self, ctx):
        import lookalike.similarity as ls

        inputs = types.Object()
        keys = ls.our_brain_keys(ctx.dataset) if ctx.dataset else []
        if not keys:
            inputs.view("none", types.Warning(label="No lookalike index yet: build one first"))
            return types.Property(inputs)
        dd = _dropdown([(k, k) for k in keys])
        inputs.enum("brain_key", dd.values(), label="Index", required=True, default=keys[0],
                    view=dd)
        inputs.int("k", label="Number of results", min=1, default=25)
        n = len(ctx.selected or [])
        path = ctx.params.get("query_path")
        # Checked here, so the form says why before Execute (execution refuses it too).
        reason = _unreadable_image_reason(path) if path else None
        inputs.str("query_path", label="Query image file (optional)", required=n == 0,
                   description=(f"{n} selected sample(s) will be the query" if n else
                                "No sample selected: give the path of an image file"),
                   invalid=reason is not None, error_message=reason)
        inputs.str("dist_field", label="Distance field", default="similarity_dist")
        return types.Property(inputs, view=types.View(label="Find similar images"))

    def execute(self, ctx):
        import lookalike.similarity as ls

        view = ls.sort_by_similarity(
            ctx.dataset, ctx.params["brain_key"], query_ids=ctx.selected,
            query_path=ctx.params.get("query_path"), k=ctx.params.get("k", 25),
            dist_field=ctx.params.get("dist_field") or None)
        ctx.ops.set_view(view)
        dist_field = ctx.params.get("dist_field")
        top = view.values(["filepath", dist_field]) if dist_field else [view.values("filepath")]
        rows = [{"path": p, "distance": (d if dist_field else None)}
                for p, d in zip(top[0], top[1] if dist_field else [None] * len(top[0]))]
        return {"count": len(view), "results": rows}


def _our_run_input(ctx, inputs):
    """A dropdown of our similarity runs; returns the chosen key (None: none exists yet)."""
    import lookalike.similarity as ls

    keys = ls.our_brain_keys(ctx.dataset) if ctx.dataset else []
    if not keys:
        inputs.view("none", types.Warning(
            label="No lookalike index yet: compute embeddings and build an index first"))
        return None
    dd = _dropdown([(k, k) for k in keys])
    inputs.enum("brain_key", dd.values(), label="Similarity index", required=True,
                default=keys[0], view=dd)
    return ctx.params.get("brain_key") or keys[0]


def _calibration_line(ctx, brain_key, which):
    """What the saved calibration of ``brain_key`` gives for ``which``, for form descriptions."""
    import lookalike.curation as lc

    try:
        record = lc.get_calibration(ctx.dataset, brain_key)
    except LookalikeError as e:  # no calibration, a stale one, an index that cannot load
        return None, one_line(e)
    return record[which], f"empty: the calibrated {record[which]:.4f} ({record['method']})"


def _threshold_input(inputs, ctx, brain_key, which):
    value, text = _calibration_line(ctx, brain_key, which)
    inputs.float("threshold", label="Distance threshold (cosine, 0-2)", min=0.0, max=2.0,
                 required=value is None, description=text)


def _progress(ctx):
    return lambda fraction, label: ctx.set_progress(progress=fraction, label=label)


class CalibrateThreshold(_BackgroundOperator):
    @property
    def config(self):
        return _config(
            name="calibrate_threshold",
            label="Lookalike: calibrate distance thresholds",
            description="Match and duplicate thresholds from labels (TF Similarity's "
            "procedure) or from the nearest-neighbour distances; saved with the index",
            dynamic=True,
            background=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _our_run_input(ctx, inputs) is None:
            return types.Property(inputs)
        labels = _classification_fields(ctx.dataset)
        choices = [("", "(none: label-free)")] + [(f, f) for f in labels]
        dd = _dropdown(choices)
        inputs.enum("label_field", dd.values(), label="Label field", default="", view=dd)
        labelled = bool(ctx.params.get("label_field"))
        methods = [("f1", "f1: the best F1 (largest such distance)"),
                   ("precision", "precision: reach a precision target")] if labelled else \
            [("percentile", "percentile of nearest-neighbour distances (no labels)")]
        md = _dropdown(methods)
        inputs.enum("method", md.values(), label="Method", default=methods[0][0], view=md)
        method = ctx.params.get("method") or methods[0][0]
        if method == "precision":
            inputs.float("target", label="Precision target", min=0.0, max=1.0, default=0.95)
        elif method == "percentile":
            inputs.float("target", label="Outlier percentile", min=1.0, max=99.9, default=95.0,
                         description="Samples farther from their nearest neighbour than this "
                         "percentile are no-match outliers (95: the most isolated 5%)")
        if labelled:
            inputs.float("unknown_fraction", label="Share of classes held out as unknown",
                         min=0.0, max=0.9, default=0.2,
                         description="Open set: rejecting unknown classes counts (0: closed set)")
        _delegate_input(inputs, "Run delegated (for large datasets)")
        inputs.view_target(ctx)
        return types.Property(inputs, view=types.View(label="Calibrate thresholds"))

    def execute(self, ctx):
        import lookalike.curation as lc

        record = lc.calibrate_threshold(
            ctx.target_view(), ctx.params["brain_key"],
            label_field=ctx.params.get("label_field") or None,
            method=ctx.params.get("method"), target=ctx.params.get("target"),
            unknown_fraction=ctx.params.get("unknown_fraction", 0.2),
            progress=lambda done, total: ctx.set_progress(progress=done / max(total, 1),
                                                          label="nearest neighbours"))
        ctx.ops.notify(f"Match threshold {record['threshold']:.4f}, duplicate threshold "
                       f"{record['duplicate_threshold']:.4f} ({record['method']})",
                       variant="success")
        out = {k: record.get(k) for k in ("brain_key", "method", "threshold",
                                          "duplicate_threshold", "duplicate_rule", "note",
                                          "num_queries", "num_missing_labels",
                                          "unknown_classes")}
        out.update({f"at_{k}": v for k, v in (record.get("metric_values") or {}).items()
                    if k != "thresholds"})
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.float("threshold", label="Match threshold")
        outputs.float("duplicate_threshold", label="Duplicate threshold")
        outputs.str("note", label="Method")
        outputs.str("duplicate_rule", label="Duplicate threshold from")
        outputs.float("at_precision", label="Precision at the threshold")
        outputs.float("at_recall", label="Recall at the threshold")
        outputs.float("at_f1", label="F1 at the threshold")
        return types.Property(outputs)


class FlagOutliers(foo.Operator):
    @property
    def config(self):
        return _config(
            name="flag_outliers",
            label="Lookalike: flag no-match outliers",
            description="Tag the samples farther than the threshold from every other sample "
            "and show them, most isolated first",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = _our_run_input(ctx, inputs)
        if key is None:
            return types.Property(inputs)
        _threshold_input(inputs, ctx, key, "threshold")
        inputs.str("tag", label="Tag", default="no_match")
        inputs.view_target(ctx)
        return types.Property(inputs, view=types.View(label="Flag no-match outliers"))

    def execute(self, ctx):
        import lookalike.curation as lc

        view = ctx.target_view()
        tag = ctx.params.get("tag") or "no_match"
        report = lc.flag_outliers(view, ctx.params["brain_key"],
                                  threshold=ctx.params.get("threshold"), tag=tag,
                                  progress=_progress(ctx))
        ctx.ops.set_view(lc.outliers_view(ctx.dataset))
        ctx.ops.notify(f"{report.num_outliers} of {report.num_searched} samples match nothing "
                       f"within {report.threshold:.4f} (tagged '{tag}')", variant="success")
        return report.summary()

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_outliers", label="Outliers")
        outputs.int("num_searched", label="Samples checked")
        outputs.float("threshold", label="Threshold")
        return types.Property(outputs)


class FindDuplicates(_BackgroundOperator):
    @property
    def config(self):
        return _config(
            name="find_duplicates",
            label="Lookalike: find near-duplicates",
            description="Group near-duplicate and byte-identical images, tag all but one "
            "per group",
            dynamic=True,
            background=True,
        )

    def resolve_input(self, ctx):
        import lookalike.similarity as ls

        inputs = types.Object()
        keys = ls.our_brain_keys(ctx.dataset) if ctx.dataset else []
        choices = [(k, k) for k in keys] + [("", "(none: byte-identical files only)")]
        dd = _dropdown(choices)
        inputs.enum("brain_key", dd.values(), label="Similarity index", default=choices[0][0],
                    view=dd)
        key = ctx.params.get("brain_key", choices[0][0])
        if key:
            _threshold_input(inputs, ctx, key, "duplicate_threshold")
        kd = _dropdown([("first", "first in the view"), ("largest", "largest (pixels)"),
                        ("sharpest", "sharpest (variance of the Laplacian)")])
        inputs.enum("keep", kd.values(), label="Keep in each group", default="first", view=kd)
        _delegate_input(inputs, "Run delegated (for large datasets)")
        inputs.view_target(ctx)
        return types.Property(inputs, view=types.View(label="Find near-duplicates"))

    def execute(self, ctx):
        import lookalike.curation as lc

        report = lc.find_duplicates(ctx.target_view(), ctx.params.get("brain_key") or None,
                                    threshold=ctx.params.get("threshold"),
                                    keep=ctx.params.get("keep", "first"),
                                    progress=_progress(ctx))
        if not ctx.delegated:
            ctx.ops.set_view(lc.duplicates_view(ctx.dataset))
        ctx.ops.notify(f"{report.num_groups} duplicate groups; {report.num_duplicates} samples "
                       "tagged 'duplicate'", variant="success")
        out = report.summary()
        out["groups"] = [{"group": n, "size": len(g), "kept": report.files[g[0]]}
                         for n, g in enumerate(report.groups[:200], 1)]
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_groups", label="Groups")
        outputs.int("num_duplicates", label="Tagged 'duplicate'")
        outputs.int("num_exact_pairs", label="Byte-identical pairs")
        outputs.float("threshold", label="Threshold")
        table = types.TableView()
        table.add_column("group", label="Group")
        table.add_column("size", label="Images")
        table.add_column("kept", label="Kept")
        outputs.list("groups", types.Object(), label="Groups", view=table)
        return types.Property(outputs)


class DeleteDuplicates(foo.Operator):
    @property
    def config(self):
        return _config(
            name="delete_duplicates",
            label="Lookalike: delete tagged duplicates",
            description="Delete the tagged members of the published duplicate groups whose "
            "kept sample still exists (not the files; undo with 'undelete')",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        from lookalike.curation.duplicates import deletion_plan
        from lookalike.errors import LookalikeError

        inputs = types.Object()
        tag = ctx.params.get("tag") or "duplicate"
        inputs.str("tag", label="Tag", default="duplicate")
        if not ctx.dataset:
            return types.Property(inputs)
        try:
            # The same plan the deletion executes: the form's count is what goes.
            plan = deletion_plan(ctx.dataset, tag=tag)
            plan.check(ctx.dataset.name)
        except LookalikeError as e:
            inputs.view("refused", types.Error(label="Nothing can be deleted now",
                                                description=str(e)))
            return types.Property(inputs)
        left = (f" {plan.unexplained} samples tagged '{tag}' that no published group explains "
                "are left alone." if plan.unexplained else "")
        if plan.count == 0:
            inputs.view("nothing", types.Notice(
                label=f"No member of a published duplicate group is tagged '{tag}'.{left}"))
            return types.Property(inputs)
        inputs.view("warning", types.Warning(
            label=f"This deletes {plan.count} samples tagged '{tag}' from {plan.num_groups} "
            "groups (each keeps its kept sample)",
            description="Their image files stay on disk. The deleted samples are journaled "
            f"first: 'Lookalike: undelete samples' restores them.{left}"))
        inputs.bool("confirm", label=f"Yes, delete {plan.count} samples", default=False)
        return types.Property(inputs, view=types.View(label="Delete duplicates"))

    def execute(self, ctx):
        import lookalike.curation as lc
        from lookalike.curation.duplicates import delete_planned

        tag = ctx.params.get("tag") or "duplicate"
        if not ctx.params.get("confirm"):
            count = lc.delete_duplicates(ctx.dataset, tag=tag, dry_run=True)
            ctx.ops.notify(f"Dry run: {count} samples would be deleted; tick the confirmation",
                           variant="info")
            return {"deleted": 0, "would_delete": count}
        result = delete_planned(ctx.dataset, tag=tag)
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"Deleted {result.count} samples tagged '{tag}'"
                       + (" (undo: 'Lookalike: undelete samples')" if result.journal else ""),
                       variant="success")
        return {"deleted": result.count, "would_delete": result.count}


class Undelete(foo.Operator):
    @property
    def config(self):
        return _config(
            name="undelete",
            label="Lookalike: undelete samples",
            description="Restore the samples of a deletion journal, with their ids, fields "
            "and tags",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        from lookalike.curation import journal

        inputs = types.Object()
        entries = [e for e in journal.list_journals(ctx.dataset)
                   if e.restored_at is None] if ctx.dataset else []
        if not entries:
            inputs.view("nothing", types.Notice(label="No deletion journal left to restore"))
            return types.Property(inputs)
        dd = _dropdown([(e.path, f"{e.created_at}: {e.num_samples} samples ({e.reason})")
                        for e in entries])
        inputs.enum("journal", dd.values(), label="Deletion to undo", default=entries[0].path,
                    required=True, view=dd)
        return types.Property(inputs, view=types.View(label="Undelete samples"))

    def execute(self, ctx):
        from lookalike.curation import journal

        result = journal.restore(ctx.dataset, path=ctx.params["journal"])
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"Restored {result.restored} samples"
                       + (f" ({result.already_there} were still there)"
                          if result.already_there else ""), variant="success")
        return {"restored": result.restored, "already_there": result.already_there,
                "journal": result.path}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("restored", label="Restored")
        outputs.int("already_there", label="Still there")
        outputs.str("journal", label="Journal")
        return types.Property(outputs)


class EvaluateRetrieval(foo.Operator):
    @property
    def config(self):
        return _config(
            name="evaluate_retrieval",
            label="Lookalike: evaluate retrieval",
            description="recall@1, precision@k, mAP@k (leave-one-out) and the match / no-match "
            "confusion matrix against a label field",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _our_run_input(ctx, inputs) is None:
            return types.Property(inputs)
        labels = _classification_fields(ctx.dataset)
        if not labels:
            inputs.view("nolabels", types.Warning(label="No Classification field to evaluate "
                                                        "against"))
            return types.Property(inputs)
        dd = _dropdown([(f, f) for f in labels])
        inputs.enum("label_field", dd.values(), label="Label field", required=True,
                    default=labels[0], view=dd)
        inputs.int("k", label="k", min=1, default=10)
        inputs.view_target(ctx)
        return types.Property(inputs, view=types.View(label="Evaluate retrieval"))

    def execute(self, ctx):
        import lookalike.curation as lc

        ev = lc.evaluate_retrieval(ctx.target_view(), ctx.params["brain_key"],
                                   ctx.params["label_field"], k=ctx.params.get("k", 10),
                                   progress=_progress(ctx))
        k = ev["k"]
        ctx.ops.notify(f"recall@1 {ev['recall_at_1']:.3f}, mAP@{k} {ev[f'map_at_{k}']:.3f}",
                       variant="success")
        return {"recall_at_1": ev["recall_at_1"], "precision_at_k": ev[f"precision_at_{k}"],
                "map_at_k": ev[f"map_at_{k}"], "k": k, "num_queries": ev["num_queries"],
                "match_accuracy": ev.get("match_accuracy"),
                "confusion": ev.get("confusion")}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.float("recall_at_1", label="recall@1")
        outputs.float("precision_at_k", label="precision@k")
        outputs.float("map_at_k", label="mAP@k")
        outputs.float("match_accuracy", label="Match / no-match accuracy")
        return types.Property(outputs)


class VisualizeEmbeddings(_BackgroundOperator):
    @property
    def config(self):
        return _config(
            name="visualize_embeddings",
            label="Lookalike: 2-D projection of embeddings",
            description="A UMAP projection for the App's Embeddings panel",
            dynamic=True,
            background=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = _embedding_fields(ctx.dataset)
        if not fields:
            inputs.view("none", types.Warning(label="No lookalike embeddings yet"))
            return types.Property(inputs)
        dd = _dropdown([(f, f) for f in fields])
        inputs.enum("embeddings_field", dd.values(), label="Embeddings field", required=True,
                    default=fields[0], view=dd)
        field = ctx.params.get("embeddings_field") or fields[0]
        md = _dropdown([("umap", "UMAP (first use compiles: ~20 s)"), ("tsne", "t-SNE"),
                        ("pca", "PCA")])
        inputs.enum("method", md.values(), label="Method", default="umap", view=md)
        method = ctx.params.get("method") or "umap"
        inputs.str("brain_key", label="Brain key", default=f"{field}_{method}", required=True)
        _delegate_input(inputs, "Run delegated")
        return types.Property(inputs, view=types.View(label="Visualize embeddings"))

    def execute(self, ctx):
        import lookalike.curation as lc

        results = lc.visualize_embeddings(ctx.dataset, ctx.params["embeddings_field"],
                                          brain_key=ctx.params.get("brain_key"),
                                          method=ctx.params.get("method", "umap"),
                                          progress=_progress(ctx))
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"Saved '{results.key}': open the Embeddings panel", variant="success")
        return {"brain_key": results.key, "points": len(results.points)}


def register(p):
    # The App and workers that load this plugin offer backend="lookalike" to
    # fiftyone-brain (its forms, compute_similarity) with no brain config.
    from lookalike.brain_registration import register as register_brain_backend

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
    p.register(LookalikePanel)
