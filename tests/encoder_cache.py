"""Trained test encoders cached on disk, so that a test run trains each one once, ever.

The key covers everything that decides the weights: the training settings, the
framework versions and the source of the code that trains and preprocesses
(``encoders/``, ``images/edits.py``, ``images/decode.py``, the demo's images). Change any of them
and the encoder is trained again. A cached encoder reaches the test's model store
through the store's own checked import (manifest and checksums verified, nothing
unlisted copied), exactly as a colleague's encoder folder would.

The cache is ``.cache/test-encoders`` in the checkout, or ``$LOOKALIKE_TEST_CACHE``.
Tests *about* training train for real; this is for tests that only need an encoder.
"""

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(REPO_ROOT, "src", "lookalike")
CODE = ("encoders", "images/edits.py", "images/decode.py", "demo/dataset.py", "core/frameworks.py")
VERSIONS = ("tensorflow", "tf-keras", "tensorflow-similarity", "paddlepaddle", "numpy",
            "Pillow", "scikit-image", "scikit-learn")


def cache_root():
    return os.environ.get("LOOKALIKE_TEST_CACHE") or os.path.join(REPO_ROOT, ".cache",
                                                                  "test-encoders")


def _code_digest():
    digest = hashlib.sha256()
    for entry in CODE:
        path = os.path.join(SRC, entry)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, n) for d, _, names in os.walk(path) for n in names
            if n.endswith(".py"))
        for file in files:
            digest.update(os.path.relpath(file, SRC).encode())
            with open(file, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cache_key(name, settings):
    blob = json.dumps({"name": name, "settings": settings, "code": _code_digest(),
                       "versions": {d: _version(d) for d in VERSIONS},
                       "env": {k: os.environ.get(k) for k in ("TF_ENABLE_ONEDNN_OPTS",)}},
                      sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def cached_encoder(name, settings, train):
    """Puts encoder ``name`` into the current model store (LOOKALIKE_MODELS_DIR) and
    returns ``name``. ``train(store_dir)`` trains it into ``store_dir`` when the cache
    has no encoder for ``settings`` (a dict of everything ``train`` uses)."""
    from lookalike.encoders import import_encoder

    entry = os.path.join(cache_root(), cache_key(name, settings))
    folder = os.path.join(entry, name)
    os.makedirs(cache_root(), exist_ok=True)
    # Parallel test workers (pytest-xdist) wanting one encoder: one trains, the others wait
    # for it instead of training it again.
    with open(entry + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _train_once(name, train, entry, folder)
    import_encoder(folder, name=name, store_dir=os.environ["LOOKALIKE_MODELS_DIR"],
                   overwrite=True)
    return name


def _train_once(name, train, entry, folder):
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        staging = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_root())
        train(os.path.join(staging, "store"))
        os.makedirs(os.path.join(staging, "entry"))
        os.rename(os.path.join(staging, "store", name), os.path.join(staging, "entry", name))
        try:
            os.rename(os.path.join(staging, "entry"), entry)  # whole or not at all
        except OSError:  # another run published it first: use theirs
            pass
        shutil.rmtree(staging, ignore_errors=True)
