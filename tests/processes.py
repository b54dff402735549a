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


def wait_for(condition, what, timeout=300, procs=()):
    """Returns once ``condition()`` is true; fails naming ``what`` when ``timeout`` seconds
    pass, or as soon as one of ``procs`` (the processes that should make it true) exits.

    The one polling loop of the tests: fault points announce that they are waiting by
    writing their marker file, so the condition is an event, never a guessed sleep.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                err = proc.stderr.read()[-2000:] if getattr(proc, "stderr", None) else ""
                raise AssertionError(f"a process exited ({proc.returncode}) while waiting for "
                                     f"{what}: {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def reached(marker, proc, timeout=300, what="its fault point"):
    """Waits until ``proc`` has written ``marker`` (a fault point's "I am waiting here")."""
    try:
        wait_for(lambda: os.path.exists(marker), what, timeout, procs=[proc])
    except AssertionError:
        if proc.poll() is None:
            proc.kill()
        raise


def paused_at(command, env, fault, marker, timeout=300, **popen):
    """Starts ``command`` and returns it once it sleeps at the fault point ``fault``, alive.

    ``marker``: a path that must not exist yet (the fault point writes it). ``popen``:
    further arguments of ``subprocess.Popen`` (``cwd``, other ``stdout``).
    """
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    proc = subprocess.Popen(command, env=dict(env, LOOKALIKE_FAULT=f"{fault}:pause",
                                              LOOKALIKE_FAULT_FILE=str(marker)), **popen)
    reached(marker, proc, timeout, what=fault)
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
