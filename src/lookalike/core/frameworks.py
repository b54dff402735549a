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

Nothing here runs at import time; call the functions when a framework is needed.
"""

import importlib
import importlib.util
import os
import sys
import threading

_lock = threading.RLock()


from lookalike.core.errors import FrameworkError  # noqa: F401 (re-exported)


def _installed(module):
    return importlib.util.find_spec(module) is not None


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


def tensorflow():
    """Imports and returns ``tensorflow`` with Keras 2 (tf-keras) as ``tf.keras``."""
    with _lock:
        # Read by TensorFlow when tf.keras is first resolved (lazily), so setting it
        # here also helps when TensorFlow itself was imported earlier.
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        if "tensorflow" not in sys.modules:
            if not _installed("tensorflow"):
                raise FrameworkError("TensorFlow is not installed: pip install tensorflow tf-keras")
            if not _installed("tf_keras"):
                raise FrameworkError(
                    "tf-keras is not installed: tensorflow-similarity needs Keras 2 "
                    "(pip install tf-keras)"
                )
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            if _installed("paddle"):
                paddle()  # must precede TensorFlow, see the module docstring
        tf = importlib.import_module("tensorflow")
        _check_keras2(tf)
        _gpu_memory_growth(tf)
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
        return importlib.import_module("tensorflow_similarity")
