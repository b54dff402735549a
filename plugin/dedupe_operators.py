"""The one-job operator: curate this dataset from nothing to reviewed duplicate groups.

A thin form over :func:`lookalike.curation.dedupe`: train an encoder on a sample of the
dataset (once: later runs reuse it) or use a saved one, then embed, index, calibrate,
find duplicates and flag outliers, under one progress bar.
"""

import fiftyone.operators.types as types
from fiftyone.operators.types import RiskLevel

from . import forms


class CurateDataset(forms.BackgroundOperator):
    # Training makes it long: Schedule is preselected, as for training.
    options = dict(name="curate_dataset", label="Lookalike: curate this dataset in one job",
                   description="Train an encoder on a sample (or use a saved one), embed, "
                   "index, calibrate, find duplicates and flag outliers: one job",
                   dynamic=True, risk_level=RiskLevel.MEDIUM, default_choice_to_delegated=True)
    title = "Curate this dataset"
    outputs = (("str", "summary", "Result"),)

    def form(self, inputs, ctx):
        from lookalike.curation.dedupe import SAMPLE_SIZE, TRAINING, encoder_name, estimate_line

        own = encoder_name(ctx.dataset.name) if ctx.dataset is not None else None
        saved = forms.encoder_choices()
        trained_before = own in {name for name, _ in saved}
        choices = ([] if trained_before else
                   [("", f"Train '{own}' on a sample of these images")]) + saved
        encoder = forms.choice_input(inputs, ctx, "encoder", choices, "Encoder",
                                     default=own if trained_before else "")
        if not encoder:
            inputs.int("sample_size", label="Train on up to this many images", min=2,
                       default=SAMPLE_SIZE)
            inputs.int("epochs", label="Training epochs", min=1, default=TRAINING["epochs"])
        line = estimate_line(self._estimate(ctx)) if ctx.dataset is not None else None
        if line:
            inputs.view("estimate", types.Notice(label=line))
        forms.execution_notice(inputs, self, ctx)
        forms.dataset_target(inputs, ctx, "Curate")

    def _estimate(self, ctx):
        from lookalike.curation.dedupe import SAMPLE_SIZE, estimate_run

        return estimate_run(ctx.target_view(), ctx.params.get("encoder") or None,
                            sample_size=ctx.params.get("sample_size") or SAMPLE_SIZE,
                            epochs=ctx.params.get("epochs"))

    def estimated_seconds(self, ctx):
        stages = self._estimate(ctx)
        return sum(stages.values()) if stages else None

    def execute(self, ctx):
        import lookalike.curation as lc
        from lookalike.curation.dedupe import SAMPLE_SIZE

        report = lc.dedupe(ctx.target_view(), encoder=ctx.params.get("encoder") or None,
                           sample_size=ctx.params.get("sample_size") or SAMPLE_SIZE,
                           epochs=ctx.params.get("epochs"), progress=forms.progress(ctx))
        if not ctx.delegated:
            forms.show_duplicates(ctx, lc.duplicates_view(ctx.dataset))
        duplicates = report.curation.duplicates
        ctx.ops.notify(f"Curated: {duplicates.num_groups} duplicate groups, "
                       f"{report.curation.outliers.num_outliers} outliers", variant="success")
        return {"summary": report.summary()}
