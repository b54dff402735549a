"""Where lookalike keeps files: outside the plugin directory, which the App serves over HTTP;
and the files it writes for users: checked before the work, written whole, CSV cells that a
spreadsheet shows instead of running."""

import csv
import os

from lookalike.core.errors import UsageError

DATA_DIR_ENV = "LOOKALIKE_DATA_DIR"


def default_data_dir():
    """``$LOOKALIKE_DATA_DIR``, else ``<FiftyOne's default dataset dir>/lookalike``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    import fiftyone as fo

    return os.path.join(fo.config.default_dataset_dir, "lookalike")


def check_output_file(path, extensions, what="the table"):
    """``path`` made absolute, once it can be written as one of ``extensions`` (".csv", ...).

    Called before a job starts, so a bad name or folder is refused before any
    work; raises :class:`UsageError` naming the path and the reason.
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not path.lower().endswith(tuple(extensions)):
        raise UsageError(f"{path}: {what} is written as {' or '.join(extensions)}")
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder, not a file name for {what}")
    if not os.path.isdir(folder):
        raise UsageError(f"{path}: cannot write {what}: no such folder {folder}")
    # Written beside it then renamed over it: the folder must take a new file.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: cannot write {what}: cannot write in {folder}")
    return path


# A cell starting with one of these is a formula to a spreadsheet (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value):
    """``value`` with a leading ``'`` where a spreadsheet would read its text as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(path, columns, rows):
    """Writes ``rows`` (dicts; other keys ignored) as CSV, every text cell through
    :func:`spreadsheet_cell`; whole or not at all (a temporary file renamed)."""
    # A name of this process's own: two jobs writing one table never share a temporary.
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: spreadsheet_cell(v) for k, v in row.items()} for row in rows)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)  # nothing half-written is left beside the table
        raise
    return path
