"""Puts the FiftyOne plugin, and only the plugin, into a FiftyOne plugins directory.

The App serves its whole plugins directory as static files under ``/plugins/``
(following symlinks), so pointing ``FIFTYONE_PLUGINS_DIR`` at a checkout would
publish ``.git/``, the virtualenv and everything else in it. ``install(dir)``
writes ``<dir>/lookalike/`` holding copies of :data:`PLUGIN_FILES` only:

    lookalike plugin install                     # into fo.config.plugins_dir
    lookalike plugin install --dir build/plugins # what `make app` does

Copies, not symlinks: FiftyOne refuses a ``py_entry`` whose real path lies
outside the plugin's folder. So edits to a checkout's ``plugin/`` show after the
next install (``make app`` and the tests install at start).

The files come from the checkout when lookalike runs from one (an editable
install), else from the copy that the wheel carries in ``lookalike/plugin_files/``
(see setup.py). At module level this imports only the standard library and
lookalike's own error and fault modules, so that setup.py can read
:data:`PLUGIN_FILES` from it.
"""

import os
import shutil
import tempfile

from lookalike.core import faults
from lookalike.core.errors import PluginInstallError  # noqa: F401 (re-exported)

# Everything a FiftyOne plugin is: its manifest, its Python entry, its icon and
# its Python requirements. Nothing else is ever put into a plugins directory.
PLUGIN_FILES = ("fiftyone.yml", "requirements.txt", "plugin", "assets")
PLUGIN_NAME = "@lookalike/similarity"
FOLDER = "lookalike"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../lookalike


def checkout_root():
    """The repository root when lookalike runs from a checkout, else None."""
    root = os.path.dirname(os.path.dirname(PACKAGE_DIR))  # <root>/src/lookalike
    if all(os.path.exists(os.path.join(root, name)) for name in PLUGIN_FILES):
        return root
    return None


def source_dir():
    """Where the plugin's files are read from: the checkout, or the wheel's copy."""
    root = checkout_root()
    if root:
        return root
    packaged = os.path.join(PACKAGE_DIR, "plugin_files")
    if all(os.path.exists(os.path.join(packaged, name)) for name in PLUGIN_FILES):
        return packaged
    raise PluginInstallError(
        f"this lookalike installation carries no plugin files (looked in {packaged}): "
        "reinstall it from a wheel or a checkout")


def _manifest_name(folder):
    path = os.path.join(folder, "fiftyone.yml")
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("name:"):
                    return line.split(":", 1)[1].strip().strip("'\"")
    except OSError:
        return None
    return None


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def _served_by_mistake(plugins_dir):
    """Folders of ours that must never lie inside a plugins directory (it is served over HTTP)."""
    from lookalike.encoders.store import default_store_dir
    from lookalike.core.paths import default_data_dir

    found = []
    for label, path in (("the data directory", default_data_dir()),
                        ("the model store", default_store_dir())):
        if _inside(path, plugins_dir):
            found.append(f"{label} {path}")
    root = checkout_root()
    if root and _inside(root, plugins_dir):
        found.append(f"the checkout {root}")
    return found


def install(plugins_dir, check_served=True):
    """Writes ``<plugins_dir>/lookalike/`` with the plugin's files; returns its path.

    A folder of another plugin is never replaced. The new folder is assembled in a hidden folder beside
    the old one (FiftyOne skips hidden folders) and renamed into place: a
    killed install leaves the old plugin or the new one (or, between two
    renames, none), never a mix; a rerun removes the leftovers and finishes.
    """
    plugins_dir = os.path.abspath(os.path.expanduser(plugins_dir))
    source = source_dir()
    if check_served:
        exposed = _served_by_mistake(plugins_dir)
        if exposed:
            raise PluginInstallError(
                f"{plugins_dir}: the App would serve {', '.join(exposed)} over HTTP: "
                "choose a plugins directory outside them")
    target = os.path.join(plugins_dir, FOLDER)
    try:
        return _swap_in(source, plugins_dir, target)
    except OSError as e:
        raise PluginInstallError(f"{e.filename or plugins_dir}: {e.strerror or e}") from None


def _swap_in(source, plugins_dir, target):
    if os.path.lexists(target):
        name = _manifest_name(target)
        if name != PLUGIN_NAME or not os.path.isdir(target):
            raise PluginInstallError(
                f"{target} exists and is not the {PLUGIN_NAME} plugin "
                f"({'plugin ' + name if name else 'no fiftyone.yml'}): remove it or choose "
                "another --dir")
    os.makedirs(plugins_dir, exist_ok=True)
    for entry in os.listdir(plugins_dir):
        if entry.startswith(f".{FOLDER}.") and entry.endswith((".new", ".old")):
            shutil.rmtree(os.path.join(plugins_dir, entry), ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=f".{FOLDER}.", suffix=".new", dir=plugins_dir)
    try:
        for name in PLUGIN_FILES:
            src, dst = os.path.join(source, name), os.path.join(staging, name)
            if os.path.isdir(src):
                shutil.copytree(src, dst, ignore=_IGNORE)
            else:
                shutil.copy2(src, dst)
        os.chmod(staging, 0o755)
        faults.point("plugin.staged")
        if os.path.lexists(target):
            old = tempfile.mkdtemp(prefix=f".{FOLDER}.", suffix=".old", dir=plugins_dir)
            os.rename(target, os.path.join(old, FOLDER))
            faults.point("plugin.old_moved")
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
