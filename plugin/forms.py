"""What the plugin's operators share, each written once: config, execution options, form inputs,
progress.

An operator is an :class:`Operator` (or :class:`BackgroundOperator`) that
declares its config, form title and outputs as data, adds its inputs in
``form`` with the helpers below, and does its work in one library call.

Every dropdown here lists what the package says exists (our brain keys, the
embedded fields with their encoder records, the saved encoders), and every
fixed choice comes from the package's own constant, so a form never offers
what a library call would refuse. Like the rest of the plugin this module
imports only FiftyOne's operator types at load time: FiftyOne re-executes the
plugin on every App request, so the package's modules load inside the helpers.
"""

import math
import time

import fiftyone.operators as foo
import fiftyone.operators.types as types

ICON = "/assets/icon.svg"


# -- operators ----------------------------------------------------------------------

def background_jobs_enabled():
    """Whether the App may queue jobs for `fiftyone delegated launch` (no orchestrator set up)."""
    import fiftyone as fo

    return bool(fo.config.allow_legacy_orchestrators)


def immediate_limit():
    """FiftyOne's limit on an immediate run, in seconds (``FIFTYONE_OPERATOR_TIMEOUT``, 600)."""
    import fiftyone as fo

    return fo.config.operator_timeout


class FormEnds(Exception):
    """Raised where a form can go no further (it has said why in the form): it ends there."""


def end_form(inputs, name, notice):
    """Adds ``notice`` (a ``types.Warning``, ``Notice``...) and ends the form there.

    The form is then invalid, so the App keeps Execute disabled: a form that ended has
    nothing to run, and a run would only meet the same refusal as an error.
    """
    why = ": ".join(t for t in (notice.label, getattr(notice, "description", None)) if t)
    inputs.view(name, notice, invalid=True, error_message=why)
    raise FormEnds


class Operator(foo.Operator):
    """One of our operators: its config, form title and outputs declared as data.

    A subclass sets ``options`` (the ``OperatorConfig`` arguments: name, label,
    description, ``risk_level``...), ``title`` (its form's), ``outputs`` (see
    :func:`add_outputs`), and writes ``form(inputs, ctx)`` and ``execute(ctx)``.
    """

    options = {}
    background = False
    title = None
    outputs = ()

    @property
    def config(self):
        # FiftyOne asks for a fresh config each time; ours all carry the one icon.
        options = dict(self.options, icon=ICON)
        if self.background:
            options.update(allow_immediate_execution=True, allow_delegated_execution=True)
        return foo.OperatorConfig(**options)

    def resolve_input(self, ctx):
        inputs = types.Object()
        try:
            self.form(inputs, ctx)
        except FormEnds:  # it said why: the form stands as it is, under its title
            pass
        return types.Property(inputs, view=types.View(label=self.title))

    def form(self, inputs, ctx):
        """Adds the form's inputs to ``inputs`` (``ctx.params``: what is filled in so far)."""

    def check_run(self, ctx):
        """Raises (one line) where this run must not start; called before ``execute``."""

    def resolve_output(self, ctx):
        if not self.outputs:
            return None
        outputs = types.Object()
        add_outputs(outputs, self.outputs)
        return types.Property(outputs)


class BackgroundOperator(Operator):
    """A job that can run long: the App offers its own Execute / Schedule choice.

    ``options`` may set ``default_choice_to_delegated`` (Schedule preselected).
    Who calls from Python or HTTP asks for a delegated run with
    ``request_delegation=True``, as the App's Schedule does. Where the
    subclass's ``estimated_seconds(ctx)`` says an immediate run would outlast
    FiftyOne's limit, the run is refused before it starts.
    """

    background = True

    def estimated_seconds(self, ctx):
        """A short estimate of the run's duration (:func:`lookalike.encoders.estimate_seconds`),
        or None where there is none."""
        return None

    def too_long_reason(self, ctx):
        """Why an immediate run would outlast FiftyOne's limit (one line), else None."""
        seconds = self.estimated_seconds(ctx)
        limit = immediate_limit()
        if seconds is None or seconds <= limit:
            return None
        reason = (f"{self.title}: this run would take about {math.ceil(seconds / 60)} min, more "
                  f"than the App's {limit:g} s for immediate runs: schedule it (delegated)")
        return reason if background_jobs_enabled() else f"{reason}. {NO_WORKER}"

    def check_run(self, ctx):
        from lookalike.core.errors import UsageError

        reason = None if ctx.delegated else self.too_long_reason(ctx)
        if reason:
            raise UsageError(reason)


NO_WORKER = ("Schedule needs a worker: start the App with FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true "
             "and run `fiftyone delegated launch` (`make app` and `make worker` do both)")


def execution_notice(inputs, operator, ctx):
    """What a :class:`BackgroundOperator`'s form says of how it can run, where it needs saying.

    A run estimated past FiftyOne's limit for immediate runs: a warning to
    schedule it (and, without a worker set up, how to set one up). Without a
    worker: that Execute runs it in the App server and how to get Schedule.
    Otherwise nothing: the App's own Execute / Schedule choice says it.
    """
    from lookalike.core.errors import LookalikeError

    try:
        too_long = operator.too_long_reason(ctx) if ctx.dataset else None
    except LookalikeError:  # what the estimate needs is refused: the run will say so
        too_long = None
    if too_long:
        inputs.view("too_long", types.Warning(label=too_long))
    elif not background_jobs_enabled():
        inputs.view("no_worker",
                    types.Notice(label=f"Execute runs it in the App server. {NO_WORKER}"))


# In a delegated run every ctx.set_progress is a database write.
PROGRESS_INTERVAL = 1.0


def progress(ctx, interval=PROGRESS_INTERVAL, clock=time.monotonic):
    """The ``progress(fraction, label)`` callback every package call gets: the App's bar.

    At most one ``ctx.set_progress`` per ``interval`` seconds, delegated or not:
    the first call, then the first one after ``interval`` has passed since the last
    write; a call with ``fraction`` 1 (the end, to float error) always goes through.
    """
    last = []

    def report(fraction, label):
        now = clock()
        if fraction < 1 - 1e-9 and last and now - last[0] < interval:
            return
        last[:] = [now]
        ctx.set_progress(progress=fraction, label=label)

    return report


# -- inputs -------------------------------------------------------------------------

def dropdown(choices, view=types.Dropdown):
    """A ``view`` (dropdown, radio group) of ``(value, label)`` choices."""
    dd = view()
    for value, label in choices:
        dd.add_choice(value, label=label)
    return dd


def choice_input(inputs, ctx, name, choices, label, default=None, view=types.Dropdown,
                 **kwargs):
    """A choice of ``(value, label)`` pairs (default: the first); returns the value chosen now."""
    if default is None:
        default = choices[0][0]
    dd = dropdown(choices, view)
    inputs.enum(name, dd.values(), label=label, default=default, view=dd, **kwargs)
    value = ctx.params.get(name)
    return default if value is None else value


def labelled_choices(values, labels):
    """``(value, label)`` pairs of a package constant, in its order, labelled for a form."""
    return [(value, labels[value]) for value in values]


def remembered_index(ctx):
    """The index the last job on this dataset used (any of our operators, the CLI), or None."""
    from lookalike.curation.index_choice import remembered_index as remembered

    return remembered(ctx.dataset) if ctx.dataset is not None else None


def remember_index(ctx, brain_key):
    """Remembers ``brain_key`` as this dataset's last-used index (offered first next time)."""
    from lookalike.curation.index_choice import remember_index as remember

    if brain_key and ctx.dataset is not None:
        remember(ctx.dataset, brain_key)


def preferred_index(ctx):
    """The index offered first: the last used, else :func:`lookalike.curation.index_choice.preferred_index`."""
    from lookalike.curation.index_choice import preferred_index as preferred

    return preferred(ctx.dataset) if ctx.dataset is not None else None


def brain_key_input(inputs, ctx, none_choice=None, queries=None):
    """A dropdown of our similarity indexes, the preferred one first; returns the chosen key.

    ``none_choice`` labels an extra "" choice, for an operator that can do
    without an index. With no choice at all the form says so and ends.
    ``queries``: sample ids the run queries by; indexes that hold them all come first,
    and one that does not is refused in the form, before Execute.
    """
    import lookalike.similarity as ls
    from lookalike.curation.index_choice import covering

    keys = ls.our_brain_keys(ctx.dataset) if ctx.dataset else []
    first = preferred_index(ctx) if keys else None
    last = remembered_index(ctx) if keys else None
    holds = set(covering(ctx.dataset, keys, queries)) if queries and keys else set(keys)
    choices = [(k, f"{k} (last used)" if k == last else k)
               for k in sorted(keys, key=lambda k: (k not in holds, k != first))]
    if none_choice:
        choices.append(("", none_choice))
    if not choices:
        end_form(inputs, "none", types.Warning(
            label="No lookalike index yet: compute embeddings and build an index first"))
    key = choice_input(inputs, ctx, "brain_key", choices, "Similarity index",
                       required=not none_choice)
    if key and key not in holds:
        n = len(queries)
        end_form(inputs, "not_covered", types.Warning(
            label=f"Index '{key}' does not hold the selected sample{'s' * (n != 1)}",
            description=("choose an index built over them" if holds else
                         "no index holds them: compute their embeddings and rebuild one")))
    return key


# A target this small is most likely a selection left over from browsing.
FEW_SAMPLES = 50


def dataset_target(inputs, ctx, action):
    """The samples a dataset-level job works on: the whole dataset unless the user picks
    the current view or selection; a warning where that is a handful of samples."""
    inputs.view_target(ctx, default_target="DATASET", action_description=action)
    # FiftyOne carries the choice beside the view and the selection, not in the params.
    target = ctx.request_params.get("view_target")
    if target in ("SELECTED_SAMPLES", "CURRENT_VIEW"):
        n = len(ctx.selected or []) if target == "SELECTED_SAMPLES" else len(ctx.view)
        if n < FEW_SAMPLES:
            inputs.view("few_samples", types.Warning(label=(
                f"Only {n} sample{'s' * (n != 1)} of the "
                f"{'selection' if target == 'SELECTED_SAMPLES' else 'current view'}: "
                f"pick 'Dataset' above to {action.lower()} the whole dataset")))


def embeddings_field_input(inputs, ctx):
    """A dropdown of the fields lookalike embedded (with their encoder); returns the chosen one.

    Where the dataset has none yet the form says so and ends.
    """
    from lookalike.embeddings.compute import field_records

    # From the database: the App's dataset object misses fields a job embedded since.
    records = field_records(ctx.dataset) if ctx.dataset else {}
    if not records:
        end_form(inputs, "none", types.Warning(
            label="No lookalike embeddings yet: compute some first"))
    choices = [(f, f"{f} ({records[f].get('encoder') or 'no encoder recorded'})")
               for f in sorted(records)]
    return choice_input(inputs, ctx, "embeddings_field", choices, "Embeddings field",
                        required=True)


def classification_fields(dataset):
    """The dataset's Classification fields, sorted (none without a dataset)."""
    import fiftyone as fo

    return sorted(dataset.get_field_schema(embedded_doc_type=fo.Classification)) if dataset else []


def label_fields(dataset):
    """The dataset's top-level label fields (what the App shows on tiles by default)."""
    import fiftyone as fo

    return sorted(dataset.get_field_schema(embedded_doc_type=fo.Label)) if dataset else []


def show(ctx, view, *fields):
    """Shows ``view`` in the grid with the tags, ``fields`` and the labels on its tiles, and
    nothing else: a view never shows another's values (an earlier search's distances
    drawn over the outliers read as theirs)."""
    ctx.ops.set_view(view)
    present = ctx.dataset.get_field_schema()
    ctx.ops.set_active_fields(["tags"] + [f for f in fields if f in present]
                              + label_fields(ctx.dataset))


def show_duplicates(ctx, view):
    """A duplicates view: each tile says its group, and its distance and inliers to the kept
    sample, in words (runs before that label: the two numbers)."""
    from lookalike.curation.duplicates import DISTANCE_FIELD, INLIERS_FIELD, LABEL_FIELD

    if LABEL_FIELD in ctx.dataset.get_field_schema():
        show(ctx, view, LABEL_FIELD)
    else:
        show(ctx, view, DISTANCE_FIELD, INLIERS_FIELD)


def show_outliers(ctx, view):
    """An outliers view: the distance to the nearest neighbour on each tile."""
    from lookalike.curation.outliers import DISTANCE_FIELD

    show(ctx, view, DISTANCE_FIELD)


def label_field_input(inputs, ctx, missing="This dataset has no Classification field",
                      none_choice=None):
    """A dropdown of the Classification fields; returns the chosen one.

    ``none_choice`` labels an extra "" choice (the operator works without
    labels too); with no choice at all the form shows ``missing`` and ends.
    """
    choices = ([("", none_choice)] if none_choice else []) + [
        (f, f) for f in classification_fields(ctx.dataset)]
    if not choices:
        end_form(inputs, "no_labels", types.Warning(label=missing))
    return choice_input(inputs, ctx, "label_field", choices, "Label field",
                        required=not none_choice)


def encoder_choices():
    """``(name, one-line description)`` of every saved encoder, for dropdowns and notices."""
    from lookalike.encoders import describe, list_encoders

    return [(m["name"], describe(m)) for m in list_encoders()]


def encoder_input(inputs, ctx):
    """A dropdown of the saved encoders; returns the chosen name (no encoder: the form ends)."""
    saved = encoder_choices()
    if not saved:
        end_form(inputs, "none", types.Warning(label="No saved encoders: train one first"))
    return choice_input(inputs, ctx, "encoder", saved, "Encoder", required=True)


def threshold_input(inputs, ctx, brain_key, which):
    """The distance threshold, optional where ``brain_key`` has a usable calibration of ``which``.

    The description says what an empty value means (the calibrated value and
    its method), or why the saved calibration cannot stand in.
    """
    import lookalike.curation as lc
    from lookalike.core.errors import LookalikeError, one_line

    try:
        calibration = lc.get_calibration(ctx.dataset, brain_key)
        value = getattr(calibration, which)
        text = f"empty: the calibrated {value:.4f} ({calibration.method})"
    except LookalikeError as e:  # no calibration, a stale one, an index that cannot load
        value, text = None, one_line(e)
    name = "No-match" if which == "threshold" else "Duplicate"
    inputs.float("threshold", label=f"{name} threshold (cosine distance, 0-2)", min=0.0,
                 max=2.0, required=value is None, description=text)
    if value is not None and which == "duplicate_threshold":
        calibration_warning(inputs, calibration)


def saved_calibration_warning(inputs, ctx, brain_key):
    """:func:`calibration_warning` for ``brain_key``'s saved calibration, if it has one."""
    import lookalike.curation as lc
    from lookalike.core.errors import LookalikeError

    if not brain_key or not ctx.dataset:
        return
    try:
        calibration = lc.get_calibration(ctx.dataset, brain_key)
    except LookalikeError:  # the job itself says what is missing, in one line
        return
    calibration_warning(inputs, calibration)


def calibration_warning(inputs, calibration):
    """Before a job acts on a duplicate threshold that the calibration found unreliable
    (it cannot separate copies from different images): the warning, with what to do."""
    if calibration.duplicate_warning:
        inputs.view("calibration_warning", types.Warning(
            label=f"The duplicate threshold of '{calibration.brain_key}' is unreliable",
            description=f"{calibration.duplicate_warning[0].upper()}"
            f"{calibration.duplicate_warning[1:]}."))


def verify_choices():
    """The geometric verification choices of a duplicate search (see :func:`verify_param`)."""
    from lookalike.images.local_features import VERIFY_UP_TO

    return [("auto", f"auto (on up to {VERIFY_UP_TO:,} samples)"), ("on", "on"),
            ("off", "off (embedding distance only)")]


def verify_param(ctx):
    """The ``verify=`` of a package call from the form's choice: True, False or "auto"."""
    return {"on": True, "off": False}.get(ctx.params.get("verify"), "auto")


# -- outputs ------------------------------------------------------------------------

def table_view(columns):
    """A table of ``(key, label)`` columns, as narrow as its cells allow.

    The App gives every table a 650 px minimum width, which widens a half-width panel
    and sends every paragraph in it off the edge: cells wrap instead.
    """
    table = types.TableView(componentsProps={"table": {"sx": {"minWidth": 0}}})
    for key, label in columns:
        table.add_column(key, label=label)
    return table


# A folder match's rows (lookalike.curation.folder_matching), as the operator and the panel show them.
MATCH_COLUMNS = (("file", "File"), ("decision", "Decision"), ("nearest_file", "Nearest sample"),
                 ("distance", "Distance"), ("label", "Label"))


def add_outputs(outputs, fields):
    """Adds ``fields`` to ``outputs``: ``(type, name, label)`` with type "str", "int",
    "float" or "bool", or ``("table", name, label, columns)`` (``(key, label)`` columns)."""
    for kind, name, label, *columns in fields:
        if kind == "table":
            outputs.list(name, types.Object(), label=label, view=table_view(columns[0]))
        else:
            getattr(outputs, kind)(name, label=label)


# Distances and rates as every table and output shows them.
DECIMALS = 4


def rounded(values):
    """``values`` (a dict) with its floats rounded to :data:`DECIMALS` places, at any depth."""
    if isinstance(values, float):
        return round(values, DECIMALS)
    if isinstance(values, dict):
        return {k: rounded(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [rounded(v) for v in values]
    return values


def file_columns(column):
    """The columns of a table of files that were skipped, with the reason for each."""
    return (("path", column), ("reason", "Reason"))


def file_rows(failures):
    """The rows of a :func:`file_columns` table: one per ``lookalike.images.decode.ImageFailure``."""
    return [{"path": f.path, "reason": f.reason} for f in failures]


def shards_input(inputs):
    """The "Shards" field of a job that can be split over workers (lookalike.embeddings.shards)."""
    from lookalike.embeddings.shards import MAX_SHARDS

    inputs.int("shards", label="Shards (jobs for several workers)", min=1, max=MAX_SHARDS,
               default=1, description="More than 1: queue that many jobs over disjoint slices, "
               "for any number of `fiftyone delegated launch` workers sharing this database")


def shard_lease(ctx, job):
    """While one shard of a sharded job runs, its worker holds the shard's lease (so that
    ``lookalike jobs`` tells a dead worker); a nullcontext for an unsharded run."""
    import contextlib

    from lookalike.core import leases

    shard = ctx.params.get("shard")
    return leases.hold(ctx.dataset, shard, job=f"{job} shard") if shard else contextlib.nullcontext()
