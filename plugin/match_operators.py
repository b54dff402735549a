"""Operators of the match workflow: label unlabelled samples, match a folder of new images.

Forms and view changes only; the work is :mod:`lookalike.curation.match`.
Imported by ``register`` in ``__init__`` (after that module has loaded, so the
shared helpers below exist).
"""

import fiftyone.operators.types as types

from . import (
    _BackgroundOperator,
    _classification_fields,
    _config,
    _delegate_input,
    _dropdown,
    _our_run_input,
    _progress,
)


class MatchLabels(_BackgroundOperator):
    @property
    def config(self):
        return _config(
            name="match_labels",
            label="Lookalike: match labels (with 'no match')",
            description="Give unlabelled samples the label of their nearest labelled ones, or "
            "'no match' beyond the calibrated threshold",
            dynamic=True,
            background=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = _our_run_input(ctx, inputs)
        if key is None:
            return types.Property(inputs)
        labels = _classification_fields(ctx.dataset)
        if not labels:
            inputs.view("nolabels", types.Warning(label="No Classification field to match"))
            return types.Property(inputs)
        dd = _dropdown([(f, f) for f in labels])
        inputs.enum("label_field", dd.values(), label="Label field", required=True,
                    default=labels[0], view=dd)
        field = ctx.params.get("label_field") or labels[0]
        inputs.str("pred_field", label="Prediction field", default=f"{field}_match",
                   required=True)
        sd = _dropdown([("nearest", "nearest labelled sample"),
                        ("vote", "majority vote of k neighbours (ties: the nearer)")])
        inputs.enum("strategy", sd.values(), label="Strategy", default="nearest", view=sd)
        if ctx.params.get("strategy") == "vote":
            inputs.int("k", label="k", min=1, default=5)
        inputs.bool("unlabelled_only", label="Only samples without a label", default=True)
        _delegate_input(inputs, "Run delegated (for large datasets)")
        inputs.view_target(ctx)
        return types.Property(inputs, view=types.View(label="Match labels"))

    def execute(self, ctx):
        import lookalike.curation as lc

        report = lc.match_labels(
            ctx.target_view(), ctx.params["brain_key"], ctx.params["label_field"],
            pred_field=ctx.params.get("pred_field") or None,
            strategy=ctx.params.get("strategy", "nearest"), k=ctx.params.get("k", 5),
            unlabelled_only=ctx.params.get("unlabelled_only", True), progress=_progress(ctx))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        ctx.ops.notify(report.summary(), variant="success")
        return report.as_dict()

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("pred_field", label="Predictions in")
        outputs.int("num_matched", label="Labelled")
        outputs.int("num_no_match", label="No match")
        outputs.float("threshold", label="Match threshold")
        return types.Property(outputs)


def _match_table(outputs):
    table = types.TableView()
    for key, label in (("file", "File"), ("decision", "Decision"), ("nearest_file", "Nearest"),
                       ("distance", "Distance"), ("label", "Label")):
        table.add_column(key, label=label)
    outputs.list("rows", types.Object(), label="Images", view=table)


class MatchImages(_BackgroundOperator):
    @property
    def config(self):
        return _config(
            name="match_images",
            label="Lookalike: match new images against this dataset",
            description="Which images of a folder are already there (duplicates), match a "
            "known sample, or are new; optionally import only the new ones",
            dynamic=True,
            background=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _our_run_input(ctx, inputs) is None:
            return types.Property(inputs)
        inputs.str("directory", label="Folder of new images", required=True,
                   description="A folder on the machine running FiftyOne; searched recursively")
        ad = _dropdown([("none", "nothing: only report"),
                        ("new", "the new images only (tagged with the batch)"),
                        ("all", "every image not in the dataset yet")])
        inputs.enum("add", ad.values(), label="Import", default="none", view=ad)
        inputs.str("out", label="Also write the table to (.csv or .json, optional)",
                   required=False)
        _delegate_input(inputs, "Run delegated (for large folders)")
        inputs.view_target(ctx)
        return types.Property(inputs, view=types.View(label="Match new images"))

    def execute(self, ctx):
        import os

        import lookalike.curation as lc

        report = lc.match_images(ctx.target_view(), ctx.params["brain_key"],
                                 ctx.params["directory"], add=ctx.params.get("add", "none"),
                                 out=ctx.params.get("out") or None, progress=_progress(ctx))
        if report.added_ids and not ctx.delegated:
            from fiftyone import ViewField as F

            ctx.ops.set_view(ctx.dataset.match(F("tags").contains(report.tag)))
        ctx.ops.notify(report.summary(), variant="success")
        rows = [{"file": r["file"], "decision": r["decision"],
                 "nearest_file": os.path.basename(r.get("nearest_path") or "") or None,
                 "distance": None if r.get("distance") is None else round(r["distance"], 4),
                 "label": r.get("label")} for r in report.table()[:500]]
        return {"summary": report.summary(), "counts": report.counts, "tag": report.tag,
                "added": len(report.added_ids), "rows": rows}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Result")
        _match_table(outputs)
        return types.Property(outputs)
