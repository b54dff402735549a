"""Child processes in tests: free loopback ports, stopping by PID, fresh-process checks."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, timeout=30):
    """SIGTERM, then SIGKILL if it does not exit within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def paused_at(command, env, fault, marker, timeout=300):
    """Starts ``command`` and returns it once it sleeps at the fault point ``fault``, alive.

    ``marker``: a path that must not exist yet (the fault point writes it).
    """
    proc = subprocess.Popen(command, env=dict(env, LOOKALIKE_FAULT=f"{fault}:pause",
                                              LOOKALIKE_FAULT_FILE=str(marker)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(marker):
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {fault}: "
                                 f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {fault}")
        time.sleep(0.2)
    return proc


def kill(proc):
    """SIGKILL (as ``kill -9``: no clean-up runs), and wait for it."""
    proc.kill()
    proc.wait()


def embed_in_fresh_process(encoder_path, images, tmp_path, env):
    """Embeddings of ``images`` by the encoder at ``encoder_path``, loaded in a new Python."""
    images_file, out_file = str(tmp_path / "imgs.npy"), str(tmp_path / "fresh.npy")
    np.save(images_file, images)
    code = (
        "import sys, numpy as np; from lookalike.encoders import load_encoder\n"
        f"e = load_encoder({encoder_path!r}); np.save({out_file!r}, e.embed(np.load({images_file!r})))\n"
        "print('LOADED', sorted(m for m in ('paddle', 'tensorflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return np.load(out_file), out.stdout
