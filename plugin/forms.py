"""What the plugin's operators share, each written once: config, delegation, form inputs, progress.

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

import fiftyone.operators as foo
import fiftyone.operators.types as types

ICON = "/assets/icon.svg"


# -- operators ----------------------------------------------------------------------

def background_jobs_enabled():
    """Whether the App may queue jobs for `fiftyone delegated launch` (no orchestrator set up)."""
    import fiftyone as fo

    return bool(fo.config.allow_legacy_orchestrators)


class FormEnds(Exception):
    """Raised where a form can go no further (it has said why in the form): it ends there."""


def end_form(inputs, name, notice):
    """Adds ``notice`` (a ``types.Warning``, ``Notice``...) and ends the form there."""
    inputs.view(name, notice)
    raise FormEnds


class Operator(foo.Operator):
    """One of our operators: its config, form title and outputs declared as data.

    A subclass sets ``options`` (the ``OperatorConfig`` arguments: name, label,
    description...), ``title`` (its form's), ``outputs`` (see :func:`add_outputs`),
    and writes ``form(inputs, ctx)`` and ``execute(ctx)``. ``background``: it may
    also run delegated (the App offers the choice).
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
        except FormEnds:
            return types.Property(inputs)
        return types.Property(inputs, view=types.View(label=self.title))

    def form(self, inputs, ctx):
        """Adds the form's inputs to ``inputs`` (``ctx.params``: what is filled in so far)."""

    def resolve_output(self, ctx):
        if not self.outputs:
            return None
        outputs = types.Object()
        add_outputs(outputs, self.outputs)
        return types.Property(outputs)


class BackgroundOperator(Operator):
    """A long job: delegated to a worker when the user asks for it and one can take it."""

    background = True
    delegate_by_default = False

    def resolve_delegation(self, ctx):
        return background_jobs_enabled() and bool(
            ctx.params.get("delegate", self.delegate_by_default))


def delegate_input(inputs, label, recommended=False):
    """The "run delegated" checkbox of a :class:`BackgroundOperator`, or why there is none."""
    if background_jobs_enabled():
        inputs.bool("delegate", label=label, default=recommended)
    else:
        inputs.view("no_worker", types.Notice(
            label="Runs in the App server. To queue long jobs for a worker instead, start the "
            "App with FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true and run `fiftyone delegated "
            "launch` (`make app` and `make worker` do both)"))


def progress(ctx):
    """The ``progress(fraction, label)`` callback every package call gets: the App's bar."""
    return lambda fraction, label: ctx.set_progress(progress=fraction, label=label)


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


def brain_key_input(inputs, ctx, none_choice=None):
    """A dropdown of our similarity indexes; returns the chosen key.

    ``none_choice`` labels an extra "" choice, for an operator that can do
    without an index. With no choice at all the form says so and ends.
    """
    import lookalike.similarity as ls

    choices = [(k, k) for k in (ls.our_brain_keys(ctx.dataset) if ctx.dataset else [])]
    if none_choice:
        choices.append(("", none_choice))
    if not choices:
        end_form(inputs, "none", types.Warning(
            label="No lookalike index yet: compute embeddings and build an index first"))
    return choice_input(inputs, ctx, "brain_key", choices, "Similarity index",
                        required=not none_choice)


def embeddings_field_input(inputs, ctx):
    """A dropdown of the fields lookalike embedded (with their encoder); returns the chosen one.

    Where the dataset has none yet the form says so and ends.
    """
    from lookalike.embeddings import field_records

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
    from lookalike.errors import LookalikeError, one_line

    try:
        calibration = lc.get_calibration(ctx.dataset, brain_key)
        value = getattr(calibration, which)
        text = f"empty: the calibrated {value:.4f} ({calibration.method})"
    except LookalikeError as e:  # no calibration, a stale one, an index that cannot load
        value, text = None, one_line(e)
    inputs.float("threshold", label="Distance threshold (cosine, 0-2)", min=0.0, max=2.0,
                 required=value is None, description=text)


# -- outputs ------------------------------------------------------------------------

def table_view(columns):
    """A table of ``(key, label)`` columns."""
    table = types.TableView()
    for key, label in columns:
        table.add_column(key, label=label)
    return table


# A folder match's rows (lookalike.curation.match), as the operator and the panel show them.
MATCH_COLUMNS = (("file", "File"), ("decision", "Decision"), ("nearest_file", "Nearest sample"),
                 ("distance", "Distance"), ("label", "Label"))


def add_outputs(outputs, fields):
    """Adds ``fields`` to ``outputs``: ``(type, name, label)`` with type "str", "int" or
    "float", or ``("table", name, label, columns)`` (``(key, label)`` columns)."""
    for kind, name, label, *columns in fields:
        if kind == "table":
            outputs.list(name, types.Object(), label=label, view=table_view(columns[0]))
        else:
            getattr(outputs, kind)(name, label=label)


def file_columns(column):
    """The columns of a table of files that were skipped, with the reason for each."""
    return (("path", column), ("reason", "Reason"))


def file_rows(failures):
    """The rows of a :func:`file_columns` table: one per ``lookalike.images.ImageFailure``."""
    return [{"path": f.path, "reason": f.reason} for f in failures]
