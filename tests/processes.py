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


def wait_for_port(port, proc, timeout=60):
    """Whether ``proc`` listens on ``port`` within ``timeout`` seconds (False once it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Mongod:
    """A ``mongod`` of one test's own, on its own port and folder: one the test may kill
    with -9 and start again (the session's database stays up)."""

    def __init__(self, dbpath, mongod_path):
        self.dbpath, self.mongod_path, self.port = str(dbpath), mongod_path, free_port()
        self.proc = None
        os.makedirs(self.dbpath, exist_ok=True)
        # Clients give up on an unreachable server after 3 s (MongoDB's default is 30 s).
        self.uri = f"mongodb://127.0.0.1:{self.port}/?serverSelectionTimeoutMS=3000"

    def start(self):
        log = open(os.path.join(self.dbpath, "..", "mongod.log"), "a")
        self.proc = subprocess.Popen(
            [self.mongod_path, "--dbpath", self.dbpath, "--port", str(self.port),
             "--bind_ip", "127.0.0.1", "--nounixsocket", "--quiet"],
            stdout=log, stderr=subprocess.STDOUT)
        assert wait_for_port(self.port, self.proc), "the test's mongod did not start"
        return self

    def crash(self):
        kill(self.proc)

    def stop(self):
        stop(self.proc)


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
        "print('LOADED', sorted(m for m in ('paddle', 'tensorflow', 'tensorflow_similarity')\n"
        "                       if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return np.load(out_file), out.stdout
