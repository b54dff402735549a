"""FiftyOne plugin of lookalike: forms, progress and view changes only.

FiftyOne re-executes this module on every App request, so it imports nothing
heavy at module level: the work lives in the ``lookalike`` package, and Paddle
and TensorFlow load only inside operators that need them.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types


class ImportImages(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="import_images",
            label="Lookalike: import a folder of images",
            description="Create a dataset from every readable image under a folder",
            icon="/assets/icon.svg",
            allow_immediate_execution=True,
            allow_delegated_execution=True,
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
        table = types.TableView()
        table.add_column("path", label="Skipped file")
        table.add_column("reason", label="Reason")
        outputs.list("skipped", types.Object(), label="Skipped files", view=table)
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


class TrainEncoder(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="train_encoder",
            label="Lookalike: train an encoder",
            description="Train an image encoder on this view (runs delegated by default: "
            "start a worker with `fiftyone delegated launch`)",
            icon="/assets/icon.svg",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_delegation(self, ctx):
        # Immediate operators time out after 600 s; training usually takes longer.
        return ctx.params.get("delegate", True)

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
        inputs.bool("delegate", label="Run delegated (recommended)", default=True)
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
        table = types.TableView()
        table.add_column("path", label="Skipped image")
        table.add_column("reason", label="Reason")
        outputs.list("skipped", types.Object(), label="Skipped images", view=table)
        return types.Property(outputs)


class LoadEncoder(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="load_encoder",
            label="Lookalike: load an encoder",
            description="Check a saved encoder, or add an encoder directory to the model store",
            icon="/assets/icon.svg",
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
        if path:
            path = import_encoder(path, name=name, overwrite=ctx.params.get("overwrite", False))
            encoder = load_encoder(path)
        elif name:
            encoder = load_encoder(name)
            encoder.embed(np.zeros((1, encoder.image_size, encoder.image_size, 3), np.uint8))
        else:
            raise ValueError("choose a saved encoder or give the path of an encoder directory")
        manifest = read_manifest(encoder.path)
        ctx.ops.notify(f"Encoder ready: {describe(manifest)}", variant="success")
        return {"name": manifest["name"], "path": encoder.path, "summary": describe(manifest),
                "kind": manifest["kind"], "embedding_size": manifest["embedding_size"],
                "image_size": manifest["image_size"], "version": encoder.version}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Encoder")
        outputs.str("path", label="Directory")
        outputs.str("version", label="Version")
        return types.Property(outputs)


def register(p):
    p.register(ImportImages)
    p.register(TrainEncoder)
    p.register(LoadEncoder)
