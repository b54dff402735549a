"""Operators of the match workflow: label unlabelled samples, match a folder of new images.

Forms and view changes only; the work is :mod:`lookalike.curation.label_matching` and
:mod:`lookalike.curation.folder_matching`.
"""

from fiftyone.operators.types import RiskLevel

from . import forms

STRATEGY_LABELS = {"nearest": "nearest labelled sample",
                   "vote": "majority vote of k neighbours (ties: the nearer)"}
ADD_LABELS = {"none": "nothing: only report",
              "new": "the new images only (tagged with the batch)",
              "all": "every image not in the dataset yet"}


class MatchLabels(forms.BackgroundOperator):
    options = dict(name="match_labels", label="Lookalike: match labels (with 'no match')",
                   description="Give unlabelled samples the label of their nearest labelled ones, "
                   "or 'no match' beyond the calibrated threshold", dynamic=True,
                   risk_level=RiskLevel.MEDIUM)
    title = "Match labels"
    outputs = (("str", "pred_field", "Predictions in"), ("int", "num_matched", "Labelled"),
               ("int", "num_no_match", "No match"), ("float", "threshold", "No-match threshold"))

    def form(self, inputs, ctx):
        from lookalike.curation.label_matching import STRATEGIES, default_prediction_field

        forms.brain_key_input(inputs, ctx)
        field = forms.label_field_input(inputs, ctx, missing="No Classification field to match")
        inputs.str("pred_field", label="Prediction field", default=default_prediction_field(field),
                   required=True)
        strategy = forms.choice_input(inputs, ctx, "strategy",
                                      forms.labelled_choices(STRATEGIES, STRATEGY_LABELS),
                                      "Strategy", default="nearest")
        if strategy == "vote":
            inputs.int("k", label="k", min=1, default=5)
        inputs.bool("unlabelled_only", label="Only samples without a label", default=True)
        forms.execution_notice(inputs, self, ctx)
        inputs.view_target(ctx)

    def execute(self, ctx):
        import lookalike.curation as lc

        report = lc.match_labels(
            ctx.target_view(), ctx.params["brain_key"], ctx.params["label_field"],
            pred_field=ctx.params.get("pred_field") or None,
            strategy=ctx.params.get("strategy", "nearest"), k=ctx.params.get("k", 5),
            unlabelled_only=ctx.params.get("unlabelled_only", True),
            progress=forms.progress(ctx))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        ctx.ops.notify(report.summary(), variant="success")
        return report.as_dict()


class MatchImages(forms.BackgroundOperator):
    options = dict(name="match_images", label="Lookalike: match new images against this dataset",
                   description="Which images of a folder are already there (duplicates), match a "
                   "known sample, or are new; optionally import only the new ones", dynamic=True,
                   risk_level=RiskLevel.MEDIUM)
    title = "Match new images"
    outputs = (("str", "summary", "Result"), ("table", "rows", "Images", forms.MATCH_COLUMNS))

    def form(self, inputs, ctx):
        from lookalike.curation.folder_matching import ADD_MODES

        key = forms.brain_key_input(inputs, ctx)
        forms.saved_calibration_warning(inputs, ctx, key)
        inputs.str("directory", label="Folder of new images", required=True,
                   description="A folder on the machine running FiftyOne; searched recursively")
        forms.choice_input(inputs, ctx, "add", forms.labelled_choices(ADD_MODES, ADD_LABELS),
                           "Import", default="none")
        inputs.str("out", label="Also write the table to (.csv or .json, optional)",
                   required=False)
        forms.execution_notice(inputs, self, ctx)
        inputs.view_target(ctx)

    def execute(self, ctx):
        import lookalike.curation as lc
        from lookalike.app.panel_rows import folder_match_rows

        report = lc.match_images(ctx.target_view(), ctx.params["brain_key"],
                                 ctx.params["directory"], add=ctx.params.get("add", "none"),
                                 out=ctx.params.get("out") or None, progress=forms.progress(ctx))
        if report.added_ids and not ctx.delegated:
            from fiftyone import ViewField as F

            forms.show(ctx, ctx.dataset.match(F("tags").contains(report.tag)))
        ctx.ops.notify(report.summary(), variant="warning" if report.warning else "success")
        return {"summary": report.summary(), "counts": report.counts, "tag": report.tag,
                "added": len(report.added_ids),
                "rows": folder_match_rows(report.table(), limit=500)}
