"""The find-leaks operator: duplicates across train / val / test, with our calibrated threshold.

fiftyone-brain's ``compute_leaky_splits`` takes a distance nobody calibrated;
this one uses the index's calibrated duplicate threshold and, where the images
have local features, geometric verification (:func:`lookalike.curation.find_leaks`).
"""

import fiftyone.operators.types as types
from fiftyone.operators.types import RiskLevel

from . import forms

# Pairs listed in the result table; the rest are in the grid (tag 'leak').
SHOWN_PAIRS = 200


def _split_fields(dataset):
    """The dataset's string fields that could hold a split name."""
    import fiftyone as fo

    return sorted(name for name, f in dataset.get_field_schema().items()
                  if isinstance(f, fo.StringField) and name not in ("filepath", "id"))


def _splits_param(ctx):
    """The split field's name, or the list of split tags, as the form holds them."""
    if ctx.params.get("split_by") == "field":
        return ctx.params.get("split_field")
    return [t.strip() for t in (ctx.params.get("split_tags") or "train, val, test").split(",")
            if t.strip()]


def _check_splits(inputs, ctx, by):
    """Ends the form, before Execute, where the samples are not in 2 splits (as Execute
    would refuse)."""
    from lookalike.core.errors import LookalikeError, one_line
    from lookalike.curation.leaks import splits_present

    splits = _splits_param(ctx)
    if ctx.dataset is None or (by == "field" and not splits):
        return
    try:
        splits_present(ctx.dataset, splits)
    except LookalikeError as e:
        forms.end_form(inputs, "no_splits", types.Warning(
            label="No leaks to look for", description=one_line(e)))


class FindLeaks(forms.BackgroundOperator):
    options = dict(name="find_leaks", label="Lookalike: find leaks across splits",
                   description="Tag samples that have a near-duplicate in another split "
                   "(train / val / test by tags or a field), with the index's calibrated "
                   "duplicate threshold and geometric verification", dynamic=True,
                   risk_level=RiskLevel.MEDIUM)
    title = "Find leaks across splits"
    outputs = (("int", "num_leaks", "Samples tagged 'leak'"),
               ("int", "num_pairs", "Pairs across splits"), ("str", "summary", "Summary"),
               ("table", "pairs", "Pairs", (("file", "File"), ("split", "Split"),
                                            ("other", "Same picture in"),
                                            ("other_split", "Its split"), ("reason", "Why"))))

    def form(self, inputs, ctx):
        from lookalike.curation.leaks import SPLIT_TAGS

        key = forms.brain_key_input(inputs, ctx)
        fields = _split_fields(ctx.dataset) if ctx.dataset else []
        by = forms.choice_input(inputs, ctx, "split_by",
                                [("tags", "tags"), ("field", "a field")] if fields
                                else [("tags", "tags")], "Splits are", view=types.RadioGroup)
        if by == "field":
            forms.choice_input(inputs, ctx, "split_field", [(f, f) for f in fields],
                               "Split field", required=True)
        else:
            inputs.str("split_tags", label="Split tags (comma-separated)",
                       default=", ".join(SPLIT_TAGS), required=True)
        forms.threshold_input(inputs, ctx, key, "duplicate_threshold")
        forms.choice_input(inputs, ctx, "verify", forms.verify_choices(),
                           "Geometric verification", default="auto")
        forms.execution_notice(inputs, self, ctx)
        forms.dataset_target(inputs, ctx, "Search")
        _check_splits(inputs, ctx, by)  # last: the form keeps its choices, Execute is off

    def execute(self, ctx):
        import os

        import lookalike.curation as lc

        splits = _splits_param(ctx)
        report = lc.find_leaks(ctx.target_view(), ctx.params["brain_key"], splits=splits,
                               threshold=ctx.params.get("threshold"),
                               verify=forms.verify_param(ctx),
                               progress=forms.progress(ctx))
        if not ctx.delegated:
            from lookalike.curation.leaks import REASON_FIELD

            # The split on each tile: the tags (train / val / test), or the split field.
            forms.show(ctx, lc.leaks_view(ctx.dataset), REASON_FIELD,
                       *([splits] if isinstance(splits, str) else []))
        ctx.ops.notify(report.summary(), variant="warning" if report.warning else "success")
        name = report.files.get
        rows = [{"file": os.path.basename(name(a) or a), "split": report.split_of.get(a),
                 "other": os.path.basename(name(b) or b), "other_split": report.split_of.get(b),
                 "reason": why} for a, b, why in report.pairs[:SHOWN_PAIRS]]
        return forms.rounded(dict(report.to_record(), summary=report.summary(), pairs=rows))
