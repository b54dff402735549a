"""Test session set-up: a MongoDB of our own, so no user dataset is ever touched.

FiftyOne attaches to any FiftyOne database service already running on the
machine, whatever its FIFTYONE_DATABASE_DIR, so that variable does not isolate.
This file starts the bundled ``mongod`` on a free loopback port in a temporary
directory and points FIFTYONE_DATABASE_URI at it, all before fiftyone is first
imported (it reads its configuration on import); the ``mongod`` is stopped by
its PID when the session ends.

With FIFTYONE_DATABASE_URI already set (your own MongoDB, e.g. where the
bundled one cannot run), the tests use a uniquely named database on it and drop
that database at the end.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

import processes
from encoder_cache import cached_encoder

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STATE = {}

# The same TensorFlow numbers on every CI machine: oneDNN picks its kernels by the
# CPU's instruction set (AVX-512 here, AVX2 there), and the small models the tests
# train end up measurably different (an unseen-class rejection rate of 0.58 on one
# machine, 0.68 with oneDNN off, from the same seeds). TensorFlow's own Eigen kernels
# are compiled for the wheel's one baseline instruction set, so with oneDNN off x86
# machines with the same number of cores should compute the same. Set before
# TensorFlow is first imported; subprocesses inherit it.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _stop_mongod():
    processes.stop(_STATE.pop("mongod", None))
    tmp = _STATE.pop("tmp", None)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def _start_isolated_database():
    from lookalike.core.database import bundled_mongod_path, mongod_version

    tmp = tempfile.mkdtemp(prefix="lookalike-tests-")
    _STATE["tmp"] = tmp
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"
    # A copy of the plugin's files only, as `make app` serves them.
    from lookalike.app.plugin_install import install as install_plugin

    os.environ["FIFTYONE_PLUGINS_DIR"] = os.path.dirname(
        install_plugin(os.path.join(tmp, "plugins"), check_served=False))
    # Let the App queue jobs for `fiftyone delegated launch` (as `make app` does).
    os.environ["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
    os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = os.path.join(tmp, "fiftyone")
    os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(tmp, "unused-db-dir")
    os.environ["FIFTYONE_BRAIN_CONFIG_PATH"] = os.path.join(tmp, "brain_config.json")
    os.environ["FIFTYONE_CONFIG_PATH"] = os.path.join(tmp, "config.json")
    os.environ["FIFTYONE_APP_CONFIG_PATH"] = os.path.join(tmp, "app_config.json")
    os.environ["LOOKALIKE_DATA_DIR"] = os.path.join(tmp, "lookalike-data")
    # The session's model store, shared with child processes (App server, workers).
    os.environ["LOOKALIKE_MODELS_DIR"] = os.path.join(tmp, "models")

    if os.environ.get("FIFTYONE_DATABASE_URI"):
        name = f"lookalike_tests_{uuid.uuid4().hex[:12]}"
        os.environ["FIFTYONE_DATABASE_NAME"] = name
        _STATE["drop_database"] = name
        return

    mongod = bundled_mongod_path()
    if mongod_version(mongod) is None:
        pytest.exit(
            f"No working mongod at {mongod}: run 'make test' (it installs MongoDB), or set "
            "FIFTYONE_DATABASE_URI to a MongoDB of your own",
            returncode=3,
        )
    dbpath = os.path.join(tmp, "db")
    os.makedirs(dbpath)
    port = processes.free_port()
    log = open(os.path.join(tmp, "mongod.log"), "w")
    proc = subprocess.Popen(
        [mongod, "--dbpath", dbpath, "--port", str(port), "--bind_ip", "127.0.0.1",
         "--nounixsocket", "--quiet"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _STATE["mongod"] = proc
    atexit.register(_stop_mongod)  # also when pytest dies before unconfigure
    if not processes.wait_for_port(port, proc):
        _stop_mongod()
        pytest.exit("the test mongod did not start: see its log", returncode=3)
    os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"


# The two tiers. A test that asks for one of these fixtures starts another process
# (a CLI, a worker, an App server, a browser): it is a `system` test. `make test` runs
# the rest, in one process; `make test-system` runs these; CI runs both.
SYSTEM_FIXTURES = {"subprocess_env", "app_server"}
# A hang fails with the test's name instead of eating CI's 90 minutes.
TIMEOUT_S = {"default": 120, "system": 600}


# The files that take longest (measured with --durations, 2026-12-07), started first: with
# test files spread over parallel workers (`make test`), a long file started last would
# run alone at the end.
LONG_FILES_FIRST = ("test_browser.py", "test_demo.py", "test_match.py", "test_sharded_jobs.py",
                    "test_concurrency.py", "test_trust_fields.py", "test_decisions.py",
                    "test_faults_jobs.py", "test_isolation.py", "test_dedupe.py",
                    "test_curation_demo.py", "test_newcomer.py", "test_deletion.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SYSTEM_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.system)
        if item.get_closest_marker("timeout") is None:
            tier = "system" if item.get_closest_marker("system") else "default"
            item.add_marker(pytest.mark.timeout(TIMEOUT_S[tier]))
    rank = {name: n for n, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's order kept


@pytest.fixture(autouse=True)
def _default_tier_starts_no_process(request, monkeypatch):
    """Keeps the default tier honest: a test not marked `system` may not start a process."""
    if request.node.get_closest_marker("system"):
        return
    real = subprocess.Popen._execute_child

    def refuse(self, args, *rest, **kwargs):
        if _allowed_child(args):
            return real(self, args, *rest, **kwargs)
        raise AssertionError(
            f"{request.node.nodeid} starts a process ({args!r:.200}): mark it "
            "@pytest.mark.system or ask for subprocess_env (see CONTRIBUTING.md)")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


def _allowed_child(args):
    # Library calls made in-process that ask the system a question and exit at once.
    if isinstance(args, (str, bytes)):  # a shell line (Paddle asks `ldd --version`)
        args = os.fsdecode(args).split()
    argv = list(args)
    name = os.path.basename(os.fsdecode(argv[0])) if argv else ""
    return name in {"ldd", "uname", "ldconfig", "nvidia-smi", "nproc", "lscpu"} or \
        (name == "mongod" and "--version" in argv)


def pytest_configure(config):
    if "fiftyone" in sys.modules:
        pytest.exit("fiftyone was imported before the test database was set up", returncode=3)
    _start_isolated_database()
    from lookalike.core.database import quiet_mongodb_version_warning

    quiet_mongodb_version_warning()


def pytest_unconfigure(config):
    name = _STATE.pop("drop_database", None)
    if name and "fiftyone" in sys.modules:
        import fiftyone.core.odm.database as fod

        fod.get_db_client().drop_database(name)
    # The mongod is stopped by the atexit handler registered before fiftyone was
    # imported: atexit runs handlers last-in first-out, so FiftyOne's own exit
    # clean-up (it deletes non-persistent datasets) still finds its database.
    # Stopping it here made that clean-up wait forever for a server.


@pytest.fixture
def dataset_name():
    """A unique dataset name, deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)


@pytest.fixture(scope="session")
def subprocess_env():
    """Environment for a child Python process that shares the test database."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="session")
def demo_records(tmp_path_factory):
    """The demo's image files (photos with their edits, 200 digits), written once per session."""
    from lookalike.demo.dataset import write_demo_images

    return write_demo_images(str(tmp_path_factory.mktemp("demo-images")), max_digits=200)


@pytest.fixture(scope="session")
def copies_encoder(demo_records):
    """A small contrastive encoder ("copies") trained on the demo photos, in the session store.

    Good enough to find the demo's planted copies (about 15 s to train; cached on disk
    between runs, see ``encoder_cache``).
    """
    from lookalike.encoders import contrastive
    from lookalike.encoders.data import load_images
    from lookalike.encoders.preprocessing import input_manifest

    photos = [r["filepath"] for r in demo_records if r["source"] == "photo"]
    settings = dict(image_size=32, epochs=10, batch_size=64, width=0.5)

    def train(store_dir):
        images = load_images(photos, input_manifest("contrastive", 32)).images
        contrastive.train(images, "copies", store_dir=store_dir, **settings)

    return cached_encoder("copies", dict(settings, photos=[os.path.basename(p) for p in photos]),
                          train)


def start_app_server(env, log_path, timeout=120):
    """``(process, url)`` of a FiftyOne App server on 127.0.0.1, once it answers."""
    import requests

    port = processes.free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1", "--port",
         str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the App server exited with {proc.returncode}: see {log_path}")
        try:
            if requests.get(f"{url}/fiftyone", timeout=2).ok:
                return proc, url
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            processes.stop(proc)
            pytest.fail(f"the App server did not answer within {timeout} s")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def app_server(subprocess_env, tmp_path_factory):
    """A real FiftyOne App server on 127.0.0.1 (its own PID, stopped at the end)."""
    proc, url = start_app_server(subprocess_env, tmp_path_factory.mktemp("app") / "server.log")
    try:
        yield url
    finally:
        processes.stop(proc)


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    """A model store of the test's own, also set as LOOKALIKE_MODELS_DIR."""
    path = str(tmp_path / "models")
    monkeypatch.setenv("LOOKALIKE_MODELS_DIR", path)
    return path
