"""The one place where Paddle and TensorFlow are imported.

Two facts measured with paddlepaddle 3.3 and TensorFlow 2.21 decide the order:

* ``import tensorflow`` followed by ``import paddle`` kills the process with
  SIGSEGV (Paddle's bundled protobuf collides with the symbols TensorFlow
  already loaded globally). Paddle first, then TensorFlow, works. So
  :func:`tensorflow` imports Paddle first when it is installed, and
  :func:`paddle` loads Paddle with ``RTLD_DEEPBIND`` when someone else already
  imported TensorFlow, which keeps Paddle's symbols to itself.
* tensorflow-similarity 0.17 needs Keras 2 (the ``tf-keras`` package): the
  variable ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow resolves
  ``tf.keras``.

Their start-up chatter is kept off stderr, where a command's one error line must be
the only line (:func:`_quiet_start`): ``TF_CPP_MIN_LOG_LEVEL`` (3 unless set) is
the level for both frameworks' native logs, Python loggers and warnings.

Nothing here runs at import time; call the functions when a framework is needed.
"""

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
import threading
import warnings

_lock = threading.RLock()


from lookalike.core.errors import FrameworkError, LookalikeError  # noqa: F401 (re-exported)


def _installed(module):
    return importlib.util.find_spec(module) is not None


# -- their start-up logs -------------------------------------------------------------------
# One record of absl's or glog's native log: "I1206 22:37:31.443669 26942 port.cc:153] ..."
# (absl before absl::InitializeLog writes "I0000 00:00:<seconds>"); severity I, W, E, F.
_NATIVE_RECORD = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\S+\s+\d+ \S+:\d+\] ")
# Notes the frameworks print at start-up, not worth a warning: absl's banner, Paddle's
# advice about the OMP_NUM_THREADS that paddle() itself sets, nmslib's (under
# tensorflow-similarity) about the instructions it was built for.
_START_UP_NOTES = ("WARNING: All log messages before absl::InitializeLog() is called",
                   "WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY",
                   "Your CPU supports instructions that this binary was not compiled to use",
                   "For maximum performance, you can install NMSLIB")
# Their own modules: warnings raised there (not in ours) are theirs to keep quiet.
_FRAMEWORK_MODULES = r"(paddle|tensorflow|tf_keras|keras|tensorflow_similarity|absl)(\.|$)"
_quieted = False


def log_level():
    """The frameworks' log level: ``TF_CPP_MIN_LOG_LEVEL`` (0 everything, 1 no info, 2 no
    warnings, 3 no errors; 3 unless the user set it)."""
    try:
        return min(max(int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")), 0), 3)
    except ValueError:
        return 3


def _quiet_start():
    """Before the first framework import: their logs at :func:`log_level` and above only.

    TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` and Paddle's glog ``GLOG_minloglevel``
    (the same scale) when their libraries load; their Python loggers ("tensorflow",
    "absl") and the warnings raised in their modules follow the same level. A level
    the user set is kept.
    """
    global _quieted
    if _quieted:
        return
    _quieted = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    level = log_level()
    os.environ.setdefault("GLOG_minloglevel", str(level))
    if level >= 2:
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=_FRAMEWORK_MODULES)


def _kept_start_up_lines(text, level):
    """The lines of a framework's successful start-up worth showing at ``level``: its native
    log records at ``level`` or above, its known notes at level 0 only, and any other line
    (another thread's, say). A line without a header of its own belongs to the record or
    note before it."""
    kept, keep = [], True
    for line in text.splitlines(keepends=True):
        if _NATIVE_RECORD.match(line):
            keep = "IWEF".index(line[0]) >= level
        elif line.startswith(_START_UP_NOTES):
            keep = level == 0
        if keep:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _start_up_lines_filtered():
    """Around a framework's import: what it writes on stderr (its native libraries on file
    descriptor 2, its Python code on ``sys.stderr``) is held, then passed on as
    :func:`_kept_start_up_lines` says; all of it when the import fails unexpectedly.

    absl's native logs ignore ``TF_CPP_MIN_LOG_LEVEL`` until ``absl::InitializeLog``,
    which TensorFlow never calls, so their start-up lines are caught here. What other
    threads write meanwhile is held too, and passed on after.
    """
    _quiet_start()
    python_err = io.StringIO()
    held = saved = None
    try:
        sys.stderr.flush()
        held = tempfile.TemporaryFile()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no file descriptor 2 (or no temp) to hold
        if saved is not None:
            os.close(saved)
        if held is not None:
            held.close()
        held = saved = None
    failed = True
    try:
        with contextlib.redirect_stderr(python_err):
            yield
        failed = False
    except LookalikeError:
        failed = False  # our one-line reason: the chatter before it stays quiet
        raise
    finally:
        text = ""
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            held.close()
        text += python_err.getvalue()
        text = text if failed else _kept_start_up_lines(text, log_level())
        if text and sys.stderr is not None:
            sys.stderr.write(text)
            sys.stderr.flush()


def loaded():
    """Names of the heavy frameworks already imported in this process."""
    names = ("paddle", "tensorflow", "tf_keras", "tensorflow_similarity")
    return [name for name in names if name in sys.modules]


def paddle():
    """Imports and returns the ``paddle`` module, safely whatever was loaded before."""
    with _lock:
        if "paddle" in sys.modules:
            return sys.modules["paddle"]
        if not _installed("paddle"):
            raise FrameworkError(
                "PaddlePaddle is not installed: pip install paddlepaddle "
                "(or paddlepaddle-gpu on a CUDA machine)"
            )
        # Paddle's CPU kernels run on one thread unless OpenMP is told otherwise
        # (measured: autoencoder training 18 -> 26 images/s on 2 cores).
        os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
        with _start_up_lines_filtered():
            if "tensorflow" in sys.modules:
                # TensorFlow came first (not through us): bind Paddle's libraries to
                # their own protobuf symbols instead of TensorFlow's.
                old_flags = sys.getdlopenflags()
                sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)
                try:
                    module = importlib.import_module("paddle")
                finally:
                    sys.setdlopenflags(old_flags)
            else:
                module = importlib.import_module("paddle")
        return module


_tf_ready = False


def tensorflow():
    """Imports and returns ``tensorflow`` with Keras 2 (tf-keras) as ``tf.keras``."""
    global _tf_ready
    with _lock:
        # Read by TensorFlow when tf.keras is first resolved (lazily), so setting it
        # here also helps when TensorFlow itself was imported earlier.
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        if _tf_ready:
            return sys.modules["tensorflow"]
        if "tensorflow" not in sys.modules:
            if not _installed("tensorflow"):
                raise FrameworkError("TensorFlow is not installed: pip install tensorflow tf-keras")
            if not _installed("tf_keras"):
                raise FrameworkError(
                    "tf-keras is not installed: tensorflow-similarity needs Keras 2 "
                    "(pip install tf-keras)"
                )
            if _installed("paddle"):
                paddle()  # must precede TensorFlow, see the module docstring
        with _start_up_lines_filtered():
            tf = importlib.import_module("tensorflow")
            _check_keras2(tf)  # imports tf_keras
            _gpu_memory_growth(tf)
        _tf_ready = True
        return tf


_gpu_configured = False


def _gpu_memory_growth(tf):
    # TensorFlow grabs all GPU memory by default; Paddle may share the device.
    global _gpu_configured
    if _gpu_configured:
        return
    _gpu_configured = True
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # the device is already initialised: too late, and harmless


def _check_keras2(tf):
    # With TF_USE_LEGACY_KERAS=1, tf.keras resolves to the tf_keras package (Keras 2).
    # tf.keras is a lazy loader: touching a class resolves it.
    origin = tf.keras.layers.Layer.__module__
    if not origin.startswith("tf_keras"):
        raise FrameworkError(
            f"tf.keras resolves to {origin.split('.')[0]}, but tensorflow-similarity needs Keras 2 "
            "(tf-keras). "
            "TensorFlow was imported before lookalike could set TF_USE_LEGACY_KERAS=1: "
            "set TF_USE_LEGACY_KERAS=1 in the environment before importing TensorFlow."
        )


def tensorflow_similarity():
    """Imports and returns ``tensorflow_similarity`` on top of :func:`tensorflow`."""
    tensorflow()
    with _lock:
        if not _installed("tensorflow_similarity"):
            raise FrameworkError("tensorflow-similarity is not installed: pip install tensorflow-similarity")
        if "tensorflow_similarity" in sys.modules:
            return sys.modules["tensorflow_similarity"]
        with _start_up_lines_filtered():
            return importlib.import_module("tensorflow_similarity")
