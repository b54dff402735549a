"""The lookalike panel: encoders, similarity runs, curves, duplicate groups and outliers.

Rendering only: the rows and figures come from :mod:`lookalike.app.panel_rows`; the
buttons open our operators' forms, where the App's own Execute / Schedule
choice runs a long job in the App server or in a worker.
"""

import json
from urllib.parse import quote

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import forms
from .forms import ICON, MATCH_COLUMNS, table_view

PLUGIN = "@lookalike/similarity"
# Two short rows, so that every button fits a half-width panel: set-up, then curation.
SETUP_BUTTONS = (("train_encoder", "Train"),
                 ("compute_embeddings", "Embed"),
                 ("build_index", "Index"),
                 ("calibrate_threshold", "Calibrate"),
                 ("evaluate_retrieval", "Evaluate"),
                 ("visualize_embeddings", "Project"))
CURATION_BUTTONS = (("find_duplicates", "Duplicates"),
                    ("flag_outliers", "Outliers"),
                    ("find_leaks", "Leaks"),
                    ("match_labels", "Match labels"),
                    ("match_images", "Match new images"))
REVIEW_BUTTONS = (("sort_by_similarity", "Find similar"),
                  ("delete_duplicates", "Delete duplicates"),
                  ("undelete", "Undelete"))
ONE_JOB_BUTTONS = (("curate_dataset", "Curate all (one job)"),)
OPERATOR_BUTTONS = (ONE_JOB_BUTTONS, SETUP_BUTTONS, CURATION_BUTTONS, REVIEW_BUTTONS)
BUTTON_LABELS = dict(b for row in OPERATOR_BUTTONS for b in row)


def button_rows(has_index):
    """The rows of operator buttons, the ones a dataset needs next first: with an index,
    curation and review lead; without one, set-up does."""
    if has_index:
        return (CURATION_BUTTONS, REVIEW_BUTTONS, SETUP_BUTTONS, ONE_JOB_BUTTONS)
    return OPERATOR_BUTTONS


def _reason(error):
    """The one-line reason at the end of the traceback that the App hands ``on_error``
    (our operators raise ``Exception(<reason>)``, see ``plugin._one_line_errors``)."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return last[len("Exception: "):] if last.startswith("Exception: ") else last


def _failed(ctx, what, reason=None):
    """Says in the panel that ``what`` (a button's label, an event) failed and why in one
    line; ``what`` None: nothing failed."""
    ctx.panel.state.failure, ctx.panel.state.failure_reason = what, reason


def _run_facts(rows, brain_key):
    """"(field emb, encoder copies, exact engine, evaluation: none)" for the index shown."""
    row = next((r for r in rows or [] if r.get("brain_key") == brain_key), None)
    if row is None:
        return ""
    return (f"(field {row.get('field')}, encoder {row.get('encoder')}, {row.get('engine')} "
            f"engine, evaluation: {row.get('evaluation')})")


def _origin(dataset, kind):
    """`` (by index 'K', <time>)``: where the results of ``kind`` shown now come from."""
    from lookalike.app import panel_rows as overview

    origin = overview.result_origin(dataset, kind)
    return f" ({origin['text']})" if origin else ""


def _media_url(path):
    return "/media?filepath=" + quote(path)


def _plotly(spec):
    from lookalike.curation.figures import to_plotly

    fig = json.loads(to_plotly(spec).to_json())
    fig["layout"].pop("template", None)  # the App's own theme
    # A fixed 500 px: a plot sized by the App keeps the width of the panel it was first
    # drawn in, and a wider plot than the panel widens every paragraph past its edge.
    fig["layout"].update(width=500, height=320, autosize=False, paper_bgcolor="rgba(0,0,0,0)",
                         plot_bgcolor="rgba(0,0,0,0)", font={"color": "#aaa"})
    return fig


class LookalikePanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="lookalike_panel",
            label="Lookalike",
            icon=ICON,
            surfaces="grid modal",
            help_markdown="Encoders, similarity indexes, calibration, duplicates and outliers "
            "of **lookalike**. Select one sample to see its nearest neighbours.",
        )

    # -- never raise --------------------------------------------------------------
    def execute(self, ctx):
        """Runs one panel event (and renders), never raising: the App turns a panel event
        that fails into an "Uncaught Operator Error" that replaces the panel until the page
        is reloaded. A failure is said in one line, in the panel and as a notification."""
        method = ctx.params.get("__method__")
        try:
            return super().execute(ctx)
        except Exception as e:  # noqa: BLE001 - whatever failed, the panel stays
            if method in (None, "on_startup"):
                raise
            from lookalike.core.errors import one_line

            reason = one_line(e)
            _failed(ctx, method.replace("_", " ").capitalize(), reason)
            ctx.ops.notify(reason, variant="error")
            try:
                output = self.render(ctx)
            except Exception:  # noqa: BLE001 - the state cannot be drawn: the reason alone
                output = types.Object()
                output.view("failure", types.Error(label=f"{method} failed", description=reason))
                output = types.Property(output)
            ctx.ops.show_panel_output(output)
            return None

    # -- events -----------------------------------------------------------------
    def open_operator(self, ctx):
        """A button's operator, in its form (``ctx.prompt``: a run that fails then comes
        back to :meth:`operator_failed`; a button that ran the operator itself would let its
        failure take the panel down)."""
        op = ctx.params.get("operator")
        if op not in BUTTON_LABELS:
            from lookalike.core.errors import UsageError

            raise UsageError(f"no such button: {op!r}")
        _failed(ctx, None)
        ctx.panel.state.prompted = op
        ctx.prompt(f"{PLUGIN}/{op}", on_success=self.operator_done,
                   on_error=self.operator_failed)

    def operator_done(self, ctx):
        _failed(ctx, None)
        self._refresh(ctx)

    def operator_failed(self, ctx):
        _failed(ctx, BUTTON_LABELS.get(ctx.panel.state.prompted, "The operator"),
                _reason(ctx.params.get("error")))
        self._refresh(ctx)

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.run = None
        self._refresh(ctx)

    def on_change_view(self, ctx):
        # Operators change the view when they finish: show their results.
        self._refresh(ctx)

    def on_change_selected(self, ctx):
        self._neighbours(ctx)

    def on_change_current_sample(self, ctx):
        self._neighbours(ctx, ctx.current_sample)

    def refresh(self, ctx):
        _failed(ctx, None)
        self._refresh(ctx)

    def choose_run(self, ctx):
        rows = ctx.panel.state.run_keys or []
        row = ctx.params.get("row")
        if row is not None and 0 <= int(row) < len(rows):
            # Looking at an index is not using it: only a job run with it is remembered.
            ctx.panel.state.run = rows[int(row)]
        self._refresh(ctx)

    def show_group(self, ctx):
        from fiftyone import ViewField as F

        groups = ctx.panel.state.group_numbers or []
        row = ctx.params.get("row")
        if row is None or not 0 <= int(row) < len(groups):
            return
        import lookalike.curation as lc

        # Only the published run's group of that number (older runs' values may linger).
        view = lc.duplicates_view(ctx.dataset).match(F("dup_group") == groups[int(row)])
        forms.show_duplicates(ctx, view)
        ctx.ops.notify(f"Duplicate group {groups[int(row)]}, the kept image first"
                       f"{_origin(ctx.dataset, 'duplicates')}")

    def show_outlier(self, ctx):
        ids = ctx.panel.state.outlier_ids or []
        row = ctx.params.get("row")
        if row is not None and 0 <= int(row) < len(ids):
            forms.show_outliers(ctx, ctx.dataset.select(ids[int(row)]))

    def show_all_duplicates(self, ctx):
        import lookalike.curation as lc
        from lookalike.curation.duplicates import GROUP_FIELD, KEPT_FIELD

        # FiftyOne's dynamic groups: one tile per group (its kept image), the group's
        # images in the modal's carousel: groups are visibly groups.
        view = lc.duplicates_view(ctx.dataset)
        if KEPT_FIELD in ctx.dataset.get_field_schema():
            view = view.group_by(GROUP_FIELD, order_by=KEPT_FIELD, reverse=True)
        forms.show_duplicates(ctx, view)
        ctx.ops.notify(f"Near-duplicate groups{_origin(ctx.dataset, 'duplicates')}")

    def show_other_shots(self, ctx):
        import lookalike.curation as lc
        from lookalike.curation.duplicates import SHOT_REASON_FIELD

        forms.show(ctx, lc.shots_view(ctx.dataset), SHOT_REASON_FIELD)
        ctx.ops.notify(f"Other shots of one scene{_origin(ctx.dataset, 'duplicates')}")

    def show_all_outliers(self, ctx):
        import lookalike.curation as lc

        forms.show_outliers(ctx, lc.outliers_view(ctx.dataset))
        ctx.ops.notify(f"No-match outliers{_origin(ctx.dataset, 'outliers')}")

    def show_label_no_match(self, ctx):
        import lookalike.curation as lc

        forms.show(ctx, lc.no_match_view(ctx.dataset))

    # -- state ------------------------------------------------------------------
    def _refresh(self, ctx):
        from lookalike.app import panel_rows as overview

        state = ctx.panel.state
        encoders = overview.encoder_rows(
            dataset_name=ctx.dataset.name if ctx.dataset is not None else None)
        state.encoders = [dict({k: v for k, v in r.items() if k != "previews"},
                               about=f"{r['kind']}: {r['image_size']} px, "
                               f"{r['embedding_size']} dimensions, {r['epochs']} epochs")
                          for r in encoders]
        previews = [p for r in encoders if r["kind"] == "autoencoder" for p in r["previews"][:1]]
        state.preview = _media_url(previews[0]) if previews else None
        state.preview_caption = (
            f"Reconstructions of '{next(r['name'] for r in encoders if r['previews'])}' "
            "(left: input, right: its reconstruction)" if previews else None)
        if ctx.dataset is None:
            state.runs, state.run_keys = [], []
            state.next_step = overview.next_step(None, encoders, [], [])
            return
        runs = overview.run_rows(ctx.dataset)
        state.run_keys = [r["brain_key"] for r in runs]
        if state.run not in state.run_keys:  # first look: the last used, else the best
            state.run = forms.preferred_index(ctx)
        for r in runs:
            r["shown"] = "▶" if r["brain_key"] == state.run else ""
            r["index"] = f"{r['shown']} {r['brain_key']}".strip()  # one column: narrow
        state.runs = runs
        summary = overview.run_summary(ctx.dataset, state.run) if state.run else None
        state.summary = "\n\n".join(summary["lines"]) if summary else None
        figures = (summary or {}).get("figures") or {}
        state.figure_names = list(figures)
        for name, spec in figures.items():
            fig = _plotly(spec)
            ctx.panel.set_data(f"fig_{name}", fig["data"])
            ctx.panel.set_state(f"layout_{name}", fig["layout"])
        groups = overview.duplicate_group_rows(ctx.dataset)
        state.groups = groups
        state.groups_origin = _origin(ctx.dataset, "duplicates")
        state.outliers_origin = _origin(ctx.dataset, "outliers")
        state.group_numbers = [g["group"] for g in groups]
        state.shot_line = overview.shot_line(ctx.dataset)
        outliers = overview.outlier_rows(ctx.dataset)
        state.outliers = [{k: v for k, v in r.items() if k != "id"} for r in outliers]
        state.outlier_ids = [r["id"] for r in outliers]
        state.next_step = overview.next_step(ctx.dataset, encoders, runs, groups)
        matching = overview.match_rows(ctx.dataset)
        state.label_match, state.folder_match = matching["labels"], matching["folder"]
        state.folder_rows = matching["rows"]
        self._neighbours(ctx)

    def _neighbours(self, ctx, sample_id=None):
        from lookalike.app import panel_rows as overview

        state = ctx.panel.state
        selected = [sample_id] if sample_id else list(ctx.selected or [])
        state.neighbours, state.neighbours_title = [], None
        state.members, state.members_title = [], None
        if len(selected) == 1 and ctx.dataset is not None:
            members = overview.group_member_rows(ctx.dataset, selected[0])
            if members:
                state.members = [{k: v for k, v in r.items() if k not in ("id", "kept")}
                                 for r in members]
                state.members_title = (f"Duplicate group of the selected sample: "
                                       f"{len(members)} images, the kept one first")
        if len(selected) != 1 or not state.run or ctx.dataset is None:
            return
        try:
            state.neighbours = overview.neighbour_rows(ctx.dataset, state.run, selected[0])
            state.neighbours_title = (f"Nearest neighbours of the selected sample "
                                      f"({state.run}): those local features verify first, "
                                      "most inliers first, then the others by distance")
        except ValueError as e:
            state.neighbours_title = f"No neighbours: {e}"

    # -- layout -----------------------------------------------------------------
    def render(self, ctx):
        state = ctx.panel.state
        panel = types.Object()
        # A view's name binds it to the panel state of that name, which it then shows instead
        # of its text: a formatted line is named apart from the state it formats.
        panel.md("**Lookalike**: train, embed, index, calibrate, curate", name="title")
        if state.next_step:
            panel.md(f"**Next**: {state.next_step} Every operator is also in the operator "
                     "browser (press the backtick key `` ` ``).", name="next_step_line")
        for n, row in enumerate(button_rows(bool(state.runs))):
            buttons = panel.h_stack(f"actions_{n}", align_x="left", gap=1)
            for op, label in row:
                buttons.btn(f"op_{op}", label=label, on_click=self.open_operator,
                            params={"operator": op}, variant="outlined")
        buttons.btn("refresh", label="Refresh", on_click=self.refresh, variant="outlined")
        if state.failure:
            panel.view("failure", types.Error(label=f"{state.failure} failed",
                                              description=state.failure_reason))

        if state.members_title:
            panel.md(f"**{state.members_title}**", name="members_heading")
            panel.list("members", types.Object(),
                       view=table_view([("file", "File"), ("distance", "Distance to the kept"),
                                        ("inliers", "Inliers with the kept"),
                                        ("reason", "Why in the group")]))

        if state.neighbours_title:
            panel.md(f"**{state.neighbours_title}**", name="neighbours_heading")
            # The numbers first: a long file name must not push them out of a narrow panel.
            panel.list("neighbours", types.Object(),
                       view=table_view([("inliers", "Inliers"), ("distance", "Distance"),
                                        ("file", "File")]))

        panel.md("**Similarity indexes**", name="runs_title")
        if state.runs:
            # Few columns, so the table fits a half-width panel (a wider one widens the whole
            # panel and every paragraph runs off its edge); the rest is in the summary line.
            runs = table_view([("index", "Index (▶ shown)"), ("size", "Samples"),
                               ("calibration", "Calibration")])
            runs.add_row_action("choose_run", self.choose_run, label="Show", icon="visibility")
            panel.list("runs", types.Object(), view=runs)
            panel.md(f"**{state.run}** {_run_facts(state.runs, state.run)}: "
                     + (state.summary or ""), name="summary_line")
            for name in state.figure_names or []:
                panel.plot(f"fig_{name}", layout=state.get(f"layout_{name}") or {},
                           config={"displayModeBar": False, "scrollZoom": False})
        else:
            panel.md("No lookalike index on this dataset yet: compute embeddings, then build "
                     "an index.", name="no_runs")

        panel.md("**Near-duplicate groups**" + (state.groups_origin or ""), name="groups_title")
        if state.groups:
            groups = table_view([("group", "Group"), ("size", "Images"), ("kept", "Kept"),
                             ("max_distance", "Widest distance"),
                             ("fewest_inliers", "Fewest inliers")])
            groups.add_row_action("show_group", self.show_group, label="Show", icon="grid_view")
            panel.list("groups", types.Object(), view=groups)
            panel.btn("all_duplicates", label="Show all groups", on_click=self.show_all_duplicates)
        else:
            panel.md("None found yet (Find duplicates).", name="no_groups")
        if state.shot_line:
            panel.md(f"**Other shots of one scene**: {state.shot_line}", name="shots_line")
            panel.btn("other_shots", label="Show other shots", on_click=self.show_other_shots)

        panel.md("**No-match outliers**" + (state.outliers_origin or ""), name="outliers_title")
        if state.outliers:
            outliers = table_view([("file", "File"), ("nn_distance", "Nearest-neighbour distance")])
            outliers.add_row_action("show_outlier", self.show_outlier, label="Show", icon="image")
            panel.list("outliers", types.Object(), view=outliers)
            panel.btn("all_outliers", label="Show all outliers", on_click=self.show_all_outliers)
        else:
            panel.md("None flagged yet (Flag outliers).", name="no_outliers")

        if state.label_match:
            panel.md(f"**Label matching**: {state.label_match}", name="label_match_line")
            panel.btn("label_no_match", label="Show 'no match' samples",
                      on_click=self.show_label_no_match)
        if state.folder_match:
            panel.md(f"**Last folder match**: {state.folder_match}", name="folder_match_line")
            panel.list("folder_rows", types.Object(), view=table_view(MATCH_COLUMNS))

        panel.md("**Encoders**", name="encoders_title")
        if state.encoders:
            panel.list("encoders", types.Object(), view=table_view([
                ("name", "Name"), ("about", "Kind"), ("training_data", "Trained on"),
                ("final_loss", "Final loss")]))
        else:
            panel.md("No saved encoder yet (Train an encoder, or load one).", name="no_encoders")
        if state.preview:
            panel.md(state.preview_caption, name="preview_caption")
            panel.img("preview", height="160px", alt_text="autoencoder reconstructions")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2,
                                                         align_x="left", align_y="top"))
