"""Where lookalike keeps files: outside the plugin directory, which the App serves over HTTP;
and how it writes them: checked before the work, written whole (a temporary of this process
beside the file, fsynced, renamed over it), CSV cells that a spreadsheet shows instead of
running.

Every file lookalike writes goes through :func:`written_file` (or :func:`write_file`,
:func:`write_json`, :class:`StagedFile`): a write that fails -- a full disk, a quota, a
read-only or forbidden folder -- removes its temporary and raises one
:class:`~lookalike.core.errors.FileWriteError` line naming the folder, what was being written
and the way on. Temporaries carry the writer's :func:`lookalike.core.leases.process_tag`, so
two processes never share one, and those of dead processes are recognised
(:func:`remove_abandoned_temporaries`).
"""

import contextlib
import csv
import errno
import json
import os
import secrets

from lookalike.core.errors import FileWriteError, UsageError

DATA_DIR_ENV = "LOOKALIKE_DATA_DIR"
TEMPORARY_SUFFIX = ".tmp"


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


# -- writing files whole ----------------------------------------------------------
_FREE_SPACE = "free space and run again"
_WRITE_REASONS = {
    errno.ENOSPC: ("no space left on device", _FREE_SPACE),
    errno.EDQUOT: ("disk quota exceeded", _FREE_SPACE),
    errno.EFBIG: ("file too large for the file system", _FREE_SPACE),
    errno.EROFS: ("read-only file system", "make it writable or choose another folder "
                  f"(${DATA_DIR_ENV} for lookalike's own files)"),
    errno.EACCES: ("permission denied", "make it writable or choose another folder "
                   f"(${DATA_DIR_ENV} for lookalike's own files)"),
    errno.EPERM: ("operation not permitted", "make it writable or choose another folder "
                  f"(${DATA_DIR_ENV} for lookalike's own files)"),
}


def write_error(error, folder, what):
    """The one-line :class:`FileWriteError` for ``error`` (an ``OSError``) met writing
    ``what`` ("index artefacts") in ``folder``; a FileWriteError is returned as it is."""
    if isinstance(error, FileWriteError):
        return error
    reason, way_on = _WRITE_REASONS.get(error.errno, (None, None))
    if reason is None:
        detail = error.strerror or str(error) or type(error).__name__
        message = f"cannot write in {folder} ({what}): {detail}"
    else:
        message = f"{reason} in {folder} (writing {what}): {way_on}"
    out = FileWriteError(message)
    out.errno, out.filename = error.errno, folder
    return out


def temporary_name(path):
    """A name beside ``path`` that only this process writes (and that no reader lists):
    ``<path>.<host>-<pid>-<random>.tmp``."""
    from lookalike.core.leases import process_tag

    return f"{path}.{process_tag()}{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def remove_abandoned_temporaries(folder):
    """Removes the temporaries that dead processes of this host left in ``folder``
    (killed while writing); returns how many. A folder that cannot be read is left alone."""
    from lookalike.core.leases import abandoned

    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if name.endswith(TEMPORARY_SUFFIX) and abandoned(name):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


def make_folder(folder, what):
    """``os.makedirs(folder, exist_ok=True)``, failing with one :class:`FileWriteError` line."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise write_error(e, _nearest_existing(folder), what) from e
    return folder


def _nearest_existing(folder):
    """``folder``, or the closest folder above it that exists (where a makedirs failed)."""
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def fsync_folder(folder):
    """Puts a rename in ``folder`` on disk (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename stands
    finally:
        os.close(fd)


class StagedFile:
    """A file written whole under a temporary name beside ``path``, then renamed over it.

    Two steps for writers that must know the file can be written before they
    change anything else (the journal marks itself restored this way)::

        with StagedFile(path, "the deletion journal") as staged:
            with staged.open("w") as f:
                f.write(text)          # written and fsynced: a full disk fails here
            ...change the database...
            staged.commit()            # a rename: needs no space
        # left without commit (an error, a return): the temporary is removed

    Any ``OSError`` while writing or renaming removes the temporary and raises one
    :class:`FileWriteError` line naming the folder. ``durable`` (default): the
    file, and after the rename the folder, are fsynced (a cache may skip it).
    """

    def __init__(self, path, what, durable=True):
        self.path = os.path.abspath(path)
        self.folder = os.path.dirname(self.path)
        self.what = what
        self.durable = durable
        self.tmp = temporary_name(self.path)
        self.committed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            self.discard()
        return False

    @contextlib.contextmanager
    def open(self, mode="wb", **kwargs):
        """The temporary open to write (``mode`` "wb" or "w"); flushed and fsynced when the
        block ends."""
        try:
            with open(self.tmp, mode, **kwargs) as f:
                yield f
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
        except BaseException as e:
            self.discard()
            self._raise(e)

    def commit(self):
        """Renames the temporary over ``path`` (and fsyncs the folder when ``durable``)."""
        try:
            os.replace(self.tmp, self.path)
        except BaseException as e:
            self.discard()
            self._raise(e)
        self.committed = True
        if self.durable:
            fsync_folder(self.folder)
        return self.path

    def discard(self):
        with contextlib.suppress(OSError):
            os.remove(self.tmp)

    def _raise(self, error):
        # Only errors of this write: an OSError about another file (one the caller
        # reads while writing) goes on as it is.
        if (isinstance(error, OSError) and not isinstance(error, FileWriteError)
                and getattr(error, "filename", None) in (None, self.tmp, self.path, self.folder)):
            raise write_error(error, self.folder, self.what) from error
        raise error


@contextlib.contextmanager
def written_file(path, what, mode="wb", durable=True, **kwargs):
    """Yields a file open on a temporary beside ``path``; once the block ends it is
    fsynced and renamed over ``path``: ``path`` is whole, old or new, at every moment.

    ``what``: names the file in the error ("index artefacts", "the deletion
    journal"); ``mode``: "wb" or "w" (``kwargs`` go to ``open``: ``encoding``,
    ``newline``). See :class:`StagedFile`.
    """
    with StagedFile(path, what, durable) as staged:
        with staged.open(mode, **kwargs) as f:
            yield f
        staged.commit()


def write_file(path, data, what, durable=True):
    """Writes ``data`` (bytes, or text as UTF-8) whole to ``path``; see :func:`written_file`."""
    binary = isinstance(data, (bytes, bytearray, memoryview))
    with written_file(path, what, "wb" if binary else "w", durable,
                      **({} if binary else {"encoding": "utf-8"})) as f:
        f.write(data)
    return path


def write_json(path, value, what, durable=True, **dump):
    """Writes ``value`` as JSON whole to ``path`` (``dump``: ``json.dump``'s options)."""
    with written_file(path, what, "w", durable, encoding="utf-8") as f:
        json.dump(value, f, **dump)
    return path


def replace_file(src, dst, what):
    """``os.replace(src, dst)``, failing with one :class:`FileWriteError` line naming the folder."""
    try:
        os.replace(src, dst)
    except OSError as e:
        raise write_error(e, os.path.dirname(os.path.abspath(dst)), what) from e
    return dst


# -- tables for users ---------------------------------------------------------------
def check_output_folder(path, what="the pictures"):
    """``path`` made absolute, once it is a folder ``what`` can be written in (created if
    missing). Called before a job starts; raises :class:`UsageError` naming the folder
    and the reason."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{path}: is a file, not a folder for {what}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{path}: cannot create the folder for {what} "
                         f"({e.strerror or type(e).__name__})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: cannot write {what} in this folder")
    return path


# A cell starting with one of these is a formula to a spreadsheet (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value):
    """``value`` with a leading ``'`` where a spreadsheet would read its text as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(path, columns, rows, what="the table"):
    """Writes ``rows`` (dicts; other keys ignored) as CSV, every text cell through
    :func:`spreadsheet_cell`; whole or not at all (see :func:`written_file`)."""
    with written_file(path, what, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: spreadsheet_cell(v) for k, v in row.items()} for row in rows)
    return path
