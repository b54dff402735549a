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


def register(p):
    p.register(ImportImages)
