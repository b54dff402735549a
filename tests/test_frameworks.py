"""Paddle and TensorFlow load lazily, and in an order that does not crash the process."""

import subprocess
import sys
import textwrap

import pytest

NO_FRAMEWORKS = """
import sys
import lookalike as lk
assert "fiftyone" not in sys.modules, "import lookalike imported FiftyOne"
import lookalike.cli, lookalike.core.database, lookalike.demo.dataset, lookalike.core.frameworks
import lookalike.images.decode, lookalike.images.folder_import, lookalike.core.paths
lookalike.import_images, lookalike.build_demo_dataset  # lazy attributes
import fiftyone.operators as foo
from fiftyone.operators.registry import OperatorRegistry
uris = [op.uri for op in foo.list_operators(builtin=False)]
assert any(u.startswith("@lookalike/similarity/") for u in uris), uris
assert OperatorRegistry().list_errors() == []
heavy = [m for m in ("paddle", "tensorflow", "tf_keras", "tensorflow_similarity") if m in sys.modules]
print("HEAVY", heavy)
"""

CONV_BOTH = """
import numpy as np
from lookalike.core import frameworks
first, second = {order}
getattr(frameworks, first)()
getattr(frameworks, second)()
paddle, tf = frameworks.paddle(), frameworks.tensorflow()
x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
w = np.random.default_rng(1).random((3, 3, 3, 4), dtype=np.float32)  # HWIO
tf_out = tf.nn.conv2d(x, w, strides=1, padding="VALID").numpy()
conv = paddle.nn.Conv2D(3, 4, 3, bias_attr=False)
conv.weight.set_value(w.transpose(3, 2, 0, 1))  # OIHW
pd_out = conv(paddle.to_tensor(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
assert np.allclose(tf_out, pd_out, atol=1e-5), np.abs(tf_out - pd_out).max()
assert tf.keras.layers.Layer.__module__.startswith("tf_keras")
import tensorflow_similarity
frameworks.tensorflow_similarity()
print("OK", sorted(frameworks.loaded()))
"""


def _run(code, env, timeout=300):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def test_import_and_plugin_registration_load_no_framework(subprocess_env):
    out = _run(NO_FRAMEWORKS, subprocess_env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout


@pytest.mark.parametrize("order", [("paddle", "tensorflow"), ("tensorflow", "paddle")])
def test_both_frameworks_work_in_one_process_in_either_order(subprocess_env, order):
    out = _run(CONV_BOTH.format(order=order), subprocess_env)
    assert out.returncode == 0, f"rc={out.returncode}\n{out.stderr[-3000:]}"
    assert "OK ['paddle', 'tensorflow', 'tensorflow_similarity', 'tf_keras']" in out.stdout


def test_paddle_after_someone_else_imported_tensorflow(subprocess_env):
    # A notebook that imported TensorFlow itself: a plain `import paddle` would
    # segfault here; frameworks.paddle() must not.
    env = dict(subprocess_env, TF_USE_LEGACY_KERAS="1")
    code = "import tensorflow\n" + CONV_BOTH.format(order=("paddle", "tensorflow"))
    out = _run(code, env)
    assert out.returncode == 0, f"rc={out.returncode}\n{out.stderr[-3000:]}"
    assert "OK" in out.stdout


def test_keras3_is_refused_with_a_clear_message(subprocess_env):
    env = dict(subprocess_env)
    env.pop("TF_USE_LEGACY_KERAS", None)
    code = """
    import tensorflow as tf
    tf.keras.layers  # resolves tf.keras to Keras 3 before lookalike is asked
    from lookalike.core import frameworks
    try:
        frameworks.tensorflow()
    except frameworks.FrameworkError as e:
        print("REFUSED", e)
    """
    out = _run(code, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "REFUSED" in out.stdout and "TF_USE_LEGACY_KERAS=1" in out.stdout
