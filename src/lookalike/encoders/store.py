"""The model store: one directory per encoder, a manifest, weights in formats without code.

Layout of ``<store>/<name>/``::

    manifest.json      what the encoder is (see REQUIRED_KEYS) and sha256 of every file
    <weights files>    framework-native formats that carry no code (Paddle's
                       ``.json`` + ``.pdiparams`` export, Keras ``.weights.h5``,
                       NumPy ``.npz`` loaded with ``allow_pickle=False``)
    previews/          optional pictures (autoencoder reconstructions)

Trust boundary: a model directory may come from someone else, so loading never
unpickles (``paddle.load`` and ``np.load(allow_pickle=True)`` are never called on
store files) and every file is checked against the manifest's checksum first.
Every file a manifest names (``files``, and what loading opens: ``architecture.file``,
``architecture.program`` / ``params``, our kinds' weights, :func:`model_files`) must
be a plain relative path inside the folder, listed with a checksum, and is opened
without following a symbolic link: :func:`read_manifest` refuses anything else, on
import, in the store and at every ``load_encoder``.

Training writes into ``<store>/.<name>.partial/`` and renames it to
``<store>/<name>`` only when complete, so a killed job never leaves a
half-written encoder under a valid name; the partial directory holds the
checkpoints a resumed job starts from.
"""

import contextlib
import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field

FORMAT = "lookalike-encoder"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("autoencoder", "metric", "contrastive")  # what train_encoder trains
FOREIGN_KINDS = ("paddle-inference", "keras")  # models brought in (lookalike.encoders.foreign)
STORE_ENV = "LOOKALIKE_MODELS_DIR"

REQUIRED_KEYS = (
    "format", "format_version", "name", "kind", "framework", "framework_version",
    "architecture", "image_size", "preprocessing", "embedding_size", "metric",
    "files", "created_at",
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


from lookalike.core import paths
from lookalike.core.errors import EncoderStoreError, LookalikeError  # noqa: F401 (re-exported)


def default_store_dir():
    """``$LOOKALIKE_MODELS_DIR``, else ``~/.fiftyone/lookalike/models``."""
    env = os.environ.get(STORE_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".fiftyone", "lookalike", "models")


def validate_name(name):
    """Returns ``name`` if it is a safe directory name, else raises."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise EncoderStoreError(
            f"invalid encoder name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no path separators, no '..')"
        )
    return name


def encoder_dir(name, store_dir=None):
    path = os.path.join(store_dir or default_store_dir(), validate_name(name))
    _recover_replaced(path)
    return path


def _old_dir(final):
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.old")


def _recover_replaced(final):
    # A job killed between the two renames of publish(overwrite=True) left the
    # previous encoder under its hidden old name and nothing under the name:
    # put the previous one back (old-complete).
    old = _old_dir(final)
    if not os.path.exists(final) and os.path.isdir(old):
        try:
            os.replace(old, final)
        except OSError:
            pass  # another process recovered it first


def partial_dir(name, store_dir=None):
    return os.path.join(store_dir or default_store_dir(), f".{validate_name(name)}.partial")


def sha256(path, chunk=1 << 20):
    with open(path, "rb") as f:
        return _sha256_file(f, chunk)


def _sha256_file(f, chunk=1 << 20):
    h = hashlib.sha256()
    for block in iter(lambda: f.read(chunk), b""):
        h.update(block)
    return h.hexdigest()


# The files each kind's loader opens, by manifest key (a dotted path). Our own kinds
# open fixed names; those brought in name theirs in ``architecture``.
_NAMED_FILES = {
    "paddle-inference": ("architecture.program", "architecture.params"),
    "keras": ("architecture.file",),
}
_FIXED_FILES = {
    "metric": {"weights": "model.weights.h5"},
    "contrastive": {"weights": "model.weights.h5"},
    "autoencoder": {"weights": "autoencoder.npz"},  # plus its exported program, below
}


def model_files(manifest):
    """``{manifest key: relative path}`` of every file loading ``manifest``'s encoder opens.

    Each must be a plain relative path inside the encoder's folder, listed in
    ``files`` with a checksum (:func:`read_manifest` refuses it otherwise).
    """
    kind = manifest.get("kind")
    arch = manifest.get("architecture")
    found = {}
    for key in _NAMED_FILES.get(kind, ()):
        value = arch.get(key.split(".", 1)[1]) if isinstance(arch, dict) else None
        found[key] = value
    found.update(_FIXED_FILES.get(kind, {}))
    if kind == "autoencoder":
        listed = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
        # The exported program under whichever name Paddle wrote it (listed, never guessed).
        program = next((p for p in ("encoder.json", "encoder.pdmodel") if p in listed),
                       "encoder.json")
        found.update({"program": program, "params": "encoder.pdiparams"})
    return found


def model_file(directory, manifest, key):
    """The path of the file manifest key ``key`` names, checked as :func:`read_manifest` checks
    it (inside ``directory``, listed with a checksum); the loaders open only these."""
    rel = model_files(manifest).get(key)
    _entry_parts(directory, rel, key)
    if rel not in manifest.get("files", {}):
        raise EncoderStoreError(
            f"{directory}: manifest key {key} names {rel!r}, which the manifest's files do not "
            "list with a checksum: refused")
    return os.path.join(directory, *rel.split("/"))


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_manifest(directory, manifest, files):
    """Writes ``manifest.json`` with the checksums of ``files`` (paths relative to ``directory``)."""
    manifest = dict(manifest)
    manifest.setdefault("format", FORMAT)
    manifest.setdefault("format_version", FORMAT_VERSION)
    manifest.setdefault("created_at", now_iso())
    manifest["files"] = {rel: sha256(os.path.join(directory, rel)) for rel in files}
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")  # a bug in our code, not user input
    paths.write_json(os.path.join(directory, MANIFEST), manifest, "the encoder manifest",
                     indent=2, sort_keys=True, default=_json_default)
    return manifest


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def read_manifest(directory, verify_files=True):
    """Reads and validates ``<directory>/manifest.json``; raises :class:`EncoderStoreError`."""
    directory = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isdir(directory):
        raise EncoderStoreError(f"{directory}: no such model directory")
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise EncoderStoreError(
            f"{directory}: not a lookalike encoder (no {MANIFEST}); train one with "
            "train_encoder or point to a directory it wrote"
        )
    try:
        with os.fdopen(_open_regular(directory, MANIFEST), "rb") as f:  # not through a link
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise EncoderStoreError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EncoderStoreError(f"{directory}: {MANIFEST} is not a lookalike encoder manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EncoderStoreError(
            f"{directory}: manifest format version {manifest.get('format_version')!r}; "
            f"this lookalike reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise EncoderStoreError(f"{directory}: manifest lacks {', '.join(missing)}")
    if manifest["kind"] not in KINDS + FOREIGN_KINDS:
        raise EncoderStoreError(f"{directory}: unknown encoder kind {manifest['kind']!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or MANIFEST in files:
        raise EncoderStoreError(f"{directory}: the manifest's files are not a list of checksums")
    for rel in files:
        _entry_parts(directory, rel, "files")
    for key, rel in model_files(manifest).items():  # what loading opens: listed, so checked
        _entry_parts(directory, rel, key)
        if rel not in files:
            raise EncoderStoreError(
                f"{directory}: manifest key {key} names {rel!r}, which the manifest's files do "
                "not list with a checksum: refused")
    if verify_files:
        for rel, digest in files.items():
            # Opened without following any link, hashed from that one open file.
            with os.fdopen(_open_regular(directory, rel), "rb") as f:
                actual = _sha256_file(f)
            if actual != digest:
                raise EncoderStoreError(
                    f"{directory}: weights file {rel} is corrupt (checksum differs from the manifest)"
                )
    return manifest


def _entry_parts(directory, rel, key="files"):
    """The path components of manifest entry ``rel`` (under manifest key ``key``); refuses one
    that could leave ``directory``."""
    where = "manifest entry" if key == "files" else f"manifest key {key}:"
    if not isinstance(rel, str) or not rel:
        raise EncoderStoreError(f"{directory}: {where} names a file that is not a path: {rel!r}")
    parts = rel.split("/")
    if os.path.isabs(rel) or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise EncoderStoreError(
            f"{directory}: {where} {rel!r} is refused: only plain relative paths inside "
            "the directory (no leading '/', no '..')")
    return parts


def _open_regular(directory, rel):
    """A read-only fd of ``directory/rel``, following no symbolic link on the way (openat)."""
    parts = _entry_parts(directory, rel)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise EncoderStoreError(f"{directory}: cannot open the directory ({e.strerror})") from None
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        # O_NONBLOCK: a FIFO named in the manifest must not hang us; fstat refuses it below.
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            reason = "is missing"
        elif e.errno in (errno.ELOOP, errno.ENOTDIR):
            reason = "is (or lies under) a symbolic link or not a folder: refused, links are not followed"
        else:
            reason = f"cannot be read ({e.strerror})"
        raise EncoderStoreError(f"{directory}: manifest entry {rel} {reason}") from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise EncoderStoreError(f"{directory}: manifest entry {rel} is not a regular file: refused")
    return fd


def _copy_fd(fd, dest):
    with os.fdopen(fd, "rb") as src, open(dest, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def copy_regular_file(directory, rel, dest):
    """Copies ``directory/rel`` to the new file ``dest``: a regular file inside
    ``directory``, reached without following a symbolic link (else EncoderStoreError)."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _copy_fd(_open_regular(directory, rel), dest)


def copy_listed_files(source, dest):
    """Copies ``manifest.json`` and the files it lists from ``source`` into the new folder ``dest``.

    Only regular files inside ``source`` are taken, opened without following any
    symbolic link; an entry that is a link, absolute, or has ``..`` is refused
    (:class:`EncoderStoreError`). Returns what was left behind: the relative paths
    of everything else in ``source`` (unlisted files, pickles, links, folders).
    Checksums are not checked here: verify the copy (``read_manifest(dest)``).
    """
    source = os.path.abspath(source)
    fd = _open_regular(source, MANIFEST)
    with os.fdopen(fd, "rb") as f:
        raw = f.read()
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise EncoderStoreError(f"{os.path.join(source, MANIFEST)}: unreadable manifest ({e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or MANIFEST in files:
        raise EncoderStoreError(f"{source}: {MANIFEST} is not a lookalike encoder manifest")
    for rel in files:  # every entry checked before anything is copied
        os.close(_open_regular(source, rel))
    os.makedirs(dest)
    with open(os.path.join(dest, MANIFEST), "xb") as out:
        out.write(raw)
    for rel in files:
        copy_regular_file(source, rel, os.path.join(dest, *rel.split("/")))
    return left_behind_entries(source, {MANIFEST, *files})


def left_behind_entries(source, taken):
    """What an import of the files ``taken`` from ``source`` leaves: everything else there."""
    left = []
    for root, dirs, names in os.walk(source):  # never descends into a link
        rel_root = os.path.relpath(root, source)
        for name in sorted(dirs) + sorted(names):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            path = os.path.join(root, name)
            if os.path.islink(path):
                left.append(f"{rel} (symbolic link)")
            elif name in names and rel not in taken:
                left.append(rel)
    return sorted(left)


def left_behind_note(left, limit=10):
    """One line naming what an import did not copy, or '' when nothing was left."""
    if not left:
        return ""
    shown = ", ".join(left[:limit]) + (f", ... and {len(left) - limit} more" if len(left) > limit else "")
    noun = "entry" if len(left) == 1 else "entries"
    return f"left behind {len(left)} {noun} the manifest does not list: {shown}"


def check_framework_version(manifest, installed_version):
    """Refuses weights written by another major version of the framework."""
    saved = str(manifest["framework_version"])
    if saved.split(".")[0] != str(installed_version).split(".")[0]:
        raise EncoderStoreError(
            f"encoder '{manifest['name']}' was saved with {manifest['framework']} {saved}; "
            f"the installed {installed_version} cannot read it (major versions differ)"
        )


def list_encoders(store_dir=None):
    """Manifests of the complete encoders in the store, newest first (unreadable ones skipped)."""
    store_dir = store_dir or default_store_dir()
    if not os.path.isdir(store_dir):
        return []
    for entry in os.listdir(store_dir):
        if entry.startswith(".") and entry.endswith(".old"):
            _recover_replaced(os.path.join(store_dir, entry[1:-len(".old")]))
    found = []
    for entry in sorted(os.listdir(store_dir)):
        if entry.startswith("."):
            continue
        try:
            manifest = read_manifest(os.path.join(store_dir, entry), verify_files=False)
        except EncoderStoreError:
            continue
        manifest["path"] = os.path.join(store_dir, entry)
        found.append(manifest)
    return sorted(found, key=lambda m: m["created_at"], reverse=True)


def publish(partial, final, overwrite=False):
    """Moves a finished ``partial`` directory to ``final`` (the encoder's name)."""
    if os.path.exists(final):
        if not overwrite:
            raise EncoderStoreError(
                f"an encoder named '{os.path.basename(final)}' exists: choose another name "
                "or pass overwrite=True"
            )
        from lookalike.core import faults

        old = _old_dir(final)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        faults.point("store.publish.between_renames")
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, final)
    return final


@contextlib.contextmanager
def naming_the_source(*renames):
    """An import checks its copy in a staging folder of the store; the errors raised meanwhile
    name the user's file or folder instead: each ``(staged path, user's path)`` of
    ``renames`` is replaced in their message, in that order (the longer paths first)."""
    try:
        yield
    except LookalikeError as e:
        text = str(e)
        for staged, source in renames:
            text = text.replace(staged, source)
        e.args = (text,)
        raise


@dataclass
class ImportResult:
    """What importing a model into the store gave: its folder, and what was left behind."""

    path: str  # the encoder's directory in the store
    left_behind: list = field(default_factory=list)  # what the source held but was not copied

    @property
    def note(self):
        return left_behind_note(self.left_behind)
